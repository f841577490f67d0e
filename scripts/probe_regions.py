"""What each trained vision encoder knows about the objects under its regions: a linear probe.

    python scripts/probe_regions.py RUN [RUN ...] --out docs/results/probe-regions/NAME.json
    python scripts/probe_regions.py --table docs/results/probe-regions/NAME.json

Learning from answers alone can fail in two places: the encoder never learns what a shape looks
like, or it does and the fusion never learns where to look. This probe separates them. Each
model's vision encoder is frozen; its final region tokens (B, N, D) of the embedded scenes are
computed once, and a linear classifier per object attribute (shape, colour, size: the region
attribute loss's classes, "no object" included) is fitted on the tokens of training images with
full-batch Adam, then scored on validation images. Accuracy is reported over the regions whose
centre lies on an object (``on objects``: which shape, which colour?), and over all regions for
"is there an object here" (``object vs none``). The probe reads boxes only to score encoders;
the encoders were trained as their runs say.

``--random`` adds an untrained encoder of the first RUN's architecture: what a linear probe
reads off random features (the floor). Every RUN must encode images without the question (no
FiLM, no selection inside the encoder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from vqa.cache import synthetic_dataset
from vqa.data.formats import load_local_dataset
from vqa.data.regions import RegionAttributes
from vqa.files import write_json
from vqa.inference import load_model
from vqa.machine import describe, machine
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset
from vqa.processing import HybridVQAProcessor


def distinct_images(rows, limit: int) -> tuple[list[str], list[list[dict]]]:
    """Up to ``limit`` distinct image paths of ``rows`` and each one's objects, in row order."""
    paths, objects, seen = [], [], set()
    for path, objects_json in zip(rows["image_path"], rows["objects_json"], strict=True):
        if path in seen:
            continue
        seen.add(path)
        paths.append(path)
        objects.append(json.loads(objects_json))
        if len(paths) == limit:
            break
    return paths, objects


def region_labels(
    attributes: RegionAttributes, objects: list[list[dict]], sizes: list[tuple[int, int]], grid: int
) -> Tensor:
    """(U, N, A) class ids of the object under each region of each image (0: none)."""
    return torch.stack(
        [attributes.labels(objs, size, grid) for objs, size in zip(objects, sizes, strict=True)]
    )


@torch.no_grad()
def region_tokens(
    model: HybridVQAModel, processor: HybridVQAProcessor, paths: list[str], batch_size: int = 64
) -> Tensor:
    """(U, N, D) the vision encoder's final region tokens of each image, float32."""
    if model.film is not None or model.encoder_selector is not None:
        raise SystemExit("the probe needs an encoder that reads images without the question")
    tokens = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(path).convert("RGB") for path in paths[start : start + batch_size]]
        tokens.append(model.vision(processor.images(images)).float())
    return torch.cat(tokens)


def fit_probe(
    train_tokens: Tensor, train_labels: Tensor, classes: int, steps: int, seed: int, hidden: int = 0
) -> torch.nn.Module:
    """A classifier of (M, D) standardised tokens into ``classes``, full-batch Adam: linear, or
    with one ReLU layer of ``hidden`` units (what a nonlinear reader could get out)."""
    torch.manual_seed(seed)
    width = train_tokens.shape[-1]
    probe = torch.nn.Linear(width, classes)
    if hidden:
        layers = (torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
        probe = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(train_tokens), train_labels).backward()
        optimizer.step()
    return probe


def probe_encoder(
    tokens: dict[str, Tensor],
    labels: dict[str, Tensor],
    names: tuple[str, ...],
    steps: int,
    hidden: int = 0,
) -> dict:
    """Per attribute: the probe's validation accuracy on regions with an object, and of
    "object vs none" over all regions (from the attribute's class 0). ``hidden`` > 0 gives
    the probe a ReLU layer of that width (:func:`fit_probe`)."""
    flat = {split: value.flatten(0, 1) for split, value in tokens.items()}  # (U * N, D)
    mean, std = flat["train"].mean(0), flat["train"].std(0).clamp_min(1e-6)
    flat = {split: (value - mean) / std for split, value in flat.items()}
    scores = {}
    for index, name in enumerate(names):
        target = {split: value[..., index].flatten() for split, value in labels.items()}
        classes = int(max(value.max() for value in target.values())) + 1
        probe = fit_probe(flat["train"], target["train"], classes, steps, index, hidden)
        with torch.no_grad():
            predicted = probe(flat["val"]).argmax(-1)
        truth = target["val"]
        on_object = truth != 0
        scores[name] = {
            "on_objects": float((predicted[on_object] == truth[on_object]).float().mean()),
            "object_vs_none": float(((predicted != 0) == on_object).float().mean()),
            "chance_on_objects": float(truth[on_object].bincount().max() / on_object.sum()),
        }
    return scores


