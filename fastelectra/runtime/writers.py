"""Embedding files written atomically: `.npy` (float32 [rows, hidden]) or `.jsonl`.

`open_output` gives a temporary file beside the target that is renamed into place only on
success: an error or an interrupt leaves no half-written file, and an existing file untouched.
It replaces only a file of the output's own format (`output_kind`, `fastelectra.destinations`),
checked before any work and again before the rename.
The writers append one chunk of vectors at a time, so memory stays bounded whatever the row
count; `finish` returns the rows written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastelectra.destinations import FileKind, check_file, starts_with

if TYPE_CHECKING:
    import numpy as np

# numpy's .npy files begin with this (numpy.lib.format.MAGIC_PREFIX).
NPY_MAGIC = b"\x93NUMPY"
# The first line of a JSONL output (a record holds one vector) fits in this many bytes.
FIRST_LINE_BYTES = 1 << 22


def is_embeddings_jsonl(path: Path) -> bool:
    """An empty file, or one whose first line is a `JsonlWriter` record."""
    try:
        with open(path, "rb") as f:
            head = f.read(FIRST_LINE_BYTES)
    except OSError:
        return False
    if not head:
        return True
    line, newline, _ = head.partition(b"\n")
    if not newline and len(head) == FIRST_LINE_BYTES:
        return False
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and {"index", "embedding"} <= record.keys()


NPY = FileKind("a .npy file", lambda path: starts_with(path, NPY_MAGIC))
JSONL = FileKind("a JSONL file of embeddings", is_embeddings_jsonl)


def output_kind(path: str | os.PathLike[str]) -> FileKind:
    """The format `make_writer` writes to `path`: .npy, else JSONL."""
    return NPY if Path(path).suffix.lower() == ".npy" else JSONL


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[BinaryIO]:
    """stdout if `path` is None, else a temporary file beside `path` that becomes `path` only
    on success."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    kind = output_kind(target)
    check_file(target, kind)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".partial", dir=target.parent
        )
    except OSError as e:
        raise OSError(f"{path}: cannot write output ({e.strerror})") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())  # the data is on disk before the name points at it
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else default_mode())
        check_file(target, kind)  # nothing else took its place meanwhile
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class NpyWriter:
    """A float32 [rows, hidden] .npy file whose row count is known only at the end.

    numpy pads the header so that the first axis may grow to 21 digits without changing the
    header's length: write it for 0 rows, append rows, then rewrite it in place.
    """

    def __init__(self, stream: BinaryIO, hidden: int) -> None:
        self.stream = stream
        self.hidden = hidden
        self.rows = 0
        self.header_size = self._write_header(0)

    def _write_header(self, rows: int) -> int:
        import numpy as np
        from numpy.lib import format as npy

        start = self.stream.tell()
        header = {
            "descr": npy.dtype_to_descr(np.dtype("<f4")),
            "fortran_order": False,
            "shape": (rows, self.hidden),
        }
        npy.write_array_header_1_0(self.stream, header)
        return self.stream.tell() - start

    def write(self, start: int, texts: list[str], vectors: np.ndarray) -> None:
        self.stream.write(vectors.astype("<f4", copy=False).tobytes())
        self.rows += len(vectors)

    def finish(self) -> int:
        self.stream.seek(0)
        if self._write_header(self.rows) != self.header_size:
            raise RuntimeError(f"cannot write a .npy header for {self.rows} rows")
        self.stream.seek(0, os.SEEK_END)
        return self.rows


# JSON leaves these unescaped, but str.splitlines() and other Unicode-aware line readers split
# on them; escaped (they only occur inside strings), every record stays on one line for any
# reader.
UNICODE_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


class JsonlWriter:
    """One ``{"index": i, ["text": ...,] "embedding": [...]}`` line per text, in UTF-8.

    Floats are written as the shortest decimal of the float64 each float32 widens to, so
    reading them back as float32 gives the exact vectors.
    """

    def __init__(self, stream: BinaryIO, include_text: bool = False) -> None:
        self.stream = stream
        self.include_text = include_text
        self.rows = 0

    def write(self, start: int, texts: list[str], vectors: np.ndarray) -> None:
        lines = []
        for i, (text, vector) in enumerate(zip(texts, vectors.tolist(), strict=True)):
            record: dict[str, object] = {"index": start + i}
            if self.include_text:
                record["text"] = text
            record["embedding"] = vector
            lines.append(json.dumps(record, ensure_ascii=False))
        text = "\n".join(lines) + "\n"
        self.stream.write(text.translate(UNICODE_LINE_BREAKS).encode("utf-8"))
        self.stream.flush()  # a reader of stdout sees each chunk as soon as it is done
        self.rows += len(texts)

    def finish(self) -> int:
        return self.rows


def make_writer(
    path: str | None, stream: BinaryIO, hidden: int, include_text: bool
) -> NpyWriter | JsonlWriter:
    """The writer for `path`'s format: .npy, else JSONL (stdout, for None, is JSONL)."""
    if path is not None and output_kind(path) is NPY:
        return NpyWriter(stream, hidden)
    return JsonlWriter(stream, include_text)
