"""The INT8 node search: its rounding model matches onnxruntime, and bisection finds the least k."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastelectra.convert.int8_search import (
    fake_quant_activation,
    fake_quant_static,
    search_fp32_nodes,
    spread_sample,
    tightened,
)
from fastelectra.precisions import INT8_DYNAMIC, Gate


def _dynamic_quantize_dequantize() -> onnx.ModelProto:
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("shift", [0.0, 3.0, -5.0])
def test_dynamic_rounding_matches_onnxruntime(shift):
    import onnxruntime as ort

    session = ort.InferenceSession(
        _dynamic_quantize_dequantize().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 96)) + shift).astype(np.float32)
    x[3, 7] = 40.0  # an outlier feature stretches the range, as in BERT's LayerNorm outputs
    (expected,) = session.run(None, {"x": x})
    got = fake_quant_activation(x)
    scale = (max(x.max(), 0) - min(x.min(), 0)) / 255
    # Equal up to one step where float rounding of x / scale lands on .5 differently.
    assert np.abs(got - expected).max() <= scale * 1.001
    assert np.mean(np.isclose(got, expected, atol=1e-6)) > 0.99


def test_static_rounding_clips_to_the_calibrated_range():
    x = np.array([-2.0, -0.5, 0.0, 0.26, 4.0], np.float32)
    got = fake_quant_static(x, -1.0, 1.0)
    assert got[0] == pytest.approx(-128 / 127)  # clipped at the int8 floor
    assert got[-1] == pytest.approx(1.0)  # clipped at the calibrated high
    assert got[3] == pytest.approx(round(0.26 * 127) / 127)


def _fake_search(damage_by_k: dict[int, float], bound: float = 0.98):
    """A model whose min cosine vs FP32 is 1 - damage_by_k[k] with k nodes kept FP32."""
    state = {"k": None, "quantized": []}
    ranked = [(f"node{i}", 1.0 / (i + 1)) for i in range(len(damage_by_k) - 1)]

    def quantize(fp32_nodes):
        state["k"] = len(fp32_nodes)
        state["quantized"].append(list(fp32_nodes))

    def evaluate():
        cos = 1.0 - damage_by_k[state["k"]]
        figures = {"mean_cosine": cos, "min_cosine": cos}
        return {
            "outputs": {"pooled_output": figures},
            "mean_pooled_sequence": figures,
            "spearman_vs_tensorflow": cos,
        }

    thresholds = Gate(
        {"pooled_output": {"min_cosine": bound}, "mean_pooled_sequence": {"min_cosine": bound}},
        spearman_vs_fp32=bound,
    )
    return ranked, quantize, evaluate, thresholds, state


def test_search_finds_the_fewest_fp32_nodes_and_leaves_that_model_written():
    damage = {k: max(0.0, 0.05 - 0.006 * k) for k in range(11)}  # passes from k = 5
    ranked, quantize, evaluate, thresholds, state = _fake_search(damage)
    result = search_fp32_nodes(ranked, quantize, evaluate, thresholds)
    assert result.fp32_nodes == ["node0", "node1", "node2", "node3", "node4"]
    assert state["quantized"][-1] == result.fp32_nodes  # the written candidate is the chosen one
    assert len(result.steps) <= 2 + int(np.ceil(np.log2(10)))  # bisection, not a scan
    tried = {s["fp32_nodes"]: s["passed"] for s in result.steps}
    assert tried[5] is True and tried[4] is False


def test_search_quantizes_everything_when_it_can():
    ranked, quantize, evaluate, thresholds, _ = _fake_search({k: 0.001 for k in range(6)})
    result = search_fp32_nodes(ranked, quantize, evaluate, thresholds)
    assert result.fp32_nodes == [] and len(result.steps) == 1


def test_search_refuses_a_model_int8_cannot_serve():
    ranked, quantize, evaluate, thresholds, _ = _fake_search({k: 0.5 for k in range(6)})
    with pytest.raises(RuntimeError, match="misses the gate"):
        search_fp32_nodes(ranked, quantize, evaluate, thresholds)


def test_tightened_gate_keeps_a_margin():
    gate = tightened(INT8_DYNAMIC.gate)
    assert gate.bounds["mean_pooled_sequence"]["min_cosine"] == pytest.approx(0.985)
    assert gate.bounds["pooled_output"]["mean_cosine"] == pytest.approx(0.99625)
    assert gate.spearman_vs_fp32 == pytest.approx(0.9925)


def test_spread_sample_covers_short_and_long():
    items = list(range(100, 0, -1))
    picked = spread_sample(items, 5, key=lambda v: v)
    assert picked[0] == 1 and picked[-1] == 100 and len(picked) == 5
    assert spread_sample(items[:3], 5, key=lambda v: v) == [98, 99, 100]
