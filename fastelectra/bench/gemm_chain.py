"""An encoder's INT8 weight products and nothing else, as a model with the bundle's IO.

The floor (`floor.py`) divides FLOPs by the rate of one GEMM whose weights stay in cache. A
real pass at batch 1 also streams every weight matrix from memory once (ELECTRA-large INT8:
300 MB), so its GEMMs run slower than that rate. This model measures what the INT8 bundle's
GEMMs alone cost in a real pass: the same `DynamicQuantizeMatMul` kernel, the same weight
shapes, one distinct matrix per projection as in the model, chained layer after layer, with
no attention, softmax, LayerNorm or GELU. An INT8 encoder cannot be faster than it with
onnxruntime's CPU kernels; `benchmarks/latency.py --with-int8-gemm-chain` times it beside
TensorFlow and the bundles.

Per layer: x → QKV (h × 3h) → its first h columns → output projection (h × h) → FFN up
(h × f) → FFN down (f × h) → next layer; then the pooler (h × h) on the [CLS] row. Weights
are random int8 with per-column scales that keep activations near unit variance, so the
dynamic quantisation sees ordinary ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastelectra.bundle import INPUT_NAMES, OUTPUT_NAMES, Dimensions

NAME = "int8-weight-gemms-only"


def weight_gemm_model(dims: Dimensions, seed: int = 0) -> Any:
    """The chain as an `onnx.ModelProto` (onnx is a bench dependency, not a runtime one)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h, f = dims.hidden, dims.intermediate
    initializers: list[Any] = []
    nodes: list[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def gemm(x: str, k: int, n: int, name: str) -> str:
        weight = constant(f"{name}/w", rng.integers(-127, 128, (k, n), dtype=np.int8))
        scale = constant(f"{name}/scale", np.full(n, 1 / (73 * np.sqrt(k)), np.float32))
        zero_point = constant(f"{name}/zero_point", np.zeros(n, np.int8))
        bias = constant(f"{name}/bias", rng.normal(0, 0.02, n).astype(np.float32))
        out = f"{name}/out"
        nodes.append(
            helper.make_node(
                "DynamicQuantizeMatMul",
                [x, weight, scale, zero_point, bias],
                [out],
                name=name,
                domain="com.microsoft",
            )
        )
        return out

    word_ids, _, _ = INPUT_NAMES
    pooled_name, sequence_name = OUTPUT_NAMES
    axes_last = constant("axes_last", np.array([-1], np.int64))
    nodes += [
        helper.make_node("Cast", [word_ids], ["ids_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_float", axes_last], ["ids_column"]),
        # sin(id · c_j) with a random c_j per column: activations of unit order, any vocab.
        helper.make_node(
            "Mul",
            ["ids_column", constant("spread", rng.uniform(0.5, 2, h).astype(np.float32))],
            ["phases"],
        ),
        helper.make_node("Sin", ["phases"], ["x0"]),
    ]
    x = "x0"
    starts, ends = constant("zero", np.array([0], np.int64)), constant("h", np.array([h], np.int64))
    axis2 = constant("axis2", np.array([2], np.int64))
    for layer in range(dims.layers):
        qkv = gemm(x, h, 3 * h, f"layer_{layer}/qkv")
        query = f"layer_{layer}/query"
        nodes.append(helper.make_node("Slice", [qkv, starts, ends, axis2], [query]))
        attention_out = gemm(query, h, h, f"layer_{layer}/attention_output")
        up = gemm(attention_out, h, f, f"layer_{layer}/ffn_up")
        x = gemm(up, f, h, f"layer_{layer}/ffn_down")
    one, axis1 = (
        constant("one", np.array([1], np.int64)),
        constant("axis1", np.array([1], np.int64)),
    )
    nodes += [
        helper.make_node("Identity", [x], [sequence_name]),
        helper.make_node("Slice", [x, starts, one, axis1], ["cls_row"]),
        helper.make_node("Squeeze", ["cls_row", axis1], ["cls"]),
    ]
    nodes.append(helper.make_node("Tanh", [gemm("cls", h, h, "pooler")], [pooled_name]))

    batch_seq = ["batch", "seq"]
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info(n, TensorProto.INT32, batch_seq) for n in INPUT_NAMES],
        [
            helper.make_tensor_value_info(pooled_name, TensorProto.FLOAT, ["batch", h]),
            helper.make_tensor_value_info(sequence_name, TensorProto.FLOAT, [*batch_seq, h]),
        ],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # onnxruntime 1.31 reads IR ≤ 13; onnx 1.23 writes 14 by default
    return model


def write_weight_gemm_model(dims: Dimensions, path: str | Path) -> Path:
    import onnx

    path = Path(path)
    onnx.save(weight_gemm_model(dims), str(path))
    return path
