"""Inference: the device it runs on, batched `vqa predict --data`, and timing that waits for it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from vqa.cli import main
from vqa.data.formats import load_local_dataset
from vqa.inference import load_model, predict, resolve_device

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run[0]


@pytest.fixture(scope="module")
def dataset(tiny_run) -> Path:
    return tiny_run[1]


@pytest.fixture
def questions(dataset, tmp_path) -> Path:
    """A 10-question file beside a link to the dataset's images, without answers; the third
    question has no question id."""
    (tmp_path / "images").symlink_to(dataset / "images")
    rows = [json.loads(line) for line in (dataset / "test.jsonl").read_text().splitlines()[:10]]
    kept = [{"image": row["image"], "question": row["question"]} for row in rows]
    for number, (row, original) in enumerate(zip(kept, rows, strict=True)):
        if number != 2:
            row["question_id"] = original["question_id"]
    return write_lines(tmp_path / "questions.jsonl", [json.dumps(row) for row in kept])


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def batch_command(run: Path, data: Path, out: Path, *options: str) -> list[str]:
    return ["predict", "--model", str(run), "--data", str(data), "--out", str(out), *options]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_error_line(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def assert_same_prediction(batched: dict, single: dict) -> None:
    """Equal answers, regions and fusion settings; probabilities and weights within 1e-5."""
    assert [answer for answer, _ in batched["answers"]] == [a for a, _ in single["answers"]]
    assert [p for _, p in batched["answers"]] == pytest.approx(
        [p for _, p in single["answers"]], abs=1e-5
    )
    assert batched["weights"] == pytest.approx(single["weights"], abs=1e-5)
    strip = [{**region, "weight": None} for region in batched["regions"]]
    assert strip == [{**region, "weight": None} for region in single["regions"]]
    assert [region["weight"] for region in batched["regions"]] == pytest.approx(
        [region["weight"] for region in single["regions"]], abs=1e-5
    )
    for key in ("mode", "k", "grid", "truncated", "encoder_kept", "encoder_select_after"):
        assert batched[key] == single[key], key


@pytest.mark.parametrize(("mode", "k"), [("soft", "4"), ("hard", "2"), ("hybrid", "3")])
def test_batched_first_row_equals_single_predict_json(run, questions, tmp_path, capsys, mode, k):
    out = tmp_path / "predictions.jsonl"
    command = batch_command(run, questions, out, "--batch-size", "4")
    assert main([*command, "--mode", mode, "--k", k]) == 0
    first = read_lines(out)[0]
    row = json.loads(questions.read_text().splitlines()[0])
    capsys.readouterr()
    image = str(questions.parent / row["image"])
    single = ["predict", "--model", str(run), "--image", image, "--question", row["question"]]
    assert main([*single, "--mode", mode, "--k", k, "--json"]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["question_id"], first["image"]) == (row["question_id"], row["image"])
    assert first["question"] == row["question"]
    assert_same_prediction(first, expected)
    assert first["mode"] == mode and first["k"] == int(k)
    assert set(first) == {"question_id", "image", "question", *expected}


def predict_command(run: Path, dataset: Path, *options: str) -> list[str]:
    image = str(dataset / "images" / "test" / "000000.png")
    question = "what colour is the large circle?"
    return ["predict", "--model", str(run), "--image", image, "--question", question, *options]


def test_predict_json_reports_the_patches_the_encoder_kept(tiny_selecting_run, dataset, capsys):
    assert main(predict_command(tiny_selecting_run, dataset, "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    kept = result["encoder_kept"]
    assert len(kept) == 8 and kept == sorted(kept) and set(kept) <= set(range(16))
    assert result["encoder_select_after"] == 0
    assert {region["region"] for region in result["regions"]} <= set(kept)
    assert {i for i, weight in enumerate(result["weights"]) if weight > 0} <= set(kept)


def test_predict_json_reports_no_encoder_selection_in_soft_mode_or_without_one(
    run, tiny_selecting_run, dataset, capsys
):
    assert main(predict_command(tiny_selecting_run, dataset, "--mode", "soft", "--json")) == 0
    assert main(predict_command(run, dataset, "--json")) == 0
    for line in capsys.readouterr().out.strip().splitlines():
        result = json.loads(line)
        assert (result["encoder_kept"], result["encoder_select_after"]) == (None, None)


def test_predict_says_how_many_patches_the_encoder_kept(run, tiny_selecting_run, dataset, capsys):
    assert main(predict_command(tiny_selecting_run, dataset)) == 0
    assert "encoder kept 8 of 16 patches before its first block" in capsys.readouterr().out
    options = ("--select-after", "1", "--encoder-k", "0.75")
    assert main(predict_command(tiny_selecting_run, dataset, *options)) == 0
    assert "encoder kept 12 of 16 patches after block 1" in capsys.readouterr().out
    assert main(predict_command(run, dataset)) == 0
    assert "encoder kept" not in capsys.readouterr().out


def test_batched_rows_report_the_patches_the_encoder_kept(
    tiny_selecting_run, questions, tmp_path, capsys
):
    out = tmp_path / "predictions.jsonl"
    assert main(batch_command(tiny_selecting_run, questions, out, "--batch-size", "4")) == 0
    lines = read_lines(out)
    assert all(len(line["encoder_kept"]) == 8 for line in lines)
    row = json.loads(questions.read_text().splitlines()[0])
    capsys.readouterr()
    image = str(questions.parent / row["image"])
    single = ["predict", "--model", str(tiny_selecting_run), "--image", image]
    assert main([*single, "--question", row["question"], "--json"]) == 0
    assert_same_prediction(lines[0], json.loads(capsys.readouterr().out))


def test_every_row_gets_one_line_in_order_each_equal_to_predict(run, questions, tmp_path):
    out = tmp_path / "predictions.jsonl"
    assert main(batch_command(run, questions, out, "--batch-size", "4")) == 0
    rows = read_lines(questions)
    lines = read_lines(out)
    assert [line["question"] for line in lines] == [row["question"] for row in rows]
    assert [line.get("question_id") for line in lines] == [row.get("question_id") for row in rows]
    assert "question_id" not in lines[2]
    model, processor = load_model(run)  # where the command ran: the best device there is
    for line, row in zip(lines, rows, strict=True):
        with Image.open(questions.parent / row["image"]) as image:
            expected = predict(model, processor, image, row["question"])
        assert_same_prediction(line, json.loads(json.dumps(asdict(expected))))


def test_worker_processes_give_the_same_lines(run, questions, tmp_path):
    """Images decoded in 2 worker processes: the same predictions, in the same order."""
    lines = {}
    for workers in ("0", "2"):
        out = tmp_path / f"predictions-{workers}.jsonl"
        options = ("--batch-size", "3", "--num-workers", workers)
        assert main(batch_command(run, questions, out, *options)) == 0
        lines[workers] = read_lines(out)
    assert len(lines["2"]) == len(read_lines(questions))
    for with_workers, without in zip(lines["2"], lines["0"], strict=True):
        assert_same_prediction(with_workers, without)


def test_rows_about_one_image_share_its_encoding(run, questions, tmp_path, monkeypatch):
    """Questions about one image in a batch make one image in the model call."""
    from vqa import inference

    shapes: list[tuple[int, int]] = []
    original = inference.predict_batch

    def recording(model, processor, images, questions, image_index, **options):
        shapes.append((len(images), len(questions)))
        return original(model, processor, images, questions, image_index, **options)

    monkeypatch.setattr(inference, "predict_batch", recording)
    out = tmp_path / "predictions.jsonl"
    assert main(batch_command(run, questions, out, "--batch-size", "10")) == 0
    distinct = {row["image"] for row in read_lines(questions)}
    assert shapes == [(len(distinct), 10)] and len(distinct) < 10


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "images/gone.png", "question": "q"}', "3: image 'images/gone.png' not found"),
        ("{oops", "3: malformed JSON"),
        ('{"image": "images/test/000000.png"}', "3: field 'question' must be a non-empty string"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line_and_leaves_no_output(
    run, questions, tmp_path, capsys, line, message
):
    lines = questions.read_text().splitlines()
    data = write_lines(questions, [*lines[:2], line, *lines[3:]])
    out = tmp_path / "predictions.jsonl"
    assert main(batch_command(run, data, out)) == 2
    assert one_error_line(capsys).startswith(f"vqa predict: error: {data}:{message}")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_image_that_does_not_decode_mid_file_leaves_no_output(
    run, questions, tmp_path, capsys, workers
):
    """The batches before the bad image were written to the partial file: it goes too. With
    workers, the error still names the file and line (not a worker's traceback)."""
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = questions.read_text().splitlines()
    broken = json.dumps({"image": "broken.png", "question": "what colour is the circle?"})
    data = write_lines(questions, [*lines[:6], broken, *lines[6:]])
    out = tmp_path / "predictions.jsonl"
    options = ("--batch-size", "2", "--num-workers", workers)
    assert main(batch_command(run, data, out, *options)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert error.startswith(f"vqa predict: error: {data}:7: image 'broken.png' does not decode")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--image", "x.png", "--question", "q", "--data", "q.jsonl", "--out", "p.jsonl"],
            "--image/--question and --data/--out are mutually exclusive",
        ),
        (["--data", "q.jsonl"], "give --image and --question (one question) or --data and --out"),
        ([], "give --image and --question (one question) or --data and --out"),
    ],
)
def test_one_question_or_a_file_of_them_is_a_one_line_error_otherwise(
    run, capsys, options, message
):
    assert main(["predict", "--model", str(run), *options]) == 2
    assert one_error_line(capsys).startswith(f"vqa predict: error: {message}")


