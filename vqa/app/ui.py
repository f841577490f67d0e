"""The Gradio app itself: the shared model, the handlers of "Ask" and "Compare modes", and the
page (``build_app``), its launch and ``serve``."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from hybrid_attention import MODES
from vqa.app.inputs import MAX_IMAGE_SIDE, check_inputs, check_mode, open_upload
from vqa.app.views import (
    TOP_ANSWERS,
    answer_confidences,
    attention_overlay,
    model_info,
    regions_table,
)
from vqa.cache import training_data_dir
from vqa.inference import Prediction, describe_encoder_selection, load_model, predict
from vqa.processing import to_rgb

MAX_FILE_SIZE = "10mb"  # uploads above this are refused by the server
CONCURRENCY_LIMIT = 4  # requests handled at once; the rest wait in the queue
QUEUE_SIZE = 64  # waiting requests beyond this are turned away with "queue full"
CSS = "#image img { width: 100%; height: 100%; object-fit: contain; }"  # enlarge small images
EXPLANATION = """
Ask a question about an image; the model answers and shows which image regions (ViT patches)
its fusion layer attended to. **Mode** and **k** change the fusion at inference time, on the
same weights:

* **soft**: a softmax over all regions (the boxes show the k highest weights);
* **hard**: keep the k highest-scoring regions, each weighted 1/k;
* **hybrid**: keep the k highest-scoring regions, softmax-weighted among themselves.

Brighter regions got more weight; dimmed ones got little or none. A model trained with
`--attention-sink` can also put weight on no region: its region weights then sum to less than 1.
"""
ENCODER_EXPLANATION = """
This model also selects inside its vision encoder (hard and hybrid modes): after a few ViT
blocks the question (or, with EViT's question-agnostic rule, the attention of the ViT's CLS
token) keeps some of the patches for the remaining blocks, and the fusion chooses among those.
**Hatched** patches are the ones the encoder dropped.
"""
ADAPTIVE_EXPLANATION = """
This model keeps an **adaptive k**: each question keeps its own number of regions, within the
rule's bounds. Untick *adaptive k* to use the slider's fixed k instead; the details under the
answer say how many regions the question kept.
"""


class AppModel:
    """A model directory loaded once, on ``device`` (default: the best available, see
    :func:`vqa.inference.resolve_device`), and shared by every request. ``fusion`` changes how
    many regions its fusion keeps (``set_fusion``'s ``k``, ``k_rule``, ``k_min``, ``k_max``,
    ``top_p``); ``select_after``, ``encoder_k`` and ``encoder_rule`` move, resize or re-rank
    the selection in its vision encoder (see :meth:`vqa.modeling.HybridVQAModel.set_fusion`
    and ``set_encoder_selection``).

    ``predict`` switches the model's fusion mode and k for the duration of one call, so two
    requests with different settings must not run the model at the same time: a lock makes
    the model call exclusive. The call takes milliseconds, and requests still overlap in
    everything else (decoding the upload, drawing and encoding the picture, HTTP).
    """

    def __init__(
        self,
        directory: str | Path,
        device: str | torch.device | None = None,
        *,
        fusion: dict | None = None,
        select_after: int | None = None,
        encoder_k: int | float | None = None,
        encoder_rule: str | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.model, self.processor = load_model(self.directory, device)
        if fusion:
            self.model.set_fusion(**fusion)
        if any(value is not None for value in (select_after, encoder_k, encoder_rule)):
            self.model.set_encoder_selection(
                select_after=select_after, encoder_k=encoder_k, rule=encoder_rule
            )
        self._lock = threading.Lock()

    @property
    def num_regions(self) -> int:
        return self.model.config.num_regions

    @property
    def encoder_kept_limit(self) -> int | None:
        """The most k that hard and hybrid allow when the vision encoder keeps some patches."""
        return self.model.fusion_tokens() if self.selects_in_encoder else None

    @property
    def selects_in_encoder(self) -> bool:
        """Whether the vision encoder keeps some of the patches (in hard and hybrid modes)."""
        return self.model.encoder_selector is not None

    @property
    def mode(self) -> str:
        """The fusion mode the model was trained with."""
        return self.model.fusion.mode

    @property
    def k(self) -> int:
        """The model's fixed k (the one it was trained with, unless that was adaptive)."""
        return self.model.config.fusion_k

    @property
    def adaptive(self) -> str | None:
        """The model's adaptive k rule as text, e.g. "top-p 0.9 (1..16)"; None for a fixed k."""
        k = self.model.fusion.k
        return None if isinstance(k, int) else str(k)

    def predict(
        self, image: Image.Image, question: str, mode: str, k: int, adaptive: bool = False
    ) -> Prediction:
        """Answer one question with this mode and k, or with the model's adaptive k (see
        :func:`vqa.inference.predict`)."""
        k = None if adaptive and self.adaptive else k
        with self._lock:
            return predict(
                self.model, self.processor, image, question, mode=mode, k=k, top=TOP_ANSWERS
            )


