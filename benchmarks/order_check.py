"""Does the grid's timing depend on which variant runs next to which? Recorded check (issue 13).

    python benchmarks/order_check.py .cache/bundles/minilm-fp32 .cache/bundles/minilm-int8-dynamic \\
        --batch 1 --seq 16 --threads 2 --duration 3 --repeats 2

Times the bundles through `fastelectra.bench.cells.time_cell`, the path `fastelectra bench`
and `benchmarks/latency.py` use, in three arrangements, each `--repeats` times:

    alone        each variant on its own (the figure an interleaved run should reproduce)
    order A..Z   all variants interleaved, in the order given
    order Z..A   all variants interleaved, in the opposite order

with the sessions `bench` times by default (served: onnxruntime's threads spinning, an idle gap
before each turn, `cells.SERVED`), and the same three once more with spinning off and turns
back to back (`--no-spinning`, `cells.QUIET`). Reported per variant: p50 of every arrangement
and repeat, the order effect (|p50 A..Z - p50 Z..A| over their mean), the run-to-run noise
(spread of the repeats of one arrangement over their mean), and interleaved p50 over alone
p50. Writes
benchmarks/results/<date>-<cpu>/order-check-<prefix>-b<batch>-s<seq>.json unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ARRANGEMENTS = ("alone", "forward", "reverse")


def spread(values: Sequence[float]) -> float:
    """(max - min) / mean: 0 when the figures agree."""
    return round((max(values) - min(values)) / float(np.mean(values)), 4)


def main(argv: list[str] | None = None) -> int:
    from fastelectra.bench.cells import Cell, pacing_for, synthetic_inputs, time_cell
    from fastelectra.bench.cli import default_out
    from fastelectra.bench.machine import machine_info, results_dir
    from fastelectra.bench.variants import NO_SPINNING_SUFFIX, OnnxVariant, unique_names
    from fastelectra.runtime.providers import check_threads
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", metavar="BUNDLE")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="timed s per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="result JSON")
    args = parser.parse_args(argv)
    if len(args.bundles) < 2:
        parser.error("give at least two bundles: the check is about their order")

    threads = check_threads(args.threads)
    sessions = {
        spinning: [
            OnnxVariant.from_bundle(path, None, threads, allow_spinning=spinning)
            for path in args.bundles
        ]
        for spinning in (True, False)
    }
    for variants in sessions.values():
        unique_names(variants)
        for v in variants:  # one name per bundle in both sets, to compare them
            v.name = v.name.removesuffix(NO_SPINNING_SUFFIX)
    variants = sessions[True]
    names = [v.name for v in variants]
    tokenizer = WordPieceTokenizer.from_file(variants[0].bundle.tokenizer_path)
    vocab = min(v.dimensions.vocab_size for v in variants)
    cell = Cell(args.batch, args.seq)
    inputs = synthetic_inputs(cell, vocab, tokenizer.cls_id, tokenizer.sep_id)

    def timed(order: Sequence[Any], spinning: bool) -> dict[str, float]:
        pacing = pacing_for(spinning)
        samples = time_cell(order, inputs, args.duration, args.warmup, args.min_runs, pacing)
        return {n: round(float(np.percentile(s, 50)) * 1000, 4) for n, s in samples.items()}

    def arranged(arrangement: str, variants: list[Any], spinning: bool) -> dict[str, float]:
        if arrangement == "alone":
            return {k: v for x in variants for k, v in timed([x], spinning).items()}
        return timed(variants if arrangement == "forward" else variants[::-1], spinning)

    started, load_before = time.perf_counter(), os.getloadavg()
    p50: dict[bool, dict[str, list[dict[str, float]]]] = {
        spinning: {a: [] for a in ARRANGEMENTS} for spinning in sessions
    }
    for repeat in range(args.repeats):
        for spinning, variants in sessions.items():
            for arrangement in ARRANGEMENTS:
                p50[spinning][arrangement].append(arranged(arrangement, variants, spinning))
                label = "served" if spinning else "no-spinning"
                print(f"repeat {repeat} {label} {arrangement}: {p50[spinning][arrangement][-1]}")

    def summary(by_arrangement: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
        out = {}
        for name in names:
            figures = {a: [r[name] for r in runs] for a, runs in by_arrangement.items()}
            medians = {a: float(np.median(f)) for a, f in figures.items()}
            entry: dict[str, Any] = {"p50_ms": figures}
            entry["order_effect"] = spread([medians["forward"], medians["reverse"]])
            entry["noise"] = {a: spread(f) for a, f in figures.items()}
            entry["interleaved_over_alone"] = {
                a: round(medians[a] / medians["alone"], 4) for a in ("forward", "reverse")
            }
            out[name] = entry
        return out

    report = {
        "command": " ".join(["python", "benchmarks/order_check.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "cell": {"batch": cell.batch, "seq": cell.seq},
        "threads": threads,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "orders": {"forward": names, "reverse": names[::-1]},
        # Other work on the machine, at the start and the end (1, 5, 15 minutes).
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "pacing": {
            "served": pacing_for(True).to_json(),
            "no_spinning": pacing_for(False).to_json(),
        },
        "served": summary(p50[True]),
        "spinning_off": summary(p50[False]),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    prefix = default_out(names).name.removeprefix("bench-")
    out = args.out or (
        results_dir(Path(__file__).parent / "results")
        / f"order-check-{prefix}-b{cell.batch}-s{cell.seq}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("served", "spinning_off")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
