"""Static INT8: QDQ quantisation of the fused graph with ranges calibrated on text.

QDQ, not QOperator: QOperator on the fused graph fails inside onnxruntime (FINDINGS.md). The
calibration runs in bounded memory: onnxruntime's calibrator otherwise keeps every
intermediate output of every batch (issue reports of 100+ GiB for BERT percentile
calibration); `CalibMaxIntermediateOutputs` makes it reduce to ranges every few batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from fastelectra.bundle import TRT_CALIBRATION_FILE
from fastelectra.calibration.feeds import TextCalibrationReader, read_calibration_texts
from fastelectra.convert.precision import INT8_OPS, _needs_external, ffn_output_matmuls

METHODS = ("minmax", "entropy", "percentile")
# Batches of intermediate outputs held before reducing them to ranges / histograms.
MAX_INTERMEDIATE_BATCHES = 4


def calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in table:
        raise ValueError(f"unknown calibration method {name!r}; expected one of {METHODS}")
    return table[name]


def quantize_int8_static(
    src: Path,
    dst: Path,
    *,
    tokenizer_path: Path,
    texts: str | Path | None,
    method: str = "minmax",
    max_length: int = 512,
    table_dir: Path | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    corpus = read_calibration_texts(texts)
    reader = TextCalibrationReader(tokenizer_path, corpus, batch_size, max_length)
    cache = dst.with_name(dst.name + ".ranges.json")
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=INT8_OPS,
        nodes_to_exclude=ffn_output_matmuls(src),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibration_method(method),
        use_external_data_format=_needs_external(src),
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            "CalibMaxIntermediateOutputs": MAX_INTERMEDIATE_BATCHES,
            "ActivationSymmetric": True,
        },
        calibration_cache_path=str(cache),
    )
    from onnxruntime.quantization.calibrate import load_tensors_data

    tensors = load_tensors_data(cache).data  # tensor name -> TensorData(lowest, highest, ...)
    cache.unlink(missing_ok=True)
    if table_dir is not None:
        write_tensorrt_table(tensors, table_dir)
    return {
        "method": "quantize_static",
        "format": "QDQ",
        "calibration": method,
        "calibration_texts": str(texts) if texts else "built-in calibration.txt",
        "calibration_batches": len(reader),
        "op_types": INT8_OPS,
        "per_channel": True,
        "tensorrt_table": TRT_CALIBRATION_FILE if table_dir is not None else None,
    }


def write_tensorrt_table(tensors: dict[str, Any], directory: Path) -> Path:
    """TensorRT EP's calibration table (`trt_int8_calibration_table_name`) as FlatBuffers.

    Written with onnxruntime's own `write_calibration_table`, which also drops a JSON and a
    plain-text cache; only the FlatBuffers file is kept in the bundle.
    """
    from onnxruntime.quantization import write_calibration_table

    write_calibration_table(tensors, dir=str(directory))
    for extra in ("calibration.json", "calibration.cache"):
        (directory / extra).unlink(missing_ok=True)
    table = directory / TRT_CALIBRATION_FILE
    if not table.exists():
        raise RuntimeError("onnxruntime wrote no calibration.flatbuffers")
    return table


def read_tensorrt_table(path: Path) -> dict[str, float]:
    """Tensor name -> dynamic range (max |x|), to check a table round-trips."""
    import onnxruntime.quantization.CalTableFlatBuffers.KeyValue  # noqa: F401
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    table = TrtTable.GetRootAsTrtTable(bytearray(path.read_bytes()), 0)
    out = {}
    for i in range(table.DictLength()):
        entry = table.Dict(i)
        out[entry.Key().decode()] = float(entry.Value().decode())
    return out
