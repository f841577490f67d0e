"""End-to-end inference cost of soft against hybrid with the selection inside the vision encoder.

One model per case, switched between three settings on the same weights:
  - soft: every patch token runs through every ViT block, the fusion reads all of them;
  - hybrid: after ``select_after`` blocks the question keeps ``keep`` of the patch tokens, the
    later blocks and the fusion run on those (then hybrid top-k in the fusion);
  - evit: hybrid, but EViT's question-agnostic rule keeps as many patch tokens: those the CLS
    token attends to most in the last block before the selection (``vqa.class_attention``),
    at the same keep rate (``evit_*`` fields).
For batch 1 and batch 32 (one question per image) it times the whole forward pass (encoders,
fusion, reasoner, head) in eval mode under ``torch.inference_mode()``, the median of
``--repeats`` runs with the settings taking turns, and counts its FLOPs with
``vqa.ablation.probes.count_flops`` (``torch.utils.flop_counter``: matmuls, convolutions and
attention; a multiply-add is 2). ``speedup`` is soft_ms / hybrid_ms, ``evit_speedup`` soft_ms /
evit_ms.

Cases: (a) the default model at 64 px (64 regions, keep 50 % after block 1); (b) the default
architecture at 128 px (256 regions, keep 25 % after block 1); (c) timm's
``vit_small_patch16_224`` architecture (random weights) at 224 px, keeping 25 % and 50 % after
block 3 and 4. The default architecture gets a CLS token (``vision_class_token``), which EViT's
rule needs; timm's ViT-S has its own.

    python scripts/bench_encoder.py --out docs/results/bench-encoder/cpu.json
    python scripts/bench_encoder.py --table docs/results/bench-encoder/cpu.json   # README table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hybrid_attention import num_kept
from vqa.ablation.probes import count_flops
from vqa.configuration import HybridVQAConfig
from vqa.files import write_json
from vqa.machine import describe, machine, synchronize
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset

VIT_SMALL = {"architecture": "vit_small_patch16_224"}
# (name, image size, extra config fields, select_after, keep)
CASES = [
    ("default 64px", 64, {"vision_class_token": True}, 1, 0.5),
    ("default 128px", 128, {"vision_class_token": True}, 1, 0.25),
    *[
        (f"vit_small 224px after {after}", 224, {"vision_config": VIT_SMALL}, after, keep)
        for after in (3, 4)
        for keep in (0.25, 0.5)
    ],
]
QUESTION_LENGTH = 12  # tokens: about the length of an embedded-scene question
COUNTED = 8  # questions whose FLOPs are counted (per question, the same for the whole batch)
SETTINGS = {  # name -> (fusion mode, encoder rule)
    "soft": ("soft", "question"),
    "hybrid": ("hybrid", "question"),
    "evit": ("hybrid", "cls"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="questions per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a result")
    return parser.parse_args()


def build_model(image_size: int, extra: dict, select_after: int, keep: int | float):
    """The default preset's model at ``image_size`` with an encoder selection, in eval mode."""
    fields = dict(get_preset("default").model)
    fields.update(image_size=image_size, encoder_select_after=select_after, encoder_k=keep)
    fields.update(extra)
    if "vision_config" in extra:  # a timm architecture: its own widths and 16 px patches
        fields.update(vision_stem="patch", patch_size=16, vision_hidden_size=384)
    torch.manual_seed(0)
    return HybridVQAModel(HybridVQAConfig(**fields, num_answers=20)).eval()


def inputs(model: HybridVQAModel, batch: int, device: torch.device) -> dict:
    """Random images and question ids for ``batch`` questions, one image each."""
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator).to(device),
        "input_ids": torch.randint(
            5, model.config.text_vocab_size, (batch, QUESTION_LENGTH), generator=generator
        ).to(device),
    }


