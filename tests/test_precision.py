"""FP16 and INT8 bundles of the real-weights MiniLM module, each gated on accuracy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fastelectra.calibration.feeds import TextCalibrationReader, default_calibration_texts
from fastelectra.calibration.ranges import read_tensorrt_table
from fastelectra.convert.build import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def precision_bundles(minilm_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    # No force: each build raises unless its gate passes.
    return {
        p: build(minilm_module, root / p, precision=p, progress=None).out
        for p in ("fp16", "int8-dynamic", "int8-static")
    }


def _report(bundle):
    return json.loads((bundle / "verification.json").read_text())


def test_fp16_gate(precision_bundles):
    report = _report(precision_bundles["fp16"])
    assert report["passed"], report["failures"]
    for name in ("pooled_output", "sequence_output"):
        assert report["outputs"][name]["min_cosine"] >= 0.9995
    model = onnx.load(str(precision_bundles["fp16"] / "model.onnx"))
    dtypes = {t.data_type for t in model.graph.initializer if len(t.dims) == 2}
    assert onnx.TensorProto.FLOAT16 in dtypes
    # IO stays int32 in, float32 out.
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8-static"])
def test_int8_gate(precision_bundles, precision):
    """The issue's gate on real weights, against TensorFlow and against the FP32 model."""
    report = _report(precision_bundles[precision])
    assert report["passed"], report["failures"]
    assert report["against_fp32"]["spearman"] >= 0.99
    for figures in (report["outputs"]["pooled_output"], report["mean_pooled_sequence"]):
        assert figures["mean_cosine"] >= 0.995 and figures["min_cosine"] >= 0.98
    meta = json.loads((precision_bundles[precision] / "fastelectra.json").read_text())
    assert meta["precision"] == precision
    assert meta["fused_ops"]["Attention"] == 6
    search = meta["quantization"]["int8_search"]
    # Still an INT8 model: the search kept only some of the 25 MatMul/Attention nodes FP32.
    assert search["quantizable_nodes"] == 25
    k = meta["quantization"]["fp32_nodes"]
    assert 0 <= k < 20
    # Smoothed first (fastelectra.convert.smoothing), every product; before smoothing the
    # dynamic search kept 8 nodes FP32 on this module, and issue 13 asks for fewer.
    smoothing = meta["quantization"]["smoothing"]
    assert smoothing["method"] == "smoothquant" and smoothing["nodes"] == 25
    if precision == "int8-dynamic":
        assert k < 8
    # The search's record shows k passing on the calibration texts and k - 1 failing.
    outcome = {step["fp32_nodes"]: step["passed"] for step in search["search"]}
    assert outcome[k] is True
    assert k == 0 or outcome[k - 1] is False


def test_int8_dynamic_uses_integer_kernels(precision_bundles):
    model = onnx.load(str(precision_bundles["int8-dynamic"] / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "QAttention" in ops and "MatMulInteger" in ops


def test_int8_static_is_qdq_with_a_tensorrt_table(precision_bundles):
    bundle = precision_bundles["int8-static"]
    model = onnx.load(str(bundle / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") > 10 and ops.count("QuantizeLinear") >= 1
    table = read_tensorrt_table(bundle / "calibration.flatbuffers")
    # Every activation the QDQ model quantises has its range in the table, and so does every
    # MatMul / Attention input the search kept FP32 (TensorRT may still run it in INT8).
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized <= set(table)
    assert len(table) >= 25
    assert all(np.isfinite(v) and v > 0 for v in table.values())
    meta = json.loads((bundle / "fastelectra.json").read_text())
    assert meta["quantization"]["format"] == "QDQ"
    assert "calibration.flatbuffers" in meta["files"]


def test_calibration_feeds_are_right_padded_per_batch(minilm_bundle):
    texts = default_calibration_texts()
    assert len(texts) >= 400
    reader = TextCalibrationReader(minilm_bundle / "tokenizer.json", texts[:24], batch_size=8)
    shapes = []
    while (feed := reader.get_next()) is not None:
        mask = feed["input_mask"]
        lengths = mask.sum(1)
        assert mask.shape[1] == lengths.max()  # padded to its own longest only
        for row, n in zip(mask, lengths, strict=True):
            assert row[:n].all() and not row[n:].any()  # right padding
        shapes.append(mask.shape)
    assert len(shapes) == 3 == len(reader)
    reader.rewind()
    assert reader.get_next() is not None
