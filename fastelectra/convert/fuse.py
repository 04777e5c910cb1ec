"""Fuse the exported graph into onnxruntime's transformer kernels, and prove it by counting.

rewrite (small, weights not loaded; each rewrite checked against its required count) ->
`optimize_model(model_type="bert_tf", opt_level=0)` (`opt_level=1` would import torch) ->
Einsum output projection as MatMul (checked likewise). (Folding that MatMul's bias
into SkipLayerNormalization was tried: onnxruntime's dynamic quantizer then emits a duplicate
tensor definition, so the bias Add stays.) A build whose fused-op counts fall short of one EmbedLayerNormalization,
one Attention, two SkipLayerNormalization and one Gelu-family op per layer fails loudly
instead of shipping a slow model.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fastelectra.bundle import Dimensions
from fastelectra.convert.modelfile import write_inline
from fastelectra.convert.rewrite import EinsumOutputProjection, rewrite_for_fusion
from fastelectra.errors import FastElectraError

log = logging.getLogger(__name__)

FUSED_OPS = (
    "EmbedLayerNormalization",
    "Attention",
    "SkipLayerNormalization",
    "FastGelu",
    "BiasGelu",
    "Gelu",
)
# protobuf refuses to serialise a single message past 2 GB; stay clear of it.
INLINE_LIMIT_BYTES = 1_800_000_000


class FusionError(FastElectraError, RuntimeError):
    """Fusion left the graph short of the expected fused-op counts."""


@dataclass
class FusionReport:
    counts: dict[str, int]
    expected: dict[str, int]
    rewrites: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> count, required

    @property
    def complete(self) -> bool:
        return all(count_of(self.counts, key) == n for key, n in self.expected.items())


def count_of(counts: dict[str, int], key: str) -> int:
    """`key` names one op type, or alternatives joined by "/" whose counts add up."""
    return sum(counts.get(op, 0) for op in key.split("/"))


def expected_counts(dims: Dimensions) -> dict[str, int]:
    return {
        "EmbedLayerNormalization": 1,
        "Attention": dims.layers,
        "SkipLayerNormalization": 2 * dims.layers,
        # GELU with its bias folded in: FastGelu (tanh form) or BiasGelu (exact form). A bare
        # Gelu would mean the bias Add stayed apart, so it does not count.
        "FastGelu/BiasGelu": dims.layers,
    }


def fused_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each fused kernel the graph holds (each node counted once)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def fuse(
    src: Path,
    dst: Path,
    dims: Dimensions,
    allow_partial: bool = False,
    external_data: bool = False,
) -> FusionReport:
    """Fuse the ONNX model at `src` (external data beside it) and save it to `dst`.

    `external_data` keeps the weights in `dst`.data whatever their size: for a model that is
    only a step's input (the FP32 graph an INT8 or FP16 build starts from), so that the next
    step's shape inference and loading do not parse the weights twice.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src), load_external_data=False)
    rewrites = rewrite_for_fusion(model, dims)
    # Beside `src` so that the external-data references (relative paths) still resolve.
    rewritten = src.with_name(src.stem + ".rewritten.onnx")
    onnx.save(model, str(rewritten))
    del model

    options = FusionOptions("bert_tf")
    # Shape inference serialises and re-parses the whole model, weights included (+2 copies of
    # 1.3 GB on ELECTRA-large); the fusions this graph needs do not depend on it.
    options.enable_shape_inference = False
    with _quiet_onnxruntime_tools():
        optimized = optimize_model(
            str(rewritten),
            model_type="bert_tf",
            num_heads=dims.heads,
            hidden_size=dims.hidden,
            optimization_options=options,
            opt_level=0,
        )
        optimized.prune_graph(allow_remove_graph_inputs=False)
    rewritten.unlink(missing_ok=True)
    EinsumOutputProjection(optimized, dims).run(rewrites, check=not allow_partial)

    report = FusionReport(fused_counts(optimized.model), expected_counts(dims), rewrites)
    if not report.complete and not allow_partial:
        raise FusionError(
            f"fusion incomplete: got {report.counts}, expected {report.expected}; "
            "the model would run unfused (slow). Graph patterns changed? See rewrite.py"
        )
    save_model(optimized.model, dst, external_data=external_data)
    return report


def save_model(model: onnx.ModelProto, dst: Path, external_data: bool = False) -> None:
    """Save inline when it fits in one protobuf (and `external_data` is not asked for), else
    with `<name>.data` external weights."""
    domains = {o.domain for o in model.opset_import}
    if "com.microsoft" not in domains:
        # Fused contrib ops live there; onnx's checker and shape inference need the import.
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    size = sum(_tensor_bytes(t) for t in model.graph.initializer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if size < INLINE_LIMIT_BYTES and not external_data:
        write_inline(model, dst)
    else:
        onnx.save(
            model,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=dst.name + ".data",
            size_threshold=1024,
        )


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return int(next((e.value for e in t.external_data if e.key == "length"), 0))
    return len(t.raw_data) or 4 * max(len(t.float_data), len(t.int32_data), len(t.int64_data))


@contextlib.contextmanager
def _quiet_onnxruntime_tools():
    """onnxruntime.transformers prints pruning chatter to stdout and warns once per layer that
    the shared mask nodes were already removed; keep both for debugging only."""
    sink = io.StringIO()
    tools_logger = logging.getLogger("onnxruntime.transformers")
    level = tools_logger.level
    tools_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        tools_logger.setLevel(level)
    if sink.getvalue():
        log.debug("onnxruntime.transformers: %s", sink.getvalue())
