"""`vqa export --format onnx`: the graph onnxruntime runs answers as the PyTorch model does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from vqa.cli import main
from vqa.export import ONNX_FILE
from vqa.files import staged_directory
from vqa.inference import load_model
from vqa.processing import HybridVQAProcessor

MODES = ("soft", "hard", "hybrid")


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run[0]


@pytest.fixture(scope="module")
def scenes(tiny_run) -> tuple[list[Image.Image], list[str]]:
    """The test split: one image per question (an image is repeated for each of its questions)."""
    dataset = tiny_run[1]
    rows = [json.loads(line) for line in (dataset / "test.jsonl").read_text().splitlines()]
    images = []
    for row in rows:
        with Image.open(dataset / row["image"]) as image:
            images.append(image.convert("RGB"))
    return images, [row["question"] for row in rows]


@pytest.fixture(scope="module", params=MODES)
def exported(request, run, tmp_path_factory) -> tuple[str, Path]:
    """(mode, directory) of the tiny run exported by `vqa export` in that mode."""
    mode = request.param
    out = tmp_path_factory.mktemp("export") / mode
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--mode", mode]) == 0
    return mode, out


def run_onnx(directory: Path, images: list[Image.Image], questions: list[str]) -> dict:
    """The exported graph's outputs by name, its inputs made by the exported processor."""
    processor = HybridVQAProcessor.from_pretrained(directory)
    inputs = {name: value.numpy() for name, value in processor(images, questions).items()}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(directory / ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs), strict=True))


@torch.no_grad()
def run_torch(run: Path, mode: str, images: list[Image.Image], questions: list[str]) -> dict:
    model, processor = load_model(run, "cpu")
    model.set_fusion(mode=mode)
    output = model(**processor(images, questions))
    indices = output.selected_indices
    return {
        "logits": output.logits.numpy(),
        "attention_weights": output.attention_weights.mean(1).numpy(),
        "selected_indices": None if indices is None else indices.numpy(),
    }


def test_onnxruntime_answers_as_pytorch(exported, run, scenes):
    mode, directory = exported
    got, expected = run_onnx(directory, *scenes), run_torch(run, mode, *scenes)
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-4, rtol=0)
    assert (got["logits"].argmax(-1) == expected["logits"].argmax(-1)).all()
    np.testing.assert_allclose(
        got["attention_weights"], expected["attention_weights"], atol=1e-5, rtol=0
    )
    if mode == "soft":
        assert "selected_indices" not in got
    else:
        np.testing.assert_array_equal(got["selected_indices"], expected["selected_indices"])


def test_batch_size_and_question_length_are_dynamic(exported, scenes):
    """One question alone (batch 1, no padding) gets what it gets in a padded batch of ten."""
    _, directory = exported
    images, questions = scenes
    tokens = HybridVQAProcessor.from_pretrained(directory).questions(questions)["attention_mask"]
    shortest = int(tokens.sum(1).argmin())
    assert tokens[shortest].sum() < tokens.shape[1]  # padded in the batch, not alone
    batch = run_onnx(directory, images, questions)
    alone = run_onnx(directory, images[shortest : shortest + 1], questions[shortest : shortest + 1])
    for name, value in alone.items():
        assert value.shape[0] == 1
        np.testing.assert_allclose(value, batch[name][shortest : shortest + 1], atol=1e-5, rtol=0)


def test_hard_and_hybrid_select_with_a_topk_node(exported):
    mode, directory = exported
    graph = onnx.load(str(directory / ONNX_FILE)).graph
    operators = {node.op_type for node in graph.node}
    outputs = [output.name for output in graph.output]
    if mode == "soft":
        assert "TopK" not in operators
        assert outputs == ["logits", "attention_weights"]
    else:
        assert "TopK" in operators
        assert outputs == ["logits", "attention_weights", "selected_indices"]
    assert [value.name for value in graph.input] == ["pixel_values", "input_ids", "attention_mask"]


