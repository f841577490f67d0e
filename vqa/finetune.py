"""Fine-tuning with pretrained encoders: their weights, which parts train, and at which rates.

```
model = HybridVQAModel(HybridVQAConfig(**pretrained_fields(vision=..., text=...), ...))
load_pretrained_encoders(model)                     # only for a freshly built model
configure_trainable(model, freeze_text=True, train_last_blocks=2)
optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-3))  # encoders at 1e-4
```
"""

from __future__ import annotations

from torch import nn

from vqa.encoders import load_transformers_weights
from vqa.modeling import HybridVQAModel

ENCODERS = ("vision", "text")  # the model's encoder attributes; everything else is fusion
BLOCK_LISTS = ("blocks", "layer", "layers")  # names of the block stack in timm / transformers
# Parameter names (substrings) that get no weight decay: positions, special tokens and norms.
NO_DECAY_NAMES = (
    "pos_embed",
    "position",
    "cls_token",
    "reg_token",
    "register",
    "dist_token",
    "mask_token",
    "norm",
    "LayerNorm",
)
PRETRAINED_LR_SCALE = 0.1  # a pretrained encoder's default rate, relative to the new layers'


def load_pretrained_encoders(model: HybridVQAModel) -> None:
    """Copy the weights at ``config.vision_pretrained`` / ``text_pretrained`` into the encoders.

    For a freshly built model only: a saved model holds these weights already and is rebuilt
    from its config alone, without the pretrained files.
    """
    config = model.config
    if config.vision_pretrained:
        model.vision.load_pretrained(config.vision_pretrained)
    if config.text_pretrained:
        load_transformers_weights(model.text, config.text_pretrained, "text_pretrained")


def block_stack(encoder: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of ``encoder``'s transformer blocks: its longest block list.

    timm ``blocks``, transformers ``encoder.layer`` / ``encoder.layers``: a list of modules of
    one type (which a conv stem's ``layers`` is not).
    """
    stacks = [
        (name, module)
        for name, module in encoder.named_modules()
        if name.rsplit(".", 1)[-1] in BLOCK_LISTS
        and isinstance(module, nn.ModuleList | nn.Sequential)
        and len({type(block) for block in module}) == 1
    ]
    if not stacks:
        raise ValueError(f"{type(encoder).__name__} has no block list named one of {BLOCK_LISTS}")
    return max(stacks, key=lambda stack: len(stack[1]))


def freeze_all_but_last_blocks(encoder: nn.Module, count: int) -> None:
    """Freeze what comes before ``encoder``'s last ``count`` blocks (embeddings, earlier blocks).

    The last ``count`` blocks and what follows them (the final norm) keep their setting.
    """
    name, stack = block_stack(encoder)
    trainable = {f"{name}.{index}." for index in range(len(stack) - count, len(stack))}
    parameters = list(encoder.named_parameters())
    last_block = max(i for i, (key, _) in enumerate(parameters) if key.startswith(f"{name}."))
    for position, (key, parameter) in enumerate(parameters):
        after_blocks = position > last_block
        if not after_blocks and not key.startswith(tuple(trainable)):
            parameter.requires_grad_(False)


def configure_trainable(
    model: HybridVQAModel,
    *,
    freeze_vision: bool = False,
    freeze_text: bool = False,
    train_last_blocks: int | None = None,
) -> dict[str, int]:
    """Freeze encoders in place, fully or all but their last ``train_last_blocks`` blocks.

    Only freezes: parameters frozen already (e.g. an unused mask token) stay frozen. The fusion
    layers and the head always train. Returns the number of trainable and frozen weights.
    """
    if train_last_blocks is not None and train_last_blocks < 0:
        raise ValueError(f"train_last_blocks must be >= 0, got {train_last_blocks}")
    for part, frozen in (("vision", freeze_vision), ("text", freeze_text)):
        encoder = getattr(model, part)
        if frozen:
            encoder.requires_grad_(False)
        elif train_last_blocks is not None:
            freeze_all_but_last_blocks(encoder, train_last_blocks)
    counts = {"trainable": 0, "frozen": 0}
    for parameter in model.parameters():
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    return counts


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm whose weights are frozen in eval mode, after ``model.train()``.

    A frozen encoder must not change, but BatchNorm updates its running mean and variance in
    training mode whatever ``requires_grad`` says; in eval mode it uses and keeps them.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            parameter.requires_grad for parameter in module.parameters()
        ):
            module.eval()


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Whether weight decay applies: not to biases, norms, other 1-D weights, nor to position
    embeddings and special tokens (``pos_embed``, ``cls_token``, ...), as timm and transformers
    exclude them."""
    return parameter.ndim >= 2 and not any(part in name for part in NO_DECAY_NAMES)


def parameter_groups(
    model: nn.Module,
    *,
    lr: float,
    encoder_lr: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """AdamW parameter groups: fusion and head at ``lr``, each encoder at its own rate.

    An encoder's rate is ``encoder_lr`` where given; else ``lr`` for an encoder trained from
    scratch and ``lr * PRETRAINED_LR_SCALE`` for a pretrained one, whose weights should move
    less than the new layers'. Weight decay skips what :func:`decays` says; frozen parameters
    are left out. Each group has a ``name`` (``fusion/decay``, ``vision/no_decay``, ...); fusion
    groups come first, so ``param_groups[0]`` has the main learning rate.
    """
    config = getattr(model, "config", None)
    rates = {"fusion": lr}
    for part in ENCODERS:
        pretrained = bool(getattr(config, f"{part}_pretrained", None))
        default = lr * PRETRAINED_LR_SCALE if pretrained else lr
        rates[part] = default if encoder_lr is None else encoder_lr
    grouped: dict[tuple[str, bool], list[nn.Parameter]] = {
        (part, decay): [] for part in rates for decay in (True, False)
    }
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = name.split(".", 1)[0]
            grouped[part if part in ENCODERS else "fusion", decays(name, parameter)].append(
                parameter
            )
    return [
        {
            "name": f"{part}/{'decay' if decay else 'no_decay'}",
            "params": parameters,
            "lr": rates[part],
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (part, decay), parameters in grouped.items()
        if parameters
    ]
