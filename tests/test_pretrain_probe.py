"""``scripts/experiments/pretrain_probe.py``: the second views pair regions that hold the same
pixels, and a tiny screen writes its JSON and table (InfoNCE itself: tests/test_contrast.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "experiments" / "pretrain_probe.py"


def load_screen():
    spec = importlib.util.spec_from_file_location("pretrain_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def labelled_regions(patch: int = 4, grid: int = 4) -> torch.Tensor:
    """(2, 3, 16, 16) images whose every region is filled with 1 + its row-major index."""
    values = torch.arange(1, grid * grid + 1, dtype=torch.float).view(grid, grid)
    image = values.repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    return image.expand(2, 3, -1, -1).clone()


def region_values(images: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """(U, N) the value at the top-left pixel of each region."""
    return images[:, 0, ::patch, ::patch].flatten(1)


@pytest.mark.parametrize("objective", ["dihedral", "translation"])
def test_second_view_pairs_regions_with_the_same_pixels(objective):
    screen = load_screen()
    images = labelled_regions()
    for seed in range(8):
        torch.manual_seed(seed)
        view, source, target = screen.second_view(images, 4, objective)
        assert len(source) == len(target) > 0
        original, moved = region_values(images), region_values(view)
        assert torch.equal(original[:, source], moved[:, target])
        if objective == "dihedral":
            assert sorted(source.tolist()) == list(range(16))  # every region survives a turn


def test_recolour_view_pairs_the_same_regions_with_their_channels_permuted():
    screen = load_screen()
    images = labelled_regions() * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    for seed in range(8):
        torch.manual_seed(seed)
        view, source, target = screen.second_view(images, 4, "recolour")
        assert len(source) == len(target) > 0
        original = images[:, :, ::4, ::4].flatten(2)[:, :, source]  # (U, C, P)
        moved = view[:, :, ::4, ::4].flatten(2)[:, :, target]
        order = [int((moved[0, c, 0] / original[0, 0, 0]).round().log10()) for c in range(3)]
        assert sorted(order) == [0, 1, 2] and order != [0, 1, 2]
        assert torch.equal(moved, original[:, order])


def test_tiny_screen_writes_json_and_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYBRID_VQA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "screen.json"
    argv = ["pretrain_probe.py", "--preset", "tiny", "--objectives", "none", "dihedral",
            "reconstruction", "--epochs", "1", "--probe-train-images", "20",
            "--probe-val-images", "8", "--probe-steps", "5", "--probe-hidden", "8",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    load_screen().main()
    result = json.loads(out.read_text())
    assert [run["objective"] for run in result["runs"]] == ["none", "dihedral", "reconstruction"]
    assert result["runs"][0]["losses"] == []
    for run in result["runs"][1:]:
        assert len(run["losses"]) == 1 and torch.isfinite(torch.tensor(run["losses"])).all()
    assert set(result["attributes"]) == {"colour", "shape", "size"}
    assert result["probe_hidden"] == 8
    table = capsys.readouterr().out
    assert "| dihedral | 1 |" in table and "chance" in table
    assert "Probe: a ReLU layer of 8." in table
