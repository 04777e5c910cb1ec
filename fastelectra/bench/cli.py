"""`fastelectra bench BUNDLE... [--source SOURCE] [--batch 1,8,32] [--seq 16,64,128,512] ...`

Imported by `fastelectra.cli` for every command, so only argparse work happens at import time.
TensorFlow is imported only when `--source` is given, torch (and openvino, nncf if installed)
only with `--peers`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any

from fastelectra.errors import InputError

DEFAULT_BATCHES = "1,8,32"
DEFAULT_SEQS = "16,64,128,512"

TIMING_METHOD = (
    "synthetic ids of exactly batch x seq tokens ([CLS] random-words [SEP], no padding) fed "
    "straight to the session; per cell, `warmup` untimed runs per variant, then rounds of one "
    "turn per variant (1 untimed run, 3 timed) in rotated order until the cell used "
    "`duration_s` per variant on average and at least `min_runs` runs ran; onnxruntime "
    "sessions with thread spinning off; each run returns both outputs to host memory"
)
MEMORY_METHOD = (
    "peak RSS of a fresh process per variant that imports the framework, loads the variant and "
    "runs every cell once (VmHWM); peak_over_imports subtracts the RSS after imports"
)
FLOPS_METHOD = (
    "per sequence: layers x (8·s·h² QKV+output projections + 4·s·h·ffn FFN + 4·s²·h attention "
    "scores+context) + 2·h² pooler, times batch; floor = the larger of FLOPs / GEMM rate at "
    "`threads` (INT8 variants: INT8 rate for weight products, FP32 rate for attention "
    "products; nodes a bundle keeps FP32 are not modelled) and weight bytes read per call "
    "(from the model file: FP32 4 bytes, INT8 1 byte per weight, lookup tables left out) / "
    "memory bandwidth at `threads`; `floor_bound` says which"
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories to compare")
    p.add_argument(
        "--source",
        help="also time the TensorFlow original (SavedModel, .tar.gz, hub handle or preset); "
        "with --peers, what the OpenVINO peers convert (default: the bundle's recorded source)",
    )
    p.add_argument(
        "--batch",
        type=_int_list,
        default=DEFAULT_BATCHES,
        help=f"batch sizes (default {DEFAULT_BATCHES})",
    )
    p.add_argument(
        "--seq",
        type=_int_list,
        default=DEFAULT_SEQS,
        help=f"sequence lengths (default {DEFAULT_SEQS})",
    )
    p.add_argument("--threads", type=int, help="threads per variant (default: available cores)")
    p.add_argument("--providers", help="onnxruntime providers, comma-separated (default: cpu)")
    p.add_argument(
        "--duration",
        type=_positive_float,
        default=5.0,
        help="timed seconds per variant per cell (on average; default 5)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed runs per variant per cell (default 3; peers/traffic: one pass if > 0)",
    )
    p.add_argument(
        "--min-runs", type=int, default=5, help="fewest timed runs per variant per cell (default 5)"
    )
    p.add_argument(
        "--out", help="results folder (default benchmarks/results/<date>-<cpu>/bench-<name>)"
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="compare Encoder.embed with sentence-transformers (all-MiniLM-L6-v2) and, with the "
        "openvino extra, OpenVINO FP32 / NNCF INT8 of the bundles' SavedModel, on texts",
    )
    p.add_argument(
        "--traffic",
        nargs="?",
        const="",
        metavar="FILE",
        help="dynamic batching vs fixed padding on texts (default: the packaged traffic mix)",
    )
    p.add_argument(
        "--traffic-limit",
        type=int,
        help="use N texts, evenly spaced over the file (traffic and peers)",
    )
    p.add_argument(
        "--traffic-pad", type=int, default=128, help="fixed padding (and truncation) length"
    )
    p.add_argument("--no-grid", action="store_true", help="skip the batch x seq latency grid")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory runs")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_providers(text: str | None) -> str | list[str] | None:
    if not text:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    return names[0] if len(names) == 1 else names


def default_out(names: list[str]) -> Path:
    from fastelectra.bench.machine import results_dir

    # minilm-fp32, minilm-int8-dynamic -> minilm: the leading dash-separated words they share
    columns = zip(*(name.split("-") for name in names), strict=False)
    shared = [c[0] for c in takewhile(lambda c: len(set(c)) == 1, columns)]
    prefix = "-".join(shared) or names[0]
    return results_dir() / f"bench-{prefix}"


def reproduce_command(args: argparse.Namespace) -> str:
    """The command with every setting spelled out, defaults included, for the record."""
    words = ["fastelectra", "bench", *args.bundles]
    if args.source:
        words += ["--source", args.source]
    words += ["--batch", ",".join(map(str, args.batch)), "--seq", ",".join(map(str, args.seq))]
    words += ["--threads", str(args.threads)] if args.threads else []
    words += ["--providers", args.providers] if args.providers else []
    words += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    words += ["--min-runs", str(args.min_runs)]
    words += ["--out", args.out] if args.out else []
    words += ["--peers"] if args.peers else []
    if args.traffic is not None:
        words += ["--traffic", args.traffic] if args.traffic else ["--traffic"]
        words += ["--traffic-pad", str(args.traffic_pad)]
    words += ["--traffic-limit", str(args.traffic_limit)] if args.traffic_limit else []
    words += [
        flag for flag, on in (("--no-grid", args.no_grid), ("--no-memory", args.no_memory)) if on
    ]
    return " ".join(words)


def load_variants(
    bundles: list[str], source: str | None, providers: Any, threads: int
) -> list[Any]:
    """The bundles' sessions, then the TensorFlow original, each with its RSS growth at load."""
    from fastelectra.bench.variants import OnnxVariant, TensorFlowVariant
    from fastelectra.process_memory import rss_mib

    loaders = [
        (path, partial(OnnxVariant.from_bundle, path, providers, threads)) for path in bundles
    ]
    if source:
        loaders.append((source, partial(TensorFlowVariant.load, source, threads)))
    variants = []
    for where, load in loaders:
        _progress(f"loading {where}")
        before = rss_mib()
        variant = load()
        after = rss_mib()
        if before is not None and after is not None:
            variant.load_rss_mib = round(after - before, 1)
        variants.append(variant)
    return variants


