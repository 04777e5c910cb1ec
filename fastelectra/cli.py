"""The `fastelectra` command line: a thin layer over the Python API.

Each subcommand lives in a small function that imports what it needs, so `fastelectra info`
or `fastelectra embed` never load TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from fastelectra.errors import FastElectraError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _parser() -> argparse.ArgumentParser:
    from fastelectra.bundle import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="fastelectra",
        description="Optimised ONNX Runtime bundles for TF Hub BERT-family encoders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="convert a SavedModel / TF Hub module into a verified bundle")
    p.add_argument("source", help="SavedModel dir, .tar.gz module, TF Hub handle, or a preset name")
    p.add_argument("-o", "--out", required=True, help="bundle directory to write")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
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

    p = sub.add_parser("verify", help="re-check a bundle against its TensorFlow original")
    p.add_argument("bundle")
    p.add_argument("--source", required=True)
    p.add_argument("--verify-texts")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("info", help="show a bundle's metadata and verification figures")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("reference", help="build (or find cached) a reference module")
    p.add_argument("preset", help="a preset: tiny, base, electra-large, minilm, tiny-2020, ...")
    p.add_argument("--tar-gz", action="store_true", help="the compressed TF Hub form")

    for name, fn in _EXTRA_PARSERS.items():
        fn(sub.add_parser(name, help=_EXTRA_HELP[name]))
    return parser


# Subcommands defined in other modules register a parser builder here.
_EXTRA_PARSERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}
_EXTRA_HELP: dict[str, str] = {}


@command("build")
def _build(args: argparse.Namespace) -> int:
    from fastelectra.convert.build import build
    from fastelectra.convert.resolve import resolve_source

    build(
        resolve_source(args.source),
        args.out,
        precision=args.precision,
        verify_texts=args.verify_texts,
        calibration_texts=args.calibration_texts,
        calibration_method=args.calibration_method,
        force=args.force,
        route=args.route,
        int8_search=args.int8_search,
        verbose=args.verbose,
    )
    return 0


@command("verify")
def _verify(args: argparse.Namespace) -> int:
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


@command("info")
def _info(args: argparse.Namespace) -> int:
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
    print(f"files       {', '.join(sorted(meta.files))}")
    print(f"versions    {meta.tool_versions}")
    if bundle.verification:
        from fastelectra.convert.verify import format_report

        print(format_report(bundle.verification))
    return 0


@command("reference")
def _reference(args: argparse.Namespace) -> int:
    from fastelectra.convert.presets import PRESETS, preset_module

    if args.preset not in PRESETS:
        print(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    print(preset_module(args.preset, tar_gz=args.tar_gz))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _load_extra_commands()
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except (FastElectraError, OSError) as e:
        # Known failures (bad source, failed gate, damaged bundle) get one clear line; any
        # other exception is a bug, and its traceback is what a report of it needs.
        print(f"fastelectra {args.command}: error: {e}", file=sys.stderr)
        return 1


def _load_extra_commands() -> None:
    """Import modules that add subcommands (kept out of this file to keep it thin)."""
    import importlib

    for module in (
        "fastelectra.runtime.cli",
        "fastelectra.bench.cli",
        "fastelectra.serve.cli",
        "fastelectra.scale.cli",
    ):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not (e.name and module.startswith(e.name)):
                raise  # a real missing dependency inside an existing module


def register_subcommand(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None], run: Command
) -> None:
    _EXTRA_PARSERS[name] = configure
    _EXTRA_HELP[name] = help
    _COMMANDS[name] = run


if __name__ == "__main__":
    # `python -m fastelectra.cli` runs this file as __main__, a second copy of the module:
    # subcommand modules register into `fastelectra.cli`, so run that copy's main.
    from fastelectra.cli import main as registered_main

    sys.exit(registered_main())
