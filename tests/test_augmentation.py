"""Augmentation that keeps every answer true (``vqa.augmentation``): mirrored words, the empty
margin, boxes that follow the pixels, relations that survive, draws that follow (seed, epoch,
image) in any worker process, and a training run that resumes exactly with it on."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Interrupted, stop_after_checkpoint
from PIL import Image
from safetensors.torch import load_file

from vqa.arguments import TrainingArguments
from vqa.augmentation import Augmentation, content_box, mirror_text, move_box
from vqa.data.formats import load_local_dataset
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.data.synthetic.layout import centres, related
from vqa.data.synthetic.render import BACKGROUND_RGB, COLOUR_RGB
from vqa.processing import HybridVQAProcessor, VQACollator, open_image
from vqa.training import train

RELATIONS = ("left of", "right of", "above", "below")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """24 training scenes of 64 px (about 70 questions), 3 validation scenes."""
    out = tmp_path_factory.mktemp("data") / "scenes"
    config = SyntheticConfig(image_size=64)
    write_synthetic_dataset(out, train=24, val=3, test=0, config=config, progress=False)
    return out


@pytest.fixture(scope="module")
def scenes(dataset) -> list[tuple[Image.Image, list[dict]]]:
    """(image, the rows about it) of every training scene."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for row in load_local_dataset(dataset, ["train"])["train"]:
        rows[row["image_path"]].append(row)
    return [(open_image(asked[0]["image"]).convert("RGB"), asked) for asked in rows.values()]


# The words.


@pytest.mark.parametrize(
    ("text", "mirrored"),
    [
        ("the object left of the red square?", "the object right of the red square?"),
        ("Left or right?", "Right or left?"),
        ("the RIGHTMOST cup, on the left-hand side", "the LEFTMOST cup, on the right-hand side"),
        ("the leftover bright light", "the leftover bright light"),  # whole words only
        ("is it above the circle?", "is it above the circle?"),
    ],
)  # fmt: skip
def test_mirroring_swaps_left_and_right_words_and_nothing_else(text, mirrored):
    assert mirror_text(text) == mirrored
    assert mirror_text(mirrored) == text


def test_a_box_is_mirrored_then_shifted():
    assert move_box([2, 3, 10, 7], 32, True, 0, 0) == [22, 3, 30, 7]
    assert move_box([2, 3, 10, 7], 32, False, -2, 4) == [0, 7, 8, 11]
    assert move_box([2, 3, 10, 7], 32, True, 1, -1) == [23, 2, 31, 6]


# The margin.


def test_the_content_box_holds_every_object_and_ignores_pixel_noise(scenes):
    for image, asked in scenes:
        boxes = np.array([obj["box"] for obj in json.loads(asked[0]["objects_json"])])
        union = np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])
        found = np.array(content_box(image))
        assert (found[:2] <= union[:2]).all() and (found[2:] >= union[2:]).all(), (found, union)
        assert np.abs(found - union).max() <= 2  # tight: the noise does not widen it


def test_known_boxes_widen_the_content_box_and_a_photograph_fills_its_frame():
    blank = Image.new("RGB", (40, 30), (255, 255, 255))
    assert content_box(blank) == (0, 0, 40, 30)
    assert content_box(blank, [[5, 6, 9.5, 12]]) == (5, 6, 10, 12)
    blank.paste((0, 0, 0), (20, 10, 25, 15))
    assert content_box(blank) == (19, 9, 26, 16)  # a pixel more each side
    assert content_box(blank, [[5, 6, 9.5, 12], [30, 28, 45, 31]]) == (5, 6, 40, 30)
    noise = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert content_box(Image.fromarray(noise)) == (0, 0, 40, 30)


def test_a_shift_never_moves_content_out_of_the_frame():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((200, 0, 0), (40, 20, 60, 30))  # 4 px from the right edge
    row = {"image_path": "a.png", "question": "q", "answers": ["a"]}
    row |= {"target_boxes": [], "objects_json": "[]"}
    shifts = set()
    for epoch in range(200):
        moved, _ = Augmentation(max_shift=0.25, seed=1)(image, [row], epoch)
        pixels = np.asarray(moved)
        red = np.argwhere((pixels == (200, 0, 0)).all(axis=-1))
        assert len(red) == 20 * 10  # the whole object, in one piece
        (ry0, rx0), (ry1, rx1) = red.min(axis=0), red.max(axis=0)
        assert (ry1 - ry0, rx1 - rx0) == (9, 19)
        shifts.add((int(rx0) - 40, int(ry0) - 20))
    dxs, dys = {dx for dx, _ in shifts}, {dy for _, dy in shifts}
    assert min(dxs) == -16 and max(dxs) == 3  # 0.25 * 64 = 16 left; the margin less a pixel
    assert min(dys) == -16 and max(dys) == 16


# What follows the image.


