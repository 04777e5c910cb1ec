"""`fastelectra embed BUNDLE`: texts in (one per line), embeddings out, in bounded memory.

    fastelectra embed bundles/minilm --input corpus.txt --output corpus.npy --pooling mean

The input is read in chunks of `CHUNK_LINES` lines; each chunk is embedded and written before
the next is read, so memory stays bounded whatever the corpus size. Line i of the input (an
empty line too: it embeds as an empty text, ``[CLS] [SEP]``) is row i of the output.

A file output is written to a temporary file beside it and renamed into place at the end:
an error or an interrupt leaves no half-written file, and an existing file untouched.

This module is imported by every `fastelectra` command (see `fastelectra.cli`), so it imports
nothing heavy at module level; it never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from fastelectra.errors import DependencyMissing, InputError, UsageError
from fastelectra.runtime.lines import read_line_chunks

if TYPE_CHECKING:
    import numpy as np

    from fastelectra.runtime.encoder import Encoder

# Lines embedded per step: large enough that length-sorted batching has texts to sort, small
# enough that a chunk's vectors (4096 × 1024 floats = 16 MB for ELECTRA-large) stay small.
CHUNK_LINES = 4096
OUTPUT_FORMATS = (".npy", ".jsonl")
PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt")
STDIO = "-"
# Matches the warning `Encoder._tokenize` gives for truncated texts, so that one summary
# replaces one warning per chunk. tests/test_embed_cli.py checks the two stay in step.
TRUNCATION_WARNING = re.compile(r"^(\d+) of \d+ texts were longer than max_length")


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    import inspect

    from fastelectra.runtime.encoder import LONG_MODES, POOLINGS, Encoder

    embed_defaults = inspect.signature(Encoder.embed).parameters

    parser.description = (
        "Embed texts, one per line, with a bundle. Line i of the input is row i of the output; "
        "an empty line embeds as an empty text."
    )
    parser.add_argument(
        "bundle", metavar="BUNDLE", help="bundle directory (`fastelectra build -o`)"
    )
    parser.add_argument(
        "-i",
        "--input",
        default=STDIO,
        metavar="FILE|-",
        help="text file, one text per line; - for stdin (default)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE.npy|FILE.jsonl",
        help="FILE.npy (float32 [n, hidden]) or FILE.jsonl (one {index, embedding} object per "
        "line); default: JSONL on stdout. With --ray: FILE.parquet",
    )
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=embed_defaults["pooling"].default,
        help="the model's pooled_output, the [CLS] vector, or the mean over tokens "
        "(default %(default)s)",
    )
    parser.add_argument("--normalize", action="store_true", help="scale vectors to unit length")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"texts per model run (default {embed_defaults['batch_size'].default}; with --ray, "
        "Ray mode's own)",
    )
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="CPU threads (default: all cores)"
    )
    parser.add_argument("--providers", choices=PROVIDER_CHOICES, help="default: cpu")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        metavar="N",
        help="tokens per text (default: the bundle's maximum)",
    )
    parser.add_argument(
        "--long",
        choices=LONG_MODES,
        help=f"texts over --max-length tokens: cut (truncate), fail (error), or embed whole as "
        f"overlapping windows (chunk); default {embed_defaults['long'].default}",
    )
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        help="lines that are not valid UTF-8: fail naming the line (strict, the default) or "
        "replace the bad bytes with U+FFFD (replace)",
    )
    parser.add_argument(
        "--include-text", action="store_true", help="JSONL: add each line's text to its object"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--ray",
        action="store_true",
        help="embed with Ray Data (fastelectra.scale.ray_data) into --output FILE.parquet; needs "
        "--input (a text file, one text per line, or Parquet with a text column)",
    )
    parser.add_argument(
        "--replicas",
        type=positive_int,
        metavar="N",
        help="--ray: encoder actors, each loading the bundle (default: Ray mode's own)",
    )
    # Lines per chunk; only tests need to change it (to cross chunk boundaries cheaply).
    parser.add_argument(
        "--chunk-lines", type=positive_int, default=CHUNK_LINES, help=argparse.SUPPRESS
    )


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def run_embed(args: argparse.Namespace) -> int:
    if args.ray:
        return run_ray(args)
    check_local_options(args)
    return embed_lines(args)


def check_local_options(args: argparse.Namespace) -> None:
    if args.replicas is not None:
        raise UsageError("--replicas needs --ray")
    if args.output is not None and args.output != STDIO:
        suffix = Path(args.output).suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise UsageError(
                f"--output {args.output}: unknown format {suffix or '(no extension)'!r}; "
                f"use {' or '.join(OUTPUT_FORMATS)} (or --ray for .parquet)"
            )
        if args.include_text and suffix != ".jsonl":
            raise UsageError("--include-text needs a .jsonl output")


# -- the local, streaming embed ------------------------------------------------------------


def embed_lines(args: argparse.Namespace) -> int:
    from fastelectra.runtime.encoder import Encoder

    input_name = "<stdin>" if args.input == STDIO else args.input
    with open_input(args.input) as source, open_output(args.output) as sink:
        encoder = Encoder.load(
            args.bundle, providers=args.providers, threads=args.threads, max_length=args.max_length
        )
        writer = make_writer(args.output, sink, encoder.hidden, args.include_text)
        total = count_lines(args.input) if progress_wanted(args.quiet) else None
        with progress_bar(total, args.quiet) as bar:
            truncated = 0
            other_warnings: dict[str, warnings.WarningMessage] = {}
            for start, texts in read_line_chunks(
                source,
                input_name,
                args.chunk_lines,
                args.errors or "strict",
                hint="fix the input or pass --errors replace",
            ):
                with warnings.catch_warnings(record=True) as caught:
                    # Every chunk's truncation warning, even from the same line of code.
                    warnings.simplefilter("always", UserWarning)
                    vectors = embed_chunk(encoder, texts, start, input_name, args)
                for w in caught:
                    match = TRUNCATION_WARNING.match(str(w.message))
                    if match:
                        truncated += int(match.group(1))
                    else:
                        other_warnings.setdefault(str(w.message), w)
                writer.write(start, texts, vectors)
                bar.update(len(texts))
        rows = writer.finish()
    report(args, encoder, rows, truncated, list(other_warnings.values()))
    return 0


def embed_chunk(
    encoder: Encoder, texts: list[str], start: int, input_name: str, args: argparse.Namespace
) -> np.ndarray:
    # Options not given keep `Encoder.embed`'s defaults.
    given = {"batch_size": args.batch_size, "long": args.long}
    options = {name: value for name, value in given.items() if value is not None}
    try:
        return encoder.embed(texts, pooling=args.pooling, normalize=args.normalize, **options)
    except InputError as e:
        # The encoder counts texts from 0 within the chunk; say where the chunk is.
        first, last = start + 1, start + len(texts)
        raise InputError(
            f"{input_name}, lines {first}-{last} (text indices count from line {first}): {e}"
        ) from e


def report(
    args: argparse.Namespace,
    encoder: Encoder,
    rows: int,
    truncated: int,
    other_warnings: list[warnings.WarningMessage],
) -> None:
    if truncated:
        print(
            f"fastelectra embed: warning: {truncated} of {rows} texts were longer than "
            f"max_length={encoder.max_length} tokens and were truncated; --long chunk embeds "
            "them whole in overlapping windows",
            file=sys.stderr,
        )
    for w in other_warnings:
        print(f"fastelectra embed: {w.category.__name__}: {w.message}", file=sys.stderr)
    if not args.quiet and args.output not in (None, STDIO):
        print(
            f"fastelectra embed: wrote {rows} embeddings of {encoder.hidden} floats "
            f"({args.pooling} pooling{', normalized' if args.normalize else ''}) to {args.output}",
            file=sys.stderr,
        )


# -- input ---------------------------------------------------------------------------------


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """The input as bytes: lines are split on b"\\n" alone, so a text may hold any other
    character Unicode calls a line break (U+2028, form feed, ...)."""
    if path == STDIO:
        if sys.stdin is None:  # started with stdin closed
            raise OSError("no standard input to read: give --input FILE")
        if sys.stdin.isatty():
            print("reading texts from stdin, one per line (Ctrl-D ends)", file=sys.stderr)
        yield sys.stdin.buffer
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 (closed below; a `with` cannot wrap the yield)
    except OSError as e:
        raise OSError(f"{path}: cannot read input ({e.strerror})") from e
    with stream:
        yield stream


def count_lines(path: str) -> int | None:
    """Lines in a regular file (for the progress bar's total); None for stdin or a pipe."""
    if path == STDIO or not Path(path).is_file():
        return None
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")  # a last line without a newline still counts


# -- output --------------------------------------------------------------------------------


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[BinaryIO]:
    """stdout, or a temporary file beside `path` that becomes `path` only on success."""
    if path is None or path == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
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
    if path is not None and path != STDIO and Path(path).suffix.lower() == ".npy":
        return NpyWriter(stream, hidden)
    return JsonlWriter(stream, include_text)


# -- progress ------------------------------------------------------------------------------


def progress_wanted(quiet: bool) -> bool:
    # A bar is for a person watching a terminal, not for a log file or a pipe.
    return not quiet and sys.stderr.isatty()


class Progress(Protocol):
    def update(self, n: int) -> object: ...


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int | None, quiet: bool) -> Iterator[Progress]:
    if not progress_wanted(quiet):
        yield _NoBar()
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional at run time: no bar rather than no embeddings
        yield _NoBar()
        return
    with tqdm(total=total, unit="text", file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


# -- Ray -----------------------------------------------------------------------------------


RAY_MODULE = "fastelectra.scale.ray_data"
# Options that `embed_corpus` has no parameter for, and their "not given" values.
RAY_UNSUPPORTED = {
    "--threads": ("threads", None),
    "--providers": ("providers", None),
    "--max-length": ("max_length", None),
    "--long": ("long", None),
    "--errors": ("errors", None),
    "--include-text": ("include_text", False),
}


def run_ray(args: argparse.Namespace) -> int:
    if args.input == STDIO:
        raise UsageError("--ray reads a file: give --input FILE (Ray workers cannot share stdin)")
    if args.output is None or Path(args.output).suffix.lower() != ".parquet":
        raise UsageError("--ray writes Parquet: give --output FILE.parquet")
    unsupported = [
        flag for flag, (dest, unset) in RAY_UNSUPPORTED.items() if getattr(args, dest) != unset
    ]
    if unsupported:
        raise UsageError(f"--ray does not support {', '.join(unsupported)}")
    if not Path(args.input).exists():  # a file, or a directory of Parquet files
        raise OSError(f"{args.input}: cannot read input (no such file or directory)")
    try:
        embed_corpus = importlib.import_module(RAY_MODULE).embed_corpus
    except ModuleNotFoundError as e:
        if e.name and RAY_MODULE.startswith(e.name):
            raise DependencyMissing(f"--ray: this fastelectra has no {RAY_MODULE}") from e
        raise DependencyMissing(f"--ray needs {e.name}: pip install 'ray[data]'") from e
    options: dict[str, object] = {"pooling": args.pooling, "normalize": args.normalize}
    # Batch size and replicas are throughput knobs: unless given, Ray mode keeps its own.
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.replicas is not None:
        options["replicas"] = args.replicas
    rows = embed_corpus(str(args.bundle), str(args.input), str(args.output), **options)
    if not args.quiet:
        print(f"fastelectra embed: wrote {rows} embeddings to {args.output}", file=sys.stderr)
    return 0
