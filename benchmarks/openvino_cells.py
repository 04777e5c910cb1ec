"""Bundles against OpenVINO on the same SavedModel, per cell and per operator (issue 19).

    python benchmarks/openvino_cells.py .cache/bundles/electra-large-2020-fp32 \\
        .cache/bundles/electra-large-2020-int8-dynamic --cells 1x16,1x128,8x128 \\
        --threads 2 --duration 10 --profile-runs 10

Times, interleaved in one process through `fastelectra.bench.cells.time_cell` (the path of
`fastelectra bench`, sessions as served: threads spinning, an idle gap before each turn), the
bundles and the OpenVINO peers of `bench --peers` made from the FP32 bundle's SavedModel
(`fastelectra.bench.openvino_peer`): `openvino-fp32` (f32 precision hint), `openvino-default`
(no precision hint: what a user gets) and `openvino-int8` (NNCF). Reported per cell: p50 and
each variant over openvino-fp32 and over the FP32 bundle. Then, per cell, where the time goes:
onnxruntime's profiler on each bundle's session as the runtime builds it (the CPU view
applied), kernel milliseconds per run by operator type, and OpenVINO's per-layer counters
(PERF_COUNT) by layer type and the kernel it ran (exec_type). Writes
benchmarks/results/<date>-<cpu>/openvino-cells-<prefix>.json unless --out is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def ort_profile(variant: Any, inputs: tuple[np.ndarray, ...], runs: int) -> dict[str, Any]:
    """Kernel ms per run by op type, from the bundle's `EncoderSession` built again as the
    runtime builds it (same plan, CPU view and run options) with onnxruntime's profiler on."""
    from fastelectra.bench.op_times import onnxruntime_op_times
    from fastelectra.runtime.session import EncoderSession

    served = variant.session
    session = EncoderSession(
        served.model_path,
        dataclasses.replace(served.plan, enable_profiling=True),
        inputs=served.inputs,
        outputs=served.outputs,
        input_dtype=served.input_dtype.name,
    )
    session.run(*inputs)  # profiled too: its pre-packing is its own op
    started = time.perf_counter()
    for _ in range(runs):
        session.run(*inputs)
    wall_ms = (time.perf_counter() - started) * 1000 / runs
    times = onnxruntime_op_times(session.end_profiling(), runs + 1)
    return {
        "wall_ms_per_run_profiled": round(wall_ms, 3),
        **times.to_json("kernel_ms_per_run", "ops", "op"),
    }


def openvino_profile(peer: Any, feeds: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """OpenVINO's per-layer counters by layer type and kernel, from the peer's model compiled
    once more with its settings and PERF_COUNT on."""
    import openvino as ov

    from fastelectra.bench.op_times import openvino_layer_times

    compiled = ov.Core().compile_model(peer.model, "CPU", {**peer.config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feeds)
    started = time.perf_counter()
    times = openvino_layer_times(request, feeds, runs)
    wall_ms = (time.perf_counter() - started) * 1000 / runs
    return {
        "wall_ms_per_run_profiled": round(wall_ms, 3),
        **times.to_json("layer_ms_per_run", "layers", "layer"),
    }


def main(argv: list[str] | None = None) -> int:
    from fastelectra.bench.cells import SERVED, parse_cells, synthetic_inputs, time_cell
    from fastelectra.bench.cli import default_out
    from fastelectra.bench.machine import library_versions, machine_info, results_dir
    from fastelectra.bench.openvino_peer import (
        OPENVINO_FP32,
        OPENVINO_INT8,
        OpenVinoVariant,
        load_openvino_peers,
    )
    from fastelectra.bench.variants import OnnxVariant, unique_names
    from fastelectra.precisions import FP32, INT8_DYNAMIC
    from fastelectra.runtime.providers import check_threads
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE")
    parser.add_argument("--cells", type=parse_cells, default="1x16,1x128,8x128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="timed s per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=10, help="0: no profiles")
    parser.add_argument("--source", help="the SavedModel (default: the FP32 bundle's source)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    threads = check_threads(args.threads)

    bundles = [OnnxVariant.from_bundle(path, None, threads) for path in args.bundles]
    unique_names(bundles)
    fp32 = next((b for b in bundles if b.precision == FP32), None)
    if fp32 is None:
        parser.error("give the FP32 bundle: OpenVINO converts its SavedModel")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # The peers `bench --peers` runs: f32 hint, no hint, NNCF INT8 (calibrated on the built-in
    # calibration texts at the bundle's length).
    peers, openvino = load_openvino_peers(fp32, args.source, threads, fp32.max_sequence_length, say)
    variants: list[Any] = [*bundles]
    for peer in peers:
        precision = INT8_DYNAMIC if peer.name == OPENVINO_INT8 else FP32
        variants.append(OpenVinoVariant(peer, precision, fp32.dimensions))

    tokenizer = WordPieceTokenizer.from_file(fp32.bundle.tokenizer_path)
    vocab = (fp32.dimensions.vocab_size, tokenizer.cls_id, tokenizer.sep_id)
    cells: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for cell in args.cells:
        batch, seq = cell.batch, cell.seq
        ids = synthetic_inputs(cell, *vocab)
        say(f"timing {batch}x{seq}")
        samples = time_cell(variants, ids, args.duration, args.warmup, args.min_runs, SERVED)
        p50 = {name: float(np.percentile(s, 50)) * 1000 for name, s in samples.items()}
        row = {
            "batch": batch,
            "seq": seq,
            "runs": {name: len(s) for name, s in samples.items()},
            "p50_ms": {name: round(v, 3) for name, v in p50.items()},
            "over_openvino_fp32": {
                name: round(v / p50[OPENVINO_FP32], 3) for name, v in p50.items()
            },
            "over_fp32_bundle": {name: round(v / p50[fp32.name], 3) for name, v in p50.items()},
        }
        cells.append(row)
        print(json.dumps(row), flush=True)
        if args.profile_runs:
            gc.collect()
            time.sleep(SERVED.idle_s)
            profiles[f"{batch}x{seq}"] = {
                **{b.name: ort_profile(b, ids, args.profile_runs) for b in bundles},
                **{
                    v.name: openvino_profile(v.peer, v.prepare(*ids), args.profile_runs)
                    for v in variants
                    if isinstance(v, OpenVinoVariant)
                },
            }

    report = {
        "command": " ".join(["python", "benchmarks/openvino_cells.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "versions": library_versions(["onnxruntime", "openvino", "nncf", "fastelectra", "numpy"]),
        "threads": threads,
        "duration_s": args.duration,
        "pacing": SERVED.to_json(),
        "openvino": openvino,
        "variants": [v.describe() for v in variants],
        "cells": cells,
        "profiles": profiles,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    prefix = default_out([b.name for b in bundles]).name.removeprefix("bench-")
    out = (
        args.out or results_dir(Path(__file__).parent / "results") / f"openvino-cells-{prefix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
