"""The region attribute loss: labels from object boxes, the head, and training with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vqa.cli import main
from vqa.configuration import HybridVQAConfig
from vqa.data.formats import DatasetFormatError, load_local_dataset
from vqa.data.regions import IGNORE, NO_OBJECT, RegionAttributes
from vqa.guided_vision import VisionTokens
from vqa.modeling import HybridVQAModel
from vqa.processing import REGION_ATTRIBUTES_FILE, HybridVQAProcessor, VQACollator

SCENE_OBJECTS = [
    {"box": [0, 0, 16, 16], "colour": "red", "shape": "square"},
    {"box": [48, 32, 64, 64], "colour": "blue", "shape": "circle"},
]


def test_attributes_are_every_string_field_but_the_box_with_no_object_first():
    attributes = RegionAttributes.build([SCENE_OBJECTS, [{"box": [0, 0, 1, 1], "size": "small"}]])
    assert attributes.values == {
        "colour": (NO_OBJECT, "blue", "red"),
        "shape": (NO_OBJECT, "circle", "square"),
        "size": (NO_OBJECT, "small"),
    }
    assert attributes.num_classes == {"colour": 3, "shape": 3, "size": 2}


def test_objects_with_boxes_only_give_no_attributes():
    assert RegionAttributes.build([[{"box": [0, 0, 4, 4], "score": 0.9}], []]) is None


def test_each_region_is_labelled_by_the_object_under_its_centre():
    attributes = RegionAttributes.build([SCENE_OBJECTS])
    labels = attributes.labels(SCENE_OBJECTS, (64, 64), grid=4)  # 16 px regions
    assert labels.shape == (16, 2)
    colours, shapes = attributes.values["colour"], attributes.values["shape"]
    red_square = [colours.index("red"), shapes.index("square")]
    blue_circle = [colours.index("blue"), shapes.index("circle")]
    # the red square covers region 0 (centre 8, 8); the blue circle regions 11 and 15
    # (centres (56, 40) and (56, 56))
    expected = torch.zeros(16, 2, dtype=torch.long)
    expected[0] = torch.tensor(red_square)
    expected[[11, 15]] = torch.tensor(blue_circle)
    assert torch.equal(labels, expected)


def test_labels_follow_the_image_size_of_the_boxes():
    attributes = RegionAttributes.build([SCENE_OBJECTS])
    # a 128 x 64 image: the red square [0, 0, 16, 16] holds no centre of a 32 x 16 px region
    labels = attributes.labels(SCENE_OBJECTS[:1], (128, 64), grid=4)
    assert not labels.any()
    wide = [{"box": [0, 0, 32, 16], "colour": "red", "shape": "square"}]
    assert attributes.labels(wide, (128, 64), grid=4)[0].tolist() == [2, 2]


def test_a_value_unseen_in_training_is_ignored_not_called_no_object():
    attributes = RegionAttributes.build([SCENE_OBJECTS])
    labels = attributes.labels([{"box": [0, 0, 64, 64], "colour": "pink"}], (64, 64), grid=2)
    assert labels[:, 0].tolist() == [IGNORE] * 4  # unknown colour
    assert labels[:, 1].tolist() == [IGNORE] * 4  # no shape given


def test_attributes_round_trip_through_json(tmp_path):
    attributes = RegionAttributes.build([SCENE_OBJECTS])
    attributes.to_json_file(tmp_path / "a.json")
    assert RegionAttributes.from_json_file(tmp_path / "a.json") == attributes


def test_a_malformed_attributes_file_names_the_file(tmp_path):
    path = tmp_path / REGION_ATTRIBUTES_FILE
    path.write_text(json.dumps({"values": {"colour": ["red"]}}))
    with pytest.raises(ValueError, match=f"{path}.*not a region attributes file"):
        RegionAttributes.from_json_file(path)


def write_scenes(root: Path, objects: list[dict]) -> Path:
    """A two-image local dataset whose rows carry ``objects``."""
    (root / "images").mkdir(parents=True)
    rows = []
    for index in range(2):
        Image.new("RGB", (64, 64), (200, 200, 200)).save(root / "images" / f"{index}.png")
        for question in ("what colour is it?", "what shape is it?"):
            row = {"image": f"images/{index}.png", "question": question, "answer": "red"}
            rows.append({**row, "objects": objects})
    for split in ("train", "val"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_the_collator_labels_each_distinct_image_once(tmp_path):
    data = write_scenes(tmp_path / "scenes", SCENE_OBJECTS)
    rows = load_local_dataset(data, ["train"])["train"]
    objects = [json.loads(text) for text in rows["objects_json"]]
    processor = HybridVQAProcessor.train(
        rows["question"], rows["answers"], image_size=32, object_lists=objects
    )
    inputs, _ = VQACollator(processor, region_grid=4)([rows[i] for i in range(len(rows))])
    assert inputs["pixel_values"].shape[0] == 2
    assert inputs["region_labels"].shape == (2, 16, 2)
    expected = processor.region_attributes.labels(SCENE_OBJECTS, (64, 64), grid=4)
    assert torch.equal(inputs["region_labels"][1], expected)
    assert "region_labels" not in VQACollator(processor)([rows[0]])[0]  # no grid: evaluation


def test_processor_saves_and_restores_its_region_attributes(tmp_path):
    processor = HybridVQAProcessor.train(
        ["what colour is it?"], ["red"], image_size=32, object_lists=[SCENE_OBJECTS]
    )
    processor.save_pretrained(tmp_path)
    assert (tmp_path / REGION_ATTRIBUTES_FILE).is_file()
    restored = HybridVQAProcessor.from_pretrained(tmp_path)
    assert restored.region_attributes == processor.region_attributes


def test_an_object_without_a_box_names_the_file_and_line(tmp_path):
    data = write_scenes(tmp_path / "scenes", [{"colour": "red"}])
    with pytest.raises(DatasetFormatError, match=r"train.jsonl:1: objects\[0\] must be .* 'box'"):
        load_local_dataset(data, ["train"])


@pytest.fixture
def tiny_model(tiny_fields):
    """Builds a tiny model in training mode, seeded, with ``fields`` overriding the preset's."""

    def build(**fields) -> HybridVQAModel:
        torch.manual_seed(0)
        return HybridVQAModel(HybridVQAConfig(**{**tiny_fields, **fields})).train()

    return build


