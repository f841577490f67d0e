"""``scripts/experiments/selection_diagnosis.py``: where a model's fusion looks, measured against
the embedded scenes' boxes, for a run and each of its checkpoints."""

from __future__ import annotations

import json
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import load_script

from vqa.data.sources import load_vqa_dataset
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.inference import load_model
from vqa.metrics import boxes_overlap, patch_boxes


def load_diagnosis():
    return load_script("experiments/selection_diagnosis")


class LooksAt:
    """Stands in for the model: all fusion weight on one given region per question, in order."""

    def __init__(self, config, regions: list[int]) -> None:
        self.config, self.regions = config, list(regions)

    def eval(self) -> None:
        pass

    def __call__(self, **inputs) -> SimpleNamespace:
        batch = len(inputs["input_ids"])
        chosen = torch.tensor([self.regions.pop(0) for _ in range(batch)])
        weights = torch.nn.functional.one_hot(chosen, self.config.num_regions).float()
        weights = weights[:, None].expand(-1, 2, -1)  # (B, heads, N)
        return SimpleNamespace(attention_weights=weights, attention_scores=weights)


@pytest.fixture(scope="module", params=[32, 64])
def scene(request, tiny_run, tmp_path_factory):
    """(model config, processor, validation rows with a target, their objects' boxes (fractions
    of the image), regions, the images' size in pixels): the tiny model (32 px) on its own 32 px
    scenes, and on 64 px ones that its processor shrinks, so that the objects' boxes must be
    scaled as the targets are."""
    run, data = tiny_run
    if request.param != 32:
        data = tmp_path_factory.mktemp("scenes") / f"{request.param}px"
        config = SyntheticConfig(image_size=request.param)
        write_synthetic_dataset(data, train=1, val=10, test=0, config=config, progress=False)
    model, processor = load_model(run, "cpu")
    rows = load_vqa_dataset(data, ["val"])["val"]
    rows = rows.filter(lambda row: len(row["target_boxes"]) > 0)
    objects = load_diagnosis().object_boxes(data, "val")
    regions = patch_boxes(processor.image_size, model.config.patch_size)
    return model.config, processor, rows, objects, regions, request.param


def in_model_pixels(boxes: list, processor, size: int) -> torch.Tensor:
    """(O, 4) ``boxes`` of a ``size``-pixel image in the model input's pixels."""
    return torch.tensor(boxes, dtype=torch.float).reshape(-1, 4) * processor.image_size / size


def region_on(regions: torch.Tensor, boxes: torch.Tensor) -> int:
    """The first region that overlaps one of ``boxes`` (O, 4)."""
    return int(boxes_overlap(regions[:, None], boxes[None]).any(-1).nonzero()[0])


def background_region(regions: torch.Tensor, boxes: torch.Tensor) -> int:
    """The first region that overlaps none of ``boxes`` (O, 4)."""
    return int((~boxes_overlap(regions[:, None], boxes[None]).any(-1)).nonzero()[0])


def test_a_model_that_looks_at_the_asked_about_object_points_every_time(scene):
    config, processor, rows, objects, regions, size = scene
    targets = [in_model_pixels(row["target_boxes"], processor, size) for row in rows]
    chosen = [region_on(regions, boxes) for boxes in targets]
    found = load_diagnosis().diagnose(LooksAt(config, chosen), processor, rows, objects)
    assert found["questions"] == len(rows)
    assert found["pointing"] == found["target_weight"] == found["top_weight"] == 1.0
    assert found["top_region_on_background"] == found["background_weight"] == 0.0
    assert found["no_region_weight"] == 0.0
    assert found["distinct_top_regions"] == len(set(chosen))
    assert 0 < found["background_share_of_regions"] < 1


def test_a_model_that_looks_at_background_never_points(scene):
    config, processor, rows, objects, regions, _ = scene
    found = [objects[row["question_id"]] * processor.image_size for row in rows]
    chosen = [background_region(regions, boxes) for boxes in found]
    found = load_diagnosis().diagnose(LooksAt(config, chosen), processor, rows, objects)
    assert found["pointing"] == found["target_weight"] == 0.0
    assert found["top_region_on_background"] == found["background_weight"] == 1.0
    assert found["target_recall"] == 0.0  # the selection (one region) holds no target region
    region, share = found["most_common_top_regions"][0]
    assert share == pytest.approx(chosen.count(region) / len(chosen), abs=1e-4)


def test_the_script_labels_each_checkpoint_and_writes_its_lines_as_json(
    tmp_path, train_tiny, tiny_run, monkeypatch, capsys
):
    _, data = tiny_run
    run = tmp_path / "answers-only-tiny"
    options = ("--seed", "3", "--save-every-steps", "3", "--keep-checkpoints", "10")
    assert train_tiny(data, run, *options) == 0
    capsys.readouterr()  # training's own output
    script = load_diagnosis()

    def diagnose(*options: str) -> list[dict]:
        command = [str(run), "--data", str(data), *options]
        monkeypatch.setattr(sys, "argv", ["selection_diagnosis.py", *command])
        script.main()
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    [own] = diagnose()
    # without the epoch's last checkpoint, the one before it differs from the run's own weights
    shutil.rmtree(run / "checkpoint" / "step-00000008")
    out = tmp_path / "diagnosis.json"
    lines = diagnose("--checkpoints", "--out", str(out))
    assert json.loads(out.read_text()) == lines
    assert {line["run"] for line in lines} == {run.name}
    assert {line["seed"] for line in lines} == {3}
    # 120 questions in batches of 16: checkpoints after steps 3 and 6 (and 8, removed)
    assert [line["weights"] for line in lines] == [
        "step 3 in epoch 1",
        "step 6 in epoch 1",
        "the run's best: epoch 1",
    ]
    assert lines[-1] == own  # the run's own weights come back after its checkpoints'
    assert lines[-2]["top_weight"] != own["top_weight"]
    monkeypatch.setattr(sys, "argv", ["selection_diagnosis.py", "--table", str(out)])
    script.main()
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + len(lines)
    assert table[2].startswith(f"| {run.name} | 3 | step 3 in epoch 1 | ")


def test_a_model_directory_without_training_metrics_is_labelled_the_model(tmp_path):
    label = load_diagnosis().weights_label(tmp_path / "downloaded", None)
    assert label == {"run": "downloaded", "seed": None, "weights": "the model"}
