"""FP16 and INT8 variants of the fused FP32 graph.

* fp16 (for GPU): weights and activations in half precision, IO kept int32 / float32;
  LayerNorm-family and Softmax stay FP32 where onnxruntime's converter allows it.
* int8-dynamic (CPU, VNNI): `quantize_dynamic` on the fused graph gives QAttention and
  MatMulInteger; per-channel weights.
* int8-static: QDQ with ranges calibrated on real text (see `fastelectra.calibration`), plus a
  TensorRT calibration table written beside the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

log = logging.getLogger(__name__)

# Ops quantised in the fused graph. Gather (the embedding) is left FP32: it is a lookup, not
# arithmetic, and quantising it costs accuracy for no speed.
INT8_OPS = ["MatMul", "Attention"]
# Kept FP32 in the FP16 graph: reductions whose precision matters. SkipLayerNormalization and
# EmbedLayerNormalization accumulate in FP32 internally even with FP16 IO.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax"]


def convert_precision(
    precision: str,
    fused: Path,
    dst: Path,
    *,
    staging: Path,
    tokenizer_path: Path,
    calibration_texts: str | Path | None,
    calibration_method: str,
    max_length: int,
) -> dict[str, Any]:
    """Write the `precision` variant of `fused` to `dst`; returns what goes into metadata."""
    if precision == "fp16":
        return to_fp16(fused, dst)
    if precision == "int8-dynamic":
        return quantize_int8_dynamic(fused, dst)
    if precision == "int8-static":
        from fastelectra.calibration.static import quantize_int8_static

        return quantize_int8_static(
            fused,
            dst,
            tokenizer_path=tokenizer_path,
            texts=calibration_texts,
            method=calibration_method,
            max_length=max_length,
            table_dir=staging,
        )
    raise ValueError(f"no conversion for precision {precision!r}")


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.transformers.onnx_model import OnnxModel

    from fastelectra.convert.fuse import save_model

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(
        keep_io_types=True, op_block_list=FP16_KEEP_FP32, use_symbolic_shape_infer=False
    )
    save_model(model.model, dst)
    return {"method": "convert_float_to_float16", "keep_io_types": True, "fp32_ops": FP16_KEEP_FP32}


def ffn_output_matmuls(path: Path) -> list[str]:
    """MatMuls fed by a GELU: the FFN down-projections, whose inputs have the widest range.

    Keeping them FP32 measurably helps the real-weights MiniLM (mean-pooled cosine vs FP32
    0.9927 -> 0.9959, Spearman 0.989 -> 0.994) at the cost of a third of the FFN arithmetic.
    """
    model = onnx.load(str(path), load_external_data=False)
    gelu_outputs = {
        o
        for n in model.graph.node
        if n.op_type in ("FastGelu", "BiasGelu", "Gelu")
        for o in n.output
    }
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in gelu_outputs
    ]


def quantize_int8_dynamic(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = ffn_output_matmuls(src)
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=INT8_OPS,
        nodes_to_exclude=excluded,
        use_external_data_format=_needs_external(src),
        # The fused contrib ops carry no type information onnxruntime's quantizer can read.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {
        "method": "quantize_dynamic",
        "weight_type": "QInt8",
        "per_channel": True,
        "op_types": INT8_OPS,
        "fp32_nodes": len(excluded),
    }


def _needs_external(path: Path) -> bool:
    from fastelectra.convert.fuse import INLINE_LIMIT_BYTES

    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return size >= INLINE_LIMIT_BYTES