def notify(notes: Sequence[str], truncated: bool, max_tokens: int) -> list[str]:
    """Show the notes as toasts; return them with the truncation note added when needed."""
    notes = list(notes)
    for note in notes:
        gr.Info(note)
    if truncated:
        note = f"The question is longer than the model reads ({max_tokens} tokens): it was cut."
        gr.Warning(note)
        notes.append(note)
    return notes


def answer(
    app_model: AppModel,
    image: Image.Image | None,
    question: str | None,
    mode: str | None,
    k: float | None,
    adaptive: bool = False,
    *,
    max_side: int = MAX_IMAGE_SIDE,
) -> tuple[dict[str, float], Image.Image, list[list], str]:
    """Handle "Ask": (top answers, attention picture, regions table, timing and notes); with
    ``adaptive``, the model's adaptive k instead of ``k``."""
    start = time.perf_counter()
    mode = check_mode(mode)
    kept = None if mode == "soft" else app_model.encoder_kept_limit
    image, question, k, notes = check_inputs(
        image, question, k, app_model.num_regions, max_side, kept
    )
    prediction = app_model.predict(image, question, mode, k, adaptive)
    picture = attention_overlay(image, prediction)
    notes = notify(notes, prediction.truncated, app_model.processor.max_question_length)
    total = 1000 * (time.perf_counter() - start)
    details = (
        f"**{prediction.milliseconds:.1f} ms** in the model, {total:.0f} ms for the request "
        f"· mode **{prediction.mode}**, k = {prediction.k}"
    )
    if prediction.kept is not None:
        details += f", kept {', '.join(map(str, prediction.kept))} of {app_model.num_regions}"
    encoder = describe_encoder_selection(prediction)
    if encoder is not None:
        details += f" · {encoder} (hatched: dropped)"
    details += "".join(f"\n\n⚠ {note}" for note in notes)
    return answer_confidences(prediction), picture, regions_table(prediction), details


