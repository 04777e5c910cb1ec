"""Activation ranges of a graph on calibration feeds, and TensorRT's calibration table.

The calibration runs in bounded memory: onnxruntime's calibrator otherwise keeps every
intermediate output of every batch (issue reports of 100+ GiB for BERT percentile
calibration). `calibrate` collects one batch at a time through the reader's `set_range`
and folds it into the running ranges / histograms (what quantize_static's
`CalibStridedMinMax` does, for every method despite its name); that also keeps each
collected set one shape, without which the histogram methods fail on batches of different
lengths. The quantiser that uses the ranges is `fastelectra.convert.static_int8.StaticInt8`;
this package only turns text into feeds and feeds into ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fastelectra.bundle import TRT_CALIBRATION_FILE
from fastelectra.calibration.feeds import TextCalibrationReader
from fastelectra.errors import InputError, ToolError

METHODS = ("minmax", "entropy", "percentile")
# Batches of intermediate outputs held before folding them into ranges / histograms.
BATCHES_PER_COLLECT = 1
# Padded tokens per calibration batch (a longer text is a batch of its own): what bounds the
# calibration session's activations (`TextCalibrationReader`).
BATCH_TOKENS = 256


def calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in table:
        raise InputError(f"unknown calibration method {name!r}; expected one of {METHODS}")
    return table[name]


def calibrate(
    model: Path,
    reader: TextCalibrationReader,
    method: str,
    cache: Path,
    op_types: Sequence[str],
) -> None:
    """Activation ranges of `model` on `reader`'s batches, written to `cache` as onnxruntime's
    `quantize_static` writes and reads them.

    What `quantize_static` does when given a reader, with two changes. It runs first and
    alone, so the quantiser's copy of the weights is not loaded yet. And the calibrator
    holds the graph only: onnxruntime's loads the model with its weights into Python, adds
    its ReduceMin / ReduceMax outputs and saves it again, weights and all, for its session;
    here the augmented graph is saved beside `model`, its initializers still pointing at
    `model`'s external data, so the weights are read once, by the session.
    """
    from onnxruntime.quantization import calibrate as ort_calibrate

    augmented = model.with_name(f"{model.stem}.augmented.onnx")
    load = ort_calibrate.load_model_with_shape_infer
    session = ort_calibrate.CalibraterBase.create_inference_session
    ort_calibrate.load_model_with_shape_infer = _graph_with_shapes
    ort_calibrate.CalibraterBase.create_inference_session = _session_without_arena
    try:
        calibrator = ort_calibrate.create_calibrator(
            model,
            list(op_types),
            augmented_model_path=str(augmented),
            calibrate_method=calibration_method(method),
            use_external_data_format=False,  # nothing to externalise: the graph holds no weights
            # Symmetric ranges (lowest = -highest) also make the TensorRT table right:
            # onnxruntime writes max(highest, lowest) there, not max(|highest|, |lowest|).
            extra_options={"symmetric": True},
        )
        # One batch at a time (see the module docstring), as CalibStridedMinMax does.
        for start in range(0, len(reader), BATCHES_PER_COLLECT):
            reader.set_range(start, start + BATCHES_PER_COLLECT)
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    finally:
        ort_calibrate.load_model_with_shape_infer = load
        ort_calibrate.CalibraterBase.create_inference_session = session
        augmented.unlink(missing_ok=True)
    ort_calibrate.save_tensors_data(ranges, cache)


def _session_without_arena(calibrator: Any) -> None:
    """onnxruntime's calibration session, with its CPU memory arena off.

    Calibration batches come in every length up to the model's limit; the arena keeps each
    new size it is asked for and grows by doubling. Without it, each activation is returned to
    the system when its last reader has run: on ELECTRA-large with 8-text batches, calibration
    peaked at 5.5 GiB instead of 6.7 (the rest of the way to 2.3 GiB is `BATCH_TOKENS`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as theirs
    options.enable_cpu_mem_arena = False
    calibrator.infer_session = ort.InferenceSession(
        calibrator.augmented_model_path,
        sess_options=options,
        providers=calibrator.execution_providers,
    )


def _graph_with_shapes(model_path: Path) -> onnx.ModelProto:
    """onnxruntime's `load_model_with_shape_infer`, the external weights left on disk."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    model = onnx.load(str(model_path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(inferred)
    return inferred


def write_tensorrt_table(tensors: dict[str, Any], directory: Path) -> Path:
    """TensorRT EP's calibration table (`trt_int8_calibration_table_name`) as FlatBuffers.

    Written with onnxruntime's own `write_calibration_table`, which also drops a JSON and a
    plain-text cache; only the FlatBuffers file is kept in the bundle. TensorRT wants each
    tensor's dynamic range max(|lowest|, |highest|), but onnxruntime writes
    max(highest, lowest), which clips the negative side of any range that is not symmetric
    (the histogram methods' ranges are not), so the ranges are made symmetric first.
    """
    from onnxruntime.quantization import write_calibration_table
    from onnxruntime.quantization.calibrate import TensorData

    symmetric = {}
    for name, data in tensors.items():
        low, high = data.range_value
        bound = np.maximum(np.abs(low), np.abs(high)).astype(np.float32)
        symmetric[name] = TensorData(lowest=-bound, highest=bound)
    write_calibration_table(symmetric, dir=str(directory))
    for extra in ("calibration.json", "calibration.cache"):
        (directory / extra).unlink(missing_ok=True)
    table = directory / TRT_CALIBRATION_FILE
    if not table.exists():
        raise ToolError("onnxruntime wrote no calibration.flatbuffers")
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