def describe_run(run: Path) -> dict:
    """What the run's metrics.json says about its training, where it has one."""
    metrics = run / "metrics.json"
    if not metrics.is_file():
        return {}
    arguments = json.loads(metrics.read_text()).get("arguments", {})
    keys = ("mode", "estimator", "region_loss_weight", "pointing_loss_weight", "epochs", "seed")
    return {key: arguments.get(key) for key in keys if key in arguments}


def markdown_table(result: dict) -> str:
    """One row per encoder: probe accuracy per attribute on objects, and object vs none."""
    names = result["attributes"]
    header = ["encoder", *(f"{name} on objects" for name in names), "object vs none"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for entry in result["encoders"]:
        scores = entry["scores"]
        cells = [
            entry["label"],
            *(f"{scores[name]['on_objects']:.3f}" for name in names),
            f"{scores[names[0]]['object_vs_none']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    chance = [result["encoders"][0]["scores"][name]["chance_on_objects"] for name in names]
    lines.append("| chance (most frequent class) | " + " | ".join(f"{c:.3f}" for c in chance))
    lines[-1] += " | |"
    lines.append(f"\nMeasured on {describe(result['machine'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run or model directories")
    parser.add_argument("--labels", nargs="*", help="a name per RUN (default: its path)")
    parser.add_argument("--preset", default="default", help="whose embedded scenes to probe on")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of each probe")
    parser.add_argument("--hidden", type=int, default=0, help="a ReLU layer of N units (0: linear)")
    parser.add_argument("--random", action="store_true", help="also an untrained encoder")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a result")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if not args.runs:
        parser.error("give at least one RUN")
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = synthetic_dataset(**get_preset(args.preset).synthetic, progress=False)
    splits = load_local_dataset(data, ["train", "val"])
    limits = {"train": args.train_images, "val": args.val_images}
    images = {split: distinct_images(splits[split], limits[split]) for split in limits}
    attributes = RegionAttributes.build(objs for _, lists in images.values() for objs in lists)
    sizes = {split: [Image.open(p).size for p in paths] for split, (paths, _) in images.items()}

    encoders = []
    labels = args.labels or [str(run) for run in args.runs]
    pairs = zip(labels, args.runs, strict=True)
    models = [(label, run, *load_model(run, "cpu")) for label, run in pairs]
    if args.random:
        torch.manual_seed(0)
        untrained = HybridVQAModel(models[0][2].config).eval()
        models.append(("untrained encoder", None, untrained, models[0][3]))
    for label, run, model, processor in models:
        model.float()
        grid = int(model.config.num_regions**0.5)
        region = {
            split: region_labels(attributes, images[split][1], sizes[split], grid)
            for split in limits
        }
        tokens = {split: region_tokens(model, processor, images[split][0]) for split in limits}
        scores = probe_encoder(tokens, region, attributes.names, args.steps, args.hidden)
        entry = {"label": label, "run": None if run is None else str(run), "scores": scores}
        entry["training"] = {} if run is None else describe_run(run)
        encoders.append(entry)
        print(json.dumps(entry))
    result = {
        "machine": machine(),
        "preset": args.preset,
        "train_images": len(images["train"][0]),
        "val_images": len(images["val"][0]),
        "steps": args.steps,
        "hidden": args.hidden,
        "attributes": list(attributes.names),
        "encoders": encoders,
    }
    if args.out:
        write_json(args.out, result)
    print(markdown_table(result))


if __name__ == "__main__":
    main()
