"""Where does a trained model's fusion look? One JSON line per model, on the embedded scenes.

    python scripts/experiments/selection_diagnosis.py RUN [RUN ...] --data DIR [--checkpoints] \
        [--out FILE]
    python scripts/experiments/selection_diagnosis.py --table FILE   # a markdown table of FILE

For each model directory (``vqa train``'s output; with ``--checkpoints`` also each checkpoint in
its ``checkpoint/``), on the first ``--questions`` validation questions of ``DIR`` (the embedded
scenes, whose rows list every object's box), with the head-averaged fusion weights. Each line
names the ``run`` (the directory's name: the config's, for ``run.py --runs``), its ``seed`` and
the ``weights``: ``step S in epoch E`` for a checkpoint taken within an epoch, ``end of epoch E
(step S)`` for one taken at its end, and ``the run's best: epoch E`` for the model that ``vqa
train`` keeps (the epoch with the best validation accuracy; ``the model``, seed null, for a
directory without ``metrics.json``). Then:

- ``pointing``: the top-weighted region overlaps an asked-about object (as ``vqa eval``);
- ``top_region_on_background``: the top region overlaps no object at all, against
  ``background_share_of_regions``, the share of regions that overlap none;
- ``top_weight``, ``background_weight``, ``target_weight``, ``no_region_weight``: mean weight
  of the top region, of the regions with no object, of the asked-about objects' regions and of
  no region (an attention sink's share);
- ``target_recall``: the share of the asked-about objects' regions inside the selection;
- ``distinct_top_regions``, ``most_common_top_regions`` ([region, share of questions]): whether
  the top region follows the question or sits on a few fixed regions.

``--out FILE`` also writes the lines as one JSON list.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from vqa.checkpoints import STATE_FILE
from vqa.data.sources import load_vqa_dataset
from vqa.files import write_json
from vqa.inference import load_model
from vqa.metrics import boxes_overlap, patch_boxes, top_region
from vqa.modeling import HybridVQAModel
from vqa.processing import HybridVQAProcessor, VQACollator
from vqa.training import METRICS_FILE

WEIGHTS = "model.safetensors"  # a checkpoint's model weights, as Accelerate's save_state names them

TABLE_COLUMNS = (
    "pointing",
    "top_region_on_background",
    "background_weight",
    "target_weight",
    "top_weight",
    "target_recall",
    "no_region_weight",
    "distinct_top_regions",
)


def object_boxes(data: Path, split: str) -> dict[int, torch.Tensor]:
    """question_id -> (O, 4) boxes of every object in its image (the embedded scenes' rows), as
    fractions of the image's width and height, so that any model input size can scale them."""
    boxes = {}
    with (data / f"{split}.jsonl").open() as lines:
        for number, line in enumerate(lines, 1):
            row = json.loads(line)
            if "objects" not in row:
                raise SystemExit(f"{data / split}.jsonl line {number}: no 'objects' field")
            with Image.open(data / row["image"]) as image:  # reads the header only
                width, height = image.size
            found = torch.tensor([thing["box"] for thing in row["objects"]], dtype=torch.float)
            boxes[row["question_id"]] = found.reshape(-1, 4) / torch.tensor([width, height] * 2)
    return boxes


def weights_label(run: Path, checkpoint: Path | None) -> dict:
    """``run``, ``seed`` and ``weights`` of the module docstring, from the run's metrics and the
    checkpoint's trainer state (None: the run's own model, its best epoch's)."""
    if not (run / METRICS_FILE).exists():  # a model directory that training did not write
        return {"run": run.name, "seed": None, "weights": "the model"}
    metrics = json.loads((run / METRICS_FILE).read_text())
    label = {"run": run.name, "seed": metrics["arguments"]["seed"]}
    if checkpoint is None:
        return {**label, "weights": f"the run's best: epoch {metrics['best_epoch']}"}
    state = json.loads((checkpoint / STATE_FILE).read_text())
    step, epoch = state["global_step"], state["epoch"]
    if state["progress"]["batches"]:  # taken within epoch + 1
        return {**label, "weights": f"step {step} in epoch {epoch + 1}"}
    return {**label, "weights": f"end of epoch {epoch} (step {step})"}


def diagnose(model: HybridVQAModel, processor: HybridVQAProcessor, rows, objects: dict) -> dict:
    """The measures of the module docstring for ``model`` on ``rows``."""
    regions = patch_boxes(processor.image_size, model.config.patch_size)  # (N, 4)
    sums: Counter = Counter()
    counted: Counter = Counter()
    tops = []
    model.eval()
    with torch.no_grad():
        for inputs, meta in DataLoader(rows, batch_size=64, collate_fn=VQACollator(processor)):
            inputs.pop("labels")
            output = model(**inputs)
            weights = output.attention_weights.float().mean(1)  # (B, N)
            top = top_region(weights, output.attention_scores.float().mean(1))
            for b, row in enumerate(meta):
                found = objects[row["question_id"]] * processor.image_size  # model input px
                on_object = boxes_overlap(regions[:, None], found[None])
                background = ~on_object.any(-1)  # (N,)
                tops.append(int(top[b]))
                add = {
                    "top_region_on_background": float(background[top[b]]),
                    "background_share_of_regions": float(background.float().mean()),
                    "top_weight": float(weights[b, top[b]]),
                    "background_weight": float(weights[b][background].sum()),
                    "no_region_weight": max(0.0, 1.0 - float(weights[b].sum())),
                }
                targets = torch.as_tensor(row["target_boxes"]).reshape(-1, 4)
                if len(targets):
                    on_target = boxes_overlap(regions[:, None], targets[None]).any(-1)
                    selected = weights[b] > 0
                    add["pointing"] = float(on_target[top[b]])
                    add["target_weight"] = float(weights[b][on_target].sum())
                    add["target_recall"] = float((on_target & selected).sum() / on_target.sum())
                for key, value in add.items():
                    sums[key] += value
                    counted[key] += 1
    common = Counter(tops).most_common(4)
    return {
        "questions": len(tops),
        **{key: round(sums[key] / counted[key], 4) for key in sums},
        "distinct_top_regions": len(set(tops)),
        "most_common_top_regions": [[region, round(n / len(tops), 4)] for region, n in common],
    }


def table(records: list[dict]) -> str:
    """A markdown table of ``records`` (the lines of ``--out``), one row each."""
    header = ["run", "seed", "weights", *TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---|" + "---:|" * len(TABLE_COLUMNS)]
    for record in records:
        values = [record["run"], str(record["seed"]), record["weights"]]
        for column in TABLE_COLUMNS:
            value = record[column]
            values.append(str(value) if isinstance(value, int) else f"{value:.2f}")
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="model directories (vqa train output)")
    parser.add_argument("--data", type=Path, help="the embedded scenes' directory")
    parser.add_argument("--split", default="val")
    parser.add_argument("--questions", type=int, default=800)
    parser.add_argument("--checkpoints", action="store_true", help="also each checkpoint")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the lines as one JSON list here")
    parser.add_argument("--table", type=Path, help="print a markdown table of this --out file")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if not args.runs or not args.data:
        parser.error("give model directories and --data (or --table FILE)")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = load_vqa_dataset(args.data, [args.split])[args.split]
    rows = rows.select(range(min(args.questions, len(rows))))
    objects = object_boxes(args.data, args.split)
    records = []
    for run in args.runs:
        model, processor = load_model(run, "cpu")
        own = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        states = sorted((run / "checkpoint").glob("step-*[0-9]")) if args.checkpoints else []
        for checkpoint in [*states, None]:  # None: the run's own model, its best epoch's
            # each checkpoint's weights in the run's architecture
            model.load_state_dict(own if checkpoint is None else load_file(checkpoint / WEIGHTS))
            record = {
                **weights_label(run, checkpoint),
                **diagnose(model, processor, rows, objects),
            }
            print(json.dumps(record), flush=True)
            records.append(record)
    if args.out:
        write_json(args.out, records)


if __name__ == "__main__":
    main()
