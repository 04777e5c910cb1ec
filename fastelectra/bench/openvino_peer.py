"""OpenVINO peers for `bench --peers`: the bundles' own SavedModel through OpenVINO's CPU
plugin, FP32 and NNCF INT8, fed the token ids our tokenizer produces.

Unlike the sentence-transformers peer these are the bundles' model (any shape: tiny, base,
ELECTRA-large), so their accuracy against the FP32 bundle means something whatever it is.

* FP32: `openvino.convert_model` on the SavedModel directory (OpenVINO's TensorFlow frontend
  reads it without TensorFlow), pruned to the two encoder outputs.
* INT8: `nncf.quantize` of that model, calibrated on the project's calibration texts (the set
  the static INT8 bundles are calibrated on), tokenized by the bundle's tokenizer.

Each pass over the texts is what `Encoder.embed(pooling="mean", normalize=True)` does: the
bundle's `Encoder.tokenize`, `iter_batches` with the same caps, the runtime's own `pool` and
`l2_normalize`; only the model run is OpenVINO's.

Needs the `openvino` extra (`pip install 'fastelectra[openvino]'`); the runtime never imports
this module. Without the packages, or without a SavedModel to convert, the peers are listed
under "excluded" with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastelectra.bench.machine import library_versions
from fastelectra.bench.traffic import MAX_BATCH_TOKENS
from fastelectra.bench.variants import OnnxVariant, Variant
from fastelectra.bundle import INPUT_NAMES, OUTPUT_NAMES, Dimensions
from fastelectra.calibration.feeds import TextCalibrationReader, read_calibration_texts
from fastelectra.errors import DependencyMissing, ToolError
from fastelectra.precisions import FP32, Precision
from fastelectra.runtime.batching import Batch, iter_batches
from fastelectra.runtime.encoder import Encoder, l2_normalize, pool

if TYPE_CHECKING:
    import openvino as ov

OPENVINO_FP32 = "openvino-fp32"
# The FP32 model compiled as a user gets it: no precision hint, so the CPU plugin picks its
# own (bf16 on CPUs with AVX512-BF16 or AMX), only the thread budget every variant gets.
OPENVINO_DEFAULT = "openvino-default"
OPENVINO_INT8 = "openvino-int8"
OPENVINO_PEERS = (OPENVINO_FP32, OPENVINO_DEFAULT, OPENVINO_INT8)
INSTALL = "pip install 'fastelectra[openvino]'"

# The bundle's input names (fastelectra.bundle.INPUT_NAMES) -> the names a TF Hub
# SavedModel's serving signature may give them: the 2020 list-IO exports say segment_ids,
# the dict exports input_type_ids.
INPUT_ALIASES: dict[str, tuple[str, ...]] = {
    "input_word_ids": ("input_word_ids",),
    "input_mask": ("input_mask",),
    "segment_ids": ("segment_ids", "input_type_ids"),
}

# One feed per calibration text, unpadded: padded positions would put activations no real
# token produces into the ranges, and NNCF advises batch 1 for statistics. Every text is used
# (subset_size = the number of feeds), as the static INT8 bundles use every one.
CALIBRATION_BATCH = 1


def compile_config(threads: int, precision_hint: bool = True) -> dict[str, Any]:
    """CPU plugin settings, chosen to run like the bundles' onnxruntime sessions;
    `precision_hint=False`: the thread budget alone, every other setting the plugin's own
    (`openvino-default`, what a user who sets no hint runs).

    * INFERENCE_NUM_THREADS: the bench's thread budget, as onnxruntime's intra-op threads.
    * PERFORMANCE_HINT LATENCY: one stream using every thread for one request at a time, which
      is how the peers call it (synchronously, one batch after another). THROUGHPUT would
      split the threads into streams meant for parallel requests, which never come here.
    * INFERENCE_PRECISION_HINT f32: on CPUs with AVX512-BF16 or AMX the CPU plugin otherwise
      runs FP32 models in bf16 (its default there), which would make "FP32" a bf16 peer.

    Spinning: onnxruntime's workers spin after a run and take the cores of the next variant,
    so the bench turns that off (variants.BENCH_ALLOW_SPINNING). The CPU plugin has no such
    property (none among its SUPPORTED_PROPERTIES): its threads are oneTBB workers, which
    busy-wait only briefly before sleeping. Measured on the shared 2-core build machine, tiny
    model at batch 16 x 256, 2 threads, CPU time the process used in the 100 ms after a run
    returned (median of 7): onnxruntime spinning 35 ms, spinning off 0 ms, OpenVINO 0.6 ms
    (1.1 ms unpinned). So there is nothing to turn off; ENABLE_CPU_PINNING stays at the
    plugin's default (on, here) and is recorded with the results.
    """
    if not precision_hint:
        return {"INFERENCE_NUM_THREADS": threads}
    return {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }


# What the compiled model says it runs with, recorded with the results.
RECORDED_PROPERTIES = (
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "PERFORMANCE_HINT",
    "INFERENCE_PRECISION_HINT",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
    "SCHEDULING_CORE_TYPE",
)


def check_installed() -> dict[str, str]:
    """openvino's and nncf's versions; `DependencyMissing` if either is missing."""
    names = ("openvino", "nncf")
    versions = library_versions(names)
    missing = [name for name in names if name not in versions]
    if missing:
        raise DependencyMissing(
            f"the OpenVINO peers need {' and '.join(missing)} (not installed): {INSTALL}"
        )
    return versions


def reference_bundle(bundles: Sequence[OnnxVariant]) -> OnnxVariant:
    """The bundle the OpenVINO peers are tokenized by, built from and compared with: the first
    FP32 bundle (the peers' accuracy reference), else the first bundle."""
    return next((v for v in bundles if v.precision == FP32), bundles[0])


def find_saved_model(reference: OnnxVariant, source: str | None) -> tuple[Path, str]:
    """The SavedModel directory to convert, and where it was named.

    `--source` when given (the SavedModel / preset bench also times with TensorFlow), else the
    `source` recorded in the reference bundle's fastelectra.json. Presets are built into the
    cache and `.tar.gz` modules unpacked, as for `fastelectra build`. Raises `SourceError`.
    """
    from fastelectra.convert.resolve import resolve_source
    from fastelectra.convert.source import SourceError, resolve_location

    assert reference.bundle is not None
    if source:
        text, where = source, "--source"
    else:
        text, where = reference.bundle.meta.source, f"{reference.name}'s fastelectra.json source"
    try:
        return resolve_location(resolve_source(text)), where
    except SourceError as e:
        raise SourceError(f"no SavedModel to convert: {where} {text!r}: {e}") from e


def _rank(port: ov.Output) -> int | None:
    rank = port.get_partial_shape().rank
    return rank.get_length() if rank.is_static else None


def _source_of(result: ov.Output) -> tuple[str, int]:
    """The tensor a model output returns, as (producing node, port): TF Hub dict exports
    return one tensor under several keys (`default` and `pooled_output`, the last of
    `encoder_outputs` and `sequence_output`)."""
    value = result.get_node().input_value(0)
    return value.get_node().get_name(), value.get_index()


def encoder_outputs(model: ov.Model) -> tuple[ov.Output, ov.Output]:
    """(pooled_output, sequence_output) among a converted SavedModel's outputs.

    By name where the outputs carry the encoder's names. TF Hub's signatures do not: the 2020
    exports name them `bert_encoder`, `bert_encoder_1`, the dict exports number every key of
    {default, encoder_outputs[...], pooled_output, sequence_output}. Then by structure: the
    one [batch, hidden] tensor is pooled_output, and sequence_output is the [batch, seq, hidden]
    output nearest above it in the graph (the pooler reads sequence_output at [CLS]); the
    per-layer encoder_outputs lie further up. Anything else raises `ToolError`.
    """
    by_name = {name: port for port in model.outputs for name in port.get_names()}
    if all(name in by_name for name in OUTPUT_NAMES):
        return by_name[OUTPUT_NAMES[0]], by_name[OUTPUT_NAMES[1]]
    distinct = {_source_of(port): port for port in model.outputs}
    pooled = [p for p in distinct.values() if _rank(p) == 2]
    sequence = {s: p for s, p in distinct.items() if _rank(p) == 3}
    found = "; ".join(f"{sorted(p.get_names())} {p.get_partial_shape()}" for p in distinct.values())
    if len(pooled) != 1 or not sequence:
        raise ToolError(
            "the converted SavedModel's outputs are not an encoder's: expected one "
            f"[batch, hidden] and at least one [batch, seq, hidden] output, found {found}"
        )
    if len(sequence) == 1:
        return pooled[0], next(iter(sequence.values()))
    # Breadth-first up from the pooled output: the first model output reached is the one the
    # pooler reads.
    frontier = [pooled[0].get_node().input_value(0).get_node()]
    seen = {frontier[0].get_name()}
    while frontier:
        above = []
        for node in frontier:
            for value in node.input_values():
                key = (value.get_node().get_name(), value.get_index())
                if key in sequence:
                    return pooled[0], sequence[key]
                if key[0] not in seen:
                    seen.add(key[0])
                    above.append(value.get_node())
        frontier = above
    raise ToolError(
        "the converted SavedModel's pooled output is computed from none of its "
        f"[batch, seq, hidden] outputs; cannot tell which is sequence_output ({found})"
    )


def input_names(model: ov.Model) -> dict[str, str]:
    """The bundle's input name -> the converted model's, matched by name only."""
    names = {name: port for port in model.inputs for name in port.get_names()}
    mapping: dict[str, str] = {}
    for ours in INPUT_NAMES:
        match = [alias for alias in INPUT_ALIASES[ours] if alias in names]
        if len(match) != 1:
            break
        mapping[ours] = match[0]
    if len(mapping) != len(INPUT_NAMES) or len(model.inputs) != len(INPUT_NAMES):
        found = ", ".join(sorted(names))
        expected = ", ".join(" or ".join(a) for a in INPUT_ALIASES.values())
        raise ToolError(
            f"the converted SavedModel's inputs are {found}; expected exactly {expected}"
        )
    return mapping


def weight_einsums_to_matmuls(model: ov.Model) -> tuple[int, int]:
    """Rewrite each Einsum of an activation with a constant weight as MatMul (with Reshapes),
    in place; returns (rewritten, left as Einsum).

    TF Models' layers are EinsumDense, and OpenVINO's TensorFlow frontend keeps them Einsum.
    NNCF 3.4 has no Einsum metatype, so it quantises none of them: on the tiny preset
    `nncf.quantize` left 12 of the 14 weight products FP32, an "INT8" peer that is not. As
    MatMuls NNCF quantises them as it does any transformer's (the CPU plugin turns both forms
    into the same FullyConnected kernels, so the FP32 peer is not slowed). Einsums of two
    activations (attention scores and context) are left as they are.

    Handled: ``<batch><contracted>,<contracted><free>-><batch><free>``, e.g. abc,cde->abde
    (query/key/value), abcd,cde->abe (attention output), abc,cd->abd (feed-forward).
    """
    import openvino.opset13 as ops

    rewritten = left = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Einsum":
            continue
        x, w = node.input_value(0), node.input_value(1)
        inputs, out = node.get_attributes()["equation"].split("->")
        x_letters, w_letters = inputs.split(",")
        contracted = "".join(c for c in x_letters if c in w_letters)
        batch, free = x_letters[: -len(contracted) or None], w_letters[len(contracted) :]
        if (
            w.get_node().get_type_name() != "Constant"
            or not contracted
            or x_letters != batch + contracted
            or w_letters != contracted + free
            or out != batch + free
            or len(set(x_letters + w_letters)) != len(batch + contracted + free)
        ):
            left += 1
            continue
        weight = w.get_node().get_data()
        k = int(np.prod(weight.shape[: len(contracted)]))
        n = int(np.prod(weight.shape[len(contracted) :]))
        keep = [0] * len(batch)  # Reshape's special zero: copy that dimension of the input
        if len(contracted) > 1:
            x = ops.reshape(x, ops.constant(np.array([*keep, k], np.int64)), True).output(0)
        matrix = ops.constant(np.ascontiguousarray(weight.reshape(k, n)))
        y = ops.matmul(x, matrix, False, False).output(0)
        if len(free) > 1:
            shape = np.array([*keep, *weight.shape[len(contracted) :]], np.int64)
            y = ops.reshape(y, ops.constant(shape), True).output(0)
        y.get_node().set_friendly_name(node.get_friendly_name())
        node.output(0).replace(y)
        rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten, left


def encoder_model(saved_model: Path) -> tuple[ov.Model, dict[str, str], dict[str, int]]:
    """The SavedModel as an OpenVINO model with exactly the bundle's two outputs (named as in
    the bundle, so they are found by name after NNCF too), weight Einsums as MatMuls; its
    input names; the Einsums rewritten and left."""
    import openvino as ov

    model = ov.convert_model(str(saved_model))
    inputs = input_names(model)
    pooled, sequence = encoder_outputs(model)
    # A dict export also returns every layer's output; copying those out would be work the
    # bundles do not do.
    model = ov.Model([pooled, sequence], model.get_parameters(), "encoder")
    for port, name in zip(model.outputs, OUTPUT_NAMES, strict=True):
        port.get_tensor().set_names({name})
    # Converted SavedModels keep the signature's [?, ?] inputs; a model with a fixed shape
    # would need every batch padded to it.
    shapes = {port: ov.PartialShape([-1, -1]) for port in model.inputs}
    if any(port.get_partial_shape().is_static for port in model.inputs):
        model.reshape(shapes)
    rewritten, left = weight_einsums_to_matmuls(model)
    return model, inputs, {"einsums_as_matmul": rewritten, "einsums_left": left}


@dataclass
class OpenVinoPeer:
    """One compiled model, run one batch at a time through one infer request; the model and
    settings it was compiled from (to compile it again, e.g. with per-layer counters)."""

    name: str
    compiled: ov.CompiledModel
    inputs: dict[str, str]  # bundle input name -> model input name
    hidden: int
    model: ov.Model
    config: dict[str, Any]

    def __post_init__(self) -> None:
        self.request = self.compiled.create_infer_request()

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(pooled, sequence) for one batch, copied out as onnxruntime hands them back."""
        arrays = (batch.input_word_ids, batch.input_mask, batch.segment_ids)
        feeds = {self.inputs[name]: a for name, a in zip(INPUT_NAMES, arrays, strict=True)}
        out = self.request.infer(feeds)
        return out[OUTPUT_NAMES[0]], out[OUTPUT_NAMES[1]]

    def embed(self, encoder: Encoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """`encoder.embed(texts, pooling="mean", normalize=True)` with this model run."""
        encodings = encoder.tokenize(texts)
        vectors = np.zeros((len(encodings), self.hidden), np.float32)
        for batch in iter_batches(encodings, batch_size, MAX_BATCH_TOKENS):
            pooled, sequence = self.run(batch)
            vectors[batch.indices] = pool("mean", pooled, sequence, batch.input_mask)
        return l2_normalize(vectors)

    def describe(self) -> dict[str, Any]:
        """The compiled model's settings, and how many of its products run in INT8."""
        described = {}
        for name in RECORDED_PROPERTIES:
            value = self.compiled.get_property(name)
            # ov.Type (f32) and the plugin's enums print as "<Type: 'float32'>" otherwise
            described[name] = getattr(value, "name", None) or (
                value.get_type_name() if hasattr(value, "get_type_name") else str(value)
            )
        described["int8_products"] = int8_products(self.compiled)
        return described


class OpenVinoVariant(Variant):
    """A compiled OpenVINO model as a variant of the latency grid (`cells.time_cell`): the
    same synthetic ids as the bundles, both outputs copied back to host memory."""

    framework = "openvino"
    device = "cpu"

    def __init__(self, peer: OpenVinoPeer, precision: Precision, dimensions: Dimensions) -> None:
        self.peer = peer
        self.name = peer.name
        self.precision = precision
        self.dimensions = dimensions
        self.spec = {"kind": "openvino", "name": peer.name}

    def prepare(self, ids: np.ndarray, mask: np.ndarray, segments: np.ndarray) -> Any:
        arrays = (ids, mask, segments)
        return {self.peer.inputs[n]: a for n, a in zip(INPUT_NAMES, arrays, strict=True)}

    def run(self, inputs: Any) -> None:
        # `infer` copies every output into a new numpy array (share_outputs=False), as
        # onnxruntime hands both outputs back.
        self.peer.request.infer(inputs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": self.peer.describe()}


def int8_products(compiled: ov.CompiledModel) -> int:
    """Matrix products the CPU plugin runs with 8-bit inputs (its execution graph's
    FullyConnected / MatMul nodes whose runtime precision is u8 or i8)."""
    count = 0
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        count += kind in ("FullyConnected", "MatMul") and precision in ("u8", "i8")
    return count


def calibration_feeds(
    tokenizer_path: Path, inputs: dict[str, str], max_length: int
) -> list[dict[str, np.ndarray]]:
    """The built-in calibration texts as model feeds, tokenized as the bundles calibrate."""
    reader = TextCalibrationReader(
        tokenizer_path, read_calibration_texts(None), CALIBRATION_BATCH, max_length
    )
    return [
        {inputs[name]: array for name, array in feed.items()}
        for feed in iter(reader.get_next, None)
    ]


def load_openvino_peers(
    reference: OnnxVariant,
    source: str | None,
    threads: int,
    max_length: int,
    progress: Callable[[str], None],
) -> tuple[list[OpenVinoPeer], dict[str, Any]]:
    """Convert, quantise and compile both peers; what was done, with timings, for results.

    Raises `DependencyMissing` (no openvino / nncf) or `SourceError` (no SavedModel).
    """
    versions = check_installed()
    saved_model, where = find_saved_model(reference, source)
    import nncf
    import openvino as ov

    assert reference.bundle is not None
    progress(f"peers: converting {saved_model} with OpenVINO {versions['openvino']}")
    started = time.perf_counter()
    model, inputs, einsums = encoder_model(saved_model)
    convert_s = time.perf_counter() - started
    hidden = model.output(OUTPUT_NAMES[1]).get_partial_shape()[2].get_length()

    feeds = calibration_feeds(reference.bundle.tokenizer_path, inputs, max_length)
    settings = {
        "model_type": "TRANSFORMER",
        "subset_size": len(feeds),
        "preset": "nncf default (MIXED for TRANSFORMER)",
        "fast_bias_correction": True,
        "other": "nncf defaults (SmoothQuant for TRANSFORMER, target_device ANY, no ignored scope)",
        "calibration_texts": "built-in calibration.txt",
        "calibration_batch": CALIBRATION_BATCH,
        "calibration_max_length": max_length,
    }
    progress(f"peers: nncf.quantize on {len(feeds)} calibration texts")
    started = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        fast_bias_correction=True,
    )
    quantize_s = time.perf_counter() - started
    settings["fake_quantize_nodes"] = sum(
        op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()
    )

    core = ov.Core()
    configs = {
        OPENVINO_FP32: (model, compile_config(threads)),
        OPENVINO_DEFAULT: (model, compile_config(threads, precision_hint=False)),
        OPENVINO_INT8: (quantized, compile_config(threads)),
    }
    peers, compile_s = [], {}
    for name, (graph, config) in configs.items():
        started = time.perf_counter()
        compiled = core.compile_model(graph, "CPU", config)
        peers.append(OpenVinoPeer(name, compiled, inputs, hidden, graph, config))
        compile_s[name] = round(time.perf_counter() - started, 2)
    info = {
        "versions": versions,
        "saved_model": str(saved_model),
        "saved_model_from": where,
        "inputs": inputs,
        "outputs": "pooled_output, sequence_output (see openvino_peer.encoder_outputs)",
        "graph": einsums,
        "convert_s": round(convert_s, 2),
        "quantize_s": round(quantize_s, 2),
        "compile_s": compile_s,
        "config": {name: config for name, (_, config) in configs.items()},
        "in_effect": {peer.name: peer.describe() for peer in peers},
        "nncf": settings,
        "tokenizer": f"{reference.name}'s, max_length {max_length}",
    }
    return peers, info
