"""The peer baseline (``vqa.peer``) and the tables of ``scripts/bench_train.py``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import load_script
from PIL import Image, ImageDraw

from vqa.peer import PEER_COLUMNS, PeerCollator, PeerVQAModel, bag_of_words, train_peer
from vqa.processing import HybridVQAProcessor
from vqa.training import learning_curve

# The tokenizer and answer vocabulary that `vqa train` builds from the default preset's
# scenes (10,000 scenes, 44,797 questions).
DEFAULT_VOCAB_SIZE, DEFAULT_ANSWERS = 174, 17
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}


def test_peer_has_about_0_14m_parameters_at_the_default_sizes() -> None:
    model = PeerVQAModel(vocab_size=DEFAULT_VOCAB_SIZE, num_answers=DEFAULT_ANSWERS, image_size=64)
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 200_000


def test_peer_gives_one_logit_per_answer() -> None:
    model = PeerVQAModel(vocab_size=50, num_answers=3, image_size=32)
    logits = model(torch.rand(2, 3, 32, 32), torch.zeros(2, 50))
    assert logits.shape == (2, 3)


def glorot_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def test_peer_weights_have_the_glorot_spread() -> None:
    model = PeerVQAModel(vocab_size=DEFAULT_VOCAB_SIZE, num_answers=DEFAULT_ANSWERS)
    for layer in glorot_layers(model):
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
        expected = math.sqrt(2 / (fan_in + fan_out))
        assert float(layer.weight.detach().std()) == pytest.approx(expected, rel=0.15), layer


def test_peer_biases_start_at_zero() -> None:
    model = PeerVQAModel(vocab_size=DEFAULT_VOCAB_SIZE, num_answers=DEFAULT_ANSWERS)
    assert all(not layer.bias.any() for layer in glorot_layers(model))


def test_bag_of_words_marks_the_question_tokens_but_not_the_special_ones() -> None:
    input_ids = torch.tensor([[2, 7, 9, 7, 3], [2, 8, 3, 0, 0]])  # [CLS] ... [SEP] [PAD]
    words = bag_of_words(input_ids, vocab_size=10, special_ids=[0, 2, 3])
    assert words.tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
    ]


def test_peer_batches_need_only_image_question_answers_and_type() -> None:
    questions = ["what colour is the square?", "is there a circle?"]
    processor = HybridVQAProcessor.train(questions, ["red", "no"], image_size=32)
    image = Image.new("RGB", (48, 48), "white")
    rows = [
        dict(zip(PEER_COLUMNS, (image, "a.png", question, [answer], "t"), strict=True))
        for question, answer in zip(questions, ["red", "no"], strict=True)
    ]
    inputs, answers, types = PeerCollator(processor)(rows)
    assert inputs["images"].shape == (2, 3, 32, 32)
    assert inputs["words"].shape == (2, len(processor.tokenizer))
    assert inputs["labels"].tolist() == [processor.answers.encode(a) for a in ("red", "no")]
    assert (answers, types) == ([["red"], ["no"]], ["t", "t"])


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The peer trained for 3 epochs on 40 embedded scenes of 32 px."""
    from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

    data = tmp_path_factory.mktemp("peer-scenes") / "data"
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(data, train=40, val=10, test=0, config=config, progress=False)
    return train_peer(
        data, epochs=3, batch_size=16, lr=3e-3, image_size=32, device="cpu", progress=False
    )


def test_train_peer_returns_the_learning_curve_of_every_epoch(scenes_run: dict) -> None:
    curve = scenes_run["curve"]
    assert curve == learning_curve(scenes_run["history"])
    assert [point["epoch"] for point in curve] == [1, 2, 3]
    assert all(point["val_pointing_accuracy"] is None for point in curve)
    assert 0.0 <= curve[-1]["val_accuracy"] <= 1.0
    assert "colour" in curve[-1]["val_accuracy_by_type"]