def tiny_batch(region_labels: torch.Tensor | None = None) -> dict:
    inputs = {
        "pixel_values": torch.randn(2, 3, 32, 32),
        "input_ids": torch.randint(5, 50, (4, 6)),
        "image_index": torch.tensor([0, 0, 1, 1]),
        "labels": torch.tensor([0, 1, 2, 0]),
    }
    if region_labels is not None:
        inputs["region_labels"] = region_labels
    return inputs


def test_the_region_loss_is_added_with_its_weight_and_trains_the_vision_encoder(tiny_model):
    model = tiny_model(region_attributes={"colour": 3, "shape": 4}, region_loss_weight=2.0)
    labels = torch.stack([torch.randint(0, 3, (2, 16)), torch.randint(0, 4, (2, 16))], dim=-1)
    output = model(**tiny_batch(labels))
    assert output.region_loss is not None and output.region_loss > 0
    expected = output.answer_loss.mean() + 2.0 * output.region_loss
    assert torch.allclose(output.loss, expected)
    output.region_loss.backward()
    assert model.region_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())


def test_all_ignored_region_labels_cost_nothing_but_still_reach_the_head(tiny_model):
    model = tiny_model(region_attributes={"colour": 3}, region_loss_weight=1.0)
    output = model(**tiny_batch(torch.full((2, 16, 1), IGNORE)))
    assert output.region_loss.item() == 0.0
    output.loss.backward()
    assert model.region_head.weight.grad is not None


