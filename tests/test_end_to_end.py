"""From generated scenes to a trained model that answers, through the `vqa` command."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vqa.cli import main
from vqa.data.formats import DatasetFormatError, load_local_dataset
from vqa.inference import load_model, predict
from vqa.loading import loader_options
from vqa.training import resolve_precision


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "scenes"
    assert (
        main(
            [
                "data",
                "synthetic",
                "--out",
                str(out),
                "--train",
                "50",
                "--val",
                "10",
                "--test",
                "10",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def run(dataset, train_tiny, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert train_tiny(dataset, run) == 0
    return run


def test_training_writes_model_processor_metrics_and_checkpoint(run):
    for name in (
        "config.json",
        "model.safetensors",
        "answers.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "metrics.json",
    ):
        assert (run / name).is_file(), name
    assert list(run.glob("checkpoint/step-*/trainer_state.json"))
    metrics = json.loads((run / "metrics.json").read_text())
    (epoch,) = metrics["history"]
    assert {"train_loss", "val_accuracy", "train_seconds", "val_pointing_accuracy"} <= set(epoch)
    # auto precision on a CPU: fp32, said in metrics.json
    assert (metrics["device"], metrics["mixed_precision"], metrics["tf32"]) == ("cpu", "no", False)
    assert not list(run.glob("*.bin")) and not list(run.glob("*.pt"))


def test_eval_accuracy_is_the_share_of_questions_that_predict_answers_right(run, dataset, capsys):
    """`vqa eval` scores exactly what `vqa predict` answers, overall and per question type."""
    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--data", str(dataset), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, processor = load_model(run)
    right, asked = Counter(), Counter()
    for line in (dataset / "val.jsonl").read_text().splitlines():
        row = json.loads(line)
        with Image.open(dataset / row["image"]) as image:
            answer = predict(model, processor, image, row["question"]).answers[0][0]
        asked[row["question_type"]] += 1
        right[row["question_type"]] += answer == row["answer"]
    assert scores["questions"] == asked.total()
    assert scores["accuracy"] == pytest.approx(right.total() / asked.total())
    assert scores["accuracy_by_type"] == pytest.approx(
        {family: right[family] / asked[family] for family in asked}
    )
    assert scores["regions_used"] == 4.0  # the tiny preset's k
    assert scores["mode"] == "hybrid" and scores["k"] == 4


def test_predict_gives_top5_answers_and_the_boxes_of_the_selected_patches(run, dataset, capsys):
    image = dataset / "images" / "test" / "000000.png"
    question = "what colour is the circle?"
    capsys.readouterr()
    command = ["predict", "--model", str(run), "--image", str(image), "--question", question]
    assert main([*command, "--mode", "hard", "--k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, processor = load_model(run)
    with Image.open(image) as opened:
        expected = predict(model, processor, opened, question, mode="hard", k=2)
    assert [answer for answer, _ in result["answers"]] == [a for a, _ in expected.answers]
    probabilities = [p for _, p in result["answers"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert result["mode"] == "hard" and len(result["regions"]) == 2
    assert all(region["weight"] == pytest.approx(0.5) for region in result["regions"])
    for region in result["regions"]:  # 8 px patches of a 32 px image, 4 per row
        row, column = divmod(region["region"], 4)
        assert region["box"] == [8 * column, 8 * row, 8 * column + 8, 8 * row + 8]


def test_resume_continues_from_the_checkpoint(run, dataset, train_tiny):
    assert train_tiny(dataset, run, "--epochs", "2", "--resume") == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2]


def test_cli_errors_are_one_line_on_stderr_with_status_2(run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqa",
            "predict",
            "--model",
            str(tmp_path),
            "--image",
            "x.png",
            "--question",
            "hi",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vqa predict: error: {tmp_path} is not a model directory (no config.json)"
    ]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"image": "a.png", "question": "q", "answer": "a"}\n{oops\n'
    )
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"train.jsonl:2: malformed JSON"):
        load_local_dataset(tmp_path)


def test_unknown_split_lists_the_splits_there_are(dataset):
    with pytest.raises(ValueError, match=r"\['dev'\] not in .* it has \['train', 'val', 'test'\]"):
        load_local_dataset(dataset, ["dev"])


def test_auto_precision_is_the_launchers_else_bf16_on_a_gpu_that_has_it(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto") == "no"  # fp16 would need loss scaling: not a default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_precision("auto") == "fp16"
    assert resolve_precision("no") == "no"  # an explicit choice wins over the launcher's


def test_bf16_mixed_precision_with_reinforce_trains_on_cpu(dataset, tmp_path, train_tiny):
    run = tmp_path / "bf16"
    options = ["--mixed-precision", "bf16", "--mode", "hard", "--estimator", "reinforce"]
    assert train_tiny(dataset, run, *options) == 0
    (epoch,) = json.loads((run / "metrics.json").read_text())["history"]
    assert all(math.isfinite(loss) for loss in epoch["step_losses"])


def test_missing_image_names_the_row_and_path(tmp_path):
    (tmp_path / "val.jsonl").write_text('{"image": "gone.png", "question": "q", "answer": "a"}\n')
    with pytest.raises(DatasetFormatError, match=r"val.jsonl:1: image 'gone.png' not found"):
        load_local_dataset(tmp_path)


def test_row_without_an_answer_names_the_row(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "train.jsonl").write_text('{"image": "a.png", "question": "q"}\n')
    with pytest.raises(DatasetFormatError, match=r"train.jsonl:1: row has neither 'answer'"):
        load_local_dataset(tmp_path)


class _CreatesAFile:
    """Unpickling this would create the file named in ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_only_model_directory_is_refused_and_never_unpickled(run, tmp_path):
    import pickle
    import shutil

    from vqa.inference import load_model

    model_dir = tmp_path / "pickled"
    shutil.copytree(run, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_CreatesAFile(marker)))
    with pytest.raises(FileNotFoundError, match=r"refusing to unpickle pytorch_model\.bin"):
        load_model(model_dir)
    assert not marker.exists()


