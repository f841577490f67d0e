"""Atomic file writes: write beside the target, then rename, so no reader sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating its directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically (numbers like numpy's as floats)."""
    write_text_atomic(path, json.dumps(value, indent=2, default=float) + "\n")
