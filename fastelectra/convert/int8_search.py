"""Which MatMul / Attention nodes stay FP32 in an INT8 model: measured, not guessed.

INT8 rounds each activation with one scale per tensor. BERT-family encoders have outlier
features (LayerNorm outputs, the early FFN down-projections of all-MiniLM-L6-v2), so a few
nodes lose far more than the rest: on MiniLM, quantising everything gives a mean-pooled
cosine vs FP32 of 0.965 on the worst text, with the first layers' FFN down-projections alone
costing 0.017 of it. Keeping *those* nodes FP32 keeps most of the speed.

1. **Rank.** One FP32 pass over a few calibration texts captures each quantisable node's
   input x. A node's sensitivity is the relative error of rounding x as onnxruntime does
   (uint8, asymmetric, one scale per tensor: `DynamicQuantizeLinear`), ``‖x̂ − x‖ / ‖x‖``:
   large where a few outlier features stretch the range. Weights are rounded per output
   channel and matter far less. (Ranking by the error of the node's own product, ``x̂ŵ`` vs
   ``xw``, was tried: on MiniLM it ranks the FFN up-projections first and the search then
   keeps 9 nodes FP32 instead of 8 for a worse result, because an FFN down-projection's error
   lands on the residual stream unscaled.)
2. **Search.** Keep the k most sensitive nodes FP32, for the smallest k whose model passes the
   INT8 gate, tightened by a margin, against the FP32 model on calibration texts. Those are
   not the verification texts, so the build's final gate against TensorFlow stays an honest,
   held-out check. Damage falls as k grows, so k is found by bisection: a handful of
   quantisations, not one per node.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fastelectra.bundle import INPUT_NAMES
from fastelectra.errors import FastElectraError
from fastelectra.precisions import UPPER_BOUND_METRICS, Gate

# Texts used to rank nodes (one FP32 pass each) and to check each candidate model.
RANK_TEXTS = 16
CHECK_TEXTS = 128
# The search asks for this share of each INT8 bound's headroom to spare (min cosine 0.98 ->
# 0.985), because the final gate runs on other texts.
MARGIN = 0.25

Quantize = Callable[[list[str]], None]  # nodes kept FP32 -> writes the candidate model
Evaluate = Callable[[], dict[str, Any]]  # -> verification report of the candidate
Rounding = Callable[[str, np.ndarray], np.ndarray]  # (tensor name, x) -> x as INT8 sees it


class Int8GateMissed(FastElectraError, RuntimeError):
    """No number of FP32 nodes the search may keep brings INT8 within its accuracy gate."""


@dataclass(frozen=True)
class SearchResult:
    fp32_nodes: list[str]  # kept FP32, most sensitive first
    ranked: list[tuple[str, float]]  # every quantisable node and its sensitivity
    steps: list[dict[str, Any]]  # one per candidate tried: k and the figures that decided it

    def to_json(self) -> dict[str, Any]:
        return {
            "fp32_nodes": len(self.fp32_nodes),
            "quantizable_nodes": len(self.ranked),
            "most_sensitive": [
                {"node": name, "relative_error": round(err, 5)} for name, err in self.ranked[:8]
            ],
            "search": self.steps,
        }


def quantizable_nodes(model: onnx.ModelProto, op_types: Sequence[str]) -> list[onnx.NodeProto]:
    """Nodes of `op_types` whose weight (input 1) is an initializer: what INT8 would touch."""
    weights = {init.name for init in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type in op_types and len(n.input) > 1 and n.input[1] in weights
    ]


def fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """`DynamicQuantizeLinear`: uint8, asymmetric, the range always including 0."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = np.round(-low / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_quant_static(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Static symmetric int8 with a calibrated range: rounding *and* clipping."""
    scale = max(abs(low), abs(high)) / 127.0 or 1.0
    return np.clip(np.round(x / scale), -128, 127) * scale


def node_sensitivity(
    model_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str],
    rounding: Rounding | None = None,
) -> list[tuple[str, float]]:
    """Every quantisable node with its input's mean relative rounding error, largest first.

    `rounding(tensor_name, x)` is how the quantiser will round that input; the default is
    dynamic quantisation's.
    """
    if rounding is None:
        rounding = lambda _name, x: fake_quant_activation(x)  # noqa: E731
    nodes = quantizable_nodes(onnx.load(str(model_path), load_external_data=False), op_types)
    errors: dict[str, list[float]] = {n.name: [] for n in nodes}
    for values in captured_inputs(model_path, feeds, nodes):
        for node in nodes:
            x = values[node.input[0]]
            errors[node.name].append(
                float(np.linalg.norm(rounding(node.input[0], x) - x) / (np.linalg.norm(x) or 1.0))
            )
    ranked = [(name, float(np.mean(errs))) for name, errs in errors.items()]
    return sorted(ranked, key=lambda item: -item[1])