def test_a_selection_in_the_encoder_exports_the_patches_it_kept(
    tiny_selecting_run, scenes, tmp_path
):
    out = tmp_path / "selecting"
    assert main(["export", str(tiny_selecting_run), "--format", "onnx", "--out", str(out)]) == 0
    got = run_onnx(out, *scenes)
    model, processor = load_model(tiny_selecting_run, "cpu")
    with torch.no_grad():
        expected = model(**processor(*scenes))
    assert list(got) == ["logits", "attention_weights", "selected_indices", "encoder_kept"]
    np.testing.assert_array_equal(got["encoder_kept"], expected.encoder_kept.numpy())
    assert (got["encoder_kept"].sum(-1) == 8).all()  # 8 of the 16 patches
    np.testing.assert_allclose(got["logits"], expected.logits.numpy(), atol=1e-4, rtol=0)


def test_an_adaptive_k_exports_k_max_slots_and_the_regions_each_question_kept(
    run, scenes, tmp_path, capsys
):
    out = tmp_path / "auto"
    command = ["export", str(run), "--out", str(out), "--k", "auto", "--top-p", "0.5"]
    assert main([*command, "--k-max", "8"]) == 0
    assert "k=top-p 0.5 (1..8)" in capsys.readouterr().out
    got = run_onnx(out, *scenes)
    model, processor = load_model(run, "cpu")
    model.set_fusion(k_rule="top_p", top_p=0.5, k_max=8)
    with torch.no_grad():
        expected = model(**processor(*scenes))
    assert list(got) == ["logits", "attention_weights", "selected_indices", "kept_regions"]
    kept = expected.kept_regions.numpy()
    np.testing.assert_array_equal(got["kept_regions"], kept)
    assert len(np.unique(kept)) > 1  # questions kept different numbers of regions
    np.testing.assert_allclose(got["logits"], expected.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        got["attention_weights"], expected.attention_weights.mean(1).numpy(), atol=1e-5, rtol=0
    )
    # the graph runs on k_max slots; PyTorch on the batch's largest k: the kept ones agree
    assert got["selected_indices"].shape[-1] == 8
    for row, heads in enumerate(kept):
        for head, count in enumerate(heads):
            np.testing.assert_array_equal(
                got["selected_indices"][row, head, :count],
                expected.selected_indices[row, head, :count].numpy(),
            )
    config = json.loads((out / "config.json").read_text())
    assert (config["fusion_k_rule"], config["fusion_top_p"], config["fusion_k_max"]) == (
        "top_p",
        0.5,
        8,
    )


def test_export_directory_has_the_config_in_the_exported_mode(exported, run):
    mode, directory = exported
    config = json.loads((directory / "config.json").read_text())
    assert config["fusion_mode"] == mode
    processor = HybridVQAProcessor.from_pretrained(directory)
    assert processor.answers.answers == HybridVQAProcessor.from_pretrained(run).answers.answers
    assert not list(directory.parent.glob(".*partial*"))


def one_error_line(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def test_a_directory_without_a_model_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tmp_path), "--out", str(out)]) == 2
    assert "is not a model directory (no config.json)" in one_error_line(capsys)
    assert not out.exists()


def test_an_unsupported_format_is_named(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "o")]) == 2
    assert "unsupported export format 'tflite'; choose one of ('onnx',)" in one_error_line(capsys)


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_without_onnx_the_error_names_the_extra(run, tmp_path, capsys, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    assert main(["export", str(run), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert f"needs the package {package!r}" in line
    assert "pip install 'hybrid-attention-vqa[export]'" in line


def test_a_non_empty_out_is_kept_without_overwrite(run, tmp_path, capsys):
    (tmp_path / "kept.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(tmp_path)]) == 2
    assert "already exists and is not empty; pass --overwrite" in one_error_line(capsys)
    assert [path.name for path in tmp_path.iterdir()] == ["kept.txt"]


def test_staged_directory_replaces_out_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_directory(out, overwrite=True) as staging:
        (staging / ONNX_FILE).write_text("half")
        raise RuntimeError("failed half-way")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no partial directory left
    assert [path.name for path in out.iterdir()] == ["old.txt"]
    with staged_directory(out, overwrite=True) as staging:
        (staging / ONNX_FILE).write_text("whole")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert [path.name for path in out.iterdir()] == [ONNX_FILE]
