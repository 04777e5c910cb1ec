"""Static INT8: QDQ quantisation of the fused graph with ranges calibrated on text.

QDQ, not QOperator: QOperator on the fused graph fails inside onnxruntime. The
calibration runs in bounded memory: onnxruntime's calibrator otherwise keeps every
intermediate output of every batch (issue reports of 100+ GiB for BERT percentile
calibration). `calibrate` collects one batch at a time through the reader's `set_range`
and folds it into the running ranges / histograms (what quantize_static's
`CalibStridedMinMax` does, for every method despite its name); that also keeps each
collected set one shape, without which the histogram methods fail on batches of different
lengths. The weights are held once at a time: by the calibration session, then by the
quantiser, never both and never in Python during calibration.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from fastelectra.bundle import TRT_CALIBRATION_FILE
from fastelectra.calibration.feeds import TextCalibrationReader, read_calibration_texts
from fastelectra.convert.int8 import (
    INT8_OPS,
    Int8Quantizer,
    inline_if_it_fits,
    weightless_shape_inference,
)
from fastelectra.errors import InputError, ToolError

if TYPE_CHECKING:
    from fastelectra.convert.int8_search import Rounding

METHODS = ("minmax", "entropy", "percentile")
# Batches of intermediate outputs held before folding them into ranges / histograms.
BATCHES_PER_COLLECT = 1
# Padded tokens per calibration batch (a longer text is a batch of its own): what bounds the
# calibration session's activations (`TextCalibrationReader`).
BATCH_TOKENS = 256
# Initializers read in for symbolic shape inference: shape-like constants, not weight matrices.
SMALL_TENSOR_BYTES = 1 << 20


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


class StaticInt8(Int8Quantizer):
    """QDQ quantisation with activation ranges calibrated once on text.

    Calibration is the expensive part, so it runs on the first `quantize` only: onnxruntime's
    `quantize_static` reads the ranges back from its JSON cache on every later call (the INT8
    search writes several candidates). The TensorRT table is written from the same ranges.
    """

    def __init__(
        self,
        src: Path,
        dst: Path,
        *,
        tokenizer_path: Path,
        texts: str | Path | None,
        method: str = "minmax",
        max_length: int = 512,
        table_dir: Path | None = None,
        batch_size: int = 8,
        max_tokens: int = BATCH_TOKENS,
    ) -> None:
        self.dst = dst
        self.texts = texts
        self.method = method
        self.table_dir = table_dir
        self.max_tokens = max_tokens
        self.reader = TextCalibrationReader(
            tokenizer_path, read_calibration_texts(texts), batch_size, max_length, max_tokens
        )
        self.work = Path(tempfile.mkdtemp(prefix=".calibration-", dir=dst.parent))
        self.cache = self.work / "ranges.json"
        # onnxruntime's calibrator only records tensors whose type it knows, and nothing
        # infers types through the fused contrib ops (SkipLayerNormalization, Attention...):
        # without this, 2 of MiniLM's 25 quantisable inputs got ranges. Symbolic shape
        # inference knows the contrib ops. The typed graph lives beside `src`, so that it reads
        # `src`'s external weights rather than holding a copy of them.
        self.src = typed_graph(src, src.with_name(f".{src.stem}.typed-{os.getpid()}.onnx"))

    def _write(self, fp32_nodes: list[str]) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        first = not self.cache.exists()
        if first:
            # Before the quantiser loads the model, not (as quantize_static would) beside it.
            calibrate(self.src, self.reader, self.method, self.cache)
        with weightless_shape_inference():
            quantize_static(
                str(self.src),
                str(self.dst),
                None,  # the ranges are read from the cache
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=INT8_OPS,
                nodes_to_exclude=fp32_nodes,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibration_method(self.method),
                # Written tensor by tensor, then inlined if it fits (`inline_if_it_fits`).
                use_external_data_format=True,
                extra_options={
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                    "ActivationSymmetric": True,
                },
                calibration_cache_path=str(self.cache),
            )
        inline_if_it_fits(self.dst)
        if first and self.table_dir is not None:
            from onnxruntime.quantization.calibrate import load_tensors_data

            write_tensorrt_table(load_tensors_data(self.cache).data, self.table_dir)

    def activation_rounding(self) -> Rounding:
        """Symmetric int8 with each tensor's calibrated range (calibrating if not yet done)."""
        from onnxruntime.quantization.calibrate import load_tensors_data

        from fastelectra.convert.int8_search import fake_quant_static

        if not self.cache.exists():
            self.quantize([])  # calibrates; the search's first candidate, so never redone
        ranges = {
            name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
            for name, data in load_tensors_data(self.cache).data.items()
        }
        # (quantize_static's symmetric activations use max(|low|, |high|), as does rounding.)

        def rounding(name: str, x: np.ndarray) -> np.ndarray:
            if name not in ranges:  # not calibrated: quantize_static leaves that input FP32
                return x
            return fake_quant_static(x, *ranges[name])

        return rounding

    def metadata(self) -> dict[str, Any]:
        return {
            "method": "quantize_static",
            "format": "QDQ",
            "calibration": self.method,
            "calibration_texts": str(self.texts) if self.texts else "built-in calibration.txt",
            "calibration_batches": len(self.reader),
            "calibration_batch": {
                "texts": self.reader.batch_size,
                "padded_tokens": self.max_tokens,
            },
            "op_types": INT8_OPS,
            "per_channel": True,
            "tensorrt_table": TRT_CALIBRATION_FILE if self.table_dir is not None else None,
        }

    def __exit__(self, *exc: object) -> None:
        self.src.unlink(missing_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)


def typed_graph(src: Path, dst: Path) -> Path:
    """`src` with every intermediate tensor's type and shape annotated, written to `dst` in
    `src`'s directory: its weights stay where they are (in `src`'s external data) or, for an
    inline `src`, are copied with the graph."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    if dst.parent.resolve() != src.parent.resolve():
        raise ValueError("the typed graph must be written beside its model")
    graph = onnx.load(str(src), load_external_data=False)
    # Shape inference reads the values of shape-like constants (small); weight matrices stay on
    # disk. For an inline `src` everything is loaded already.
    for tensor in graph.graph.initializer:
        if uses_external_data(tensor) and _external_length(tensor) < SMALL_TENSOR_BYTES:
            load_external_data_for_tensor(tensor, str(src.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    typed = SymbolicShapeInference.infer_shapes(graph, auto_merge=True)
    graph.graph.value_info.extend(typed.graph.value_info)
    del typed
    onnx.save(graph, str(dst))
    return dst


def calibrate(model: Path, reader: TextCalibrationReader, method: str, cache: Path) -> None:
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
            INT8_OPS,
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


def _external_length(tensor: onnx.TensorProto) -> int:
    return int(next((e.value for e in tensor.external_data if e.key == "length"), 0))


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