def test_without_region_attributes_the_model_has_no_head_and_ignores_labels(tiny_model):
    model = tiny_model()
    assert model.region_head is None
    output = model(**tiny_batch(torch.zeros(2, 16, 1, dtype=torch.long)))
    assert output.region_loss is None


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"region_attributes": {"colour": 1}}, "region_attributes"),
        ({"region_attributes": ["colour"]}, "region_attributes"),
        ({"region_loss_weight": -1.0}, "region_loss_weight"),
    ],
)
def test_bad_region_fields_name_the_field(fields, name, tiny_fields):
    with pytest.raises(ValueError, match=f"config field '{name}'"):
        HybridVQAConfig(**{**tiny_fields, **fields})


@pytest.fixture
def train_tiny_config(train_tiny):
    """``vqa train`` with the tiny preset; returns the saved config.json."""

    def train_and_read_config(data: Path, run: Path, *options: str) -> dict:
        assert train_tiny(data, run, *options) == 0
        return json.loads((run / "config.json").read_text())

    return train_and_read_config


def write_one_square_scenes(root: Path, count: int, seed: int) -> list[list[dict]]:
    """``count`` 32 px images, each with one red or blue square filling one 8 px region.

    Returns each image's objects; the rows ask one question whose answer is the colour.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows, object_lists = [], []
    for index in range(count):
        colour = ("red", "blue")[rng.integers(2)]
        column, row = rng.integers(4, size=2)
        box = [int(column) * 8, int(row) * 8, int(column) * 8 + 8, int(row) * 8 + 8]
        image = Image.new("RGB", (32, 32), (200, 200, 200))
        ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
        image.save(root / "images" / f"{index}.png")
        objects = [{"box": box, "colour": colour}]
        object_lists.append(objects)
        question = {"question": "what colour is the square?", "answer": colour}
        rows.append({"image": f"images/{index}.png", **question, "objects": objects})
    (root / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return object_lists


def test_training_on_scenes_learns_region_attributes(tmp_path, train_tiny):
    """Trained on one-square scenes, the region head names each square's colour and sees
    nothing elsewhere, on scenes it has not seen: far above the 0.5 chance of the colour."""
    write_one_square_scenes(tmp_path / "train", count=96, seed=0)
    options = ("--epochs", "12", "--lr", "3e-3", "--pointing-loss-weight", "0")
    assert train_tiny(tmp_path / "train", tmp_path / "run", *options) == 0
    model = HybridVQAModel.from_pretrained(tmp_path / "run").eval()
    processor = HybridVQAProcessor.from_pretrained(tmp_path / "run")
    held_out = write_one_square_scenes(tmp_path / "held-out", count=32, seed=1)
    images = []
    for index in range(32):
        with Image.open(tmp_path / "held-out" / "images" / f"{index}.png") as image:
            images.append(image.convert("RGB"))
    inputs = processor(images, ["what colour is the square?"] * 32)
    with torch.no_grad():
        logits = model(**inputs, return_region_logits=True).region_logits
    # one attribute (colour), so the logits are its classes: no object, blue, red
    predicted = logits.argmax(-1)  # (images, regions)
    truth = torch.stack(
        [
            processor.region_attributes.labels(objects, (32, 32), grid=4)[:, 0]
            for objects in held_out
        ]
    )
    on_object = (predicted == truth)[truth != 0].tolist()
    elsewhere = (predicted == truth)[truth == 0].tolist()
    assert sum(on_object) / len(on_object) >= 0.8
    assert sum(elsewhere) / len(elsewhere) >= 0.9


def test_training_on_scenes_saves_the_region_attributes(tmp_path, train_tiny_config):
    config = train_tiny_config(write_scenes(tmp_path / "scenes", SCENE_OBJECTS), tmp_path / "run")
    assert config["region_attributes"] == {"colour": 3, "shape": 3}
    assert (tmp_path / "run" / REGION_ATTRIBUTES_FILE).is_file()
    reloaded = HybridVQAModel.from_pretrained(tmp_path / "run")
    assert reloaded.region_head is not None


def test_region_loss_weight_zero_builds_no_head(tmp_path, train_tiny_config):
    data = write_scenes(tmp_path / "scenes", SCENE_OBJECTS)
    config = train_tiny_config(data, tmp_path / "run", "--region-loss-weight", "0")
    assert config["region_attributes"] is None
    assert not (tmp_path / "run" / REGION_ATTRIBUTES_FILE).exists()


def test_data_without_object_attributes_trains_without_the_head(tmp_path, train_tiny_config):
    data = write_scenes(tmp_path / "scenes", [{"box": [0, 0, 8, 8]}])
    assert train_tiny_config(data, tmp_path / "run")["region_attributes"] is None


def test_a_field_with_more_values_than_an_attribute_has_is_left_out():
    objects = [{"box": [0, 0, 1, 1], "id": f"object-{i}", "colour": "red"} for i in range(101)]
    assert RegionAttributes.build([objects]).names == ("colour",)


def test_a_processor_without_attributes_removes_a_stale_attributes_file(tmp_path):
    (tmp_path / REGION_ATTRIBUTES_FILE).write_text("{}")
    HybridVQAProcessor.train(["what colour is it?"], ["red"], image_size=32).save_pretrained(
        tmp_path
    )
    assert HybridVQAProcessor.from_pretrained(tmp_path).region_attributes is None


def test_the_region_loss_of_a_batch_split_in_two_averages_to_the_whole(tiny_model):
    """Each question weighs its image's loss, as the answer loss does: DDP halves agree."""
    model = tiny_model(region_attributes={"colour": 3}, region_loss_weight=1.0).eval()
    features = torch.randn(3, 16, 32)
    labels = torch.randint(0, 3, (3, 16, 1))
    image_index = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])  # image 1 in both halves
    labels[1, :5] = -100  # images differ in how many regions are labelled

    def loss(rows: torch.Tensor) -> torch.Tensor:
        return model.region_loss(
            VisionTokens(features[image_index[rows]]), labels[image_index[rows]]
        )

    whole = loss(torch.arange(8))
    halves = (loss(torch.arange(4)) + loss(torch.arange(4, 8))) / 2
    assert torch.allclose(whole, halves)
    per_image = torch.stack([loss(torch.tensor([row])) for row in (0, 3, 6)])  # images 0, 1, 2
    assert torch.allclose(whole, per_image[image_index].mean())


