"""Atomic file writes: write beside the target, then rename, so no reader sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """A file (text, or bytes with ``binary``) to write ``path`` through: it replaces ``path``
    only once the block ends without an error; after an error nothing is left behind.

    The file is uniquely named beside ``path`` (``os.replace`` is atomic only within one file
    system, and two processes may write the same target); ``path``'s directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        mode, encoding = ("wb", None) if binary else ("w", "utf-8")
        with os.fdopen(handle, mode, encoding=encoding) as file:
            yield file
        os.chmod(partial, 0o666 & ~current_umask())  # mkstemp makes it private (0600)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as file:
        file.write(text)


def write_json(path: str | Path, value: object) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically (numbers like numpy's as floats)."""
    write_text_atomic(path, json.dumps(value, indent=2, default=float, ensure_ascii=False) + "\n")