def compare(
    app_model: AppModel,
    image: Image.Image | None,
    question: str | None,
    k: float | None,
    adaptive: bool = False,
    *,
    max_side: int = MAX_IMAGE_SIDE,
) -> tuple:
    """Handle "Compare modes": answers and picture per mode, then a summary table (with
    ``adaptive``, the model's adaptive k instead of ``k``).

    Returns (soft answers, soft picture, hard answers, hard picture, hybrid answers, hybrid
    picture, Markdown table of mode, answer, probability, regions and model time, and for a
    model that selects in its vision encoder, the patches it kept).
    """
    image, question, k, notes = check_inputs(
        image, question, k, app_model.num_regions, max_side, app_model.encoder_kept_limit
    )
    outputs: list = []
    columns = ["mode", "answer", "probability", "regions", "model time"]
    if app_model.selects_in_encoder:
        columns.append("patches the encoder kept")
    summary = [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
    truncated = False
    for mode in MODES:
        prediction = app_model.predict(image, question, mode, k, adaptive)
        outputs += [answer_confidences(prediction), attention_overlay(image, prediction)]
        best, probability = prediction.answers[0]
        cells = [mode, best, f"{probability:.1%}", str(len(prediction.regions))]
        cells.append(f"{prediction.milliseconds:.1f} ms")
        if app_model.selects_in_encoder:
            kept, regions = prediction.encoder_kept, app_model.num_regions
            cells.append(f"all {regions}" if kept is None else f"{len(kept)} of {regions}")
        summary.append(f"| {' | '.join(cells)} |")
        truncated = prediction.truncated
    notes = notify(notes, truncated, app_model.processor.max_question_length)
    return (*outputs, "\n".join(summary) + "".join(f"\n\n⚠ {note}" for note in notes))


def find_examples(dataset_dir: str | Path, images: int = 6, per_image: int = 2) -> list[list]:
    """[[image, question], ...] from a dataset directory, for ``gr.Examples``.

    Reads the test split (else val, else train): the first ``images`` images, and for each up
    to ``per_image`` questions of different types. Images are opened here, so the server needs
    no access to the dataset directory afterwards.
    """
    directory = Path(dataset_dir)
    splits = [directory / f"{name}.jsonl" for name in ("test", "val", "train")]
    split = next((path for path in splits if path.is_file()), None)
    if split is None:
        raise FileNotFoundError(f"{directory} has no test.jsonl, val.jsonl or train.jsonl")
    chosen: dict[str, list[dict]] = {}
    with split.open() as lines:
        for row in map(json.loads, lines):
            if row["image"] not in chosen and len(chosen) == images:
                break
            questions = chosen.setdefault(row["image"], [])
            types = {other.get("question_type") for other in questions}
            if len(questions) < per_image and row.get("question_type") not in types:
                questions.append(row)
    examples = []
    for path, rows in chosen.items():
        with Image.open(directory / path) as opened:
            image = to_rgb(opened)
            image.load()
        examples += [[image, row["question"]] for row in rows]
    return examples


def build_app(
    model_dir: str | Path,
    *,
    examples_dir: str | Path | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
    concurrency_limit: int = CONCURRENCY_LIMIT,
    device: str | torch.device | None = None,
    fusion: dict | None = None,
    select_after: int | None = None,
    encoder_k: int | float | None = None,
    encoder_rule: str | None = None,
) -> gr.Blocks:
    """The app for one model directory, with its queue set up; launch it with :func:`launch`.

    Args:
        model_dir: a training run or model directory (see :func:`vqa.inference.load_model`).
        examples_dir: a dataset directory whose test split gives the examples; default: the
            dataset the run was trained on, when it is on disk.
        max_image_side: larger images are shrunk to this many pixels on their longer side.
        concurrency_limit: requests handled at once; more wait in the queue.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:N``); default: the best
            available.
        fusion: how many regions the fusion keeps, as ``set_fusion`` takes it (``k``,
            ``k_rule``, ``k_min``, ``k_max``, ``top_p``; default: as trained).
        select_after, encoder_k, encoder_rule: move, resize or re-rank the selection in the
            vision encoder, for a model trained with one (default: as trained).
    """
    app_model = AppModel(
        model_dir,
        device,
        fusion=fusion,
        select_after=select_after,
        encoder_k=encoder_k,
        encoder_rule=encoder_rule,
    )
    examples_dir = examples_dir or training_data_dir(app_model.directory)
    examples = find_examples(examples_dir, images=4) if examples_dir else []

    def on_answer(
        image: dict | None, question: str, mode: str, k: float, adaptive: bool
    ) -> tuple[dict[str, float], Image.Image, list[list], str]:
        """Answer a question about an image with the chosen fusion mode and k."""
        with open_upload(image) as opened:
            return answer(app_model, opened, question, mode, k, adaptive, max_side=max_image_side)

    def on_compare(image: dict | None, question: str, k: float, adaptive: bool) -> tuple:
        """Answer a question about an image in soft, hard and hybrid mode."""
        with open_upload(image) as opened:
            return compare(app_model, opened, question, k, adaptive, max_side=max_image_side)

    with gr.Blocks(
        title="Hybrid-attention VQA",
        analytics_enabled=False,
        delete_cache=(3600, 86400),  # uploads and pictures go after a day (examples stay)
    ) as app:
        explanation = EXPLANATION + (ENCODER_EXPLANATION if app_model.selects_in_encoder else "")
        explanation += ADAPTIVE_EXPLANATION if app_model.adaptive else ""
        gr.Markdown("# Where did the model look?\n" + explanation)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image",
                    sources=["upload", "clipboard"],
                    height=320,
                    elem_id="image",
                )
                question = gr.Textbox(
                    label="Question",
                    placeholder="what colour is the small circle?",
                    lines=1,
                    elem_id="question",
                )
                with gr.Row():
                    mode = gr.Radio(list(MODES), value=app_model.mode, label="Mode")
                    k = gr.Slider(
                        1,
                        app_model.num_regions,
                        value=app_model.k,
                        step=1,
                        precision=0,
                        label="k (regions kept)",
                        info=f"of {app_model.num_regions}; in soft mode, how many to list",
                    )
                adaptive = gr.Checkbox(
                    value=app_model.adaptive is not None,
                    visible=app_model.adaptive is not None,
                    label=f"adaptive k: {app_model.adaptive}",
                    info="each question keeps its own number of regions (the slider is ignored)",
                )
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    compare_modes = gr.Button("Compare modes")
                if examples:
                    gr.Examples(
                        examples,
                        inputs=[image, question],
                        label="Examples from the dataset (click one, then Ask)",
                        examples_per_page=len(examples),
                    )
            with gr.Column(scale=1):
                label = gr.Label(num_top_classes=TOP_ANSWERS, label="Answer", elem_id="answer")
                picture = gr.Image(
                    label="Where the model looked", format="png", height=384, elem_id="picture"
                )
                table = gr.Dataframe(
                    headers=["rank", "box (x0, y0, x1, y1)", "weight", "sees"],
                    datatype=["number", "str", "number", "str"],
                    label="Selected regions",
                    interactive=False,
                )
                details = gr.Markdown(label="Inference time", elem_id="details")
        gr.Markdown("## Compare modes\nThe same image and question in each mode, with k above.")
        compared = []
        with gr.Row():
            for name in MODES:
                with gr.Column():
                    compared.append(gr.Label(num_top_classes=3, label=name))
                    compared.append(gr.Image(label=f"{name} attention", format="png"))
        summary = gr.Markdown()
        with gr.Accordion("Model information", open=False):
            gr.Markdown(model_info(app_model))

        gr.on(
            [ask.click, question.submit],
            on_answer,
            inputs=[image, question, mode, k, adaptive],
            outputs=[label, picture, table, details],
            api_name="answer",
            preprocess=False,  # the handler checks every input and says what is wrong
        )
        compare_modes.click(
            on_compare,
            inputs=[image, question, k, adaptive],
            outputs=[*compared, summary],
            api_name="compare",
            preprocess=False,
        )
    # gradio summarises the last 10,000 events with pandas after every event, for a monitoring
    # page that this app turns off: that work grows with uptime, so let it happen rarely.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "10000")
    app.queue(default_concurrency_limit=concurrency_limit, max_size=QUEUE_SIZE)
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_file_size: str | int = MAX_FILE_SIZE,
    quiet: bool = False,
) -> str:
    """Start serving ``app`` in a background thread; return its URL (public with ``share``).

    Binds to ``host`` (loopback unless told otherwise), refuses uploads over
    ``max_file_size``, serves no files but its own, and keeps no monitoring endpoint.
    """
    _, url, share_url = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=max_file_size,
        prevent_thread_lock=True,
        quiet=quiet,
        enable_monitoring=False,
        theme=gr.themes.Soft(),
        css=CSS,
    )
    return share_url or url


def serve(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    examples_dir: str | Path | None = None,
    share: bool = False,
    device: str | torch.device | None = None,
    fusion: dict | None = None,
    select_after: int | None = None,
    encoder_k: int | float | None = None,
    encoder_rule: str | None = None,
) -> None:
    """Build the app for ``model_dir`` and serve it until interrupted (``vqa serve``); the
    model runs on ``device`` (default: the best available), with the fusion's k changed by
    ``fusion`` and its encoder selection moved, resized or re-ranked by ``select_after`` /
    ``encoder_k`` / ``encoder_rule`` when given (see :func:`build_app`)."""
    # One request at a time holds the model (see AppModel): give it half the cores and leave
    # the rest to the web server, rather than have torch's threads spin against it.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    app = build_app(
        model_dir,
        examples_dir=examples_dir,
        device=device,
        fusion=fusion,
        select_after=select_after,
        encoder_k=encoder_k,
        encoder_rule=encoder_rule,
    )
    url = launch(app, host=host, port=port, share=share, quiet=True)
    print(f"Serving {Path(model_dir)} at {url} (Ctrl+C to stop)", flush=True)
    app.block_thread()
