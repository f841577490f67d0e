"""Can a box-free objective on images alone teach the vision encoder what shapes look like?

    python scripts/experiments/pretrain_probe.py --objectives none reconstruction dihedral \
        --epochs 3 --out docs/results/experiments/box-free/pretrain-probe.json
    python scripts/experiments/pretrain_probe.py \
        --table docs/results/experiments/box-free/pretrain-probe.json

Answers alone leave the encoder's region tokens as blind to shape as an untrained encoder's
(``scripts/probe_regions.py``). This screens objectives that need only pixels, in minutes and
without the VQA loss: the default preset's vision encoder is trained from scratch on the
embedded training images with one objective, then frozen, and the linear probe of
``probe_regions.py`` reads each region's object attributes (shape, colour, size) from its tokens.

Objectives:
    none: no training (the floor a random encoder gives).
    reconstruction: each region's token redraws its 3x3-region window (``vqa.reconstruction``).
    masked: the same for the 40 % of regions hidden from the encoder (masked image modelling).
    translation: dense contrastive; a second view shifted by whole regions, and each region's
        token must pick out the same region's token of the other view among a batch of others
        (InfoNCE, as DenseCL and PixPro do).
    dihedral: the same with the second view rotated by 90, 180 or 270 degrees and maybe
        mirrored. Rotations and mirrors keep every colour, shape and size, but move each part
        of an object, so the features that survive are what the object is.
    recolour: translation with the second view's colour channels also permuted (red becomes
        blue, ...; ``vqa.contrast``). Colour no longer tells the regions apart, so each token
        must tell them apart by the outlines it sees: the inside of an object by where its
        edges are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import ViTImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_regions import distinct_images, probe_encoder, region_labels

from vqa.cache import synthetic_dataset
from vqa.configuration import HybridVQAConfig
from vqa.contrast import RegionContrast, recoloured_view, shifted
from vqa.data.formats import load_local_dataset
from vqa.data.regions import RegionAttributes
from vqa.encoders import build_vision_encoder
from vqa.files import write_json
from vqa.machine import describe, machine
from vqa.presets import get_preset
from vqa.reconstruction import WindowReconstruction, hide_regions

OBJECTIVES = ("none", "reconstruction", "masked", "translation", "dihedral", "recolour")
MASK_RATIO = 0.4


def dihedral(grid: Tensor, turns: int, mirror: bool) -> Tensor:
    """``grid`` (..., H, W) rotated by ``turns`` quarter turns, then mirrored left-right."""
    turned = torch.rot90(grid, turns, dims=(-2, -1))
    return turned.flip(-1) if mirror else turned


def second_view(images: Tensor, patch_size: int, objective: str) -> tuple[Tensor, Tensor, Tensor]:
    """A transformed view of (U, C, H, W) ``images`` and the region pairs that match.

    Returns:
        the view (U, C, H, W), and (P,) source regions of the original with (P,) the regions of
        the view that hold the same pixels (row-major over the region grid).
    """
    rows, cols = images.shape[-2] // patch_size, images.shape[-1] // patch_size
    index = torch.arange(rows * cols).view(rows, cols)
    if objective == "dihedral":
        turns, mirror = int(torch.randint(1, 4, ())), bool(torch.randint(0, 2, ()))
        view = dihedral(images, turns, mirror)
        return view, dihedral(index, turns, mirror).flatten(), index.flatten()
    if objective == "recolour":
        return recoloured_view(images, patch_size)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
    view = shifted(images, dx * patch_size, dy * patch_size)
    row, col = index.flatten() // cols, index.flatten() % cols
    inside = (row + dy >= 0) & (row + dy < rows) & (col + dx >= 0) & (col + dx < cols)
    return view, index.flatten()[inside], ((row + dy) * cols + col + dx)[inside]


def objective_loss(
    objective: str, vision: nn.Module, head: nn.Module, images: Tensor, patch_size: int
) -> Tensor:
    """The loss of one batch of (U, C, H, W) ``images`` under ``objective``."""
    if objective == "reconstruction":
        return head(vision(images), None, images)
    if objective == "masked":
        masked, hidden = hide_regions(images, patch_size, MASK_RATIO)
        return head(vision(masked), None, images, hidden)
    view, source, target = second_view(images, patch_size, objective)
    return head(vision(images), vision(view), source, target)


def objective_head(objective: str, config: HybridVQAConfig) -> nn.Module:
    """The head an objective trains beside the encoder (discarded after pretraining)."""
    width = config.vision_hidden_size
    if objective in ("reconstruction", "masked"):
        return WindowReconstruction(width, config.num_channels, config.patch_size, window=3)
    return RegionContrast(width)  # 1,024 region pairs per batch, temperature 0.2


def pretrain(
    objective: str, config: HybridVQAConfig, images: Tensor, epochs: int, lr: float, seed: int
) -> tuple[nn.Module, list[float], float]:
    """A new vision encoder trained on (U, C, H, W) ``images`` with ``objective``.

    Returns the encoder (eval mode), the mean loss of each epoch and the training seconds.
    """
    torch.manual_seed(seed)
    vision = build_vision_encoder(config)
    if objective == "none":
        return vision.eval(), [], 0.0
    head = objective_head(objective, config)
    parameters = [*vision.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.05)
    batch = min(64, len(images))
    steps_per_epoch = len(images) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, lr, total_steps=epochs * steps_per_epoch, pct_start=0.05
    )
    losses, start = [], time.perf_counter()
    vision.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(images)), 0.0
        for step in range(steps_per_epoch):
            chosen = images[order[step * batch : (step + 1) * batch]]
            loss = objective_loss(objective, vision, head, chosen, config.patch_size)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item()
        losses.append(total / steps_per_epoch)
        print(f"{objective}: epoch {len(losses)} loss {losses[-1]:.4f}", flush=True)
    return vision.eval(), losses, time.perf_counter() - start


def pixel_values(paths: list[str], image_size: int) -> Tensor:
    """(U, 3, S, S) images normalised as the default processor does (mean 0.5, std 0.5)."""
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    chunks = [
        processor([Image.open(p).convert("RGB") for p in paths[i : i + 256]], return_tensors="pt")
        for i in range(0, len(paths), 256)
    ]
    return torch.cat([chunk["pixel_values"] for chunk in chunks])


@torch.no_grad()
def tokens_of(vision: nn.Module, images: Tensor) -> Tensor:
    """(U, N, D) final region tokens of (U, C, H, W) images."""
    return torch.cat([vision(images[i : i + 256]) for i in range(0, len(images), 256)])


def markdown_table(result: dict) -> str:
    """One row per objective: its last loss, seconds and probe accuracy on objects."""
    names = result["attributes"]
    header = ["objective", "epochs", "last loss", "train s", *(f"{n} on objects" for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for entry in result["runs"]:
        loss = f"{entry['losses'][-1]:.3f}" if entry["losses"] else "–"
        cells = [entry["objective"], str(len(entry["losses"])), loss, f"{entry['seconds']:.0f}"]
        cells += [f"{entry['scores'][n]['on_objects']:.3f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    chance = [result["runs"][0]["scores"][n]["chance_on_objects"] for n in names]
    lines.append("| chance (most frequent class) | | | | " + " | ".join(f"{c:.3f}" for c in chance))
    lines[-1] += " |"
    reader = f"a ReLU layer of {result['probe_hidden']}" if result.get("probe_hidden") else "linear"
    lines.append(f"\nProbe: {reader}. Measured on {describe(result['machine'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--preset", default="default", help="encoder size and embedded scenes")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training images")
    parser.add_argument("--images", type=int, help="training images (default: every one)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-train-images", type=int, default=2000)
    parser.add_argument("--probe-val-images", type=int, default=500)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument(
        "--probe-hidden",
        type=int,
        default=0,
        help="a ReLU layer of N units in the probe (0: linear)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a result")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    config = HybridVQAConfig(**{**preset.model, "image_size": preset.synthetic["image_size"]})
    data = synthetic_dataset(**preset.synthetic, progress=False)
    splits = load_local_dataset(data, ["train", "val"])
    train_paths, _ = distinct_images(splits["train"], args.images or len(splits["train"]))
    train_images = pixel_values(train_paths, config.image_size)
    limits = {"train": args.probe_train_images, "val": args.probe_val_images}
    probe = {split: distinct_images(splits[split], limits[split]) for split in limits}
    attributes = RegionAttributes.build(objs for _, lists in probe.values() for objs in lists)
    grid = config.image_size // config.patch_size
    side = (config.image_size, config.image_size)
    labels = {
        split: region_labels(attributes, objects, [side] * len(objects), grid)
        for split, (_, objects) in probe.items()
    }
    probe_images = {
        split: pixel_values(paths, config.image_size) for split, (paths, _) in probe.items()
    }
    runs = []
    for objective in args.objectives:
        vision, losses, seconds = pretrain(
            objective, config, train_images, args.epochs, args.lr, args.seed
        )
        tokens = {split: tokens_of(vision, images) for split, images in probe_images.items()}
        scores = probe_encoder(
            tokens, labels, attributes.names, args.probe_steps, args.probe_hidden
        )
        runs.append(
            {"objective": objective, "losses": losses, "seconds": seconds, "scores": scores}
        )
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "machine": machine(),
        "preset": args.preset,
        "train_images": len(train_images),
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
        "probe_hidden": args.probe_hidden,
        "attributes": list(attributes.names),
        "runs": runs,
    }
    if args.out:
        write_json(args.out, result)
    print(markdown_table(result))


if __name__ == "__main__":
    main()