def object_at_box_centre(pixels: np.ndarray, box: list[float]) -> str:
    """The colour name of the pixel at the box's centre (the renderer's noise is small)."""
    x, y = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    colours = {"background": BACKGROUND_RGB, **COLOUR_RGB}
    distance = {name: np.abs(pixels[y, x] - np.array(rgb)).sum() for name, rgb in colours.items()}
    return min(distance, key=distance.get)


def was_mirrored(old: list[tuple[float, float]], new: list[tuple[float, float]]) -> bool:
    """Whether the objects' left-to-right order flipped: a mirror, not a shift."""
    first, last = (
        min(range(len(old)), key=lambda i: old[i][0]),
        max(range(len(old)), key=lambda i: old[i][0]),
    )
    assert old[first][0] < old[last][0]
    return new[first][0] > new[last][0]


def test_boxes_follow_the_pixels_and_every_relation_survives(scenes):
    augment = Augmentation(mirror=True, max_shift=0.125, seed=0)
    mirrored = shifted = 0
    for (image, asked), epoch in itertools.product(scenes, range(3)):
        moved_image, moved = augment(image, asked, epoch)
        before, after = json.loads(asked[0]["objects_json"]), json.loads(moved[0]["objects_json"])
        pixels = np.asarray(moved_image).astype(int)
        for old, new in zip(before, after, strict=True):
            assert object_at_box_centre(pixels, new["box"]) == old["colour"]
            assert min(new["box"]) >= 0 and max(new["box"]) <= 64
        old_points, new_points = centres(o["box"] for o in before), centres(o["box"] for o in after)
        is_mirrored = was_mirrored(old_points, new_points)
        swap = {"left of": "right of", "right of": "left of"} if is_mirrored else {}
        for anchor, relation in itertools.product(range(len(before)), RELATIONS):
            assert related(new_points, anchor, swap.get(relation, relation), 64) == related(
                old_points, anchor, relation, 64
            )
        for old_row, new_row in zip(asked, moved, strict=True):
            assert new_row["answers"] == old_row["answers"]  # no answer names a side here
            boxes = zip(old_row["target_boxes"], new_row["target_boxes"], strict=True)
            for old_box, new_box in boxes:
                assert object_at_box_centre(pixels, new_box) != "background"
                assert new_box[2] - new_box[0] == old_box[2] - old_box[0]
        mirrored += is_mirrored
        shifted += new_points[0][1] != old_points[0][1]
    assert mirrored > 10 and shifted > 10


def test_the_words_of_a_mirrored_image_swap_and_the_others_stay():
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    image.paste((0, 0, 200), (2, 10, 8, 16))  # a blue square on the left
    row = {"image_path": "b.png", "question": "is the square on the left?"}
    row |= {"answers": ["left", "yes"], "target_boxes": [[2, 10, 8, 16]]}
    row |= {"objects_json": json.dumps([{"box": [2, 10, 8, 16], "colour": "blue"}])}
    seen = set()
    for epoch in range(40):
        moved_image, (moved,) = Augmentation(mirror=True)(image, [row], epoch)
        left = np.asarray(moved_image)[13, 5].tolist() == [0, 0, 200]
        seen.add(left)
        if left:
            assert moved == row
        else:
            assert moved["question"] == "is the square on the right?"
            assert moved["answers"] == ["right", "yes"]
            assert moved["target_boxes"] == [[24.0, 10.0, 30.0, 16.0]]
            assert json.loads(moved["objects_json"])[0]["box"] == [24.0, 10.0, 30.0, 16.0]
    assert seen == {True, False}  # about half of the draws mirror


def test_a_draw_depends_on_seed_epoch_and_image_only():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((0, 150, 0), (20, 20, 30, 30))

    def draw(seed: int, epoch: int, path: str) -> bytes:
        row = {"image_path": path, "question": "left?", "answers": ["no"]}
        row |= {"target_boxes": [], "objects_json": "[]"}
        moved, (moved_row,) = Augmentation(True, 0.25, seed)(image, [row], epoch)
        return moved.tobytes() + moved_row["question"].encode()

    assert draw(0, 1, "x.png") == draw(0, 1, "x.png")
    assert len({draw(0, epoch, "x.png") for epoch in range(8)}) > 4
    assert len({draw(seed, 0, "x.png") for seed in range(8)}) > 4
    assert len({draw(0, 0, f"{name}.png") for name in range(8)}) > 4


def test_a_draw_does_not_depend_on_where_the_dataset_lies():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((0, 150, 0), (20, 20, 30, 30))

    def draw(root: str, path: str) -> bytes:
        row = {"image_path": path, "question": "left?", "answers": ["no"]}
        row |= {"target_boxes": [], "objects_json": "[]"}
        moved, (moved_row,) = Augmentation(True, 0.25, 0, root=root)(image, [row], 0)
        return moved.tobytes() + moved_row["question"].encode()

    here = [draw("/data/a", f"/data/a/images/{name}.png") for name in range(8)]
    assert here == [draw("/elsewhere/b", f"/elsewhere/b/images/{name}.png") for name in range(8)]
    assert Augmentation(root="/data/a").image_key("/other/x.png") == "/other/x.png"


