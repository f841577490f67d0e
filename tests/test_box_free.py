"""The box-free recipe: found by reading the rows, applied to a new model, overridden by flags.

``vqa train`` on data whose rows have no objects and no target boxes trains with the preset's
``box_free`` config fields (the default preset's: the window reconstruction loss), and says so;
data with boxes, a flag for the same field, ``--init-from`` and a pretrained ViT keep their
own settings. ``--answers-only`` trains as on data without boxes where the rows have them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_answers_only import colour_questions_without_boxes

from vqa.arguments import TrainingArguments
from vqa.box_free import box_free_fields, box_free_training, flag_name, rows_have_boxes
from vqa.configuration import HybridVQAConfig
from vqa.data.sources import load_vqa_dataset
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.presets import PRESETS, Preset, get_preset

RECIPE = {"reconstruction_loss_weight": 1.0}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(with boxes, without boxes): the same 30 one-object scenes' colour questions."""
    root = tmp_path_factory.mktemp("box-free")
    boxed, bare = root / "boxed", root / "bare"
    config = SyntheticConfig(image_size=32, max_objects=1, questions_per_image=2)
    for data in (boxed, bare):
        write_synthetic_dataset(data, train=30, val=10, test=5, config=config, progress=False)
    colour_questions_without_boxes(bare)
    return boxed, bare


def train_rows(data: Path):
    return load_vqa_dataset(data, ["train"])["train"]


def recipe_preset(name: str = "tiny") -> Preset:
    """Preset ``name`` with the window reconstruction loss as its box-free recipe."""
    return dataclasses.replace(get_preset(name), box_free=dict(RECIPE))


def test_rows_with_objects_and_targets_have_boxes(scenes) -> None:
    boxed, _ = scenes
    assert rows_have_boxes(train_rows(boxed))


def test_rows_without_objects_or_targets_have_none(scenes) -> None:
    _, bare = scenes
    assert not rows_have_boxes(train_rows(bare))


def test_target_boxes_alone_are_boxes(scenes) -> None:
    boxed, _ = scenes
    rows = train_rows(boxed).map(lambda row: {"objects_json": "[]"})
    assert rows.filter(lambda row: len(row["target_boxes"]) > 0).num_rows > 0
    assert rows_have_boxes(rows)


def test_objects_alone_are_boxes(scenes) -> None:
    boxed, _ = scenes
    rows = train_rows(boxed).map(lambda row: {"target_boxes": []})
    assert rows_have_boxes(rows)


def test_an_empty_split_has_no_boxes(scenes) -> None:
    _, bare = scenes
    assert not rows_have_boxes(train_rows(bare).select([]))


def test_the_recipe_applies_to_a_new_model_on_data_without_boxes() -> None:
    fields, note = box_free_fields(recipe_preset(), TrainingArguments(output="x"), False)
    assert fields == RECIPE
    assert note == (
        "the training rows have no boxes: the preset's box-free recipe adds "
        "--reconstruction-loss-weight 1.0"
    )


def test_data_with_boxes_keeps_the_preset_as_it_is() -> None:
    assert box_free_fields(recipe_preset(), TrainingArguments(output="x"), True) == ({}, None)


def test_answers_only_applies_the_recipe_where_the_rows_have_boxes() -> None:
    args = TrainingArguments(output="x", answers_only=True)
    fields, note = box_free_fields(recipe_preset(), args, True)
    assert fields == RECIPE
    assert note.startswith("--answers-only: ")


def test_the_default_recipe_fuses_in_one_hop_keeping_32_regions_unless_flags_say() -> None:
    preset = get_preset("default")
    assert preset.model["fusion_hops"] == 2  # with boxes
    fields, note = box_free_fields(preset, TrainingArguments(output="x"), False)
    assert fields["fusion_hops"] == 1 and fields["fusion_k"] == 32
    assert note.endswith(", --hops 1, --k 32")
    fields, note = box_free_fields(preset, TrainingArguments(output="x", hops=2, k=8), False)
    assert "fusion_hops" not in fields and "--hops" not in note
    assert "fusion_k" not in fields and "--k" not in note
    assert fields["contrast_loss_weight"] == 1.0  # the rest of the recipe still applies


