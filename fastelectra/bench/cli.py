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
from dataclasses import dataclass, replace
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any

from fastelectra.errors import InputError

DEFAULT_BATCHES = "1,8,32"
DEFAULT_SEQS = "16,64,128,512"

TIMING_METHOD = (
    "synthetic ids of exactly batch x seq tokens ([CLS] random-words [SEP], no padding) fed "
    "straight to the session; per cell, `warmup` untimed runs per variant (at least one: it "
    "times the turn's block), then rounds of one turn per variant in rotated order until the "
    "cell used `duration_s` per variant on average and at least `min_runs` runs ran; a turn is "
    "`pacing.idle_before_turn_s` idle, 1 untimed run, then a block of timed runs, the same "
    "count for every variant: 3, or as many as the fastest variant needs to run "
    "`pacing.timed_per_turn_s`; onnxruntime sessions as served (threads spinning), or with "
    "spinning off where `spinning` is false; each run returns both outputs to host memory"
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


@dataclass(frozen=True)
class BenchOptions:
    """What one `fastelectra bench` run measures: `run_bench`'s API, built from the command line
    by `from_args` or by a script (benchmarks/latency.py) directly.

    `traffic`: None for no traffic run, "" for the packaged traffic mix, else a text file.
    `threads`: None for the available cores (`run_bench` records the number it resolved to).
    """

    bundles: tuple[str, ...]
    source: str | None = None
    batches: tuple[int, ...] = tuple(_int_list(DEFAULT_BATCHES))
    seqs: tuple[int, ...] = tuple(_int_list(DEFAULT_SEQS))
    threads: int | None = None
    providers: str | None = None
    duration: float = 5.0
    warmup: int = 3
    min_runs: int = 5
    out: str | None = None
    peers: bool = False
    traffic: str | None = None
    traffic_limit: int | None = None
    traffic_pad: int = 128
    grid: bool = True
    memory: bool = True
    # onnxruntime's threads spin as served (idle before each turn); False: spinning off.
    spinning: bool = True

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1:
            raise InputError("--warmup must be >= 0 and --min-runs >= 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        return cls(
            bundles=tuple(args.bundles),
            source=args.source,
            batches=tuple(args.batch),
            seqs=tuple(args.seq),
            threads=args.threads,
            providers=args.providers,
            duration=args.duration,
            warmup=args.warmup,
            min_runs=args.min_runs,
            out=args.out,
            peers=args.peers,
            traffic=args.traffic,
            traffic_limit=args.traffic_limit,
            traffic_pad=args.traffic_pad,
            grid=not args.no_grid,
            memory=not args.no_memory,
            spinning=not args.no_spinning,
        )

    def command(self) -> str:
        """The command with every setting spelled out, defaults included, for the record."""
        words = ["fastelectra", "bench", *self.bundles]
        words += ["--source", self.source] if self.source else []
        words += ["--batch", ",".join(map(str, self.batches))]
        words += ["--seq", ",".join(map(str, self.seqs))]
        words += ["--threads", str(self.threads)] if self.threads else []
        words += ["--providers", self.providers] if self.providers else []
        words += ["--duration", str(self.duration), "--warmup", str(self.warmup)]
        words += ["--min-runs", str(self.min_runs)]
        words += ["--out", self.out] if self.out else []
        words += ["--peers"] if self.peers else []
        if self.traffic is not None:
            words += ["--traffic", self.traffic] if self.traffic else ["--traffic"]
            words += ["--traffic-pad", str(self.traffic_pad)]
        words += ["--traffic-limit", str(self.traffic_limit)] if self.traffic_limit else []
        words += ["--no-grid"] if not self.grid else []
        words += ["--no-memory"] if not self.memory else []
        words += ["--no-spinning"] if not self.spinning else []
        return " ".join(words)


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
        default=BenchOptions.duration,
        help=f"timed seconds per variant per cell (on average; default {BenchOptions.duration:g})",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=BenchOptions.warmup,
        help=f"untimed runs per variant per cell (default {BenchOptions.warmup}, at least one "
        "in the grid; peers/traffic: one pass if > 0)",
    )
    p.add_argument(
        "--min-runs",
        type=int,
        default=BenchOptions.min_runs,
        help=f"fewest timed runs per variant per cell (default {BenchOptions.min_runs})",
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
        "--traffic-pad",
        type=int,
        default=BenchOptions.traffic_pad,
        help="fixed padding (and truncation) length",
    )
    p.add_argument("--no-grid", action="store_true", help="skip the batch x seq latency grid")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory runs")
    p.add_argument(
        "--no-spinning",
        action="store_true",
        help="time onnxruntime sessions with thread spinning off, turns back to back (default: "
        "as served, threads spinning, idle before each turn); variants named +no-spinning",
    )


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


