"""A trained run directory as a transformers pipeline: ``import vqa.pipeline``, then

    pipe = pipeline("visual-question-answering", model=RUN, trust_remote_code=False)
    pipe(image="scene.png", question="what colour is the circle?", top_k=3)
    # [{"answer": "red", "score": 0.91}, {"answer": "blue", "score": 0.05}, ...]

Importing this module registers :class:`HybridVQAPipeline` in transformers'
``PIPELINE_REGISTRY`` for the task ``"visual-question-answering"`` (alias ``"vqa"``). Transformers
5 removed its own pipeline for that task and lists the name in ``REMOVED_TASKS``, where
``pipeline()`` refuses it before it consults the registry, so registering takes it off that
list too. No code is read from the run directory: the model and the processor are this
package's classes, loaded from safetensors and JSON by :func:`vqa.inference.load_model`, and
every question is answered by :func:`vqa.inference.predict_batch`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers.pipelines as transformers_pipelines
from PIL import Image
from transformers import Pipeline

from hybrid_attention import MODES
from vqa.configuration import HybridVQAConfig
from vqa.inference import Prediction, load_model, predict_batch
from vqa.modeling import HybridVQAModel
from vqa.processing import BAD_IMAGE_ERRORS, HybridVQAProcessor, open_image

TASK = "visual-question-answering"
ALIASES = ("vqa",)
# What transformers' pipeline() passes to from_pretrained besides the dtype; a run directory
# is local, so the hub options have nothing to choose.
HUB_OPTIONS = frozenset(
    {"_from_pipeline", "revision", "token", "trust_remote_code", "local_files_only", "cache_dir"}
)

NOT_OURS = (
    f"but the {TASK} pipeline that vqa.pipeline registers runs HybridVQAModel run directories"
)

ImageInput = Image.Image | str | Path


class RunDirectoryModel:
    """The model class the task names to transformers: loads a run directory with
    :func:`vqa.inference.load_model` (safetensors only, never a pickle), on the CPU; the
    pipeline then moves the model to its ``device``."""

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, dtype: str | torch.dtype | None = None, **options: Any
    ) -> HybridVQAModel:
        """The model of ``directory`` in eval mode, in float32 (``dtype`` None, ``"auto"`` or
        ``torch.float32``; transformers retries any other in float32, with a warning)."""
        if dtype not in (None, "auto", torch.float32):
            raise ValueError(f"{TASK} runs in float32, not dtype={dtype}")
        unknown = sorted(set(options) - HUB_OPTIONS)
        if unknown:
            raise ValueError(f"{TASK} does not take {', '.join(unknown)}")
        config = Path(directory) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type not in (None, HybridVQAConfig.model_type):
            raise ValueError(f"{directory} holds a {model_type} model, {NOT_OURS}")
        model, _ = load_model(directory, device="cpu")
        return model


class HybridVQAPipeline(Pipeline):
    """Answers questions about images with a :class:`~vqa.modeling.HybridVQAModel`.

    Built by ``pipeline("visual-question-answering", model=RUN)`` from a run directory, or
    directly from a model and its processor: ``HybridVQAPipeline(model, processor=processor)``
    (the processor defaults to the one saved beside the model, in ``model.name_or_path``).

    Call parameters (also accepted by ``pipeline()``, as defaults for every call):
        top_k: how many answers to return, best first (default 5; at most the vocabulary).
        return_regions: also return the regions the fusion selected, how many each head
            kept, and the patches the vision encoder kept (default False).
        mode, k: override the fusion mode (soft, hard, hybrid) and k for the call.
    """

    _load_processor = False  # a HybridVQAProcessor, which transformers' Auto classes do not know
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(
        self, model: HybridVQAModel, processor: HybridVQAProcessor | None = None, **kwargs: Any
    ) -> None:
        if not isinstance(model, HybridVQAModel):
            raise TypeError(f"got a {type(model).__name__}, {NOT_OURS}")
        if processor is None:
            if not model.name_or_path:
                raise ValueError("the model was not loaded from a directory: pass processor=")
            processor = HybridVQAProcessor.from_pretrained(model.name_or_path)
        # The processor's tokenizer and image processor become the pipeline's, which batching needs.
        super().__init__(model, processor=processor, **kwargs)

    def __call__(
        self,
        image: ImageInput | dict | Sequence[ImageInput] | Sequence[dict],
        question: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict] | dict | list[list[dict] | dict]:
        """Answer questions about images.

        Args:
            image: a PIL image or a path, with ``question``; or a ``{"image", "question"}`` dict,
                or a list of them (then ``batch_size=`` questions make one model call).
            question: a question, or a list of them. With one image and a list of questions,
                each is asked about the image; with a list of images and one question, it is
                asked about each; with two lists, every question about every image.
            **kwargs: ``top_k``, ``return_regions``, ``mode``, ``k`` (see the class), and the
                usual ``batch_size`` and ``num_workers``.

        Returns:
            For one question, ``[{"answer", "score"}]``, best first; with ``return_regions``,
            ``{"answers": that list, "regions": [{"rank", "region", "box", "weight"}, ...],
            "kept", "encoder_kept"}`` (as :class:`vqa.inference.Prediction` has them: regions
            best first, boxes in the image's pixels, and ``"sees"`` for models with a region
            head; how many regions each fusion head kept; the patches the vision encoder kept,
            or None). For a list of questions, a
            list of those, in order.
        """
        inputs = pair_inputs(image, question)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        return_regions: bool | None = None,
        mode: str | None = None,
        k: int | None = None,
    ) -> tuple[dict, dict, dict]:
        forward: dict[str, Any] = {}
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
            forward["top"] = top_k
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
            forward["mode"] = mode
        if k is not None:
            forward["k"] = k  # checked against the model's regions by set_fusion
        postprocess = {} if return_regions is None else {"return_regions": return_regions}
        return {}, forward, postprocess

    def preprocess(self, inputs: dict) -> dict[str, Any]:
        """``{"image", "question"}`` -> the opened image and the question."""
        if not isinstance(inputs, dict) or not {"image", "question"} <= inputs.keys():
            raise ValueError(f'{TASK} takes {{"image", "question"}} dicts, got {inputs!r:.80}')
        question = inputs["question"]
        if not isinstance(question, str):
            raise ValueError(f"the question must be a string, got {type(question).__name__}")
        return {"image": read_image(inputs["image"]), "question": question}

    def _forward(self, inputs: dict[str, Any], top: int = 5, **fusion: Any) -> dict[str, Any]:
        """One model call for one question (a str) or a batch (lists, from the DataLoader)."""
        single = isinstance(inputs["question"], str)
        images = [inputs["image"]] if single else list(inputs["image"])
        questions = [inputs["question"]] if single else list(inputs["question"])
        predictions = predict_batch(
            self.model, self.processor, images, questions, top=top, **fusion
        )
        # A batch stays a list, which transformers splits into one item per question.
        return {"prediction": predictions[0] if single else predictions}

    def postprocess(
        self, outputs: dict[str, Prediction], return_regions: bool = False
    ) -> list[dict] | dict:
        prediction = outputs["prediction"]
        answers = [{"answer": answer, "score": score} for answer, score in prediction.answers]
        if not return_regions:
            return answers
        return {
            "answers": answers,
            "regions": prediction.regions,
            "kept": prediction.kept,
            "encoder_kept": prediction.encoder_kept,
        }


def pair_inputs(
    image: ImageInput | dict | Sequence[ImageInput] | Sequence[dict],
    question: str | Sequence[str] | None,
) -> dict | list[dict]:
    """The ``{"image", "question"}`` dict(s) that ``image`` and ``question`` stand for (see
    :meth:`HybridVQAPipeline.__call__`); a list of them when either is a list. Without a
    question, ``image`` is already such a dict or a list (or a dataset, a generator) of them."""
    if question is None:
        if isinstance(image, Image.Image | str | Path):
            raise ValueError('no question: pass question=, or {"image", "question"} dicts')
        return list(image) if isinstance(image, tuple) else image
    images = image if isinstance(image, list | tuple) else None
    questions = question if isinstance(question, list | tuple) else None
    if images is None and questions is None:
        return {"image": image, "question": question}
    return [
        {"image": one_image, "question": one_question}
        for one_question in (questions or [question])
        for one_image in (images or [image])
    ]


def read_image(image: ImageInput | dict) -> Image.Image:
    """A PIL image, or the image at a path (or in a dataset's ``{"path", "bytes"}`` cell)."""
    if isinstance(image, str | Path):
        image = {"path": str(image), "bytes": None}
    if not isinstance(image, Image.Image | dict):
        raise ValueError(f"the image must be a PIL image or a path, got {type(image).__name__}")
    try:
        return open_image(image)
    except BAD_IMAGE_ERRORS as error:
        where = image.get("path") or "the image bytes"
        raise ValueError(f"image {where} does not open ({type(error).__name__}: {error})") from None


def load_pipeline(directory: str | Path, **kwargs: Any) -> HybridVQAPipeline:
    """``pipeline("visual-question-answering", model=directory, trust_remote_code=False,
    **kwargs)``, once ``directory`` is known to exist: transformers takes a path that does not
    for a Hub id, and its error then names the Hub rather than the path."""
    if not (Path(directory) / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no config.json)")
    return transformers_pipelines.pipeline(
        TASK, model=str(directory), trust_remote_code=False, **kwargs
    )


def register() -> None:
    """Make ``pipeline("visual-question-answering" | "vqa", ...)`` build a HybridVQAPipeline."""
    removed = getattr(transformers_pipelines, "REMOVED_TASKS", {})
    for task in (TASK, *ALIASES):
        removed.pop(task, None)
    for alias in ALIASES:
        transformers_pipelines.PIPELINE_REGISTRY.task_aliases[alias] = TASK
    transformers_pipelines.PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=HybridVQAPipeline, pt_model=RunDirectoryModel, type="multimodal"
    )


register()