def test_a_thin_line_is_content_too():
    image = Image.new("RGB", (40, 40), (200, 200, 200))
    image.paste((0, 0, 200), (5, 5, 10, 10))
    image.paste((0, 0, 0), (30, 5, 31, 35))  # one pixel wide: a median filter wipes it out
    assert content_box(image) == (4, 4, 32, 36)  # a pixel more each side


def test_bad_shares_are_refused_by_name():
    with pytest.raises(ValueError, match=r"max_shift must be in \[0, 0.5\), got 0.5"):
        Augmentation(max_shift=0.5)
    with pytest.raises(ValueError, match=r"augment_shift must be in \[0, 0.5\), got -0.1"):
        TrainingArguments(output="run", augment_shift=-0.1)


# In the collator and in training.


@pytest.fixture(scope="module")
def processor(dataset) -> HybridVQAProcessor:
    train_rows = load_local_dataset(dataset, ["train"])["train"]
    return HybridVQAProcessor.train(
        train_rows["question"],
        train_rows["answers"],
        image_size=32,
        tokenizer_vocab_size=200,
        object_lists=[json.loads(text) for text in train_rows["objects_json"]],
    )


def batches(dataset: Path, collator: VQACollator, workers: int, epochs: int) -> list:
    """Every batch's (questions, pixel values, region labels, target regions) per epoch."""
    rows = load_local_dataset(dataset, ["train"])["train"]
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=10,
        collate_fn=collator,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    seen = []
    for epoch in range(epochs):
        collator.set_epoch(epoch)
        for inputs, meta in loader:
            questions = [row["question_id"] for row in meta]
            seen.append(
                (
                    epoch,
                    questions,
                    inputs["input_ids"],
                    inputs["pixel_values"],
                    inputs["region_labels"],
                    inputs["target_regions"],
                )
            )
    return seen


def test_worker_processes_draw_what_the_main_process_draws(dataset, processor):
    def collator() -> VQACollator:
        augmentation = Augmentation(mirror=True, max_shift=0.125, seed=5)
        return VQACollator(processor, region_grid=4, target_grid=4, augmentation=augmentation)

    alone, workers = batches(dataset, collator(), 0, 2), batches(dataset, collator(), 2, 2)
    plain = batches(dataset, VQACollator(processor, region_grid=4, target_grid=4), 0, 1)
    assert len(alone) == len(workers) == 2 * len(plain)
    for a, b in zip(alone, workers, strict=True):
        assert a[:2] == b[:2]
        for x, y in zip(a[2:], b[2:], strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    epoch_pixels = [torch.cat([batch[3] for batch in alone if batch[0] == e]) for e in (0, 1)]
    assert not torch.equal(epoch_pixels[0], epoch_pixels[1])  # a new draw each epoch
    plain_pixels = torch.cat([batch[3] for batch in plain])
    assert not torch.equal(epoch_pixels[0], plain_pixels)
    plain_labels = torch.cat([batch[4] for batch in plain])
    assert not torch.equal(plain_labels, torch.cat([b[4] for b in alone if b[0] == 0]))


def test_a_run_with_augmentation_resumes_exactly(dataset, tmp_path, monkeypatch):
    stop_after_checkpoint(monkeypatch, 6)  # once, mid-epoch 2 of the first run
    questions: list[str] = []
    epochs: list[int] = []  # of each image drawn, in order
    augment = Augmentation.__call__

    def recording(self, image, rows, epoch):
        image, rows = augment(self, image, rows, epoch)
        questions.extend(row["question"] for row in rows)
        epochs.append(epoch)
        return image, rows

    monkeypatch.setattr(Augmentation, "__call__", recording)

    def arguments(run: Path) -> TrainingArguments:
        return TrainingArguments(
            output=str(run),
            data=str(dataset),
            preset="tiny",
            epochs=2,
            batch_size=16,
            augment_mirror=True,
            augment_shift=0.125,
            save_every_steps=2,
            seed=3,
            resume=True,
            num_workers=0,  # the recording is in this process
            progress=False,
        )

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with pytest.raises(Interrupted):
        train(arguments(killed))
    train(arguments(killed))
    resumed = epochs[:]
    epochs.clear()
    HybridVQAProcessor.from_pretrained(killed).save_pretrained(whole)
    train(arguments(whole))
    assert sorted(set(epochs)) == [0, 1] and epochs == sorted(epochs)  # the loop sets the epoch
    assert resumed[-1] == 1
    last = sorted((killed / "checkpoint").glob("step-*"))[-1].name
    a = load_file(killed / "checkpoint" / last / "model.safetensors")
    b = load_file(whole / "checkpoint" / last / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    asked = set(load_local_dataset(dataset, ["train"])["train"]["question"])
    mirrored = {mirror_text(question) for question in asked} - asked
    assert mirrored & set(questions)  # it did mirror
