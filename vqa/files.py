"""Atomic file writes: write beside the target, then rename, so no reader sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating its directory if needed.

    The text goes to a uniquely named file beside ``path`` (``os.replace`` is atomic only within
    one file system, and two processes may write the same target), which then replaces it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically (numbers like numpy's as floats)."""
    write_text_atomic(path, json.dumps(value, indent=2, default=float, ensure_ascii=False) + "\n")
