"""The quantisers in bounded memory: what they write is what onnxruntime's stock path writes.

`int8.weightless_shape_inference` replaces onnxruntime's save-and-reload shape inference (three
copies of the weights) by shape inference on a weightless copy, and the quantisers' output is
written tensor by tensor and inlined afterwards (`modelfile.inline_external_data`). Neither may
change the model: both are compared here with onnxruntime's own path on the tiny fused graph.
"""

from __future__ import annotations

import onnx
import pytest

from fastelectra.convert.fuse import fuse
from fastelectra.convert.int8 import INT8_OPS, DynamicInt8
from fastelectra.convert.tf_export import export_onnx


@pytest.fixture(scope="module")
def fused_external(tiny_source, tmp_path_factory):
    """The tiny fused graph with its weights in fused.onnx.data, as a non-fp32 build has it."""
    work = tmp_path_factory.mktemp("int8-memory")
    exported = export_onnx(tiny_source, work / "exported.onnx")
    fuse(exported.path, work / "fused.onnx", tiny_source.dimensions, external_data=True)
    assert (work / "fused.onnx.data").exists()
    return work / "fused.onnx"


def stock_quantize_dynamic(src, dst, fp32_nodes):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=INT8_OPS,
        nodes_to_exclude=fp32_nodes,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    """data_location = DEFAULT written out or left unset: the same tensor."""
    for tensor in model.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.DEFAULT
        tensor.ClearField("data_location")
    return model


@pytest.mark.parametrize("keep", [0, 2])
def test_dynamic_int8_writes_what_stock_onnxruntime_writes(fused_external, tmp_path, keep):
    model = onnx.load(str(fused_external), load_external_data=False)
    fp32_nodes = [n.name for n in model.graph.node if n.op_type in INT8_OPS][:keep]
    stock = tmp_path / "stock.onnx"
    stock_quantize_dynamic(fused_external, stock, fp32_nodes)
    ours = tmp_path / "ours.onnx"
    DynamicInt8(fused_external, ours).quantize(fp32_nodes)
    assert not ours.with_name("ours.onnx.data").exists()  # inlined again: the bundle's layout
    a, b = canonical(onnx.load(str(stock))), canonical(onnx.load(str(ours)))
    assert a.graph == b.graph
    ops = {n.op_type for n in b.graph.node}
    assert {"QAttention", "DynamicQuantizeMatMul"} & ops or "MatMulInteger" in ops


def test_fp16_writes_what_stock_onnxruntime_writes(fused_external, tmp_path):
    from onnxruntime.transformers.onnx_model import OnnxModel

    from fastelectra.convert.precision import FP16_KEEP_FP32, to_fp16

    stock = OnnxModel(onnx.load(str(fused_external)))
    stock.convert_float_to_float16(
        keep_io_types=True, op_block_list=FP16_KEEP_FP32, use_symbolic_shape_infer=False
    )
    to_fp16(fused_external, tmp_path / "ours.onnx")
    ours = onnx.load(str(tmp_path / "ours.onnx"))
    assert canonical(stock.model).graph == canonical(ours).graph
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in ours.graph.initializer}
