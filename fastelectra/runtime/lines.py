"""Texts one per line, read as bytes: line i of the file is text i.

Lines are split on b"\\n" alone (so a text may hold any other character Unicode calls a line
break: U+2028, form feed, ...), lose their line ending (LF or CRLF), and the first loses a
UTF-8 byte-order mark (editors add one; it is no part of the text). An empty line is an empty
text. Shared by `fastelectra embed` and `fastelectra.scale.ray_data`, so both number rows alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import BinaryIO

from fastelectra.errors import InputError

UTF8_BOM = b"\xef\xbb\xbf"


def read_line_chunks(
    stream: BinaryIO, name: str, chunk_lines: int, errors: str = "strict", hint: str = ""
) -> Iterator[tuple[int, list[str]]]:
    """``(index of the chunk's first line, its texts)`` for each `chunk_lines` lines."""
    start = 0
    while raw := list(itertools.islice(stream, chunk_lines)):
        texts = [decode_line(line, start + i + 1, name, errors, hint) for i, line in enumerate(raw)]
        yield start, texts
        start += len(texts)


def decode_line(line: bytes, number: int, name: str, errors: str = "strict", hint: str = "") -> str:
    """Line `number` (from 1) as text; invalid UTF-8 raises `ValueError` naming the line, with
    `hint` (what the caller can do about it) appended."""
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if number == 1:
        line = line.removeprefix(UTF8_BOM)
    try:
        return line.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        where = f"{name}: line {number} is not valid UTF-8 ({e.reason} at byte {e.start + 1} of the line)"
        raise InputError(f"{where}; {hint}" if hint else where) from None
