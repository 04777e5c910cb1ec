"""The `fastelectra` command line: a thin layer over the Python API.

`SUBCOMMANDS` is the whole list of subcommands: each names the function that adds its
arguments and the one that runs it. Those of a feature (embed, bench, serve, export-triton)
live in the feature's own `cli` module; like this one, those modules import nothing heavy at
module level, and each run function imports what it needs, so `fastelectra info` or
`fastelectra embed` never load TensorFlow (tests/test_embed_cli.py checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastelectra.bench.cli import add_bench_arguments, run_bench
from fastelectra.errors import FastElectraError, UsageError
from fastelectra.export.cli import add_export_arguments, run_export
from fastelectra.precisions import SMOOTHING_OFF
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


def _add_build_arguments(p: argparse.ArgumentParser) -> None:
    from fastelectra.bundle import PRECISIONS

    p.add_argument("source", help="SavedModel dir, .tar.gz module, TF Hub handle, or a preset name")
    p.add_argument("-o", "--out", required=True, help="bundle directory to write")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=(*PRECISIONS, "auto"),
        help="auto: build fp32 and int8-dynamic, time both here, keep the fastest that passes",
    )
    p.add_argument(
        "--target-shape",
        action="append",
        metavar="BATCHxSEQ",
        help="with --precision auto: a shape to time at (repeatable; default 1x16 and 1x128)",
    )
    p.add_argument("--verify-texts", help="texts to verify on: one per line, TAB between a pair")
    p.add_argument("--calibration-texts", help="texts for int8-static calibration (one per line)")
    p.add_argument(
        "--calibration-method", default="minmax", choices=("minmax", "entropy", "percentile")
    )
    p.add_argument("--route", default="hollow", choices=("hollow", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="write the bundle even if a gate fails")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show TensorFlow's, tf2onnx's and onnxruntime's own output (kept aside otherwise)",
    )
    p.add_argument(
        "--no-int8-search",
        dest="int8_search",
        action="store_false",
        help="int8: quantise every MatMul/Attention instead of searching which must stay FP32",
    )
    p.add_argument(
        "--int8-smoothing",
        type=_smoothing_alpha,
        default=None,
        metavar="ALPHA|off",
        help="int8: SmoothQuant migration strength, activation outliers moved into the weights "
        "before quantising (default: the precision's own, 0.75 int8-dynamic, 0.5 int8-static; "
        "off: quantise the fused graph as it is)",
    )


def _smoothing_alpha(text: str) -> float | str:
    if text == SMOOTHING_OFF:
        return SMOOTHING_OFF
    try:
        alpha = float(text)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'off', got {text!r}")
    return alpha


def _add_embed_arguments(p: argparse.ArgumentParser) -> None:
    add_embed_arguments(p)  # the runtime's streaming embed
    add_ray_embed_arguments(p)  # --ray, --replicas: scale-out, chosen here, not by the runtime


def _add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle")
    p.add_argument("--source", required=True)
    p.add_argument("--verify-texts")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")


def _add_reference_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="a preset: tiny, base, electra-large, minilm, tiny-2020, ...")
    p.add_argument("--tar-gz", action="store_true", help="the compressed TF Hub form")


def _run_build(args: argparse.Namespace) -> int:
    from fastelectra.convert.build import build
    from fastelectra.convert.resolve import resolve_source

    options = dict(
        verify_texts=args.verify_texts,
        calibration_texts=args.calibration_texts,
        calibration_method=args.calibration_method,
        force=args.force,
        route=args.route,
        int8_search=args.int8_search,
        int8_smoothing=args.int8_smoothing,
        verbose=args.verbose,
    )
    if args.precision == "auto":
        from fastelectra.convert.auto import DEFAULT_SHAPES, build_auto, parse_shape

        shapes = [parse_shape(s) for s in args.target_shape] if args.target_shape else None
        bundle = build_auto(
            resolve_source(args.source), args.out, shapes or DEFAULT_SHAPES, **options
        )
        print(_auto_summary(bundle.meta.auto), file=sys.stderr)
        return 0
    if args.target_shape:
        raise UsageError("--target-shape is for --precision auto")
    build(resolve_source(args.source), args.out, precision=args.precision, **options)
    return 0


def _auto_summary(record: dict) -> str:
    """`--precision auto`'s choice and the figures behind it, for the terminal and `info`."""
    from fastelectra.cpu import isa_missing_here

    lines = [
        f"auto        chose {record['chosen']} on {record['cpu'].get('model', '?')} "
        f"({', '.join(record['cpu'].get('isa', []))})"
    ]
    for name, figures in record["candidates"].items():
        if figures.get("passed"):
            times = ", ".join(f"{shape} {ms:.2f} ms" for shape, ms in figures["p50_ms"].items())
            lines.append(f"            {name}: p50 {times}")
        else:
            lines.append(f"            {name}: failed its gate ({'; '.join(figures['failures'])})")
    missing = isa_missing_here(record.get("cpu"))
    if missing:
        lines.append(
            f"            this CPU lacks {', '.join(missing)}: the choice may not hold here"
        )
    return "\n".join(lines)


