"""`fastelectra export BUNDLE OUT.onnx [--pooling ..] [--normalize] [--text-input]`."""

from __future__ import annotations

import argparse
import json
import sys

from fastelectra.workdirs import cleanup_on_signals

POOLING_CHOICES = ("pooled", "cls", "mean")  # fastelectra.bundle.POOLINGS, without importing it


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="a bundle directory (any precision)")
    parser.add_argument("out", help="the .onnx file to write")
    parser.add_argument(
        "--pooling",
        choices=POOLING_CHOICES,
        default=None,
        help="pooling inside the graph (default: the bundle's, as embed and serve use)",
    )
    parser.add_argument(
        "--normalize", action="store_true", help="L2-normalise the vectors inside the graph"
    )
    parser.add_argument(
        "--text-input",
        action="store_true",
        help="take strings: the model card's tokenizer inside the graph (onnxruntime-extensions "
        "operators; install fastelectra[export])",
    )


@cleanup_on_signals()
def run_export(args: argparse.Namespace) -> int:
    from fastelectra.export.model import ExportOptions, export_model

    options = ExportOptions(args.pooling, args.normalize, args.text_input)
    props = export_model(args.bundle, args.out, options)
    figures = props["verification"]
    print(
        f"wrote {args.out}: {props['input']} in, {props['pooling']} pooling"
        f"{', normalised' if props['normalize'] else ''}; against Encoder.embed on "
        f"{figures['texts']} texts: max |diff| {figures['max_abs_diff']:.2e}, "
        f"min cosine {figures['min_cosine']:.6f}",
        file=sys.stderr,
    )
    print(json.dumps({k: v for k, v in props.items()}, indent=2))
    return 0