def test_a_negative_region_loss_weight_is_refused_before_training(tmp_path, capsys):
    data = write_scenes(tmp_path / "scenes", SCENE_OBJECTS)
    command = ["train", "--data", str(data), "--output", str(tmp_path / "run")]
    assert main([*command, "--region-loss-weight", "-1"]) == 2
    assert "region_loss_weight must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_decode_gives_each_region_its_most_likely_attributes():
    attributes = RegionAttributes.build([SCENE_OBJECTS])  # colour: none, blue, red; shape: ...
    logits = torch.tensor(
        [
            [0.0, 0.0, 5.0, 0.0, 0.0, 5.0],  # red square
            [5.0, 0.0, 0.0, 5.0, 0.0, 0.0],  # nothing
            [0.0, 5.0, 0.0, 5.0, 0.0, 0.0],  # blue, no shape
        ]
    )
    assert attributes.decode(logits) == [
        {"colour": "red", "shape": "square"},
        {},
        {"colour": "blue"},
    ]


def test_predictions_say_what_each_selected_region_sees(tmp_path, capsys, train_tiny):
    from vqa.inference import load_model, predict

    data = write_scenes(tmp_path / "scenes", SCENE_OBJECTS)
    assert train_tiny(data, tmp_path / "run") == 0
    model, processor = load_model(tmp_path / "run")
    with Image.open(data / "images" / "0.png") as image:
        prediction = predict(model, processor, image, "what colour is it?", mode="hard", k=3)
    assert len(prediction.regions) == 3
    names = set(processor.region_attributes.names)
    assert all(set(region["sees"]) <= names for region in prediction.regions)
    image = str(data / "images" / "0.png")
    command = ["predict", "--model", str(tmp_path / "run"), "--image", image]
    assert main([*command, "--question", "what colour is it?"]) == 0
    assert "sees " in capsys.readouterr().out