def test_train_peer_loss_falls(scenes_run: dict) -> None:
    losses = [record["train_loss"] for record in scenes_run["history"]]
    assert losses[-1] < losses[0]


def write_colour_squares(directory: Path, split: str, count: int, rng: random.Random) -> list:
    """``count`` local-format rows: one coloured square on grey, "what colour is the square?"."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        colour = list(COLOURS)[index % len(COLOURS)]
        size = rng.randint(8, 14)
        x, y = rng.randint(0, 32 - size), rng.randint(0, 32 - size)
        image = Image.new("RGB", (32, 32), (200, 200, 200))
        ImageDraw.Draw(image).rectangle([x, y, x + size - 1, y + size - 1], fill=COLOURS[colour])
        path = f"images/{split}-{index}.png"
        image.save(directory / path)
        question = "what colour is the square?"
        rows.append(
            {"image": path, "question": question, "answer": colour, "question_type": "colour"}
        )
    (directory / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def test_peer_learns_the_colour_of_a_lone_square_better_than_a_blind_guess(
    tmp_path: Path,
) -> None:
    rng = random.Random(0)
    write_colour_squares(tmp_path, "train", 60, rng)
    val = write_colour_squares(tmp_path, "val", 30, rng)
    majority = max(sum(row["answer"] == c for row in val) for c in COLOURS) / len(val)
    summary = train_peer(
        tmp_path, epochs=8, batch_size=10, lr=1e-2, image_size=32, device="cpu", progress=False
    )
    assert summary["curve"][-1]["val_accuracy"] > majority + 0.3


def load_bench_train():
    return load_script("bench_train")


def curve(seconds: list[float], accuracy: list[float]) -> list[dict]:
    return [
        {"epoch": epoch, "questions": 1000 * epoch, "train_seconds": s, "val_accuracy": a}
        for epoch, (s, a) in enumerate(zip(seconds, accuracy, strict=True), start=1)
    ]


def bench_row(**fields: object) -> dict:
    by_type = {"colour": 0.9, "count": 0.5}
    return {"val_accuracy_by_type": by_type, "pointing_accuracy": None, **fields}


@pytest.fixture
def bench_table() -> list[str]:
    """The lines of ``--table`` for a result with hybrid (4 epochs) and the peer (5)."""
    hybrid = bench_row(
        mode="hybrid",
        estimator="ste",
        val_accuracy=0.8,
        pointing_accuracy=0.95,
        train_seconds=400,
        questions_per_second=10,
        curve=curve([70, 110, 170, 400], [0.4, 0.6, 0.7, 0.8]),
    )
    peer = bench_row(
        model="peer",
        val_accuracy=0.5,
        train_seconds=100,
        questions_per_second=50,
        curve=curve([20, 40, 60, 80, 100], [0.31, 0.32, 0.33, 0.34, 0.5]),
    )
    machine = {"device_name": "CPU", "cores": 2, "threads": 2, "matmul_gflops": 50}
    result = {"machine": machine, "results": [hybrid], "peer": peer}
    return load_bench_train().markdown_table(result).splitlines()


def table_row(lines: list[str], name: str, after: str) -> list[str]:
    """The cells of the first row named ``name`` below the line that starts with ``after``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    row = next(line for line in lines[start:] if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_bench_table_has_a_peer_row_without_pointing(bench_table: list[str]) -> None:
    cells = table_row(bench_table, "peer (easy-VQA tutorial)", "| mode | val accuracy")
    assert cells[1] == "0.500"
    assert cells[-3] == "–"  # pointing


def test_bench_table_reads_accuracy_after_n_questions_off_the_curves(
    bench_table: list[str],
) -> None:
    after = "Validation accuracy after N"
    assert table_row(bench_table, "hybrid (ste)", after)[1:] == [
        "0.400",
        "0.600",
        "0.700",
        "0.800",
        "",
    ]
    assert table_row(bench_table, "peer (easy-VQA tutorial)", after)[5] == "0.500"


def test_bench_table_takes_the_last_epoch_ended_within_each_time(bench_table: list[str]) -> None:
    within = "Validation accuracy within T"
    assert table_row(bench_table, "hybrid (ste)", within)[1:] == [
        "–",  # no epoch had ended by 60 s
        "0.600 (110 s)",
        "0.700 (170 s)",
        "0.800 (400 s)",
    ]
    assert table_row(bench_table, "peer (easy-VQA tutorial)", within)[1:3] == [
        "0.330 (60 s)",
        "0.500 (100 s)",
    ]


def test_boxes_table_puts_each_mode_with_and_without_boxes_on_one_line() -> None:
    machine = {"device_name": "CPU", "cores": 2, "threads": 2, "matmul_gflops": 50}
    boxed = bench_row(
        mode="hybrid",
        estimator="ste",
        val_accuracy=0.93,
        pointing_accuracy=0.99,
        train_seconds=650,
        curve=curve([130, 650], [0.6, 0.93]),
    )
    answers = bench_row(
        mode="hybrid",
        estimator="ste",
        val_accuracy=0.45,
        pointing_accuracy=0.38,
        train_seconds=700,
        curve=curve([300, 599, 700], [0.3, 0.43, 0.45]),
    )
    peer = bench_row(model="peer", val_accuracy=0.4, train_seconds=100, curve=curve([100], [0.4]))
    soft = bench_row(mode="soft", val_accuracy=0.95, pointing_accuracy=1.0, train_seconds=1100)
    hard = bench_row(
        mode="hard", estimator="ste", val_accuracy=0.42, pointing_accuracy=0.2, train_seconds=600
    )
    table = load_bench_train().boxes_table(
        {"machine": machine, "results": [soft, boxed]},
        {
            "machine": {**machine, "matmul_gflops": 70},
            "results": [answers, hard],
            "peer": peer,
        },
    )
    lines = table.splitlines()
    assert table_row(lines, "hybrid (ste)", "| mode |") == [
        "hybrid (ste)",
        "0.930",
        "0.99",
        "650",
        "0.450",
        "0.38",
        "700",
        "0.430 (599 s)",
    ]
    peer_cells = table_row(lines, "peer (easy-VQA tutorial)", "| mode |")
    assert peer_cells[1:4] == ["–", "–", "–"]  # the peer never reads boxes
    assert peer_cells[4:] == ["0.400", "–", "100", "0.400 (100 s)"]
    assert "50 GFLOP/s" in lines[-1] and "70 GFLOP/s" in lines[-1]
    # a mode measured with boxes only keeps its row, with nothing from the answers alone
    assert table_row(lines, "soft", "| mode |") == ["soft", "0.950", "1.00", "1100", *["–"] * 4]
    assert table_row(lines, "hard (ste)", "| mode |")[1:5] == ["–", "–", "–", "0.420"]
    names = [line.split(" | ")[0].lstrip("| ") for line in lines[2:6]]
    assert names == ["soft", "hybrid (ste)", "hard (ste)", "peer (easy-VQA tutorial)"]


def test_bench_table_of_another_dataset_has_a_column_per_question_type() -> None:
    rows = [bench_row(model="peer", val_accuracy=0.5, train_seconds=100, questions_per_second=5)]
    rows[0]["val_accuracy_by_type"] = {"shape": 0.4, "yes/no color": 0.9}
    header = load_bench_train().scores_table(rows)[0]
    assert header.startswith("| mode | val accuracy | shape | yes/no color | pointing |")


def test_bench_table_has_no_pointing_for_data_without_target_boxes() -> None:
    row = bench_row(mode="hybrid", estimator="ste", val_accuracy=0.8, train_seconds=10)
    row.update(pointing_accuracy=float("nan"), questions_per_second=5)
    cells = [cell.strip() for cell in load_bench_train().scores_table([row])[2].split("|")]
    assert cells[-4] == "–"  # pointing, before train s and questions/s
