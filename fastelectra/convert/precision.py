"""FP16 and INT8 variants of the fused FP32 graph.

* fp16 (for GPU): weights and activations in half precision, IO kept int32 / float32;
  LayerNorm-family and Softmax stay FP32 where onnxruntime's converter allows it.
* int8-dynamic (CPU, VNNI): `quantize_dynamic` on the fused graph gives QAttention and
  MatMulInteger; per-channel weights.
* int8-static: QDQ with ranges calibrated on real text (see `fastelectra.calibration`), plus a
  TensorRT calibration table written beside the model.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from fastelectra.errors import InputError

if TYPE_CHECKING:
    from fastelectra.convert.int8_search import Rounding, SearchResult

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
    int8_search: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the `precision` variant of `fused` to `dst`; returns what goes into metadata.

    INT8 variants keep the nodes FP32 that `int8_search` finds they must (see
    `fastelectra.convert.int8_search`); `int8_search=False` quantises every MatMul and
    Attention (for speed work on random weights, whose accuracy means nothing).
    """
    if precision == "fp16":
        return to_fp16(fused, dst)
    if precision not in ("int8-dynamic", "int8-static"):
        raise InputError(f"no conversion for precision {precision!r}")
    if precision == "int8-dynamic":
        quantizer = DynamicInt8(fused, dst)
    else:
        from fastelectra.calibration.static import StaticInt8

        quantizer = StaticInt8(
            fused,
            dst,
            tokenizer_path=tokenizer_path,
            texts=calibration_texts,
            method=calibration_method,
            max_length=max_length,
            table_dir=staging,
        )
    with quantizer:
        if not int8_search:
            quantizer.quantize([])
            return quantizer.metadata() | {"fp32_nodes": 0, "int8_search": None}
        search = tune_int8(
            quantizer,
            fused,
            tokenizer_path=tokenizer_path,
            texts=calibration_texts,
            max_length=max_length,
            precision=precision,
            progress=progress,
        )
        return quantizer.metadata() | {
            "fp32_nodes": len(search.fp32_nodes),
            "int8_search": search.to_json(),
        }


def tune_int8(
    quantizer: Int8Quantizer,
    fused: Path,
    *,
    tokenizer_path: Path,
    texts: str | Path | None,
    max_length: int,
    precision: str,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Rank nodes on calibration text, then search how many must stay FP32 (int8_search)."""
    from fastelectra.calibration.feeds import read_calibration_texts
    from fastelectra.convert.int8_search import (
        CHECK_TEXTS,
        RANK_TEXTS,
        node_sensitivity,
        search_fp32_nodes,
        single_feeds,
        spread_sample,
        tightened,
    )
    from fastelectra.convert.verify import THRESHOLDS, onnx_runner, verify
    from fastelectra.runtime.tokenizer import WordPieceTokenizer, encode_texts

    corpus = read_calibration_texts(texts)
    encodings = encode_texts(WordPieceTokenizer.from_file(tokenizer_path), corpus, max_length)
    ranked = node_sensitivity(
        fused,
        single_feeds(spread_sample(encodings, RANK_TEXTS, key=lambda e: len(e.ids))),
        INT8_OPS,
        quantizer.activation_rounding(),
    )
    check = spread_sample(encodings, CHECK_TEXTS, key=lambda e: len(e.ids))
    reference = onnx_runner(fused)

    def evaluate() -> dict[str, Any]:
        return verify(reference, onnx_runner(quantizer.dst), check, precision)

    return search_fp32_nodes(
        ranked, quantizer.quantize, evaluate, tightened(THRESHOLDS[precision]), progress
    )


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.transformers.onnx_model import OnnxModel

    from fastelectra.convert.fuse import save_model

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(
        keep_io_types=True, op_block_list=FP16_KEEP_FP32, use_symbolic_shape_infer=False
    )
    save_model(model.model, dst)
    return {"method": "convert_float_to_float16", "keep_io_types": True, "fp32_ops": FP16_KEEP_FP32}


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
            use_external_data_format=_needs_external(self.src),
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


def _needs_external(path: Path) -> bool:
    from fastelectra.convert.fuse import INLINE_LIMIT_BYTES

    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return size >= INLINE_LIMIT_BYTES
