"""What dynamic and static INT8 share: the ops quantised, the quantizer protocol that the INT8
search drives, and the dynamic quantizer itself.

The static quantizer (`fastelectra.convert.static_int8.StaticInt8`) builds on this module, and
`fastelectra.convert.precision` chooses between the two; this module imports neither, so the
dependency runs one way: precision -> static_int8 -> int8 (and static_int8 -> calibration,
which turns text into feeds and feeds into ranges, and imports nothing of convert).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

if TYPE_CHECKING:
    from fastelectra.convert.int8_search import Rounding

# Ops quantised in the fused graph. Gather (the embedding) is left FP32: it is a lookup, not
# arithmetic, and quantising it costs accuracy for no speed.
INT8_OPS = ["MatMul", "Attention"]


class Int8Quantizer(abc.ABC):
    """Writes `dst` again for each set of nodes kept FP32 (the search tries several); a
    context manager so that per-model state (the static calibration cache) is cleaned up."""

    dst: Path
    _written: list[str] | None = None

    def quantize(self, fp32_nodes: list[str]) -> None:
        """Write `dst` with `fp32_nodes` left FP32, unless that is what it already holds."""
        if self._written != list(fp32_nodes):
            self._write(fp32_nodes)
            self._written = list(fp32_nodes)

    @abc.abstractmethod
    def _write(self, fp32_nodes: list[str]) -> None: ...

    @abc.abstractmethod
    def metadata(self) -> dict[str, Any]: ...

    def activation_rounding(self) -> Rounding | None:
        """How activations will be rounded, for ranking nodes; None: dynamic quantisation's."""
        return None

    def __enter__(self) -> Int8Quantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class DynamicInt8(Int8Quantizer):
    """`quantize_dynamic`: QAttention + MatMulInteger, per-channel int8 weights."""

    def __init__(self, src: Path, dst: Path) -> None:
        self.src, self.dst = src, dst

    def _write(self, fp32_nodes: list[str]) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with weightless_shape_inference():
            quantize_dynamic(
                str(self.src),
                str(self.dst),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=INT8_OPS,
                nodes_to_exclude=fp32_nodes,
                # Written tensor by tensor, then inlined if it fits (`inline_external_data`).
                use_external_data_format=True,
                # The fused contrib ops carry no type information onnxruntime's quantizer reads.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        inline_if_it_fits(self.dst)

    def metadata(self) -> dict[str, Any]:
        return {
            "method": "quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "op_types": INT8_OPS,
        }


@contextlib.contextmanager
def weightless_shape_inference() -> Iterator[None]:
    """onnxruntime's quantizers, shape inference run on the graph without its weights.

    To learn the value infos, onnxruntime 1.31's quantizers call
    `save_and_reload_model_with_shape_infer(model)`: a deep copy of the model, saved, shape-
    inferred and loaded again, while the model it came from is still held; with the loaded
    model that is three copies of the weights (3.9 GB for ELECTRA-large) before one is
    quantised. Shape inference needs the initializers' types and dims, not their bytes: here it
    runs on a copy whose large tensors carry no data, its value infos are written into the
    model itself, and the model (not a copy) is returned. The quantised model is the same
    (`tests/test_precision.py` compares them).
    """
    from onnxruntime.quantization import base_quantizer, onnx_quantizer

    modules = (base_quantizer, onnx_quantizer)
    originals = [m.save_and_reload_model_with_shape_infer for m in modules]
    for module in modules:
        module.save_and_reload_model_with_shape_infer = infer_shapes_in_place
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.save_and_reload_model_with_shape_infer = original


def infer_shapes_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the value infos onnx's shape inference gives it (see above)."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    from fastelectra.convert.modelfile import without_large_data

    inferred = onnx.shape_inference.infer_shapes(without_large_data(model))
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    add_infer_metadata(model)
    return model


def inline_if_it_fits(path: Path) -> None:
    """A quantiser's output, written with external data, inlined when protobuf can hold it."""
    from fastelectra.convert.fuse import INLINE_LIMIT_BYTES
    from fastelectra.convert.modelfile import inline_external_data

    inline_external_data(path, INLINE_LIMIT_BYTES)
