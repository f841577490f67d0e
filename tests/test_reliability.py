"""Reliability: exact resume after SIGKILL, two-process training, non-finite losses, bad input."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vqa.training
from vqa.checkpoints import checkpoints, latest_checkpoint
from vqa.cli import main
from vqa.configuration import HybridVQAConfig
from vqa.data.formats import load_local_dataset
from vqa.inference import load_model
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset
from vqa.processing import HybridVQAProcessor
from vqa.run_setup import build_model
from vqa.training import TrainingArguments, train

# One thread per process: the subprocesses share two cores, and the same arithmetic
# everywhere keeps the comparisons exact.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


TINY = ("--preset", "tiny", "--no-progress")


def vqa_train(dataset: Path, run: Path, *options: str, launcher: tuple[str, ...] = ()) -> list:
    """The command line of ``vqa train`` with the tiny preset, under ``launcher`` if given."""
    command = [*launcher] if launcher else [sys.executable]
    command += ["-m", "vqa", "train", "--data", str(dataset), "--output", str(run)]
    return [*command, *TINY, *options]


def finish(process: subprocess.Popen, limit: float = 300) -> None:
    """Wait for ``process``; fail with its output unless it exits with status 0."""
    output, _ = process.communicate(timeout=limit)
    assert process.returncode == 0, output[-3000:]


def start(command: list) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


def assert_same_weights(first: Path, second: Path, tolerance: float) -> None:
    """Every parameter and buffer (BatchNorm statistics too) of two safetensors files."""
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    for name in a:
        difference = (a[name].double() - b[name].double()).abs().max().item()
        assert difference <= tolerance, f"{name} differs by {difference}"


# Exact resume.


def test_run_killed_mid_epoch_resumes_to_the_same_weights(dataset, tmp_path):
    # Gumbel noise draws from the RNG at every step, so the RNG state must be restored too.
    options = ["--epochs", "2", "--batch-size", "4", "--estimator", "gumbel"]
    options += ["--save-every-steps", "2", "--seed", "3"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    victim = start(vqa_train(dataset, killed, *options))
    steps_per_epoch = 12  # 48 questions, batch 4
    deadline = time.monotonic() + 240
    while not any(step_of(path) > steps_per_epoch for path in checkpoints(killed)):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint in the second epoch"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = json.loads((latest_checkpoint(killed) / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and 0 < state["progress"]["batches"] < steps_per_epoch

    # The same tokenizer for the uninterrupted run (training one is not reproducible):
    # --resume keeps the processor of a run that has no checkpoint yet.
    HybridVQAProcessor.from_pretrained(killed).save_pretrained(whole)
    reference = start(vqa_train(dataset, whole, *options, "--resume"))
    finish(start(vqa_train(dataset, killed, *options, "--resume")))
    finish(reference)
    kept = [path.name for path in checkpoints(whole)]
    assert kept == ["step-00000022", "step-00000024"]  # --keep-checkpoints 2 by default
    last = "checkpoint/step-00000024/model.safetensors"
    assert_same_weights(whole / last, killed / last, tolerance=1e-6)
    resumed, uninterrupted = (
        json.loads((run / "metrics.json").read_text())["history"] for run in (killed, whole)
    )
    for after, before in zip(resumed, uninterrupted, strict=True):
        assert after["step_losses"] == pytest.approx(before["step_losses"], abs=1e-6)
        assert after["val_accuracy"] == before["val_accuracy"]


def test_an_unfinished_checkpoint_is_never_the_latest(tmp_path):
    for name in ("step-00000004", "step-00000010"):
        (tmp_path / "checkpoint" / name).mkdir(parents=True)
        (tmp_path / "checkpoint" / name / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint" / "step-00000012.tmp").mkdir()  # killed while saving
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint" / "step-00000010"


def test_a_new_run_in_a_used_directory_replaces_the_earlier_runs_checkpoints(
    dataset, tmp_path, capsys
):
    run = tmp_path / "run"
    first = TrainingArguments(
        output=str(run), data=str(dataset), preset="tiny", batch_size=8, progress=False
    )
    train(first)
    stale = run / "checkpoint" / "step-00000099"  # a later step than the new run will reach
    shutil.copytree(latest_checkpoint(run), stale)
    capsys.readouterr()
    train(replace(first, batch_size=16))  # the same steps again would collide with the old
    assert "removed the 2 checkpoint(s) of the run trained there before" in capsys.readouterr().out
    assert [path.name for path in checkpoints(run)] == ["step-00000003"]  # 48 questions / 16


# Non-finite losses.


@pytest.fixture
def poison(monkeypatch):
    """``poison(calls)``: the training forward passes numbered in ``calls`` (from 1) get NaN
    images, so their loss, gradients and BatchNorm statistics are NaN."""

    def poison_calls(calls: range | set[int]) -> None:
        original, count = HybridVQAModel.forward, itertools.count(1)

        def forward(self, **inputs):
            if "labels" in inputs and next(count) in calls:
                inputs["pixel_values"] = inputs["pixel_values"] * math.nan
            return original(self, **inputs)

        monkeypatch.setattr(HybridVQAModel, "forward", forward)

    return poison_calls


def test_a_non_finite_step_is_skipped_with_a_warning_and_changes_nothing(
    dataset, tmp_path, poison, caplog
):
    poison({3})
    run = tmp_path / "run"
    arguments = TrainingArguments(
        output=str(run),
        data=str(dataset),
        preset="tiny",
        batch_size=8,
        save_every_steps=1,
        keep_checkpoints=10,
        progress=False,
    )
    with caplog.at_level(logging.WARNING):
        (epoch,) = train(arguments)["history"]
    assert "step 3: non-finite loss or gradient, update skipped (1 in a row)" in caplog.text
    assert epoch["skipped_steps"] == 1 and math.isnan(epoch["step_losses"][2])
    assert math.isfinite(epoch["train_loss"])
    before, after = (run / f"checkpoint/step-{step:08d}/model.safetensors" for step in (2, 3))
    assert_same_weights(before, after, tolerance=0.0)  # BatchNorm statistics restored too


def test_non_finite_steps_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(
    dataset, tmp_path, poison, capsys
):
    poison(range(4, 1000))
    run = tmp_path / "run"
    options = ["--batch-size", "4", "--save-every-steps", "2", "--max-bad-steps", "3"]
    assert main(["train", "--data", str(dataset), "--output", str(run), *TINY, *options]) == 2
    good = run / "checkpoint" / "step-00000004"  # step 4 was skipped: the weights of step 3
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vqa train: error: stopped at step 6: 3 steps in a row had a non-finite loss or "
        f"gradient; last good checkpoint: {good}"
    )
    assert latest_checkpoint(run) == good
    weights = load_file(good / "model.safetensors")
    assert all(tensor.isfinite().all() for tensor in weights.values())


@pytest.fixture
def fp16_scaler_on_cpu(monkeypatch) -> list:
    """Training under fp16 with a real ``torch.amp.GradScaler``, on the CPU.

    Accelerate keeps no gradient scaler on a CPU, so each Accelerator that ``train`` makes gets
    one before ``prepare``, as Accelerate gives it one under fp16 on a GPU. Its first scale,
    2**127, makes the first scaled losses overflow, as fp16's 65536 does on a GPU. Returns the
    list of the Accelerators made.
    """
    made, real = [], vqa.training.make_accelerator

    def make_accelerator(args: TrainingArguments):
        accelerator = real(args)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
        accelerator.native_amp = True
        made.append(accelerator)
        return accelerator

    monkeypatch.setattr(vqa.training, "make_accelerator", make_accelerator)
    return made


def test_fp16_lets_the_scaler_skip_overflows_and_non_finite_steps_and_goes_on(
    dataset, tmp_path, poison, fp16_scaler_on_cpu
):
    poison({3})
    arguments = TrainingArguments(
        output=str(tmp_path / "run"),
        data=str(dataset),
        preset="tiny",
        batch_size=8,
        mixed_precision="fp16",
        max_bad_steps=2,  # the scaler's own skips of overflowing steps do not count
        progress=False,
    )
    (epoch,) = train(arguments)["history"]
    (accelerator,) = fp16_scaler_on_cpu
    assert accelerator.scaler.get_scale() < 2.0**126  # backed off after the overflows
    assert epoch["skipped_steps"] == 1 and math.isnan(epoch["step_losses"][2])
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(tensor.isfinite().all() for tensor in weights.values())


# Two processes.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_with_half_batches_match_one_process(dataset, tmp_path):
    # Both runs share one processor (--resume keeps it); the patch stem has no BatchNorm,
    # whose per-process batch statistics would differ from one process's. The processor has
    # the scenes' region attributes, so the region loss is split over the processes too, and
    # the tiny preset's pointing loss as well.
    one, two = tmp_path / "one", tmp_path / "two"
    rows = load_local_dataset(dataset, ["train"])["train"]
    objects = [json.loads(text) for text in rows["objects_json"]]
    processor = HybridVQAProcessor.train(
        rows["question"], rows["answers"], image_size=32, object_lists=objects
    )
    assert processor.region_attributes is not None
    for run in (one, two):
        processor.save_pretrained(run)
    options = ["--vision-stem", "patch", "--seed", "1", "--resume"]
    # --multi_gpu starts the processes with torchrun; without a GPU they train on the CPU
    # (gloo). `accelerate launch --cpu` would start one process, since it expects MPI.
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu")
    launcher += ("--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no")
    launcher += ("--dynamo_backend", "no", "--main_process_port", str(free_port()))
    single = start(vqa_train(dataset, one, *options, "--batch-size", "8"))
    double = start(vqa_train(dataset, two, *options, "--batch-size", "4", launcher=launcher))
    finish(single)
    finish(double)
    last = "checkpoint/step-00000006/model.safetensors"  # 48 questions, global batch 8
    assert_same_weights(one / last, two / last, tolerance=1e-5)
    (alone,), (shared,) = (
        json.loads((run / "metrics.json").read_text())["history"] for run in (one, two)
    )
    # 9 validation questions do not divide between two processes: each counts once.
    assert alone["val_questions"] == shared["val_questions"] == 9
    assert alone["val_accuracy"] == shared["val_accuracy"]
    assert alone["step_losses"] == pytest.approx(shared["step_losses"], abs=1e-5)
    assert alone["step_region_losses"] == pytest.approx(shared["step_region_losses"], abs=1e-5)
    assert min(alone["step_region_losses"]) > 0
    assert alone["step_pointing_losses"] == pytest.approx(shared["step_pointing_losses"], abs=1e-5)
    assert min(alone["step_pointing_losses"]) > 0
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2


# Bad model configurations.


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fusion_k", 17, r"'fusion_k' \(17\) is greater than the number of regions \(16"),
        ("fusion_mode", "sharp", "'fusion_mode' must be one of"),
        ("fusion_estimator", "magic", "'fusion_estimator' must be one of"),
        ("vision_layers", 0, "'vision_layers' must be a positive integer, got 0"),
        ("text_hidden_size", -32, "'text_hidden_size' must be a positive integer, got -32"),
        ("reasoner_layers", -1, "'reasoner_layers' must be an int >= 0, got -1"),
        ("fusion_tau", "hot", "'fusion_tau' must be a number, got 'hot'"),
    ],
)
def test_a_bad_config_json_is_refused_naming_the_field(tmp_path, field, value, message):
    HybridVQAConfig(**get_preset("tiny").model).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read: the config fails first
    with pytest.raises(ValueError, match=message):
        HybridVQAConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path)


# Bad arguments and files on the command line.


@pytest.fixture(scope="module")
def model_dir(dataset, tmp_path_factory) -> Path:
    """An untrained tiny model with its processor."""
    directory = tmp_path_factory.mktemp("model")
    rows = load_local_dataset(dataset, ["train"])["train"]
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    arguments = TrainingArguments(output=str(directory), preset="tiny")
    build_model(processor, get_preset("tiny"), arguments).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bad_files(dataset, model_dir, tmp_path_factory) -> dict[str, Path]:
    """A text file posing as an image, a dataset without a train split, a broken config."""
    root = tmp_path_factory.mktemp("bad")
    (root / "image.png").write_text("not an image")
    (root / "val_only").mkdir()
    (root / "val_only" / "val.jsonl").write_text((dataset / "val.jsonl").read_text())
    (root / "val_only" / "images").symlink_to(dataset / "images")
    broken = root / "broken_model"
    broken.mkdir()
    for path in model_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "fusion_k": 99}))
    return {"root": root, "dataset": dataset, "model": model_dir}


CLI_ERRORS = [
    (
        "data synthetic --out {dataset} --train 2",
        "vqa data: error: {dataset} already exists and is not empty",
    ),
    ("data synthetic --out {root}/new --train -1", "vqa data: error: train must be >= 0, got -1"),
    (
        "train --data {root}/val_only --output {root}/run --preset tiny",
        "vqa train: error: {root}/val_only has no train split; it has ['val']",
    ),
    (
        "train --data {dataset} --output {root}/run --preset huge",
        "vqa train: error: unknown preset 'huge'",
    ),
    (
        "train --data {dataset} --output {root}/run --preset tiny --keep-checkpoints 0",
        "vqa train: error: keep_checkpoints must be a positive integer, got 0",
    ),
    (
        "train --data {dataset} --output {root}/run --preset tiny --k 99",
        "vqa train: error: config field 'fusion_k' (99) is greater than the number of regions",
    ),
    (
        "eval --model {root}/broken_model --data {dataset}",
        "vqa eval: error: config field 'fusion_k' (99) is greater than the number of regions",
    ),
    (
        "eval --model {model} --data {dataset} --split test",
        "vqa eval: error: split(s) ['test'] not in {dataset}; it has ['train', 'val']",
    ),
    ("eval --model {model} --data {dataset} --k 99", "vqa eval: error: k=99 is outside 1..16"),
    (
        "predict --model {model} --image {root}/image.png --question what",
        "vqa predict: error: cannot identify image file",
    ),
    (
        "predict --model {model} --image {root}/missing.png --question what",
        "vqa predict: error: [Errno 2] No such file or directory",
    ),
    (
        "ablate --data {dataset} --out {root}/ablation --modes sharp",
        "vqa ablate: error: modes: unknown mode 'sharp'",
    ),
]


@pytest.mark.parametrize(("command", "message"), CLI_ERRORS, ids=[c for c, _ in CLI_ERRORS])
def test_bad_arguments_and_files_give_one_error_line_and_status_2(
    command, message, bad_files, capsys
):
    paths = {name: str(path) for name, path in bad_files.items()}
    assert main(command.format(**paths).split()) == 2
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    # progress bars of loading may come before it; the error is the last line
    assert errors.strip().splitlines()[-1].startswith(message.format(**paths))
