"""What `bench` times: an onnxruntime session over a bundle (or a bare ONNX model), or the
TensorFlow original.

Every variant takes the same padded int32 arrays. `prepare` converts them to the framework's
own input type once per cell, outside the timed region; `run` is one complete model call with
both outputs brought back to host memory, as a caller would need them.

Each variant also has a JSON `spec` from which `variant_from_spec` rebuilds it in another
process (the memory measurement loads every variant in a fresh interpreter).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastelectra.bench.weights import WeightBytes, fp32_weight_bytes, model_weight_bytes
from fastelectra.bundle import OUTPUT_NAMES, Bundle, Dimensions, load_bundle
from fastelectra.errors import InputError
from fastelectra.precisions import FP32, Precision, precision_named
from fastelectra.runtime.encoder import Encoder
from fastelectra.runtime.providers import Providers, plan_execution, plan_for_bundle
from fastelectra.runtime.session import EncoderSession
from fastelectra.runtime.tokenizer import WordPieceTokenizer

if TYPE_CHECKING:
    from fastelectra.convert.source import EncoderSource

TENSORFLOW = "tensorflow"
ONNXRUNTIME = "onnxruntime"
# `bench` times onnxruntime sessions as the runtime serves them: worker threads spin for work
# after a run (onnxruntime's default, which serving keeps), with an idle gap before each turn
# so that one variant's spin does not take the next one's cores (`cells.Pacing`).
# `--no-spinning` times them with spinning off, named "<bundle>+no-spinning".
BENCH_ALLOW_SPINNING = True
NO_SPINNING_SUFFIX = "+no-spinning"


class Variant(ABC):
    name: str
    framework: str
    precision: Precision
    dimensions: Dimensions
    device: str
    spec: dict[str, Any]
    load_seconds: float = 0.0
    # RSS growth of the benchmark process while this variant loaded (None: not measured)
    load_rss_mib: float | None = None
    # What one call reads from its weights, for the floor's memory bound (None: unknown)
    weight_bytes: WeightBytes | None = None

    @abstractmethod
    def prepare(self, ids: np.ndarray, mask: np.ndarray, segments: np.ndarray) -> Any: ...

    @abstractmethod
    def run(self, inputs: Any) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "framework": self.framework,
            "precision": self.precision.name,
            "device": self.device,
            "dimensions": asdict(self.dimensions),
            "spec": self.spec,
            "load_s": round(self.load_seconds, 2),
            "in_process_load_rss_mib": self.load_rss_mib,
            "weights": self.weight_bytes.to_json() if self.weight_bytes else None,
        }


class OnnxVariant(Variant):
    framework = ONNXRUNTIME

    def __init__(
        self,
        name: str,
        session: EncoderSession,
        precision: Precision,
        dimensions: Dimensions,
        spec: dict[str, Any],
        bundle: Bundle | None = None,
    ) -> None:
        self.name = name
        self.session = session
        self.precision = precision
        self.dimensions = dimensions
        self.spec = spec
        self.bundle = bundle
        self.quantization = bundle.meta.quantization if bundle else {}
        self.device = session.device
        self.weight_bytes = model_weight_bytes(session.model_path)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        providers: Providers = None,
        threads: int | None = None,
        split_skip_layernorm: bool = True,
        allow_spinning: bool = BENCH_ALLOW_SPINNING,
    ) -> OnnxVariant:
        """``split_skip_layernorm=False`` keeps onnxruntime's CPU SkipLayerNorm kernel (named
        ``<bundle>+ort-skipln``), to measure what `cpu_view`'s split is worth.
        ``allow_spinning=False`` turns onnxruntime's spinning threads off (named
        ``<bundle>+no-spinning``)."""
        started = time.perf_counter()
        bundle = load_bundle(path)
        meta = bundle.meta
        plan = plan_for_bundle(bundle, providers, threads)
        session = EncoderSession(
            bundle.model_path,
            dataclasses.replace(
                plan, split_skip_layernorm=split_skip_layernorm, allow_spinning=allow_spinning
            ),
            inputs=meta.inputs,
            outputs=meta.outputs,
            input_dtype=meta.input_dtype,
        )
        spec = {"kind": "bundle", "path": str(path), "providers": providers, "threads": threads}
        name = Path(path).name
        if not split_skip_layernorm:
            spec["split_skip_layernorm"] = False
            name += "+ort-skipln"
        if not allow_spinning:
            spec["allow_spinning"] = False
            name += NO_SPINNING_SUFFIX
        variant = cls(name, session, meta.precision, meta.dimensions, spec, bundle)
        variant.load_seconds = time.perf_counter() - started
        return variant

    @classmethod
    def from_model(
        cls,
        name: str,
        model_path: str | Path,
        precision: Precision,
        dimensions: Dimensions,
        providers: Providers = None,
        threads: int | None = None,
        allow_spinning: bool = BENCH_ALLOW_SPINNING,
    ) -> OnnxVariant:
        """A bare ONNX file with the bundle IO (e.g. the unfused export, which is no bundle)."""
        started = time.perf_counter()
        plan = dataclasses.replace(
            plan_execution(providers, threads), allow_spinning=allow_spinning
        )
        session = EncoderSession(model_path, plan)
        spec = {
            "kind": "model",
            "name": name,
            "path": str(model_path),
            "precision": precision.name,
            "dimensions": asdict(dimensions),
            "providers": providers,
            "threads": threads,
            "allow_spinning": allow_spinning,
        }
        variant = cls(name, session, precision, dimensions, spec)
        variant.load_seconds = time.perf_counter() - started
        return variant

    @property
    def max_sequence_length(self) -> int:
        return (
            self.bundle.meta.max_sequence_length if self.bundle else self.dimensions.max_positions
        )

    def encoder(self, max_length: int | None = None) -> tuple[Encoder, WordPieceTokenizer]:
        """An `Encoder` (and its tokenizer) on this variant's session: no second weight copy."""
        if self.bundle is None:
            raise InputError(f"{self.name}: a bare model has no tokenizer; texts need a bundle")
        tokenizer = WordPieceTokenizer.from_file(self.bundle.tokenizer_path)
        return Encoder(self.bundle, self.session, tokenizer, max_length), tokenizer

    def prepare(self, ids: np.ndarray, mask: np.ndarray, segments: np.ndarray) -> Any:
        dtype = self.session.input_dtype
        return tuple(np.ascontiguousarray(x, dtype=dtype) for x in (ids, mask, segments))

    def run(self, inputs: Any) -> None:
        self.session.run(*inputs)

    def describe(self) -> dict[str, Any]:
        plan = self.session.plan
        return {
            **super().describe(),
            "providers": list(self.session.providers),
            "intra_op_threads": plan.intra_op_num_threads,
            "inter_op_threads": plan.inter_op_num_threads,
            "allow_spinning": plan.allow_spinning,
            "quantization": self.quantization,
        }


