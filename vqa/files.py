"""Atomic file writes: write beside the target, then rename, so no reader sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
    """The process's umask: from /proc where Linux shows it, else by setting it and setting it
    straight back (a moment in which another thread could create a file with 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
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


def check_destination(out: Path, overwrite: bool = False) -> None:
    """Raise FileExistsError when ``out`` is a file, or a directory with files in it and
    ``overwrite`` is False."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; pass --overwrite (overwrite=True) "
            "to replace it"
        )


@contextlib.contextmanager
def staged_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh directory to write ``out``'s files in; it becomes ``out`` once the block ends
    without an error, and is deleted after an error, so ``out`` is complete or untouched.

    Raises FileExistsError when ``out`` exists and is not an empty directory, unless
    ``overwrite`` (then the old ``out`` is replaced, and deleted only once the new one is there).
    """
    out = Path(os.path.abspath(out))
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private
        yield staging
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(trash / "old", out)
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a success