def test_a_flag_wins_over_the_recipe() -> None:
    args = TrainingArguments(output="x", reconstruction_loss_weight=0.0)
    fields, note = box_free_fields(recipe_preset(), args, False)
    assert fields == {}
    assert "your flags replace the preset's box-free recipe" in note


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ({"init_from": "runs/a"}, "--init-from keeps RUN's loss weights"),
        ({"vision_pretrained": "vit/"}, "the built-in vision encoder only"),
    ],
)
def test_the_recipe_is_not_used_where_it_was_not_measured(flag: dict, reason: str) -> None:
    fields, note = box_free_fields(recipe_preset(), TrainingArguments(output="x", **flag), False)
    assert fields == {}
    assert "the preset's box-free recipe is not used" in note and reason in note


def test_a_preset_without_a_recipe_says_the_model_learns_from_answers_alone() -> None:
    fields, note = box_free_fields(get_preset("tiny"), TrainingArguments(output="x"), False)
    assert fields == {}
    assert note == "the training rows have no boxes: the model learns from the answers alone"


def test_every_recipe_field_is_a_config_field_and_a_flag() -> None:
    flags = {field.name for field in dataclasses.fields(TrainingArguments)}
    for name, preset in PRESETS.items():
        for field in preset.box_free:
            assert hasattr(HybridVQAConfig(), field), (name, field)
            assert flag_name(field) in flags, (name, field)


def test_the_default_preset_adds_reconstruction_and_contrast_without_boxes() -> None:
    recipe = get_preset("default").box_free
    assert recipe["reconstruction_loss_weight"] > 0 and recipe["contrast_loss_weight"] > 0


def test_answers_only_turns_the_box_losses_off() -> None:
    args = TrainingArguments(output="x", answers_only=True)
    assert (args.region_loss_weight, args.pointing_loss_weight) == (0.0, 0.0)
    assert args.resolved(get_preset("tiny")).pointing_loss_weight == 0.0


def test_answers_only_with_a_box_loss_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--answers-only .* but --pointing-loss-weight 1"):
        TrainingArguments(output="x", answers_only=True, pointing_loss_weight=1.0)


