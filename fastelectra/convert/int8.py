"""What dynamic and static INT8 share: the ops quantised, the quantizer protocol that the INT8
search drives, and the dynamic quantizer itself.

The static quantizer (`fastelectra.calibration.static.StaticInt8`) builds on this module, and
`fastelectra.convert.precision` chooses between the two; this module imports neither, so the
dependency runs one way: precision -> calibration.static -> int8.
"""

from __future__ import annotations

import abc
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

        quantize_dynamic(
            str(self.src),
            str(self.dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=INT8_OPS,
            nodes_to_exclude=fp32_nodes,
            use_external_data_format=needs_external_data(self.src),
            # The fused contrib ops carry no type information onnxruntime's quantizer reads.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "method": "quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "op_types": INT8_OPS,
        }


def needs_external_data(path: Path) -> bool:
    """Whether a quantised copy of the model at `path` must keep its weights in a `.data` file
    (protobuf cannot hold 2 GiB inline), counting the weights `path` itself keeps outside."""
    from fastelectra.convert.fuse import INLINE_LIMIT_BYTES

    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return size >= INLINE_LIMIT_BYTES