def count_gflops(model: HybridVQAModel, batch: dict) -> float:
    """GFLOPs of one forward pass (the ablation's counter: it sees the reasoner too).

    The counter runs the fusion once per question, which takes minutes for hundreds of
    questions; every question here has its own image, so the FLOPs per question are the same
    on the first ``COUNTED`` questions.
    """
    counted = {name: values[:COUNTED] for name, values in batch.items()}
    _, per_question = count_flops(model, counted)
    return per_question * batch["input_ids"].shape[0] / 1e9


def use(model: HybridVQAModel, setting: str) -> None:
    """Switch ``model`` to one of :data:`SETTINGS`."""
    mode, rule = SETTINGS[setting]
    model.set_fusion(mode=mode)
    model.set_encoder_selection(rule=rule)


def time_settings(model: HybridVQAModel, batch: dict, repeats: int, device) -> dict[str, float]:
    """Median milliseconds of one forward pass per setting, the settings taking turns."""
    times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms up
            for setting in times:
                use(model, setting)
                synchronize(device)
                start = time.perf_counter()
                model(**batch)
                synchronize(device)
                if repeat:
                    times[setting].append(1000 * (time.perf_counter() - start))
    return {setting: statistics.median(values) for setting, values in times.items()}


def run_case(case: tuple, batch_size: int, repeats: int, device: torch.device) -> dict:
    name, image_size, extra, select_after, keep = case
    model = build_model(image_size, extra, select_after, keep).to(device)
    batch = inputs(model, batch_size, device)
    gflops = {}
    for setting in SETTINGS:
        use(model, setting)
        gflops[setting] = count_gflops(model, batch)
    milliseconds = time_settings(model, batch, repeats, device)
    return {
        "name": name,
        "image_size": image_size,
        "regions": model.config.num_regions,
        "select_after": select_after,
        "keep": keep,
        "kept_tokens": num_kept(keep, model.config.num_regions),
        "batch": batch_size,
        "soft_ms": round(milliseconds["soft"], 2),
        "hybrid_ms": round(milliseconds["hybrid"], 2),
        "speedup": round(milliseconds["soft"] / milliseconds["hybrid"], 3),
        "soft_gflops": round(gflops["soft"], 3),
        "hybrid_gflops": round(gflops["hybrid"], 3),
        "flops_ratio": round(gflops["soft"] / gflops["hybrid"], 3),
        "evit_ms": round(milliseconds["evit"], 2),
        "evit_speedup": round(milliseconds["soft"] / milliseconds["evit"], 3),
        "evit_gflops": round(gflops["evit"], 3),
    }


def markdown_table(result: dict) -> str:
    """The README's table: one row per case and batch (EViT: the CLS rule at the same keep
    rate)."""
    lines = [
        "| case | tokens kept | batch | soft ms | hybrid ms | speedup | EViT ms | EViT speedup | "
        "soft GFLOPs | hybrid GFLOPs | EViT GFLOPs | FLOPs ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in result["cases"]:
        kept = f"{case['kept_tokens']} of {case['regions']} after block {case['select_after']}"
        lines.append(
            f"| {case['name']} | {kept} | {case['batch']} | {case['soft_ms']:.1f} | "
            f"{case['hybrid_ms']:.1f} | {case['speedup']:.2f}x | {case['evit_ms']:.1f} | "
            f"{case['evit_speedup']:.2f}x | {case['soft_gflops']:.2f} | "
            f"{case['hybrid_gflops']:.2f} | {case['evit_gflops']:.2f} | "
            f"{case['flops_ratio']:.2f}x |"
        )
    return "\n".join(lines) + f"\n\nMachine: {describe(result['machine'])}."


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    device = torch.device(args.device)
    cases = [case for case in CASES if args.only is None or args.only in case[0]]
    rows = [run_case(case, batch, args.repeats, device) for case in cases for batch in args.batch]
    result = {"machine": machine(device), "repeats": args.repeats, "cases": rows}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
