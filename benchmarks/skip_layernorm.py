"""onnxruntime's CPU SkipLayerNormalization kernel against the Add + LayerNormalization it fuses.

    python benchmarks/skip_layernorm.py [--threads 2] [--seconds 2] [--out DIR]

Why the runtime splits SkipLayerNormalization on CPU (`fastelectra/runtime/cpu_view.py`): one
node of each kind, on the activations of a BERT-base (768) and an ELECTRA-large (1024) layer at
batch 1 × 128 tokens and batch 8 × 128, timed interleaved in one process. Both graphs compute
LayerNorm(input + skip + bias) · gamma + beta; the split one runs with onnxruntime's
`SkipLayerNormFusion` disabled, as the runtime does, so that it is not fused back. Writes
``skip_layernorm.json`` (with the machine and versions) to --out, default
benchmarks/results/<date>-<cpu>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fastelectra.bench.machine import machine_info, results_dir
from fastelectra.runtime.cpu_view import SKIP_LAYERNORM_FUSION

SHAPES = [(1, 128, 768), (1, 128, 1024), (8, 128, 768), (8, 128, 1024)]
EPSILON = 1e-12


def graph(kind: str, hidden: int) -> bytes:
    rng = np.random.default_rng(0)
    weights = {n: rng.normal(0, 0.1, hidden).astype(np.float32) for n in ("gamma", "beta", "bias")}
    if kind == "kernel":
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "skip", "gamma", "beta", "bias"],
                ["y"],
                domain="com.microsoft",
                epsilon=EPSILON,
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["x", "skip"], ["xs"]),
            helper.make_node("Add", ["xs", "bias"], ["sum"]),
            helper.make_node(
                "LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=EPSILON
            ),
        ]
    shape = ["batch", "seq", hidden]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            kind,
            io,
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
            [numpy_helper.from_array(v, n) for n, v in weights.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8  # onnxruntime 1.31 reads IR ≤ 13; onnx 1.23 writes 14 by default
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session(kind: str, hidden: int, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        graph(kind, hidden),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=[SKIP_LAYERNORM_FUSION] if kind == "split" else [],
    )


def measure(threads: int, seconds: float) -> list[dict]:
    rows = []
    for batch, seq, hidden in SHAPES:
        rng = np.random.default_rng(1)
        feeds = {
            n: rng.normal(0, 2, (batch, seq, hidden)).astype(np.float32) for n in ("x", "skip")
        }
        sessions = {k: session(k, hidden, threads) for k in ("kernel", "split")}
        outputs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for kind, s in sessions.items():  # interleaved: drift hits both alike
                start = time.perf_counter()
                s.run(None, feeds)
                times[kind].append(time.perf_counter() - start)
        p50 = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
        rows.append(
            {
                "batch": batch,
                "seq": seq,
                "hidden": hidden,
                "runs": len(times["kernel"]),
                "kernel_p50_us": round(p50["kernel"], 1),
                "split_p50_us": round(p50["split"], 1),
                "split_over_kernel": round(p50["split"] / p50["kernel"], 3),
                "max_abs_diff": float(np.abs(outputs["kernel"] - outputs["split"]).max()),
            }
        )
        print(
            f"{batch}x{seq}x{hidden}: SkipLayerNormalization {p50['kernel']:.0f} µs, "
            f"Add + LayerNormalization {p50['split']:.0f} µs "
            f"({p50['split'] / p50['kernel']:.3f}×)",
            file=sys.stderr,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="per shape")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or results_dir(Path(__file__).parent / "results")
    result = {
        "command": " ".join(["python", "benchmarks/skip_layernorm.py", *(argv or sys.argv[1:])]),
        "threads": args.threads,
        "machine": machine_info(),
        "rows": measure(args.threads, args.seconds),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "skip_layernorm.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'skip_layernorm.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
