"""SmoothQuant-style smoothing: activation outliers moved into the weights before INT8.

INT8 rounds an activation with one scale per tensor, so a few outlier features (BERT-family
LayerNorm outputs have channels 10-100x the rest) set the scale and every other channel
keeps only a few levels. For ``y = x W`` and any positive per-input-channel ``s``,
``y = (x / s) (s W)``: dividing each channel of x by ``s_k`` and multiplying row k of W by it
changes nothing in exact arithmetic, and with ``s_k = max|x_k|^α / max|W_k|^(1-α)``
(Xiao et al., SmoothQuant, 2023) the activation's range is evened out at the weight's expense;
weights are quantised per output channel and absorb it well.

Where it goes: SmoothQuant folds ``1 / s`` into the LayerNorm before the product. In a
post-LN BERT that LayerNorm's output is also the residual stream (the next
SkipLayerNormalization adds it back), so a fold would change the network; the division is
a `Mul` on the product's own input instead, exact, and cheap beside the product (one pass
over the activation, which dynamic quantisation reads again anyway). Every quantisable node
(`MatMul` and `Attention` with an initializer weight) is smoothed; the INT8 search then
decides which still stay FP32.

onnxruntime's `quantize_static` has a SmoothQuant option, but it runs Intel Neural
Compressor's (a dependency of its own) and serves static quantisation only; this is the same
algebra on the fused graph with `onnx`, for dynamic and static alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fastelectra.convert.int8_search import captured_inputs, quantizable_nodes

# SmoothQuant's own default migration strength; each INT8 precision has its own
# (`fastelectra.precisions`).
ALPHA = 0.5
# Calibration texts (batch 1, spread over the lengths) whose per-channel maxima set the scales.
SMOOTHING_TEXTS = 64
# Smoothing scales are kept in this range so that a dead channel (max 0) or a huge one cannot
# make a weight row overflow or vanish.
SCALE_LIMITS = (1e-4, 1e4)


def channel_maxima(
    model_path: Path, feeds: Sequence[dict[str, np.ndarray]], op_types: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each quantisable node's input: max |x| per feature over `feeds` (FP32 runs)."""
    nodes = quantizable_nodes(onnx.load(str(model_path), load_external_data=False), op_types)
    maxima: dict[str, np.ndarray] = {}
    for values in captured_inputs(model_path, feeds, nodes):
        for name, x in values.items():
            peak = np.abs(x).max(axis=0)
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    return maxima


def smoothing_scales(x_max: np.ndarray, w: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``s_k = max|x_k|^α / max|W_k|^(1-α)`` for `w` of shape [in, out]; 1 where undefined."""
    w_max = np.abs(w).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(x_max, alpha) / np.power(w_max, 1.0 - alpha)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, *SCALE_LIMITS).astype(np.float32)


def smooth(
    src: Path,
    dst: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str],
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Write `src` smoothed to `dst` (same node names, same outputs); returns the metadata."""
    from fastelectra.convert.fuse import save_model

    maxima = channel_maxima(src, feeds, op_types)
    model = onnx.load(str(src))
    weights = {t.name: t for t in model.graph.initializer}
    spread_before, spread_after = [], []
    inserted: list[tuple[int, onnx.NodeProto]] = []
    for position, node in enumerate(model.graph.node):
        if not (node.op_type in op_types and len(node.input) > 1 and node.input[1] in weights):
            continue
        x_max = maxima[node.input[0]]
        tensor = weights[node.input[1]]
        w = numpy_helper.to_array(tensor)
        if w.ndim != 2 or w.shape[0] != x_max.shape[0]:
            continue  # not a [in, out] product of this input; left as it is
        s = smoothing_scales(x_max, w, alpha)
        tensor.CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), tensor.name))
        scale_name = f"{node.name}/smoothing_scale"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / s, scale_name))
        smoothed = f"{node.input[0]}/smoothed_for/{node.name}"
        mul = onnx.helper.make_node(
            "Mul", [node.input[0], scale_name], [smoothed], name=f"{node.name}/smoothing"
        )
        node.input[0] = smoothed
        inserted.append((position, mul))
        spread_before.append(_spread(x_max))
        spread_after.append(_spread(x_max / s))
    # Each Mul just before its product keeps the graph topologically sorted.
    for position, mul in reversed(inserted):
        model.graph.node.insert(position, mul)
    # Weights in external data: the quantisers read them from there, and the static one's
    # typed graph points at them instead of copying them (`fastelectra.convert.static_int8`).
    save_model(model, dst, external_data=True)
    return {
        "method": "smoothquant",
        "alpha": alpha,
        "nodes": len(inserted),
        "calibration_feeds": len(feeds),
        # max / median channel range of the products' inputs: how much one outlier stretches
        # the per-tensor scale, before and after.
        "input_spread_median": {
            "before": round(float(np.median(spread_before)), 2) if inserted else None,
            "after": round(float(np.median(spread_after)), 2) if inserted else None,
        },
    }


def _spread(x_max: np.ndarray) -> float:
    return float(x_max.max() / (np.median(x_max) or 1.0))
