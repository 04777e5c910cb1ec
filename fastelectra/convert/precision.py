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
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from fastelectra.convert.int8 import INT8_OPS, DynamicInt8, Int8Quantizer
from fastelectra.errors import InputError
from fastelectra.precisions import Precision

if TYPE_CHECKING:
    from fastelectra.convert.int8_search import SearchResult
    from fastelectra.runtime.tokenizer import Encoding

log = logging.getLogger(__name__)

# Kept FP32 in the FP16 graph: reductions whose precision matters. SkipLayerNormalization and
# EmbedLayerNormalization accumulate in FP32 internally even with FP16 IO.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax"]


def convert_precision(
    precision: Precision,
    fused: Path,
    dst: Path,
    *,
    staging: Path,
    tokenizer_path: Path,
    calibration_texts: str | Path | None,
    calibration_method: str,
    max_length: int,
    int8_search: bool = True,
    smoothing: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the `precision` variant of `fused` to `dst`; returns what goes into metadata.

    INT8 variants keep the nodes FP32 that `int8_search` finds they must (see
    `fastelectra.convert.int8_search`); `int8_search=False` quantises every MatMul and
    Attention (for speed work on random weights, whose accuracy means nothing). `smoothing`
    (SmoothQuant's alpha, `fastelectra.convert.smoothing`) evens out activation outliers
    first; None quantises the fused graph as it is.
    """
    conversion = precision.conversion
    if conversion == "float16":
        return to_fp16(fused, dst)
    if conversion not in ("quantize-dynamic", "quantize-static"):
        raise InputError(f"no conversion for precision {precision.name!r}")
    from fastelectra.calibration.feeds import calibration_encodings

    # Read and tokenized once: the smoothing, the ranking, the search's check texts and the
    # static calibration all take theirs from these; a dynamic build that uses none of them
    # (no smoothing, no search) reads no text at all.
    needs_text = smoothing is not None or int8_search or conversion == "quantize-static"
    corpus = (
        calibration_encodings(tokenizer_path, calibration_texts, max_length) if needs_text else []
    )
    with tempfile.TemporaryDirectory(prefix=".smoothed-", dir=fused.parent) as folder:
        smoothed: dict[str, Any] | None = None
        source = fused
        if smoothing is not None:
            source = Path(folder) / "smoothed.onnx"
            smoothed = smooth_with_text(fused, source, corpus, smoothing)
        meta = quantize_int8(
            precision,
            source,
            dst,
            reference=fused,
            staging=staging,
            corpus=corpus,
            calibration_texts=calibration_texts,
            calibration_method=calibration_method,
            int8_search=int8_search,
            progress=progress,
        )
    return meta | {"smoothing": smoothed}


def smooth_with_text(
    fused: Path, dst: Path, corpus: Sequence[Encoding], alpha: float
) -> dict[str, Any]:
    """`fused` smoothed (`fastelectra.convert.smoothing`) with ranges from calibration text."""
    from fastelectra.convert.int8_search import single_feeds, spread_sample
    from fastelectra.convert.smoothing import SMOOTHING_TEXTS, smooth

    feeds = single_feeds(spread_sample(corpus, SMOOTHING_TEXTS, key=lambda e: len(e.ids)))
    return smooth(fused, dst, feeds, INT8_OPS, alpha)


def quantize_int8(
    precision: Precision,
    src: Path,
    dst: Path,
    *,
    reference: Path,
    staging: Path,
    corpus: Sequence[Encoding],
    calibration_texts: str | Path | None,
    calibration_method: str,
    int8_search: bool,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    """`src` quantised to `dst`; the search checks candidates against `reference` (FP32)."""
    quantizer: Int8Quantizer
    if precision.conversion == "quantize-dynamic":
        quantizer = DynamicInt8(src, dst)
    else:
        from fastelectra.convert.static_int8 import StaticInt8

        quantizer = StaticInt8(
            src,
            dst,
            corpus=corpus,
            texts=calibration_texts,
            method=calibration_method,
            table_dir=staging,
        )
    with quantizer:
        if not int8_search:
            quantizer.quantize([])
            return quantizer.metadata() | {"fp32_nodes": 0, "int8_search": None}
        search = tune_int8(
            quantizer, src, reference, corpus=corpus, precision=precision, progress=progress
        )
        return quantizer.metadata() | {
            "fp32_nodes": len(search.fp32_nodes),
            "int8_search": search.to_json(),
        }


def tune_int8(
    quantizer: Int8Quantizer,
    src: Path,
    reference: Path,
    *,
    corpus: Sequence[Encoding],
    precision: Precision,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Rank `src`'s nodes on calibration text, then search how many must stay FP32
    (int8_search) for the quantised model to match `reference` (the FP32 model)."""
    from fastelectra.convert.int8_search import (
        CHECK_TEXTS,
        RANK_TEXTS,
        node_sensitivity,
        search_fp32_nodes,
        single_feeds,
        spread_sample,
        tightened,
    )
    from fastelectra.convert.verify import onnx_runner, record_outputs, recorded_runner, verify

    ranked = node_sensitivity(
        src,
        single_feeds(spread_sample(corpus, RANK_TEXTS, key=lambda e: len(e.ids))),
        INT8_OPS,
        quantizer.activation_rounding(),
    )
    check = spread_sample(corpus, CHECK_TEXTS, key=lambda e: len(e.ids))
    with tempfile.TemporaryDirectory(prefix=".fp32-outputs-", dir=reference.parent) as folder:
        # The FP32 outputs once, its session gone before the first candidate is quantised:
        # otherwise its weights stay resident beside each quantisation's own copy.
        record_outputs(onnx_runner(reference), check, Path(folder))

        def evaluate() -> dict[str, Any]:
            return verify(
                recorded_runner(Path(folder)), onnx_runner(quantizer.dst), check, precision
            )

        return search_fp32_nodes(
            ranked, quantizer.quantize, evaluate, tightened(precision.gate), progress
        )


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """onnxruntime's `OnnxModel.convert_float_to_float16`, with its shape inference run on the
    graph without its weights.

    The stock path runs `onnx.shape_inference.infer_shapes` on the whole model: serialised,
    parsed, inferred and parsed back, four copies of the weights at once (8.3 GB for
    ELECTRA-large). Inference needs types and dims only; the conversion then runs on the model
    with those value infos and shape inference off (2.8 GB), and the model is the same
    (`tests/test_int8_memory.py` compares them).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from fastelectra.convert.fuse import save_model
    from fastelectra.convert.modelfile import weights_set_aside, without_large_data

    model = onnx.load(str(src))
    inferred = onnx.shape_inference.infer_shapes(without_large_data(model))
    for name in ("value_info", "output"):
        del getattr(model.graph, name)[:]
        getattr(model.graph, name).extend(getattr(inferred.graph, name))
    del inferred
    fp16 = OnnxModel(
        convert_float_to_float16(
            model, keep_io_types=True, op_block_list=FP16_KEEP_FP32, disable_shape_infer=True
        )
    )
    # The rest of OnnxModel.convert_float_to_float16; its cast removal infers shapes on a copy
    # of the model, so the weights wait outside it.
    with weights_set_aside(fp16.model):
        fp16.remove_cascaded_cast_nodes()
        fp16.remove_useless_cast_nodes()
    save_model(fp16.model, dst)
    return {"method": "convert_float_to_float16", "keep_io_types": True, "fp32_ops": FP16_KEEP_FP32}