def test_predict_on_device_cpu_works(run, dataset, capsys):
    image = str(dataset / "images" / "test" / "000000.png")
    command = ["predict", "--model", str(run), "--image", image, "--question", "is there a circle?"]
    assert main([*command, "--device", "cpu", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["answers"]) == 5


def test_eval_on_device_cpu_says_so(run, dataset, capsys):
    command = ["eval", "--model", str(run), "--data", str(dataset), "--split", "test"]
    assert main([*command, "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["device"] == "cpu"


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize(
    "command",
    [
        ["predict", "--image", "x.png", "--question", "q"],
        ["eval", "--data", "data"],
        ["serve"],
    ],
)
def test_device_cuda_without_a_gpu_is_a_one_line_error(run, capsys, command):
    name, *options = command
    assert main([name, "--model", str(run), *options, "--device", "cuda"]) == 2
    assert one_error_line(capsys) == (
        f"vqa {name}: error: device cuda is not available: torch sees no CUDA GPU here"
    )


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "unknown device 'tpu': use cpu, cuda or cuda:N"),
        ("cuda:99", "device cuda:99 is not available: "),
    ],
)
def test_an_unknown_or_absent_device_is_a_one_line_error(run, capsys, device, message):
    command = ["predict", "--model", str(run), "--image", "x.png", "--question", "q"]
    assert main([*command, "--device", device]) == 2
    assert one_error_line(capsys).startswith(f"vqa predict: error: {message}")