def load_variants(
    bundles: list[str], source: str | None, providers: Any, threads: int, spinning: bool = True
) -> list[Any]:
    """The bundles' sessions, then the TensorFlow original, each with its RSS growth at load."""
    from fastelectra.bench.variants import OnnxVariant, TensorFlowVariant
    from fastelectra.process_memory import rss_mib

    loaders = [
        (path, partial(OnnxVariant.from_bundle, path, providers, threads, allow_spinning=spinning))
        for path in bundles
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
    from fastelectra.precisions import FP32

    names = [v.name for v in variants if v.framework == TENSORFLOW]
    names += [v.name for v in variants if v.precision == FP32 and v.spec["kind"] == "bundle"][:1]
    return names


def run_bench_command(args: argparse.Namespace) -> int:
    """`fastelectra bench` from its parsed command line."""
    return run_bench(BenchOptions.from_args(args))


def run_bench(
    options: BenchOptions, extra_variants: Sequence[Any] = (), command: str | None = None
) -> int:
    """One bench run; `extra_variants` (already loaded) join the bundles and TF, as
    benchmarks/latency.py adds the unfused export, which is no bundle."""
    from fastelectra.bench import memory, report
    from fastelectra.bench.bandwidth import buffer_bytes, measure_bandwidth
    from fastelectra.bench.cells import Cell, pacing_for
    from fastelectra.bench.floor import measure_rates
    from fastelectra.bench.grid import measure_grid, relative_p50
    from fastelectra.bench.plots import plot_all
    from fastelectra.bench.variants import OnnxVariant, unique_names
    from fastelectra.runtime.providers import check_threads
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    started = time.perf_counter()
    # Recorded resolved, not "default".
    threads = check_threads(options.threads)
    options = replace(options, threads=threads)
    providers = parse_providers(options.providers)
    variants = load_variants(
        list(options.bundles), options.source, providers, threads, options.spinning
    )
    pacing = pacing_for(options.spinning)
    variants += extra_variants
    unique_names(variants)
    bundles = [v for v in variants if isinstance(v, OnnxVariant) and v.bundle is not None]

    cells = [Cell(b, s) for b in options.batches for s in options.seqs] if options.grid else []
    limit = min(
        v.max_sequence_length if isinstance(v, OnnxVariant) else v.dimensions.max_positions
        for v in variants
    )
    if cells and (max(options.seqs) > limit or min(options.seqs) < 2):
        raise InputError(f"--seq values must be between 2 and {limit} for these models")
    tokenizer = WordPieceTokenizer.from_file(bundles[0].bundle.tokenizer_path)
    vocab = (min(v.dimensions.vocab_size for v in variants), tokenizer.cls_id, tokenizer.sep_id)

    out = Path(options.out) if options.out else default_out([v.name for v in bundles])
    baselines = baselines_of(variants)
    results = report.new_results(
        out.name,
        command or options.command(),
        {
            "batches": options.batches,
            "seqs": options.seqs,
            "threads": threads,
            "providers": providers,
            "duration_s": options.duration,
            "warmup": options.warmup,
            "min_runs": options.min_runs,
            "spinning": options.spinning,
            "pacing": pacing.to_json(),
            "timing": TIMING_METHOD,
            "flops": FLOPS_METHOD,
            "memory": MEMORY_METHOD if options.memory else None,
            "baselines": baselines,
        },
    )
    results["variants"] = [v.describe() for v in variants]
    report.write_results(out, results)

    if cells:
        _progress(f"measuring GEMM rates at {threads} threads (the floor)")
        rates = measure_rates(threads, seconds=min(max(options.duration, 0.3), 2.0))
        results["gemm"] = rates.to_json()
        _progress(f"measuring memory bandwidth at {threads} threads (the floor)")
        llc = results["machine"].get("llc_bytes")
        bandwidth = measure_bandwidth(
            threads, min(max(options.duration, 0.3), 2.0), buffer_bytes(llc)
        )
        results["memory_bandwidth"] = bandwidth.to_json()

        def save_cells(rows: list[dict[str, Any]]) -> None:
            results["cells"] = rows
            report.write_results(out, results)

        results["cells"] = measure_grid(
            variants,
            cells,
            vocab,
            rates,
            duration=options.duration,
            warmup=options.warmup,
            min_runs=options.min_runs,
            progress=_progress,
            on_cell=save_cells,
            bandwidth=bandwidth.bytes_per_s,
            pacing=pacing,
        )
        if baselines:
            results["relative_p50"] = relative_p50(results["cells"], baselines)
        if options.memory:
            figures = memory.measure_variants(variants, cells, vocab, _progress)
            for entry, mem in zip(results["variants"], figures, strict=True):
                entry["memory"] = mem
        report.write_results(out, results)

    if options.peers or options.traffic is not None:
        from fastelectra.bench.texts import default_traffic_file, read_texts

        text_file = Path(options.traffic) if options.traffic else default_traffic_file()
        texts = read_texts(text_file, options.traffic_limit)
        if options.peers:
            from fastelectra.bench.peers import run_peers

            results["peers"] = run_peers(
                bundles,
                texts,
                options.batches,
                threads,
                options.duration,
                options.warmup,
                _progress,
                source=options.source,
                pacing=pacing,
            )
            results["peers"]["file"] = str(text_file)
            report.write_results(out, results)
        if options.traffic is not None:
            from fastelectra.bench.traffic import run_traffic

            results["traffic"] = run_traffic(
                bundles,
                texts,
                str(text_file),
                options.batches,
                options.traffic_pad,
                options.duration,
                options.warmup,
                _progress,
                pacing,
            )
            report.write_results(out, results)

    results["plots"] = [p.name for p in plot_all(results, out)]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    report.write_results(out, results)
    print(report.format_text(results))
    plots = ", ".join(results["plots"]) or "no plots"
    print(f"\nwrote {out}: results.json, results.md, {plots}")
    return 0