def saved_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_vqa_train_uses_the_recipe_on_data_without_boxes_and_says_so(
    scenes, tmp_path, train_tiny, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(PRESETS, "tiny", recipe_preset())
    _, bare = scenes
    assert train_tiny(bare, tmp_path / "run") == 0
    assert saved_config(tmp_path / "run")["reconstruction_loss_weight"] == 1.0
    assert "the training rows have no boxes: the preset's box-free recipe adds" in (
        capsys.readouterr().out
    )


def test_vqa_train_keeps_the_preset_on_data_with_boxes(
    scenes, tmp_path, train_tiny, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(PRESETS, "tiny", recipe_preset())
    boxed, _ = scenes
    assert train_tiny(boxed, tmp_path / "run") == 0
    assert saved_config(tmp_path / "run")["reconstruction_loss_weight"] == 0.0
    assert "box-free" not in capsys.readouterr().out


def test_vqa_train_answers_only_on_data_with_boxes(
    scenes, tmp_path, train_tiny, monkeypatch
) -> None:
    monkeypatch.setitem(PRESETS, "tiny", recipe_preset())
    boxed, _ = scenes
    assert train_tiny(boxed, tmp_path / "run", "--answers-only") == 0
    config = saved_config(tmp_path / "run")
    assert config["reconstruction_loss_weight"] == 1.0
    assert (config["region_loss_weight"], config["pointing_loss_weight"]) == (0.0, 0.0)
    assert config["region_attributes"] is None


def test_vqa_train_flag_turns_the_recipe_off(scenes, tmp_path, train_tiny, monkeypatch) -> None:
    monkeypatch.setitem(PRESETS, "tiny", recipe_preset())
    _, bare = scenes
    options = ("--reconstruction-loss-weight", "0")
    assert train_tiny(bare, tmp_path / "run", *options) == 0
    assert saved_config(tmp_path / "run")["reconstruction_loss_weight"] == 0.0


def epochs_preset(name: str = "tiny") -> Preset:
    """Preset ``name`` with the recipe and 2 epochs for data without boxes (1 with them)."""
    return dataclasses.replace(recipe_preset(name), box_free_training={"epochs": 2})


def test_box_free_training_fills_only_what_the_flags_leave_unset(scenes) -> None:
    preset = epochs_preset()
    bare = TrainingArguments(output="x")
    assert box_free_training(preset, bare, has_boxes=False) == (
        {"epochs": 2},
        "without boxes the preset trains with --epochs 2",
    )
    assert box_free_training(preset, bare, has_boxes=True) == ({}, None)
    answers_only = TrainingArguments(output="x", answers_only=True)
    assert box_free_training(preset, answers_only, has_boxes=True)[0] == {"epochs": 2}
    assert box_free_training(preset, TrainingArguments(output="x", epochs=3), False) == ({}, None)
    from_run = TrainingArguments(output="x", init_from="runs/a")
    assert box_free_training(preset, from_run, has_boxes=False) == ({}, None)
    assert box_free_training(get_preset("tiny"), bare, has_boxes=False) == ({}, None)
    assert bare.resolved(preset, {"epochs": 2}).epochs == 2
    assert bare.resolved(preset).epochs == preset.training["epochs"]


def test_the_default_preset_trains_longer_without_boxes() -> None:
    preset = get_preset("default")
    assert preset.box_free_training["epochs"] > preset.training["epochs"]


def trained_epochs(run: Path) -> tuple[int, int]:
    """(the epochs a run's metrics.json says it was given, the epochs it trained)."""
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["arguments"]["epochs"], len(metrics["history"])


def test_vqa_train_trains_the_box_free_epochs_on_data_without_boxes(
    scenes, tmp_path, train_tiny, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(PRESETS, "tiny", epochs_preset())
    boxed, bare = scenes
    assert train_tiny(bare, tmp_path / "bare") == 0
    assert trained_epochs(tmp_path / "bare") == (2, 2)
    assert "without boxes the preset trains with --epochs 2" in capsys.readouterr().out
    assert train_tiny(boxed, tmp_path / "boxed") == 0
    assert trained_epochs(tmp_path / "boxed") == (1, 1)
    assert train_tiny(bare, tmp_path / "flag", "--epochs", "1") == 0
    assert trained_epochs(tmp_path / "flag") == (1, 1)


@pytest.mark.parametrize(
    ("preset", "epochs", "has_boxes", "expected"),
    [
        ("default", None, False, 10),
        ("default", None, True, 5),
        ("default", 3, False, 3),
        ("quick", None, False, get_preset("quick").training["epochs"]),
    ],
)
def test_an_ablation_records_the_epochs_its_runs_train(preset, epochs, has_boxes, expected):
    from vqa.ablation.run import AblationArguments, run_epochs

    args = AblationArguments(out="out", preset=preset, epochs=epochs)
    assert run_epochs(args, get_preset(preset), has_boxes) == expected


@pytest.mark.parametrize(
    ("preset", "has_boxes", "expected"),
    [("default", True, 2), ("default", False, 1), ("quick", True, 1), ("quick", False, 1)],
)
def test_an_ablation_knows_the_hops_its_runs_train(preset, has_boxes, expected):
    from vqa.ablation.run import AblationArguments, run_hops

    args = AblationArguments(out="out", preset=preset)
    assert run_hops(args, get_preset(preset), has_boxes) == expected


def test_an_ablation_answers_only_trains_with_the_recipe_where_the_rows_have_boxes():
    from vqa.ablation.run import AblationArguments, recipe_fields, run_epochs, run_hops

    preset = get_preset("default")
    args = AblationArguments(out="out", preset="default", answers_only=True)
    assert run_epochs(args, preset, has_boxes=True) == 10
    assert run_hops(args, preset, has_boxes=True) == 1
    assert recipe_fields(args, preset, has_boxes=True) == preset.box_free
    assert recipe_fields(AblationArguments(out="out", preset="default"), preset, True) == {}


class TrainCalled(Exception):
    """Raised by the stand-in for ``train`` once it has seen its arguments."""


def test_an_answers_only_ablation_run_trains_answers_only(monkeypatch) -> None:
    import vqa.training
    from vqa.ablation.run import AblationArguments, grid, measure_run

    seen = []

    def record(training_args):
        seen.append(training_args)
        raise TrainCalled

    monkeypatch.setattr(vqa.training, "train", record)
    args = AblationArguments(
        out="out",
        preset="default",
        modes=["hybrid"],
        seeds=[0],
        estimators=["ste"],
        pointing_loss_weight=0.0,
        region_loss_weight=0.0,
        answers_only=True,
    )
    with pytest.raises(TrainCalled):
        measure_run(grid(args)[0], args, None, None)
    assert seen[0].answers_only
    assert seen[0].region_loss_weight == seen[0].pointing_loss_weight == 0


def test_an_answers_only_ablation_turns_the_box_losses_off() -> None:
    from vqa.ablation.run import AblationArguments

    args = AblationArguments(out="out", answers_only=True)
    assert args.pointing_loss_weight == args.region_loss_weight == 0
    with pytest.raises(ValueError, match="--region-loss-weight 1"):
        AblationArguments(out="out", answers_only=True, region_loss_weight=1.0)
