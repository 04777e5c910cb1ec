"""`fastelectra embed BUNDLE`: texts in (one per line), embeddings out, in bounded memory.

    fastelectra embed bundles/minilm --input corpus.txt --output corpus.npy --pooling mean

The input is read in chunks of `CHUNK_LINES` lines; each chunk is embedded and written before
the next is read, so memory stays bounded whatever the corpus size. Line i of the input (an
empty line too: it embeds as an empty text, ``[CLS] [SEP]``) is row i of the output.

A file output is written to a temporary file beside it and renamed into place at the end
(`writers`): an error or an interrupt leaves no half-written file, and an existing file
untouched. `fastelectra embed --ray` is not this module's: the command line (`fastelectra.cli`)
hands the corpus to Ray Data (`fastelectra.scale.cli`) before the runtime is asked.

This module is imported by every `fastelectra` command (see `fastelectra.cli`), so it imports
nothing heavy at module level; it never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastelectra.errors import InputError, UsageError
from fastelectra.runtime.lines import STDIO, read_line_chunks
from fastelectra.runtime.progress import text_bar
from fastelectra.runtime.writers import make_writer, open_output
from fastelectra.workdirs import cleanup_on_signals

if TYPE_CHECKING:
    import numpy as np

    from fastelectra.runtime.encoder import Encoder

# Lines embedded per step: large enough that length-sorted batching has texts to sort, small
# enough that a chunk's vectors (4096 × 1024 floats = 16 MB for ELECTRA-large) stay small.
CHUNK_LINES = 4096
OUTPUT_FORMATS = (".npy", ".jsonl")
PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt")


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
        help="the model's pooled_output, the [CLS] vector, or the mean over tokens (default: "
        "the bundle's, mean unless built otherwise; the same for embed, serve and the API)",
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


@cleanup_on_signals()  # SIGTERM removes the partial output before the process ends
def run_embed(args: argparse.Namespace) -> int:
    check_local_options(args)
    return embed_lines(args)


def check_local_options(args: argparse.Namespace) -> None:
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
    from fastelectra.runtime.encoder import Encoder, TruncationWarning

    input_name = "<stdin>" if args.input == STDIO else args.input
    output = None if args.output == STDIO else args.output  # None: stdout
    with open_input(args.input) as source, open_output(output) as sink:
        encoder = Encoder.load(
            args.bundle, providers=args.providers, threads=args.threads, max_length=args.max_length
        )
        writer = make_writer(output, sink, encoder.hidden, args.include_text)
        total = count_lines(args.input) if progress_wanted(args.quiet) else None
        with text_bar(total, None if args.quiet else sys.stderr) as advance:
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
                # One summary of the truncations replaces one warning per chunk.
                for w in caught:
                    if isinstance(w.message, TruncationWarning):
                        truncated += w.message.count
                    else:
                        other_warnings.setdefault(str(w.message), w)
                writer.write(start, texts, vectors)
                advance(len(texts))
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
            f"({args.pooling or encoder.meta.pooling} pooling"
            f"{', normalized' if args.normalize else ''}) to {args.output}",
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


def progress_wanted(quiet: bool) -> bool:
    # A bar is for a person watching a terminal, not for a log file or a pipe.
    return not quiet and sys.stderr.isatty()
