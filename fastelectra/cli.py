"""The `fastelectra` command line: a thin layer over the Python API.

`SUBCOMMANDS` is the whole list of subcommands: each names the function that adds its
arguments and the one that runs it, each in its feature's own `cli` module (convert: build,
verify, info, reference; runtime: embed, with scale-out's --ray chosen here; export, bench,
serve, scale: export-triton); like this one, those modules import nothing heavy at module
level, and each run function imports what it needs, so `fastelectra info` or
`fastelectra embed` never load TensorFlow (tests/test_embed_cli.py checks it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastelectra.bench.cli import add_bench_arguments, run_bench_command
from fastelectra.convert import cli as convert_cli
from fastelectra.errors import FastElectraError, UsageError
from fastelectra.export.cli import add_export_arguments, run_export
from fastelectra.runtime.cli import add_embed_arguments
from fastelectra.scale.cli import (
    add_export_triton_arguments,
    add_ray_embed_arguments,
    run_embed_here_or_on_ray,
    run_export_triton,
)
from fastelectra.serve.cli import add_serve_arguments, run_serve


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_embed_arguments(p: argparse.ArgumentParser) -> None:
    add_embed_arguments(p)  # the runtime's streaming embed
    add_ray_embed_arguments(p)  # --ray, --replicas: scale-out, chosen here, not by the runtime


# In the order `fastelectra --help` lists them.
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "build",
        "convert a SavedModel / TF Hub module into a verified bundle",
        convert_cli.add_build_arguments,
        convert_cli.run_build,
    ),
    Subcommand(
        "verify",
        "re-check a bundle against its TensorFlow original",
        convert_cli.add_verify_arguments,
        convert_cli.run_verify,
    ),
    Subcommand(
        "info",
        "show a bundle's metadata and verification figures",
        convert_cli.add_info_arguments,
        convert_cli.run_info,
    ),
    Subcommand(
        "reference",
        "build (or find cached) the module of a preset",
        convert_cli.add_reference_arguments,
        convert_cli.run_reference,
    ),
    Subcommand(
        "embed",
        "embed texts (one per line) with a bundle",
        _add_embed_arguments,
        run_embed_here_or_on_ray,
    ),
    Subcommand(
        "bench",
        "latency, throughput, memory and GEMM floor of bundles (and TF, peers, traffic)",
        add_bench_arguments,
        run_bench_command,
    ),
    Subcommand(
        "serve",
        "serve a bundle over HTTP (OpenAI and TEI embedding APIs)",
        add_serve_arguments,
        run_serve,
    ),
    Subcommand(
        "export",
        "write one ONNX file that gives embeddings (pooling, and optionally the tokenizer, inside)",
        add_export_arguments,
        run_export,
    ),
    Subcommand(
        "export-triton",
        "write a Triton Inference Server model repository for a bundle",
        add_export_triton_arguments,
        run_export_triton,
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastelectra",
        description="Optimised ONNX Runtime bundles for TF Hub BERT-family encoders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add_arguments(sub.add_parser(subcommand.name, help=subcommand.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = next(s.run for s in SUBCOMMANDS if s.name == args.command)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except UsageError as e:
        # Options that do not go together: reported like argparse's own errors.
        print(f"fastelectra {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, and point stdout at
        # /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (FastElectraError, OSError) as e:
        # Known failures (bad source, failed gate, damaged bundle) get one clear line; any
        # other exception is a bug, and its traceback is what a report of it needs.
        print(f"fastelectra {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