def configure_tensorflow_threads(threads: int) -> dict[str, int]:
    """Give TensorFlow the same thread budget as onnxruntime, intra- and inter-op.

    Only possible before TensorFlow starts its runtime; if something already started it with
    other settings (a test session that built a bundle), say so. Returns the values in effect.
    """
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as e:
        in_effect = (
            threading.get_intra_op_parallelism_threads(),
            threading.get_inter_op_parallelism_threads(),
        )
        if in_effect != (threads, threads):
            warnings.warn(
                f"TensorFlow was already initialised with intra/inter-op threads {in_effect}, "
                f"not {threads}: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
    return {
        "intra_op_threads": threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": threading.get_inter_op_parallelism_threads(),
    }


class TensorFlowVariant(Variant):
    """The original SavedModel through its own `tf.function`, as `fastelectra verify` runs it."""

    framework = TENSORFLOW
    precision = FP32
    device = "cpu"

    def __init__(self, source: EncoderSource, spec_source: str, threads: dict[str, int]) -> None:
        self.source = source
        self.threads = threads
        self.dimensions = source.dimensions
        self.weight_bytes = fp32_weight_bytes(source.dimensions)  # no ONNX file to read
        self.function = source.inference_function()
        self.name = TENSORFLOW
        self.spec = {
            "kind": "tensorflow",
            "source": spec_source,
            "threads": threads["intra_op_threads"],
        }

    @classmethod
    def load(cls, source: str, threads: int) -> TensorFlowVariant:
        """Load `source` (path, hub handle or preset name) with TensorFlow limited to `threads`."""
        started = time.perf_counter()
        in_effect = configure_tensorflow_threads(threads)  # before the model loads
        from fastelectra.convert.resolve import resolve_source
        from fastelectra.convert.source import load_source

        variant = cls(load_source(resolve_source(source)), source, in_effect)
        variant.load_seconds = time.perf_counter() - started
        return variant

    def prepare(self, ids: np.ndarray, mask: np.ndarray, segments: np.ndarray) -> Any:
        import tensorflow as tf

        return tuple(tf.constant(x, tf.int32) for x in (ids, mask, segments))

    def run(self, inputs: Any) -> None:
        outputs = self.function(*inputs)
        for name in OUTPUT_NAMES:
            outputs[name].numpy()  # like onnxruntime, hand both outputs back as host arrays

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.threads, "location": self.source.location}


def variant_from_spec(spec: dict[str, Any]) -> Variant:
    kind = spec["kind"]
    if kind == "bundle":
        return OnnxVariant.from_bundle(
            spec["path"],
            spec.get("providers"),
            spec.get("threads"),
            spec.get("split_skip_layernorm", True),
            spec.get("allow_spinning", BENCH_ALLOW_SPINNING),
        )
    if kind == "model":
        return OnnxVariant.from_model(
            spec["name"],
            spec["path"],
            precision_named(spec["precision"]),  # a spec is JSON: the name parsed here
            Dimensions(**spec["dimensions"]),
            spec.get("providers"),
            spec.get("threads"),
            spec.get("allow_spinning", BENCH_ALLOW_SPINNING),
        )
    if kind == "tensorflow":
        return TensorFlowVariant.load(spec["source"], spec["threads"])
    raise InputError(f"unknown variant kind {kind!r}")


def unique_names(variants: list[Variant]) -> None:
    """Two bundles from different folders may share a folder name: number the repeats."""
    seen: dict[str, int] = {}
    for variant in variants:
        count = seen.get(variant.name, 0)
        seen[variant.name] = count + 1
        if count:
            variant.name = f"{variant.name}#{count + 1}"