def baselines_of(variants: Sequence[Any]) -> list[str]:
    """What p50 is set against: the TensorFlow original and the first FP32 bundle, if present."""
    from fastelectra.bench.variants import TENSORFLOW

    names = [v.name for v in variants if v.framework == TENSORFLOW]
    names += [v.name for v in variants if v.precision == "fp32" and v.spec["kind"] == "bundle"][:1]
    return names


def run_bench(
    args: argparse.Namespace, extra_variants: Sequence[Any] = (), command: str | None = None
) -> int:
    """`fastelectra bench`; `extra_variants` (already loaded) join the bundles and TF, as
    benchmarks/latency.py adds the unfused export, which is no bundle."""
    from fastelectra.bench import memory, report
    from fastelectra.bench.bandwidth import buffer_bytes, measure_bandwidth
    from fastelectra.bench.cells import Cell
    from fastelectra.bench.floor import measure_rates
    from fastelectra.bench.grid import measure_grid, relative_p50
    from fastelectra.bench.plots import plot_all
    from fastelectra.bench.variants import OnnxVariant, unique_names
    from fastelectra.runtime.providers import check_threads
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    started = time.perf_counter()
    threads = args.threads = check_threads(args.threads)  # recorded resolved, not "default"
    providers = parse_providers(args.providers)
    if args.warmup < 0 or args.min_runs < 1:
        raise InputError("--warmup must be >= 0 and --min-runs >= 1")
    variants = load_variants(args.bundles, args.source, providers, threads)
    variants += extra_variants
    unique_names(variants)
    bundles = [v for v in variants if isinstance(v, OnnxVariant) and v.bundle is not None]

    cells = [] if args.no_grid else [Cell(b, s) for b in args.batch for s in args.seq]
    limit = min(
        v.max_sequence_length if isinstance(v, OnnxVariant) else v.dimensions.max_positions
        for v in variants
    )
    if cells and (max(args.seq) > limit or min(args.seq) < 2):
        raise InputError(f"--seq values must be between 2 and {limit} for these models")
    tokenizer = WordPieceTokenizer.from_file(bundles[0].bundle.tokenizer_path)
    vocab = (min(v.dimensions.vocab_size for v in variants), tokenizer.cls_id, tokenizer.sep_id)

    out = Path(args.out) if args.out else default_out([v.name for v in bundles])
    baselines = baselines_of(variants)
    results = report.new_results(
        out.name,
        command or reproduce_command(args),
        {
            "batches": args.batch,
            "seqs": args.seq,
            "threads": threads,
            "providers": providers,
            "duration_s": args.duration,
            "warmup": args.warmup,
            "min_runs": args.min_runs,
            "timing": TIMING_METHOD,
            "flops": FLOPS_METHOD,
            "memory": None if args.no_memory else MEMORY_METHOD,
            "baselines": baselines,
        },
    )
    results["variants"] = [v.describe() for v in variants]
    report.write_results(out, results)

    if cells:
        _progress(f"measuring GEMM rates at {threads} threads (the floor)")
        rates = measure_rates(threads, seconds=min(max(args.duration, 0.3), 2.0))
        results["gemm"] = rates.to_json()
        _progress(f"measuring memory bandwidth at {threads} threads (the floor)")
        llc = results["machine"].get("llc_bytes")
        bandwidth = measure_bandwidth(threads, min(max(args.duration, 0.3), 2.0), buffer_bytes(llc))
        results["memory_bandwidth"] = bandwidth.to_json()

        def save_cells(rows: list[dict[str, Any]]) -> None:
            results["cells"] = rows
            report.write_results(out, results)

        results["cells"] = measure_grid(
            variants,
            cells,
            vocab,
            rates,
            duration=args.duration,
            warmup=args.warmup,
            min_runs=args.min_runs,
            progress=_progress,
            on_cell=save_cells,
            bandwidth=bandwidth.bytes_per_s,
        )
        if baselines:
            results["relative_p50"] = relative_p50(results["cells"], baselines)
        if not args.no_memory:
            figures = memory.measure_variants(variants, cells, vocab, _progress)
            for entry, mem in zip(results["variants"], figures, strict=True):
                entry["memory"] = mem
        report.write_results(out, results)

    if args.peers or args.traffic is not None:
        from fastelectra.bench.texts import default_traffic_file, read_texts

        text_file = Path(args.traffic) if args.traffic else default_traffic_file()
        texts = read_texts(text_file, args.traffic_limit)
        if args.peers:
            from fastelectra.bench.peers import run_peers

            results["peers"] = run_peers(
                bundles,
                texts,
                args.batch,
                threads,
                args.duration,
                args.warmup,
                _progress,
                source=args.source,
            )
            results["peers"]["file"] = str(text_file)
            report.write_results(out, results)
        if args.traffic is not None:
            from fastelectra.bench.traffic import run_traffic

            results["traffic"] = run_traffic(
                bundles,
                texts,
                str(text_file),
                args.batch,
                args.traffic_pad,
                args.duration,
                args.warmup,
                _progress,
            )
            report.write_results(out, results)

    results["plots"] = [p.name for p in plot_all(results, out)]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    report.write_results(out, results)
    print(report.format_text(results))
    plots = ", ".join(results["plots"]) or "no plots"
    print(f"\nwrote {out}: results.json, results.md, {plots}")
    return 0
