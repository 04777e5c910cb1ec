"""The conversion commands: `build`, `verify`, `info` and `reference`.

Like every feature's `cli` module, it imports nothing heavy at module level: each run function
imports what it needs, so `fastelectra info` never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys

from fastelectra.errors import UsageError
from fastelectra.precisions import FP32, PRECISIONS, SMOOTHING_OFF, as_precision


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="SavedModel dir, .tar.gz module, TF Hub handle, or a preset name")
    p.add_argument("-o", "--out", required=True, help="bundle directory to write")
    p.add_argument(
        "--precision",
        default=FP32.name,
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
        type=smoothing_alpha,
        default=None,
        metavar="ALPHA|off",
        help="int8: SmoothQuant migration strength, activation outliers moved into the weights "
        "before quantising (default: the precision's own, 0.75 int8-dynamic, 0.5 int8-static; "
        "off: quantise the fused graph as it is)",
    )


def smoothing_alpha(text: str) -> float | str:
    if text == SMOOTHING_OFF:
        return SMOOTHING_OFF
    try:
        alpha = float(text)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'off', got {text!r}")
    return alpha


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle")
    p.add_argument("--source", required=True)
    p.add_argument("--verify-texts")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")


def add_reference_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="a preset: tiny, base, electra-large, minilm, tiny-2020, ...")
    p.add_argument("--tar-gz", action="store_true", help="the compressed TF Hub form")


def run_build(args: argparse.Namespace) -> int:
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
        print(auto_summary(bundle.meta.auto), file=sys.stderr)
        return 0
    if args.target_shape:
        raise UsageError("--target-shape is for --precision auto")
    precision = as_precision(args.precision)  # the one parse: inward, a `Precision`
    build(resolve_source(args.source), args.out, precision=precision, **options)
    return 0


def auto_summary(record: dict) -> str:
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


def run_verify(args: argparse.Namespace) -> int:
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


def run_info(args: argparse.Namespace) -> int:
    from fastelectra.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    meta = bundle.meta
    if args.json:
        print(json.dumps({"meta": meta.to_json(), "verification": bundle.verification}, indent=2))
        return 0
    d = meta.dimensions
    print(f"bundle      {bundle.path}")
    print(f"source      {meta.source}")
    print(f"precision   {meta.precision.name}")
    print(
        f"dimensions  {d.layers} layers, hidden {d.hidden}, {d.heads} heads, FFN {d.intermediate}, "
        f"vocab {d.vocab_size}, max positions {d.max_positions} ({d.params / 1e6:.1f}M params)"
    )
    print(f"fused ops   {meta.fused_ops}")
    if meta.quantization:
        print(f"quantized   {meta.quantization}")
    if meta.auto:
        print(auto_summary(meta.auto))
    print(f"files       {', '.join(sorted(meta.files))}")
    print(f"versions    {meta.tool_versions}")
    if bundle.verification:
        from fastelectra.convert.verify import format_report

        print(format_report(bundle.verification))
    return 0


def run_reference(args: argparse.Namespace) -> int:
    from fastelectra.convert.presets import PRESETS, preset_module

    if args.preset not in PRESETS:
        print(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    print(preset_module(args.preset, tar_gz=args.tar_gz))
    return 0
