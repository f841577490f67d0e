"""Reading large JSON files one entry at a time, and small ones whole, with errors that name
the file, line and column.

The official VQA annotations are a single JSON object of about 330 MB; :func:`stream_entries`
reads its big list in chunks (:class:`JSONReader`), so the whole text and its parsed tree never
sit in memory together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from vqa.data.formats import DatasetFormatError

CHUNK_CHARS = 1 << 20  # characters read from a JSON file at a time
MAX_ENTRY_CHARS = 16 << 20  # a JSON value still incomplete after this many characters is malformed
JSON_KINDS = {"[": "list", '"': "str", "t": "bool", "f": "bool", "n": "None"}
NUMBER_TAIL = set("0123456789.eE+-") | {""}  # what may continue a number, or the text's end
WHITESPACE = re.compile(r"[ \t\n\r]*")
DECODER = json.JSONDecoder()


def read_json(path: Path) -> dict:
    """A (small) JSON object from ``path``; DatasetFormatError naming the file, line and column."""
    try:
        with path.open(encoding="utf-8") as file:
            value = json.load(file)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        where = f"{path}:{error.lineno}:{error.colno}"
        raise DatasetFormatError(f"{where}: malformed JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


class JSONReader:
    """JSON text read from ``file`` in chunks and decoded one value at a time.

    Only the text not yet decoded is kept; errors name the file, line and column like
    ``json.load``'s.
    """

    def __init__(self, file: TextIO, path: Path) -> None:
        self.file, self.path = file, path
        self.text, self.pos, self.eof = "", 0, False
        self.lines_before, self.column_before = 0, 0  # where the kept text starts in the file

    def fill(self) -> bool:
        """Drop the text decoded so far and append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        done = self.text[: self.pos]
        if "\n" in done:
            self.lines_before += done.count("\n")
            self.column_before = len(done) - done.rfind("\n") - 1
        else:
            self.column_before += len(done)
        chunk = self.file.read(CHUNK_CHARS)
        self.text, self.pos, self.eof = self.text[self.pos :] + chunk, 0, not chunk
        return bool(chunk)

    def peek(self) -> str:
        """The next character that is not white space, not consumed; '' at the end."""
        while True:
            self.pos = WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self.fill():
                return self.text[self.pos : self.pos + 1]

    def take(self, expected: str, message: str) -> str:
        """Consume the next character, one of ``expected``; else raise ``message`` there."""
        character = self.peek()
        if not character or character not in expected:
            raise self.error(message)
        self.pos += 1
        return character

    def value(self) -> object:
        """Decode and consume the next value."""
        self.peek()
        while True:
            try:
                value, end = DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                if self.eof or len(self.text) - self.pos > MAX_ENTRY_CHARS:
                    raise self.error(error.msg, error.pos) from None
                self.fill()
                continue
            # A number cut by the end of a chunk ("12" of "12.5") decodes too: trust a number
            # only once a character that cannot continue it follows.
            cut = isinstance(value, (int, float)) and self.text[end : end + 1] in NUMBER_TAIL
            if self.eof or not cut:
                self.pos = end
                return value
            self.fill()

    def error(self, message: str, position: int | None = None) -> DatasetFormatError:
        """A DatasetFormatError for ``message`` at ``position`` (default: the current one)."""
        position = self.pos if position is None else position
        before = self.text[:position]
        line = self.lines_before + before.count("\n") + 1
        if "\n" in before:
            column = position - before.rfind("\n")
        else:
            column = self.column_before + position + 1
        return DatasetFormatError(f"{self.path}:{line}:{column}: malformed JSON ({message})")


def stream_entries(path: Path, key: str, header: dict) -> Iterator[object]:
    """The entries of the list ``key`` of the JSON object in ``path``, one at a time.

    The object's other values (``data_subtype``, ``info``, ...) are stored in ``header`` as they
    are read, before or after the list.

    Raises:
        DatasetFormatError: no such file, malformed JSON (file:line:column), not an object, or
            no list ``key``.
    """
    try:
        file = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such file") from None
    with file:
        reader = JSONReader(file, path)
        first = reader.peek()
        if first != "{":
            kind = JSON_KINDS.get(first, "number" if first in "-0123456789" and first else None)
            if kind is None:
                raise reader.error("Expecting value")
            raise DatasetFormatError(f"{path}: expected a JSON object, got {kind}")
        reader.pos += 1
        found = False
        if reader.peek() == "}":
            reader.pos += 1
        else:
            while True:
                name = reader.value()
                if not isinstance(name, str):
                    raise reader.error("Expecting property name enclosed in double quotes")
                reader.take(":", "Expecting ':' delimiter")
                if name != key:
                    header[name] = reader.value()
                elif reader.peek() == "[":
                    found = True
                    reader.pos += 1
                    if reader.peek() == "]":
                        reader.pos += 1
                    else:
                        yield reader.value()
                        while reader.take(",]", "Expecting ',' delimiter") == ",":
                            yield reader.value()
                else:
                    break
                if reader.take(",}", "Expecting ',' delimiter") == "}":
                    break
        if not found:
            raise DatasetFormatError(f"{path}: no {key!r} list (not an official VQA {key} file?)")
        if reader.peek():
            raise reader.error("Extra data")


def checked_entries(path: Path, key: str, fields: tuple[str, ...], header: dict) -> Iterator[dict]:
    """:func:`stream_entries`, each an object that has ``fields``; errors name the entry."""
    for index, item in enumerate(stream_entries(path, key, header)):
        missing = [field for field in fields if not isinstance(item, dict) or field not in item]
        if missing:
            raise DatasetFormatError(f"{path}: {key}[{index}] has no {', '.join(missing)}")
        yield item
