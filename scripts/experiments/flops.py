"""What answering one question costs under each experiment config, in forward FLOPs.

    python scripts/experiments/flops.py scripts/experiments/configs/answers-only.json \
        scripts/experiments/configs/answers-only-film.json

Seconds from runs that shared a busy machine do not compare; FLOPs do. Each config's model (its
preset's sizes with the config's model overrides, random weights) answers a batch shaped like the
embedded training data: ``--questions-per-image`` questions share each image (the default data
keeps about 4.5 of the 6 it asks), ``--question-tokens`` tokens each. The count is
``vqa.ablation.probes.count_flops`` (eval-mode forward; a multiply-add is 2): an image encoded
once serves all its questions, while FiLM encodes it once per question. What only training
runs (a reconstruction head, the masked second pass, the backward pass) is not counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vqa.ablation.probes import count_flops
from vqa.configuration import HybridVQAConfig
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset

# the training options of experiment configs that change what answering a question computes
MODEL_FIELDS = {
    "vision_conditioning": "vision_conditioning",
    "vision_stem": "vision_stem",
    "mode": "fusion_mode",
    "heads": "fusion_heads",
    "hops": "fusion_hops",
}
ANSWERS = 17  # the answer vocabulary of the embedded scenes


def check_options(config: dict, path: Path) -> None:
    """Refuse a config whose fixed k or adaptive k rule this count would leave out."""
    if "k" in config.get("training", {}):
        raise SystemExit(f"{path}: flops.py does not apply the training option 'k'")


def model_of(config: dict) -> HybridVQAModel:
    """An untrained model of an experiment config (random weights; FLOPs do not depend on them)."""
    preset = get_preset(config["preset"])
    fields = {**preset.model, "image_size": preset.synthetic["image_size"], "num_labels": ANSWERS}
    for option, field in MODEL_FIELDS.items():
        if option in config.get("training", {}):
            fields[field] = config["training"][option]
    return HybridVQAModel(HybridVQAConfig(**fields)).eval()


def batch(model: HybridVQAModel, images: int, per_image: int, tokens: int) -> dict:
    """Random inputs: ``images`` images, ``per_image`` questions of ``tokens`` tokens each."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    questions = images * per_image
    size = config.image_size
    return {
        "pixel_values": torch.randn(images, config.num_channels, size, size, generator=generator),
        "input_ids": torch.randint(
            5, config.text_vocab_size, (questions, tokens), generator=generator
        ),
        "attention_mask": torch.ones(questions, tokens, dtype=torch.long),
        "image_index": torch.arange(images).repeat_interleave(per_image),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="experiment config JSON files")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--questions-per-image", type=int, default=4)
    parser.add_argument("--question-tokens", type=int, default=12)
    args = parser.parse_args()
    rows = []
    for path in args.configs:
        config = json.loads(path.read_text())
        check_options(config, path)
        model = model_of(config)
        inputs = batch(model, args.images, args.questions_per_image, args.question_tokens)
        with torch.no_grad():
            fusion, total = count_flops(model, inputs)
        per_question = {"mflops_per_question": total / 1e6, "after_encoders_mflops": fusion / 1e6}
        rows.append({"config": path.name, **per_question})
    base = rows[0]["mflops_per_question"]
    for row in rows:
        row["ratio_to_first"] = row["mflops_per_question"] / base
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
