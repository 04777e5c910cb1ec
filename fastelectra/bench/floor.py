"""The floor: how fast a cell could run if the encoder were nothing but matrix multiplies,
or nothing but reading its weights, whichever takes longer (a roofline).

FLOPs of one encoder pass follow from the bundle's dimensions (s tokens, hidden h, FFN f):

    per layer   QKV + output projections   4 · 2·s·h²
                FFN up + down              2 · 2·s·h·f
                attention scores + context 2 · 2·s²·h
    pooler                                 2·h²            (the [CLS] row only)

times the batch; the embedding lookup, LayerNorms, softmax and GELU are left out (memory-bound
and small). Dividing by this machine's own GEMM rate at the benchmark's thread count gives a
lower bound on latency; `measured / floor` says how far a variant is from it.

The rate is measured, never assumed: numpy's BLAS (threads capped with threadpoolctl) and an
onnxruntime MatMul model with the same intra-op threads as the sessions under test; the faster
of the two is the FP32 floor, since a floor must be the best the machine showed. INT8 variants
are held to an onnxruntime MatMulInteger (u8 x s8, the kernel dynamic quantisation runs, using
VNNI where the CPU has it) for every product with a weight matrix; the attention products
(scores and context, activation x activation) stay at the FP32 rate, since onnxruntime's
QAttention computes them in FP32. Nodes an INT8 bundle keeps FP32 for accuracy (its
`quantization.fp32_nodes`) are *not* modelled: the floor is what INT8 could reach on this
machine, so their cost shows up in `measured / floor`.

That compute bound assumes the weights are in cache; at small batches they are not. Every call
reads each weight matrix from memory once (ELECTRA-large FP32: 1.21 GB), which takes
`weight bytes / memory bandwidth` however fast the multiplies are. The bytes are the model
file's own (`weights.py`: 4 per FP32 weight, 1 per INT8 weight, the nodes an INT8 bundle keeps
FP32 at 4); the bandwidth is measured at the same thread count (`bandwidth.py`). A cell's
floor is the larger of the two times, and its `bound` says which: `memory` at batch 1 x 16,
`compute` once enough tokens share each weight read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fastelectra.bundle import Dimensions
from fastelectra.precisions import Precision

# M x K x N of the timed GEMM: 1024 tokens through ELECTRA-large's FFN up-projection
# (1024 -> 4096). Large enough to reach the kernels' steady state on many cores, small enough
# (8.6 GFLOP) to repeat a few times in a second on two.
GEMM_SHAPE = (1024, 1024, 4096)
MIN_REPEATS = 3


@dataclass(frozen=True)
class CellFlops:
    """FLOPs of one cell (whole batch), split by what INT8 graphs can quantise."""

    projections: float  # QKV + attention output
    ffn: float  # up + down
    attention: float  # scores + context: activation x activation, FP32 inside QAttention
    pooler: float  # negligible

    @property
    def total(self) -> float:
        return self.projections + self.ffn + self.attention + self.pooler

    @property
    def weight_products(self) -> float:
        """Products with a weight matrix: the ones INT8 quantisation turns into INT8 GEMMs."""
        return self.projections + self.ffn + self.pooler


def cell_flops(dims: Dimensions, batch: int, seq: int) -> CellFlops:
    s, h, f, n = float(seq), float(dims.hidden), float(dims.intermediate), dims.layers * batch
    return CellFlops(
        projections=n * 4 * 2 * s * h * h,
        ffn=n * 2 * 2 * s * h * f,
        attention=n * 2 * 2 * s * s * h,
        pooler=batch * 2 * h * h,
    )


@dataclass(frozen=True)
class GemmRates:
    """FLOP/s (INT8: integer multiply-adds x 2 per second) at `threads` threads; None: not run."""

    threads: int
    shape: tuple[int, int, int]
    numpy_fp32: float | None
    onnxruntime_fp32: float | None
    onnxruntime_int8: float | None
    notes: tuple[str, ...] = ()

    @property
    def fp32(self) -> float | None:
        rates = [r for r in (self.numpy_fp32, self.onnxruntime_fp32) if r]
        return max(rates) if rates else None

    @property
    def fp32_source(self) -> str | None:
        if self.fp32 is None:
            return None
        return "onnxruntime MatMul" if self.fp32 == self.onnxruntime_fp32 else "numpy matmul"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        gflops = {
            k: (round(v / 1e9, 1) if v else None)
            for k, v in data.items()
            if k in ("numpy_fp32", "onnxruntime_fp32", "onnxruntime_int8")
        }
        return {
            "threads": self.threads,
            "shape_mkn": list(self.shape),
            "gflops": gflops,
            "fp32_floor_gflops": round(self.fp32 / 1e9, 1) if self.fp32 else None,
            "fp32_floor_source": self.fp32_source,
            "int8_floor_gops": gflops["onnxruntime_int8"],
            "notes": list(self.notes),
        }


def fastest_run(run: Callable[[], object], seconds: float, min_runs: int = MIN_REPEATS) -> float:
    """Seconds of the fastest of repeated runs (after one untimed), for about `seconds`: a
    floor is the best the machine showed."""
    run()
    best = float("inf")
    repeats, started = 0, time.perf_counter()
    while repeats < min_runs or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        repeats += 1
    return best


def best_rate(run: Callable[[], object], flop: float, seconds: float) -> float:
    """FLOP/s of the fastest of repeated runs (see `fastest_run`)."""
    return flop / fastest_run(run, seconds)


def measure_numpy_fp32(threads: int, seconds: float, shape=GEMM_SHAPE) -> float:
    from threadpoolctl import threadpool_limits

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        return best_rate(lambda: np.matmul(a, b, out=out), 2.0 * m * k * n, seconds)


def _matmul_model(kind: str, shape: tuple[int, int, int]) -> tuple[bytes, np.ndarray]:
    """An ONNX model multiplying input A by a constant B (weights are constants in an encoder,
    so onnxruntime may pre-pack them, as it does in the model), and an A to feed it."""
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = shape
    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type, inits = TensorProto.FLOAT, TensorProto.FLOAT, [b]
    else:
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        b = rng.integers(-127, 128, (k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])
        a_type, y_type, inits = TensorProto.UINT8, TensorProto.INT32, [b, np.array(128, np.uint8)]
    names = ["B", "a_zero_point"]
    graph = helper.make_graph(
        [node],
        f"gemm_{kind}",
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
        [numpy_helper.from_array(x, name) for x, name in zip(inits, names, strict=False)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # any onnxruntime of the last years reads IR 8
    return model.SerializeToString(), a


def measure_onnxruntime(kind: str, threads: int, seconds: float, shape=GEMM_SHAPE) -> float:
    """FP32 MatMul or INT8 MatMulInteger in an onnxruntime session with `threads` intra-op."""
    import onnxruntime as ort

    model, a = _matmul_model(kind, shape)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    # IO binding keeps the input in place and the output in onnxruntime's memory: the timed
    # call is the multiply, not a copy of its 16 MB result into numpy.
    binding = session.io_binding()
    binding.bind_ortvalue_input("A", ort.OrtValue.ortvalue_from_numpy(a))
    binding.bind_output("Y", "cpu")
    m, k, n = shape
    return best_rate(lambda: session.run_with_iobinding(binding), 2.0 * m * k * n, seconds)


def measure_rates(threads: int, seconds: float = 1.0, shape=GEMM_SHAPE) -> GemmRates:
    """Every rate this environment can measure; a missing optional library leaves a note."""
    notes: list[str] = []
    numpy_fp32 = ort_fp32 = ort_int8 = None
    try:
        numpy_fp32 = measure_numpy_fp32(threads, seconds, shape)
    except ImportError:
        notes.append("numpy rate not measured: threadpoolctl is not installed (cannot cap BLAS)")
    try:
        ort_fp32 = measure_onnxruntime("fp32", threads, seconds, shape)
        ort_int8 = measure_onnxruntime("int8", threads, seconds, shape)
    except ImportError:
        notes.append("onnxruntime rates not measured: building the GEMM model needs onnx")
    return GemmRates(threads, shape, numpy_fp32, ort_fp32, ort_int8, tuple(notes))


def floor_seconds(
    flops: CellFlops, precision: Precision, rates: GemmRates
) -> tuple[float | None, str]:
    """(lower bound on the cell's latency, which rates it assumed)."""
    fp32 = rates.fp32
    if fp32 is None:
        return None, "no FP32 GEMM rate measured"
    if not precision.int8_weight_products:
        # FP16 on CPU has no faster GEMM than FP32 here (onnxruntime's CPU kernels widen it).
        return flops.total / fp32, "fp32"
    int8 = rates.onnxruntime_int8
    if int8 is None:
        return None, "no INT8 GEMM rate measured"
    seconds = flops.weight_products / int8 + flops.attention / fp32
    return seconds, "int8 weight products, fp32 attention products"


@dataclass(frozen=True)
class Floor:
    """A cell's roofline: the larger of its compute and weight-streaming times."""

    compute_seconds: float | None
    memory_seconds: float | None
    basis: str

    @property
    def seconds(self) -> float | None:
        bounds = [t for t in (self.compute_seconds, self.memory_seconds) if t is not None]
        return max(bounds) if bounds else None

    @property
    def bound(self) -> str | None:
        """``"compute"`` or ``"memory"``: which of the two sets the floor."""
        if self.seconds is None:
            return None
        return "compute" if self.seconds == self.compute_seconds else "memory"


def cell_floor(
    flops: CellFlops,
    precision: Precision,
    rates: GemmRates,
    weight_bytes: int | None,
    bandwidth: float | None,
) -> Floor:
    """`floor_seconds` against the time to read `weight_bytes` at `bandwidth` bytes/s."""
    compute, basis = floor_seconds(flops, precision, rates)
    memory = weight_bytes / bandwidth if weight_bytes and bandwidth else None
    if memory is not None:
        basis += f"; memory: {weight_bytes / 1e6:.4g} MB of weights at {bandwidth / 1e9:.3g} GB/s"
    return Floor(compute, memory, basis)