def captured_inputs(
    model_path: Path, feeds: Sequence[dict[str, np.ndarray]], nodes: Sequence[onnx.NodeProto]
) -> Iterator[dict[str, np.ndarray]]:
    """Per feed, each of `nodes`' input 0 as the FP32 model computes it, as rows of features
    (``[tokens, features]``)."""
    import onnxruntime as ort

    # The graph alone, with the inputs to capture as extra outputs, saved beside the original
    # so that its external weights (if any) resolve without being loaded into Python.
    model = onnx.load(str(model_path), load_external_data=False)
    captured = list(dict.fromkeys(n.input[0] for n in nodes))
    known_outputs = {o.name for o in model.graph.output}
    for name in captured:
        if name not in known_outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    with tempfile.NamedTemporaryFile(suffix=".onnx", dir=model_path.parent) as probe:
        onnx.save(model, probe.name)
        del model
        session = ort.InferenceSession(probe.name, providers=["CPUExecutionProvider"])
    for feed in feeds:
        outputs = session.run(captured, feed)
        yield {name: x.reshape(-1, x.shape[-1]) for name, x in zip(captured, outputs, strict=True)}


def tightened(gate: Gate, margin: float = MARGIN) -> Gate:
    """Each lower bound of `gate` moved `margin` of the way from itself to 1."""

    def tighten(bound: float) -> float:
        return round(1.0 - (1.0 - bound) * (1.0 - margin), 6)

    bounds = {
        section: {m: tighten(b) for m, b in metrics.items() if m not in UPPER_BOUND_METRICS}
        for section, metrics in gate.bounds.items()
    }
    spearman = gate.spearman_vs_fp32
    return Gate(bounds, None if spearman is None else tighten(spearman))


def search_fp32_nodes(
    ranked: Sequence[tuple[str, float]],
    quantize: Quantize,
    evaluate: Evaluate,
    gate: Gate,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """The fewest most-sensitive nodes to keep FP32 so that the model passes `gate`.

    Leaves the chosen candidate written (via `quantize`). Raises `RuntimeError` when even
    keeping every node but one FP32 fails: INT8 cannot serve this model.
    """
    from fastelectra.convert.verify import gate_failures

    names = [name for name, _ in ranked]
    steps: list[dict[str, Any]] = []

    def passes(k: int) -> bool:
        quantize(names[:k])
        report = evaluate()
        failures = gate_failures(report, gate)
        steps.append(
            {
                "fp32_nodes": k,
                "pooled_min_cosine": report["outputs"]["pooled_output"]["min_cosine"],
                "mean_pooled_min_cosine": report["mean_pooled_sequence"]["min_cosine"],
                "mean_pooled_mean_cosine": report["mean_pooled_sequence"]["mean_cosine"],
                "spearman": report.get("spearman_vs_tensorflow"),
                "passed": not failures,
            }
        )
        if progress:
            progress(f"  int8 search: {k} of {len(names)} nodes FP32 -> {steps[-1]}")
        return not failures

    if passes(0):
        return SearchResult([], list(ranked), steps)
    # Invariant: lo fails, hi passes (hi = len(names) - 1 is checked, never assumed).
    lo, hi = 0, len(names) - 1
    if hi <= lo or not passes(hi):
        raise Int8GateMissed(
            f"INT8 misses the gate even with {hi} of {len(names)} nodes kept FP32: {steps[-1]}"
        )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    if steps[-1]["fp32_nodes"] != hi:
        quantize(names[:hi])  # the last candidate written failed; write the passing one again
    return SearchResult(names[:hi], list(ranked), steps)


def spread_sample(items: Sequence[Any], n: int, key: Callable[[Any], int]) -> list[Any]:
    """`n` items evenly spread over `items` sorted by `key` (short and long texts alike)."""
    ordered = sorted(items, key=key)
    if len(ordered) <= n:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, n).round().astype(int)
    return [ordered[i] for i in picks]


def single_feeds(encodings: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per encoding: serving's granularity for dynamic activation ranges."""
    from fastelectra.runtime.tokenizer import pad_batch

    feeds = []
    for encoding in encodings:
        arrays = pad_batch([encoding])
        feeds.append(dict(zip(INPUT_NAMES, arrays, strict=True)))
    return feeds
