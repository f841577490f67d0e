"""The Gradio app: ask questions about images and see which regions the model looked at.

``build_app(model_dir)`` returns a ``gr.Blocks`` and ``serve(model_dir)`` launches it. The
pieces are plain functions over one shared :class:`AppModel` (``answer``, ``compare``,
``attention_overlay``, ``regions_table``, ``model_info``), so the tests call them directly as
well as through a running server. Modules: ``inputs`` (the checks of a request), ``views``
(what a prediction looks like) and ``ui`` (the model, the handlers and the page).
"""

from vqa.app.inputs import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    MAX_QUESTION_CHARS,
    check_inputs,
    check_k,
    check_mode,
    check_question,
    open_upload,
    prepare_image,
)
from vqa.app.ui import (
    MAX_FILE_SIZE,
    AppModel,
    answer,
    build_app,
    compare,
    find_examples,
    launch,
    serve,
)
from vqa.app.views import (
    answer_confidences,
    attention_overlay,
    model_info,
    regions_table,
)

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "MAX_QUESTION_CHARS",
    "AppModel",
    "answer",
    "answer_confidences",
    "attention_overlay",
    "build_app",
    "check_inputs",
    "check_k",
    "check_mode",
    "check_question",
    "compare",
    "find_examples",
    "launch",
    "model_info",
    "open_upload",
    "prepare_image",
    "regions_table",
    "serve",
]
