"""How fastelectra reads a text file: one rule, followed by every command that takes texts.

`build --verify-texts`, `build --calibration-texts`, `embed --input`, Ray Data's text input
(`fastelectra.scale.ray_data`), the bench's traffic file and the packaged text sets all read
through this module, so one file gives each of them the same texts:

* The bytes are UTF-8. A line that is not raises `TextFileError` naming the file and the line;
  nothing is dropped or repaired unless the caller asks (`embed --errors replace` gives U+FFFD).
* A line ends at "\\n" or "\\r\\n" and nowhere else: U+2028, U+0085, a form feed or a lone "\\r"
  stay inside the text (`str.splitlines()` would cut there). The last line needs no "\\n". A
  UTF-8 byte-order mark at the start of the file is dropped (editors add one; it is no text).
* A TAB separates the two texts of a pair, for readers that take pairs (`read_texts`:
  verification, calibration); a line with more than one TAB is an error there. Readers of
  single texts (embed, Ray Data, traffic) take the whole line as the text, TABs included.
* Empty lines: `read_line_chunks` (embed, Ray Data) keeps every line, an empty one as an empty
  text, so that line i of the input is row i of the output. `read_texts` and
  `read_single_texts` (verification, calibration, traffic) skip blank lines, those of nothing
  but whitespace: there is nothing in them to verify, calibrate or time.

Runtime code, so it imports nothing from `fastelectra.convert`; conversion may import it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastelectra.errors import InputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    TextSource = str | Path | Traversable  # a file, or one shipped in the package

UTF8_BOM = b"\xef\xbb\xbf"
# A command line's name for standard input (or output): `embed --input -`.
STDIO = "-"
PAIR_SEPARATOR = "\t"

Text = tuple[str, str | None]  # a text, or the two texts of a pair


class TextFileError(InputError):
    """A text file that breaks the reading rule: not UTF-8, a line of three texts, no texts."""


def read_line_chunks(
    stream: BinaryIO, name: str, chunk_lines: int, errors: str = "strict", hint: str = ""
) -> Iterator[tuple[int, list[str]]]:
    """``(index of the chunk's first line, its texts)`` for each `chunk_lines` lines; every
    line is a text, an empty one too."""
    start = 0
    while raw := list(itertools.islice(stream, chunk_lines)):
        texts = [decode_line(line, start + i + 1, name, errors, hint) for i, line in enumerate(raw)]
        yield start, texts
        start += len(texts)


def numbered_lines(
    stream: BinaryIO, name: str, errors: str = "strict", hint: str = ""
) -> Iterator[tuple[int, str]]:
    """``(line number from 1, text)`` for every line of `stream`."""
    for number, line in enumerate(stream, 1):  # a binary file iterates on b"\n" alone
        yield number, decode_line(line, number, name, errors, hint)


def decode_line(line: bytes, number: int, name: str, errors: str = "strict", hint: str = "") -> str:
    """Line `number` (from 1) as text, without its line ending; invalid UTF-8 raises
    `TextFileError` naming the line, with `hint` (what the caller can do about it) appended."""
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if number == 1:
        line = line.removeprefix(UTF8_BOM)
    try:
        return line.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        where = f"{name}: line {number} is not valid UTF-8 ({e.reason} at byte {e.start + 1} of the line)"
        raise TextFileError(f"{where}; {hint}" if hint else where) from None


def is_blank(line: str) -> bool:
    """Nothing but whitespace (or nothing at all): a line the skipping readers pass over."""
    return not line.strip()


def split_pair(line: str, number: int, name: str) -> Text:
    """A line as ``(text, None)``, or ``(text, pair)`` where a TAB separates the two."""
    parts = line.split(PAIR_SEPARATOR)
    if len(parts) > 2:
        raise TextFileError(f"{name}: line {number} has {len(parts) - 1} tabs (at most 1: a pair)")
    return parts[0], parts[1] if len(parts) == 2 else None


def read_texts(source: TextSource, name: str | None = None) -> list[Text]:
    """The texts and pairs of a file, blank lines skipped; a file without any is an error."""
    where = name or str(source)
    texts = [split_pair(line, number, where) for number, line in _filled_lines(source, where)]
    if not texts:
        raise TextFileError(f"{where}: no texts")
    return texts


def read_single_texts(source: TextSource, name: str | None = None) -> list[str]:
    """The texts of a file, one per line (TABs part of it), blank lines skipped; none is an
    error."""
    where = name or str(source)
    texts = [line for _, line in _filled_lines(source, where)]
    if not texts:
        raise TextFileError(f"{where}: no texts")
    return texts


def _filled_lines(source: TextSource, name: str) -> Iterator[tuple[int, str]]:
    with _open(source, name) as stream:
        for number, line in numbered_lines(stream, name):
            if not is_blank(line):
                yield number, line


@contextlib.contextmanager
def _open(source: TextSource, name: str) -> Iterator[BinaryIO]:
    path = Path(source) if isinstance(source, str) else source
    try:
        stream = path.open("rb")
    except OSError as e:
        raise TextFileError(f"{name}: cannot read texts ({e.strerror})") from e
    with stream:
        yield stream