def test_a_run_without_val_split_keeps_the_lowest_loss_model(dataset, tmp_path, capsys, train_tiny):
    data = tmp_path / "train-only"
    data.mkdir()
    (data / "train.jsonl").write_text((dataset / "train.jsonl").read_text())
    (data / "images").symlink_to(dataset / "images")
    assert train_tiny(data, tmp_path / "run") == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert "no val split: lowest training loss at epoch 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--output", "run", "--bogus"], "vqa: error: unrecognized arguments: --bogus"),
        (["train", "--output", "run", "--mode", "sharp"], "vqa train: error: argument --mode"),
        (["predict", "--image", "x.png"], "vqa predict: error: the following arguments are"),
    ],
)
def test_bad_arguments_are_one_line_on_stderr_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(message)


def test_worker_processes_load_the_same_batches_as_the_main_process(dataset, tmp_path, train_tiny):
    for workers in ("0", "2"):
        assert train_tiny(dataset, tmp_path / workers, "--num-workers", workers) == 0
    first, second = (load_file(tmp_path / w / "model.safetensors") for w in ("0", "2"))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_loader_options_pin_memory_for_cuda_and_keep_workers_between_epochs():
    assert loader_options(2, "cuda") == {
        "num_workers": 2,
        "persistent_workers": True,
        "pin_memory": True,
    }
    assert loader_options(0, "cpu") == {
        "num_workers": 0,
        "persistent_workers": False,
        "pin_memory": False,
    }
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        loader_options(-1, "cpu")


def test_eval_on_synthetic_uses_the_embedded_scenes_the_model_was_trained_on(
    tiny_run, monkeypatch, tmp_path, capsys
):
    run, data = tiny_run
    monkeypatch.setattr(
        "vqa.cache.synthetic_dataset", lambda **sizes: data if sizes["image_size"] == 32 else None
    )
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["arguments"].update(data="synthetic", preset="tiny")
    (copy / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert main(["eval", "--model", str(copy), "--data", "synthetic", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["questions"] == len((data / "val.jsonl").read_text().splitlines())


def test_frozen_batchnorm_keeps_its_running_statistics(dataset, tmp_path, train_tiny):
    assert train_tiny(dataset, tmp_path / "first") == 0
    options = ("--init-from", str(tmp_path / "first"), "--freeze-vision")
    assert train_tiny(dataset, tmp_path / "second", *options) == 0
    first, second = (
        load_file(tmp_path / name / "model.safetensors") for name in ("first", "second")
    )
    statistics = [name for name in first if name.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(first[name], second[name]) for name in statistics)