def test_load_model_on_cpu_puts_every_parameter_and_buffer_there(run):
    model, _ = load_model(run, device="cpu")
    assert {tensor.device.type for tensor in (*model.parameters(), *model.buffers())} == {"cpu"}


def test_the_default_device_is_the_best_available():
    assert resolve_device(None) == torch.device("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_is_found_by_its_index_on_a_machine_with_two(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"^device cuda:2 is not available: this machine has 2 "):
        resolve_device("cuda:2")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_on_cuda_predict_and_evaluate_agree_with_the_cpu(run, dataset):
    from vqa.evaluation import evaluate

    rows = load_local_dataset(dataset, ["test"])["test"]
    image = dataset / "images" / "test" / "000000.png"
    results = {}
    for device in ("cpu", "cuda"):
        model, processor = load_model(run, device)
        assert {parameter.device.type for parameter in model.parameters()} == {device}
        with Image.open(image) as opened:
            prediction = predict(model, processor, opened, "is there a circle?")
        scores = evaluate(model, processor, rows, batch_size=8, progress=False)
        results[device] = (prediction, scores)
    (cpu, cpu_scores), (cuda, cuda_scores) = results["cpu"], results["cuda"]
    assert [answer for answer, _ in cuda.answers] == [answer for answer, _ in cpu.answers]
    assert cuda.weights == pytest.approx(cpu.weights, abs=1e-4)
    assert cuda_scores["accuracy"] == pytest.approx(cpu_scores["accuracy"])


def test_the_app_model_runs_on_the_given_device(run):
    from vqa.app import AppModel

    assert AppModel(run, device="cpu").model.device == torch.device("cpu")


def record_timing(monkeypatch, module, model) -> list[str]:
    """Calls of ``module.synchronize`` and of ``model``'s forward pass, in order."""
    events: list[str] = []
    monkeypatch.setattr(module, "synchronize", lambda device: events.append(f"sync {device}"))
    model.register_forward_pre_hook(lambda *_: events.append("forward"))
    model.register_forward_hook(lambda *_: events.append("done"))
    return events


def test_predict_synchronizes_before_starting_and_before_stopping_its_timer(
    run, dataset, monkeypatch
):
    from vqa import inference

    model, processor = load_model(run, "cpu")
    events = record_timing(monkeypatch, inference, model)
    with Image.open(dataset / "images" / "test" / "000000.png") as image:
        predict(model, processor, image, "is there a circle?")
    assert events == ["sync cpu", "forward", "done", "sync cpu"]


def test_evaluate_synchronizes_before_starting_and_before_stopping_its_timer(
    run, dataset, monkeypatch
):
    from vqa import evaluation

    model, processor = load_model(run, "cpu")
    rows = load_local_dataset(dataset, ["test"])["test"]
    events = record_timing(monkeypatch, evaluation, model)
    evaluation.evaluate(model, processor, rows, batch_size=len(rows) // 2 + 1, progress=False)
    assert events == ["sync cpu", "forward", "done", "sync cpu"] * 2
