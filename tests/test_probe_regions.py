"""``scripts/probe_regions.py``: a linear probe reads an attribute that the region tokens encode
linearly, and does no better than chance on one that they do not encode."""

from __future__ import annotations

import torch
from conftest import load_script

from vqa.data.regions import RegionAttributes


def load_probe():
    return load_script("probe_regions")


def synthetic_regions(images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, N, D) tokens and (U, N, 2) labels: attribute 0 (3 values, 0 = no object) is written
    into the tokens' first dimensions; attribute 1 (4 values) is not in them at all."""
    generator = torch.Generator().manual_seed(seed)
    regions = 16
    encoded = torch.randint(0, 4, (images, regions), generator=generator)
    hidden = torch.randint(1, 5, (images, regions), generator=generator)
    hidden = hidden * (encoded != 0)  # no object: class 0 of every attribute
    tokens = torch.randn(images, regions, 8, generator=generator)
    tokens[..., :4] += 4 * torch.nn.functional.one_hot(encoded, 4).float()
    return tokens, torch.stack([encoded, hidden], -1)


def test_probe_reads_an_encoded_attribute_and_not_a_missing_one():
    probe = load_probe()
    train_tokens, train_labels = synthetic_regions(200, seed=0)
    val_tokens, val_labels = synthetic_regions(100, seed=1)
    scores = probe.probe_encoder(
        {"train": train_tokens, "val": val_tokens},
        {"train": train_labels, "val": val_labels},
        ("encoded", "hidden"),
        steps=200,
    )
    assert scores["encoded"]["on_objects"] > 0.95
    assert scores["encoded"]["object_vs_none"] > 0.95
    hidden = scores["hidden"]
    assert hidden["on_objects"] < hidden["chance_on_objects"] + 0.1  # 4 values: chance ~0.25
    assert 0.2 < hidden["chance_on_objects"] < 0.35


def test_region_labels_mark_the_object_under_each_region_centre():
    probe = load_probe()
    attributes = RegionAttributes.build([[{"box": [0, 0, 1, 1], "shape": "circle"}]])
    objects = [[{"box": [0, 0, 16, 16], "shape": "circle"}], []]
    labels = probe.region_labels(attributes, objects, [(32, 32), (32, 32)], grid=2)
    assert labels.shape == (2, 4, 1)
    assert labels[0, :, 0].tolist() == [1, 0, 0, 0]  # the top-left region only
    assert labels[1].sum() == 0


def test_table_has_a_row_per_encoder_and_the_chance_row():
    probe = load_probe()
    scores = {
        name: {"on_objects": 0.9, "object_vs_none": 0.95, "chance_on_objects": 0.3}
        for name in ("colour", "shape")
    }
    result = {
        "machine": {"device_name": "CPU", "cores": 2, "threads": 1, "matmul_gflops": 90},
        "attributes": ["colour", "shape"],
        "encoders": [{"label": "answers only", "scores": scores}],
    }
    lines = probe.markdown_table(result).splitlines()
    assert lines[0] == "| encoder | colour on objects | shape on objects | object vs none |"
    assert lines[2] == "| answers only | 0.900 | 0.900 | 0.950 |"
    assert lines[3].startswith("| chance (most frequent class) | 0.300 | 0.300 |")
    assert "90 GFLOP/s" in lines[-1]


def test_a_hidden_layer_reads_what_a_linear_probe_cannot():
    """An attribute that is the XOR of two token dimensions' signs: linearly unreadable."""
    probe = load_probe()
    tokens, labels = {}, {}
    for split, seed in (("train", 0), ("val", 1)):
        generator = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (60, 16, 2), generator=generator)
        tokens[split] = (2 * signs - 1).float() + 0.1 * torch.randn(60, 16, 2, generator=generator)
        labels[split] = (1 + (signs[..., 0] ^ signs[..., 1]))[..., None]  # classes 1, 2: objects
    linear = probe.probe_encoder(tokens, labels, ("xor",), steps=300)["xor"]["on_objects"]
    hidden = probe.probe_encoder(tokens, labels, ("xor",), steps=300, hidden=32)["xor"]
    assert linear < 0.7
    assert hidden["on_objects"] > 0.95
