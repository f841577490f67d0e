"""Named presets: model sizes, training settings and embedded-data sizes that belong together.

``default`` is what ``vqa demo`` and ``scripts/bench_train.py`` train: sized for a 2-core CPU.
``tiny`` keeps the test suite fast. ``quick`` is the ``vqa ablate`` grid that fits in 20 minutes
on a 2-core CPU. ``full`` is for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """A named bundle of settings.

    Attributes:
        model: ``HybridVQAConfig`` fields.
        training: ``TrainingArguments`` fields (epochs, batch size, learning rate, ...).
        synthetic: ``write_synthetic_dataset`` sizes for ``--data synthetic``.
        ablation: the default ``vqa ablate`` grid (``modes``, ``k``, ``estimators``, ``seeds``);
            empty means the grid of ``vqa.ablation.DEFAULT_GRID``.
        box_free: ``HybridVQAConfig`` fields (each set by a ``TrainingArguments`` flag,
            ``vqa.box_free.flag_name``) that a new model trains with when its training rows
            have no boxes (``vqa.box_free``); empty means none are changed.
        box_free_training: ``TrainingArguments`` fields (``epochs``, ``batch_size``, ``lr``)
            that such a run takes where its flags leave them unset, instead of ``training``'s.
    """

    description: str
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    synthetic: dict = field(default_factory=dict)
    ablation: dict = field(default_factory=dict)
    box_free: dict = field(default_factory=dict)
    box_free_training: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        description="seconds on a CPU; for tests and smoke runs",
        model={
            "image_size": 32,
            "patch_size": 8,
            "vision_hidden_size": 32,
            "vision_layers": 1,
            "vision_heads": 2,
            "text_hidden_size": 32,
            "text_layers": 1,
            "text_heads": 2,
            "fusion_dim": 32,
            "fusion_k": 4,
            "reasoner_layers": 1,
            "dropout": 0.0,
            "region_loss_weight": 1.0,
            "pointing_loss_weight": 1.0,
        },
        training={"epochs": 1, "batch_size": 16, "lr": 1e-3},
        synthetic={"train": 40, "val": 10, "test": 10, "image_size": 32},
    ),
    "quick": Preset(
        description="the vqa ablate grid in at most 20 minutes on a 2-core CPU",
        # The default model with one hop on less data, so that each of the 10 runs takes
        # about 80 s.
        model={"dropout": 0.0, "region_loss_weight": 1.0, "reasoner_layers": 3},
        training={"epochs": 4, "batch_size": 48, "lr": 3e-4},
        synthetic={"train": 3000, "val": 200, "test": 300, "image_size": 64},
        ablation={
            "modes": ("soft", "hard", "hybrid"),
            "k": (16,),
            "estimators": ("ste", "reinforce"),
            "seeds": (0, 1),
        },
    ),
    "default": Preset(
        description="the embedded default: about 15 minutes on a 2-core CPU",
        # No dropout: the model does not overfit the scenes within this budget, and dropout
        # costs CPU time. The region attribute loss teaches the ViT what the objects look like
        # and the pointing loss teaches the fusion where to look (docs/experiments.md). A second
        # fusion hop finds the second object of a comparison: 0.957 +- 0.006 against 0.934 +-
        # 0.010 for one hop after 5 epochs, three seeds, Welch p = 0.034, at 1.16-1.22x the
        # seconds per question (docs/results/experiments/hops-with-boxes).
        model={
            "dropout": 0.0,
            "region_loss_weight": 1.0,
            "pointing_loss_weight": 1.0,
            "reasoner_layers": 3,
            "fusion_hops": 2,
        },
        training={"epochs": 5, "batch_size": 48, "lr": 3e-4},
        # Without boxes, each region's token redraws the pixels around it (5 epochs: 0.509 +-
        # 0.031 against 0.454 +- 0.027 from answers alone, five seeds, Welch p = 0.017) and
        # finds itself in a recoloured, shifted view (0.552 +- 0.016 with both, three seeds,
        # p = 0.041 against reconstruction alone); docs/results/experiments/box-free. From the
        # answers alone a second hop does not help (0.521 +- 0.045, two seeds, against 0.552,
        # p = 0.50) and costs 1.2x, so one hop.
        box_free={
            "reconstruction_loss_weight": 1.0,
            "contrast_loss_weight": 1.0,
            "fusion_hops": 1,
            # keeping 32 of the 64 regions: 0.580 +- 0.013 against 0.543 +- 0.022 with 16
            # after 5 epochs (three and four seeds, Welch p = 0.042)
            "fusion_k": 32,
        },
        # From the answers alone 5 epochs underfit: on easy-VQA 10 epochs reach 0.983-0.995
        # (5 epochs: 0.788-0.878); on the embedded scenes 0.679 against 0.564 (seed 0).
        box_free_training={"epochs": 10},
        # 6 questions asked per scene (4.5 kept on average: small scenes cannot have them all);
        # more questions per scene teach comparisons sooner than more scenes do.
        synthetic={
            "train": 10000,
            "val": 500,
            "test": 500,
            "image_size": 64,
            "questions_per_image": 6,
        },
    ),
    "full": Preset(
        description="a larger model and dataset for a GPU",
        model={
            "vision_hidden_size": 256,
            "vision_layers": 6,
            "vision_heads": 8,
            "text_hidden_size": 256,
            "text_layers": 3,
            "text_heads": 8,
            "fusion_dim": 256,
            "reasoner_layers": 3,
            "region_loss_weight": 1.0,
        },
        training={"epochs": 30, "batch_size": 128, "lr": 5e-4},
        synthetic={"train": 30000, "val": 2000, "test": 2000, "image_size": 64},
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError lists the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
