"""Where a bundle's time goes, per operator type: onnxruntime's own profiler (issue 13).

    python benchmarks/op_profile.py BUNDLE... --seq 128 --threads 2 --runs 200 [--out FILE]

Each bundle's model.onnx runs `--runs` times at batch 1 x `--seq` (random in-vocabulary ids)
in a session of its own with profiling on (spinning off, as `fastelectra bench` times), one
bundle after another; reported per operator type: kernel milliseconds per run, node count and
share of the total. Kernel times, not wall time: the runtime's CPU view (which splits
SkipLayerNormalization) is not applied, so this says which kernels cost, not a latency.
Writes benchmarks/results/<date>-<cpu>/op-profile-s<seq>.json unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


def profile(model: Path, seq: int, threads: int, runs: int) -> dict[str, Any]:
    import onnxruntime as ort

    from fastelectra.bench.op_times import onnxruntime_op_times

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, 20000, (1, seq)).astype(np.int32)
    feed = {"input_word_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": 0 * ids}
    for _ in range(runs):
        session.run(None, feed)
    times = onnxruntime_op_times(Path(session.end_profiling()), runs)
    return times.to_json("kernel_ms_per_run", "ops", "op")


def main(argv: list[str] | None = None) -> int:
    from fastelectra.bench.machine import machine_info, results_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {
        "command": " ".join(["python", "benchmarks/op_profile.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "batch": 1,
        "seq": args.seq,
        "threads": args.threads,
        "runs": args.runs,
        "bundles": {
            b.name: profile(b / "model.onnx", args.seq, args.threads, args.runs)
            for b in args.bundles
        },
    }
    out = args.out or results_dir() / f"op-profile-s{args.seq}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in result["bundles"].items():
        print(f"{name}: {figures['kernel_ms_per_run']} ms of kernels per run")
        for op in figures["ops"][:8]:
            print(
                f"  {op['op']:26s} {op['ms_per_run']:7.3f} ms {op['nodes']:3d} nodes {op['share']:6.1%}"
            )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
