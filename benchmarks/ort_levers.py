"""onnxruntime session settings against the FP32 bundle as the runtime serves it (issue 19).

    python benchmarks/ort_levers.py .cache/bundles/electra-large-2020-fp32 \\
        --cells 1x16,1x128,8x128 --threads 2 --duration 8

Each lever is one change to the session `EncoderSession` builds for the bundle (same plan,
same CPU view, same disabled fusion), measured alone, interleaved with the unchanged session
through `fastelectra.bench.cells.time_cell` (sessions as served, an idle gap before each
turn). Reported per cell: p50 of each and its ratio to the unchanged session. A lever that
wins everywhere belongs in `runtime/providers.py`'s plan; one that wins nowhere is recorded
here so it is not tried again. Writes benchmarks/results/<date>-<cpu>/ort-levers-<bundle>.json
unless --out is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# name -> (session config entries, split SkipLayerNorm as the runtime does)
LEVERS: dict[str, tuple[dict[str, str], bool]] = {
    "served": ({}, True),
    # onnxruntime's own SkipLayerNormalization kernel instead of the runtime's Add + LayerNorm.
    "ort-skipln": ({}, False),
    # Parallel loops cut into blocks of decreasing size (guided scheduling) instead of equal
    # shares: fewer idle waits when one thread is late.
    "dynamic-block-base-4": ({"session.dynamic_block_base": "4"}, True),
    # Weights not pre-packed into MLAS's GEMM layout at load (packing is the default).
    "no-prepacking": ({"session.disable_prepacking": "1"}, True),
    # Denormals flushed: random weights stay far from them, real ones may not.
    "denormal-as-zero": ({"session.set_denormal_as_zero": "1"}, True),
}


def lever_variant(bundle: Path, name: str, threads: int) -> Any:
    """The bundle's `EncoderSession` as the runtime plans it, with one lever, as a variant."""
    from fastelectra.bench.variants import OnnxVariant
    from fastelectra.bundle import load_bundle
    from fastelectra.runtime.providers import plan_for_bundle
    from fastelectra.runtime.session import EncoderSession

    entries, split = LEVERS[name]
    loaded = load_bundle(bundle)
    meta = loaded.meta
    plan = dataclasses.replace(
        plan_for_bundle(loaded, "cpu", threads),
        split_skip_layernorm=split,
        session_config=tuple(entries.items()),
    )
    session = EncoderSession(
        loaded.model_path,
        plan,
        inputs=meta.inputs,
        outputs=meta.outputs,
        input_dtype=meta.input_dtype,
    )
    spec = {"kind": "lever", "lever": name, "path": str(bundle)}
    return OnnxVariant(name, session, meta.precision, meta.dimensions, spec, loaded)


def main(argv: list[str] | None = None) -> int:
    from fastelectra.bench.cells import SERVED, parse_cells, synthetic_inputs, time_cell
    from fastelectra.bench.machine import library_versions, machine_info, results_dir
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--cells", type=parse_cells, default="1x16,1x128,8x128")
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    names = ["served", *(n for n in args.levers.split(",") if n != "served")]
    variants = [lever_variant(args.bundle, name, args.threads) for name in names]
    tokenizer = WordPieceTokenizer.from_file(args.bundle / "tokenizer.json")
    vocab = (variants[0].dimensions.vocab_size, tokenizer.cls_id, tokenizer.sep_id)
    cells = []
    for cell in args.cells:
        batch, seq = cell.batch, cell.seq
        ids = synthetic_inputs(cell, *vocab)
        samples = time_cell(variants, ids, args.duration, args.warmup, 5, SERVED)
        p50 = {n: float(np.percentile(s, 50)) * 1000 for n, s in samples.items()}
        row = {
            "batch": batch,
            "seq": seq,
            "p50_ms": {n: round(v, 3) for n, v in p50.items()},
            "over_served": {n: round(v / p50["served"], 3) for n, v in p50.items()},
            "runs": {n: len(s) for n, s in samples.items()},
        }
        cells.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "command": " ".join(["python", "benchmarks/ort_levers.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "versions": library_versions(["onnxruntime", "fastelectra", "numpy"]),
        "threads": args.threads,
        "pacing": SERVED.to_json(),
        "levers": {n: {"session_config": LEVERS[n][0], "split": LEVERS[n][1]} for n in names},
        "cells": cells,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or (
        results_dir(Path(__file__).parent / "results") / f"ort-levers-{args.bundle.name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
