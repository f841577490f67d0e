"""Export a trained model for another runtime: ``vqa export RUN --format onnx --out DIR``.

``DIR`` gets ``model.onnx`` and what it takes to use it: ``config.json`` (with the fusion mode
and k the graph was exported with) and the processor files (image processor, tokenizer,
``answers.json``), so ``HybridVQAProcessor.from_pretrained(DIR)`` prepares its inputs and
decodes its answers. The graph answers one question per image (no ``image_index``):

```
inputs   pixel_values       (B, C, H, W) float32   images, normalised by the processor
         input_ids          (B, L) int64           tokenised questions, CLS first
         attention_mask     (B, L) int64           1 for a token, 0 for padding
outputs  logits             (B, num_labels)        answer logits
         attention_weights  (B, N)                 fusion weights, mean over the heads,
                                                   exactly 0 outside the selection
         selected_indices   (B, H, k) int64        kept regions per head, best first (a TopK
                                                   node); hard and hybrid only
         encoder_kept       (B, N) bool            the patches the vision encoder kept; hard
                                                   and hybrid models with a selection in
                                                   the encoder only
         kept_regions       (B, H) int64           how many regions each question kept per
                                                   head; adaptive k only
```
H counts the fusion heads of every hop (heads x hops, hop after hop; ``vqa.hops``).
B and L are dynamic (L up to the processor's ``max_question_length``). The fusion mode and k
are fixed in the graph: export once per mode (``--mode``, ``--k``). An adaptive k (``--k auto``
or ``budget``) is exported with ``k_max`` slots: ``selected_indices`` is k_max wide and only its
first ``kept_regions`` slots were kept (PyTorch trims a batch to its largest k instead).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from hybrid_attention import AdaptiveK
from vqa.files import check_destination, staged_directory
from vqa.inference import load_model
from vqa.modeling import HybridVQAModel
from vqa.processing import HybridVQAProcessor

FORMATS = ("onnx",)
ONNX_FILE = "model.onnx"
INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
OUTPUT_NAMES = (
    "logits",
    "attention_weights",
    "selected_indices",
    "encoder_kept",
    "kept_regions",
)
INSTALL_HINT = "pip install 'hybrid-attention-vqa[export]'"
# two questions of different lengths, so the traced graph pads one of them
EXAMPLE_QUESTIONS = ("what colour is the large circle?", "is there a square?")


@dataclass(frozen=True)
class Export:
    """What :func:`export_onnx` wrote.

    Attributes:
        directory: the output directory.
        model_file: the ONNX graph in it.
        mode, k: the fusion settings fixed in the graph (k an int or an adaptive rule).
        outputs: the graph's output names, in order.
    """

    directory: Path
    model_file: Path
    mode: str
    k: int | AdaptiveK
    outputs: tuple[str, ...]


class ExportableVQA(nn.Module):
    """:class:`HybridVQAModel` with plain tensor inputs and outputs, one question per image.

    The exporters trace tensors in, tensors out; this is the model's forward with the
    outputs a runtime needs, and the region weights averaged over the fusion heads.
    """

    def __init__(self, model: HybridVQAModel) -> None:
        super().__init__()
        self.model = model

    def output_names(self) -> tuple[str, ...]:
        """The names of :meth:`forward`'s outputs: no selected indices in soft mode,
        ``encoder_kept`` only where the vision encoder selects, ``kept_regions`` only with an
        adaptive k."""
        fusion = self.model.fusion
        if fusion.mode == "soft":
            return OUTPUT_NAMES[:2]
        wanted = {
            "encoder_kept": self.model.encoder_selector is not None,
            "kept_regions": not isinstance(fusion.k, int),
        }
        return tuple(name for name in OUTPUT_NAMES if wanted.get(name, True))

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, ...]:
        """(B, C, H, W) images and (B, L) questions -> the outputs of :meth:`output_names`:
        logits (B, num_labels), attention weights (B, N) and, in hard and hybrid modes,
        selected indices (B, H, k), the patches the encoder kept (B, N) where it selects, and
        the regions each question kept (B, H) with an adaptive k."""
        output = self.model(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
        )
        values = {
            "logits": output.logits,
            "attention_weights": output.attention_weights.mean(1),  # (B, H, N) -> (B, N)
            "selected_indices": output.selected_indices,
            "encoder_kept": output.encoder_kept,
            "kept_regions": output.kept_regions,
        }
        return tuple(values[name] for name in self.output_names())


def check_format(format: str) -> str:
    """Return ``format`` if this module exports to it, else raise a ValueError naming it."""
    if format not in FORMATS:
        raise ValueError(f"unsupported export format {format!r}; choose one of {FORMATS}")
    return format


def require_onnx() -> None:
    """Raise an ImportError with the install command unless onnx and onnxscript import
    (torch's ONNX exporter writes the graph with onnxscript)."""
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError as error:
            raise ImportError(
                f"exporting to ONNX needs the package {package!r}, which is not installed: "
                f"{INSTALL_HINT}"
            ) from error


def example_inputs(processor: HybridVQAProcessor, device: torch.device) -> tuple[Tensor, ...]:
    """Inputs to trace with: two grey images and :data:`EXAMPLE_QUESTIONS`, as the processor
    makes them. Two, because the exporter treats an axis of size 1 as fixed."""
    size = processor.image_size
    images = [Image.new("RGB", (size, size), (128, 128, 128))] * len(EXAMPLE_QUESTIONS)
    questions = processor.questions(EXAMPLE_QUESTIONS)
    pixel_values = processor.images(images)  # (2, C, S, S)
    return tuple(
        tensor.to(device)
        for tensor in (pixel_values, questions["input_ids"], questions["attention_mask"])
    )


def export_onnx(
    model: HybridVQAModel,
    processor: HybridVQAProcessor,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> Export:
    """Write ``model`` in its current fusion mode and k as ``out/model.onnx``, checked with
    ``onnx.checker``, beside its config and ``processor``'s files (see the module docstring).

    The graph is traced in eval mode without gradients, so the hard and hybrid modes
    aggregate the k kept regions only; the model's train/eval mode is restored afterwards.
    ``out`` is written atomically (see :func:`staged_directory`).
    """
    require_onnx()
    import onnx

    out = Path(out)
    wrapper = ExportableVQA(model)
    inputs = example_inputs(processor, model.device)
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("length", max=processor.max_question_length)
    dynamic_shapes = {
        "pixel_values": {0: batch},
        "input_ids": {0: batch, 1: length},
        "attention_mask": {0: batch, 1: length},
    }
    training = model.training
    wrapper.eval()  # and so the model
    try:
        with staged_directory(out, overwrite) as staging:
            with torch.no_grad(), warnings.catch_warnings():
                # the names are shared by several inputs on purpose
                warnings.filterwarnings("ignore", message="# The axis name")
                program = torch.onnx.export(
                    wrapper,
                    inputs,
                    dynamo=True,
                    input_names=list(INPUT_NAMES),
                    output_names=list(wrapper.output_names()),
                    dynamic_shapes=dynamic_shapes,
                    verbose=False,  # no progress lines on stdout
                )
            program.save(staging / ONNX_FILE)
            onnx.checker.check_model(str(staging / ONNX_FILE), full_check=True)
            model.config.save_pretrained(staging)
            processor.save_pretrained(staging)
    finally:
        model.train(training)
    return Export(
        directory=out,
        model_file=out / ONNX_FILE,
        mode=model.fusion.mode,
        k=model.fusion.k,
        outputs=wrapper.output_names(),
    )


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    format: str = "onnx",
    mode: str | None = None,
    fusion: dict | None = None,
    overwrite: bool = False,
) -> Export:
    """Export the model of the run (or model) directory ``run`` into ``out`` in ``format``.

    ``mode`` and ``fusion`` (``HybridVQAModel.set_fusion``'s ``k``, ``k_rule``, ``k_min``,
    ``k_max``, ``top_p``) override the run's fusion settings for the exported graph. The
    format, the exporter's packages and ``out`` are checked before the model is loaded (on the
    CPU).
    """
    check_format(format)
    require_onnx()
    check_destination(Path(out), overwrite)
    model, processor = load_model(run, "cpu")
    model.set_fusion(mode=mode, **(fusion or {}))
    return export_onnx(model, processor, out, overwrite=overwrite)
