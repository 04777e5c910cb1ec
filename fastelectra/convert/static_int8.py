"""Static INT8: QDQ quantisation of the fused graph with ranges calibrated on text.

QDQ, not QOperator: QOperator on the fused graph fails inside onnxruntime. The ranges come
from `fastelectra.calibration.ranges.calibrate`, which runs first and alone, so that the
weights are held once at a time: by the calibration session, then by the quantiser, never
both and never in Python during calibration.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from fastelectra.bundle import TRT_CALIBRATION_FILE
from fastelectra.calibration.feeds import TextCalibrationReader
from fastelectra.calibration.ranges import (
    BATCH_TOKENS,
    calibrate,
    calibration_method,
    write_tensorrt_table,
)
from fastelectra.convert.int8 import (
    INT8_OPS,
    Int8Quantizer,
    inline_if_it_fits,
    weightless_shape_inference,
)

if TYPE_CHECKING:
    from fastelectra.convert.int8_search import Rounding
    from fastelectra.runtime.tokenizer import Encoding

# Initializers read in for symbolic shape inference: shape-like constants, not weight matrices.
SMALL_TENSOR_BYTES = 1 << 20


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
        corpus: Sequence[Encoding],
        texts: str | Path | None,
        method: str = "minmax",
        table_dir: Path | None = None,
        batch_size: int = 8,
        max_tokens: int = BATCH_TOKENS,
    ) -> None:
        """`corpus`: the calibration texts, tokenized (`calibration_encodings`); `texts`:
        where they came from (None: the built-in set), for the metadata."""
        self.dst = dst
        self.texts = texts
        self.method = method
        self.table_dir = table_dir
        self.max_tokens = max_tokens
        self.reader = TextCalibrationReader.from_encodings(corpus, batch_size, max_tokens)
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
            calibrate(self.src, self.reader, self.method, self.cache, INT8_OPS)
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


def _external_length(tensor: onnx.TensorProto) -> int:
    return int(next((e.value for e in tensor.external_data if e.key == "length"), 0))