def _run_verify(args: argparse.Namespace) -> int:
    from fastelectra.bundle import load_bundle
    from fastelectra.convert.build import verify_model
    from fastelectra.convert.resolve import resolve_source
    from fastelectra.convert.source import load_source
    from fastelectra.convert.verify import default_texts, format_report, tensorflow_runner
    from fastelectra.runtime.lines import read_texts

    bundle = load_bundle(args.bundle)
    texts = read_texts(args.verify_texts) if args.verify_texts else default_texts()
    src = load_source(resolve_source(args.source))
    report = verify_model(
        tensorflow_runner(src),
        bundle.model_path,
        bundle.tokenizer_path,
        bundle.meta.precision,
        texts,
        max_length=bundle.meta.max_sequence_length,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["passed"] else 1


def _run_info(args: argparse.Namespace) -> int:
    from fastelectra.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    meta = bundle.meta
    if args.json:
        print(json.dumps({"meta": meta.to_json(), "verification": bundle.verification}, indent=2))
        return 0
    d = meta.dimensions
    print(f"bundle      {bundle.path}")
    print(f"source      {meta.source}")
    print(f"precision   {meta.precision}")
    print(
        f"dimensions  {d.layers} layers, hidden {d.hidden}, {d.heads} heads, FFN {d.intermediate}, "
        f"vocab {d.vocab_size}, max positions {d.max_positions} ({d.params / 1e6:.1f}M params)"
    )
    print(f"fused ops   {meta.fused_ops}")
    if meta.quantization:
        print(f"quantized   {meta.quantization}")
    if meta.auto:
        print(_auto_summary(meta.auto))
    print(f"files       {', '.join(sorted(meta.files))}")
    print(f"versions    {meta.tool_versions}")
    if bundle.verification:
        from fastelectra.convert.verify import format_report

        print(format_report(bundle.verification))
    return 0


def _run_reference(args: argparse.Namespace) -> int:
    from fastelectra.convert.presets import PRESETS, preset_module

    if args.preset not in PRESETS:
        print(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    print(preset_module(args.preset, tar_gz=args.tar_gz))
    return 0


# In the order `fastelectra --help` lists them.
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "build",
        "convert a SavedModel / TF Hub module into a verified bundle",
        _add_build_arguments,
        _run_build,
    ),
    Subcommand(
        "verify",
        "re-check a bundle against its TensorFlow original",
        _add_verify_arguments,
        _run_verify,
    ),
    Subcommand(
        "info", "show a bundle's metadata and verification figures", _add_info_arguments, _run_info
    ),
    Subcommand(
        "reference",
        "build (or find cached) the module of a preset",
        _add_reference_arguments,
        _run_reference,
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
        run_bench,
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
