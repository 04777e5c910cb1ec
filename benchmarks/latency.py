"""Side-by-side latency of TF, ORT FP32 unfused, fused, INT8 dynamic and INT8 static.

    python benchmarks/latency.py --preset base --batch 1 --seq 128 --threads 2 --rounds 5

All variants are built from one module into a work directory (no verification: `fastelectra
build` does that), then timed round-robin, each round one call per variant in turn, so that
drift on this shared machine hits every variant alike. Reports medians of round medians and
ratios. Writes benchmarks/results/<date>-<host>/latency-<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def build_variants(module: Path, work: Path) -> tuple[object, dict[str, Path]]:
    from fastelectra.calibration.static import quantize_int8_static
    from fastelectra.convert.fuse import fuse
    from fastelectra.convert.precision import quantize_int8_dynamic
    from fastelectra.convert.source import load_source
    from fastelectra.convert.tf_export import export_onnx
    from fastelectra.convert.tokenizer import build_tokenizer

    src = load_source(module)
    exported = export_onnx(src, work / "unfused.onnx").path
    fuse(exported, work / "fused.onnx", src.dimensions)
    quantize_int8_dynamic(work / "fused.onnx", work / "int8-dynamic.onnx")
    build_tokenizer(src.vocab_file, src.do_lower_case).save(str(work / "tokenizer.json"))
    quantize_int8_static(
        work / "fused.onnx",
        work / "int8-static.onnx",
        tokenizer_path=work / "tokenizer.json",
        texts=None,
        max_length=128,
    )
    return src, {
        "ort_fp32_unfused": exported,
        "ort_fp32_fused": work / "fused.onnx",
        "ort_int8_dynamic": work / "int8-dynamic.onnx",
        "ort_int8_static": work / "int8-static.onnx",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="calls per variant per round")
    args = parser.parse_args()

    import onnxruntime as ort
    import tensorflow as tf

    from fastelectra.convert.build import tool_versions
    from fastelectra.convert.reference import reference_module

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    segments = np.zeros_like(ids)

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        src, paths = build_variants(reference_module(args.preset), Path(tmp))
        runners = {}
        fn = src.inference_function()
        tf_in = (tf.constant(ids), tf.constant(mask), tf.constant(segments))
        runners["tensorflow"] = lambda: fn(*tf_in)["sequence_output"].numpy()
        for name, path in paths.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}
            runners[name] = lambda s=session, f=feed: s.run(None, f)
        for run in runners.values():  # warm-up
            run()
            run()
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                times = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                samples[name].append(statistics.median(times))
        sizes = {name: path.stat().st_size for name, path in paths.items()}

    median_ms = {name: 1000 * statistics.median(v) for name, v in samples.items()}
    results = {
        "preset": args.preset,
        "cell": {"batch": args.batch, "seq": args.seq, "threads": args.threads},
        "method": f"{args.rounds} rounds x {args.calls} calls, round-robin; median of round medians",
        "median_ms": {k: round(v, 2) for k, v in median_ms.items()},
        "ratio_vs_tensorflow": {
            k: round(v / median_ms["tensorflow"], 3) for k, v in median_ms.items()
        },
        "ratio_vs_fused_fp32": {
            k: round(v / median_ms["ort_fp32_fused"], 3) for k, v in median_ms.items()
        },
        "model_bytes": sizes,
        "machine": f"{platform.node()} {platform.machine()}",
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_flags": sorted(
            {
                f
                for f in Path("/proc/cpuinfo").read_text().split()
                if f.startswith(("avx512", "avx_vnni", "amx"))
            }
        ),
        "versions": tool_versions(),
        "command": " ".join(sys.argv),
    }
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / f"{date.today()}-{platform.node()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"latency-{args.preset}-b{args.batch}-s{args.seq}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
