"""Turn ``providers=`` / ``threads=`` into onnxruntime session settings.

Everything here is a pure function of its arguments (plus `onnxruntime.get_available_providers`,
which tests monkeypatch) and returns plain data, so the TensorRT and CUDA option building is
unit-tested on machines without a GPU. `ExecutionPlan.session_options()` is the one place that
turns the plan into an `onnxruntime.SessionOptions`.

Accepted ``providers`` values::

    None                        CPU
    "cpu" | "cuda" | "tensorrt" an alias ("trt" too); "cuda:1" / "tensorrt:1" pick a GPU
    "CUDAExecutionProvider"     any onnxruntime provider name
    ["tensorrt", "cpu"]         an explicit preference list
    [("cuda", {"device_id": "1"})]  (name, options) pairs: options override ours

A requested provider that this onnxruntime build lacks is replaced by the next one down the
chain tensorrt → cuda → cpu, with a `RuntimeWarning` saying so: a GPU-less machine still
runs, slower, instead of failing, but never silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from fastelectra.bundle import INPUT_NAMES
from fastelectra.errors import InputError
from fastelectra.precisions import FP32, Precision

if TYPE_CHECKING:
    from fastelectra.bundle import Bundle

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
# Where each provider falls back to when it is missing, and what is appended behind it so that
# nodes it cannot run still have a home (TensorRT rejects some ops; CUDA lacks a few).
FALLBACK = {TENSORRT: CUDA, CUDA: CPU}
GPU_PROVIDERS = (TENSORRT, CUDA)
SPIN_POOLS = ("intra_op", "inter_op")  # onnxruntime's thread pools, as its config keys name them

# Default TensorRT optimisation profile. Batches bigger than `max_batch` would fall outside the
# profile (an error with explicit profiles), so the encoder caps its batches at it.
DEFAULT_MAX_BATCH = 64
DEFAULT_OPT_BATCH = 32
DEFAULT_OPT_LENGTH = 128

ProviderSpec = str | tuple[str, Mapping[str, Any]]
Providers = str | Sequence[ProviderSpec] | None


@dataclass(frozen=True)
class EngineProfile:
    """What a TensorRT engine is built for: the model's precision and the shapes it serves.

    Only the TensorRT provider's options are built from it; every plan checks its shape.

    Attributes:
        precision: the model's (`fastelectra.precisions`): FP16 / INT8 kernels or not.
        max_length, max_batch: the largest shape the profile admits; the encoder caps its
            batches at `max_batch` because a batch outside an explicit profile is an error.
        inputs: the model's input names, as the profile strings spell them.
        calibration_table: ranges for implicit INT8 of a model without Q/DQ nodes.
        qdq: the model carries Q/DQ nodes (then TensorRT reads their scales, never a table).
        cache_key: a short id of the model's content (`bundle_cache_key`): one engine cache per
            model; cache_root: where those caches live (None: `default_trt_cache_root()`).
    """

    precision: Precision = FP32
    max_length: int = 512
    max_batch: int = DEFAULT_MAX_BATCH
    inputs: tuple[str, ...] = INPUT_NAMES
    calibration_table: Path | None = None
    qdq: bool = False
    cache_key: str = "default"
    cache_root: Path | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_length < 1:
            raise InputError(
                f"max_batch and max_length must be >= 1, got {self.max_batch}, {self.max_length}"
            )

    @classmethod
    def for_bundle(
        cls, bundle: Bundle, *, max_length: int | None = None, max_batch: int = DEFAULT_MAX_BATCH
    ) -> EngineProfile:
        """The profile of a bundle: its precision, IO names, calibration table and content id."""
        meta = bundle.meta
        table = bundle.calibration_table_path
        return cls(
            precision=meta.precision,
            max_length=max_length or meta.max_sequence_length,
            max_batch=max_batch,
            inputs=tuple(meta.inputs),
            calibration_table=Path(table) if table is not None else None,
            qdq=(meta.quantization or {}).get("format") == "QDQ",
            cache_key=bundle_cache_key(meta.files),
        )


@dataclass(frozen=True)
class ExecutionPlan:
    """What `onnxruntime.InferenceSession` needs: providers, their options, thread settings."""

    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str], ...]
    intra_op_num_threads: int
    inter_op_num_threads: int = 1
    graph_optimization_level: str = "ORT_ENABLE_ALL"
    # The largest batch the TensorRT profile admits; None when TensorRT is not used.
    max_batch: int | None = None
    # Directories the session must create before onnxruntime writes caches into them.
    cache_dirs: tuple[str, ...] = field(default_factory=tuple)
    # CPU only: run SkipLayerNormalization as Add + LayerNormalization (see `cpu_view`).
    split_skip_layernorm: bool = True
    # onnxruntime's default: worker threads spin for work after each run instead of sleeping.
    # Serving keeps it, and `fastelectra bench` times it; `bench --no-spinning` turns it off
    # (fastelectra/bench/cells.py).
    allow_spinning: bool = True
    # More onnxruntime session config entries (key, value), e.g. a setting measured alone
    # against the plan by benchmarks/ort_levers.py.
    session_config: tuple[tuple[str, str], ...] = ()
    # onnxruntime's profiler on: `EncoderSession.end_profiling()` gives the trace.
    enable_profiling: bool = False

    @property
    def device(self) -> str:
        """``"cuda"`` when the first provider runs on a GPU, else ``"cpu"``."""
        return "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"

    @property
    def device_id(self) -> int:
        return int(self.provider_options[0].get("device_id", 0)) if self.device == "cuda" else 0

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = self.inter_op_num_threads
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, self.graph_optimization_level
        )
        # One encoder graph is a chain of layers: parallel node execution only adds contention.
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not self.allow_spinning:
            for pool in SPIN_POOLS:
                options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
        for key, value in self.session_config:
            options.add_session_config_entry(key, value)
        options.enable_profiling = self.enable_profiling
        return options


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def external_stacklevel() -> int:
    """A `warnings.warn` stacklevel naming the first caller outside fastelectra.

    Our warnings are raised a varying depth below the public call (`Encoder.load` ->
    `plan_for_bundle` -> ...); pointing them at the user's line makes them actionable.
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def available_cores() -> int:
    """The cores this process may run on (cgroups/taskset aware, unlike `os.cpu_count`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> int:
    if threads is None:
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, not {type(threads).__name__}")
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    return threads


def bundle_cache_key(files: Mapping[str, str]) -> str:
    """A short id of a bundle's content (its files' sha256s): keys the TensorRT engine cache."""
    blob = json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_trt_cache_root() -> Path:
    env = os.environ.get("FASTELECTRA_TRT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastelectra" / "trt"


def profile_shapes(batch: int, length: int, inputs: Sequence[str] = INPUT_NAMES) -> str:
    """TensorRT profile string, e.g. ``input_word_ids:1x1,input_mask:1x1,segment_ids:1x1``."""
    return ",".join(f"{name}:{batch}x{length}" for name in inputs)


def resolve_providers(
    providers: Providers, available: Sequence[str] | None = None
) -> list[tuple[str, dict[str, str], int]]:
    """Normalise ``providers`` to ``[(ort_name, user_options, device_id)]`` with fallbacks applied.

    Missing providers are replaced (with a warning) by their fallback; the CPU provider always
    closes the list so that onnxruntime has a home for every node.
    """
    if available is None:
        available = ort.get_available_providers()
    if providers is None:
        requested: Sequence[ProviderSpec] = ["cpu"]
    elif isinstance(providers, str) or _is_pair(providers):
        requested = [providers]
    elif isinstance(providers, Sequence) and providers:
        requested = providers
    else:
        raise TypeError(
            "providers must be None, a provider name or a non-empty list of names / "
            f"(name, options) pairs, not {providers!r}"
        )

    chosen: list[tuple[str, dict[str, str], int]] = []
    for spec in requested:
        name, user_options, device_id = parse_spec(spec)
        wanted = name
        while name not in available and name != CPU:
            name = FALLBACK.get(name, CPU)
            if name in available or name == CPU:
                warnings.warn(
                    f"{wanted} is not available in this onnxruntime build "
                    f"(available: {', '.join(available)}); using {name} instead."
                    + _install_hint(wanted),
                    RuntimeWarning,
                    stacklevel=external_stacklevel(),
                )
        if name != wanted:
            user_options = {}  # options meant for the missing provider do not apply
        # TensorRT hands unsupported nodes to the next provider: keep CUDA behind it.
        chain = [name]
        if name == TENSORRT and CUDA in available:
            chain.append(CUDA)
        for entry in chain:
            if entry not in [c[0] for c in chosen]:
                chosen.append((entry, user_options if entry == name else {}, device_id))
    if CPU not in [c[0] for c in chosen]:
        chosen.append((CPU, {}, 0))
    return chosen


def parse_spec(spec: ProviderSpec) -> tuple[str, dict[str, str], int]:
    options: dict[str, str] = {}
    if _is_pair(spec):
        spec, raw = spec
        options = {str(k): _option_str(v) for k, v in raw.items()}
    if not isinstance(spec, str):
        raise TypeError(f"a provider must be a name or a (name, options) pair, not {spec!r}")
    name, _, index = spec.partition(":")
    device_id = 0
    if index:
        if not index.isdigit():
            raise InputError(f"bad device index in provider {spec!r} (expected e.g. 'cuda:1')")
        device_id = int(index)
    ort_name = ALIASES.get(name.lower(), name)
    if not ort_name.endswith("ExecutionProvider"):
        raise InputError(
            f"unknown provider {spec!r}: use one of {', '.join(sorted(set(ALIASES)))} "
            "or an onnxruntime provider name"
        )
    if "device_id" in options:
        device_id = int(options["device_id"])
    return ort_name, options, device_id


def plan_execution(
    providers: Providers = None,
    threads: int | None = None,
    *,
    engine: EngineProfile | None = None,
    available: Sequence[str] | None = None,
) -> ExecutionPlan:
    """Build the `ExecutionPlan` for a model; `engine` says what TensorRT builds for it."""
    intra = check_threads(threads)
    engine = engine or EngineProfile()
    names: list[str] = []
    all_options: list[dict[str, str]] = []
    cache_dirs: list[str] = []
    uses_trt = False
    for name, user_options, device_id in resolve_providers(providers, available):
        if name == TENSORRT:
            uses_trt = True
            options = {**tensorrt_options(device_id, engine), **user_options}
            cache_dirs += [options["trt_engine_cache_path"], options["trt_timing_cache_path"]]
        elif name == CUDA:
            options = {**cuda_options(device_id), **user_options}
        else:
            options = dict(user_options)
        names.append(name)
        all_options.append(options)
    return ExecutionPlan(
        providers=tuple(names),
        provider_options=tuple(all_options),
        intra_op_num_threads=intra,
        max_batch=engine.max_batch if uses_trt else None,
        cache_dirs=tuple(dict.fromkeys(cache_dirs)),
    )


def plan_for_bundle(
    bundle: Bundle,
    providers: Providers = None,
    threads: int | None = None,
    *,
    max_length: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    available: Sequence[str] | None = None,
) -> ExecutionPlan:
    """`plan_execution` with the bundle's `EngineProfile`."""
    engine = EngineProfile.for_bundle(bundle, max_length=max_length, max_batch=max_batch)
    return plan_execution(providers, threads, engine=engine, available=available)


def cuda_options(device_id: int = 0) -> dict[str, str]:
    return {
        "device_id": str(device_id),
        # Batches vary in shape: grow the arena by what is asked, not by doubling, so a long
        # batch does not pin twice its memory for the life of the process.
        "arena_extend_strategy": "kSameAsRequested",
        # EXHAUSTIVE benchmarks cuDNN algorithms for every new shape: a stall per batch shape.
        "cudnn_conv_algo_search": "DEFAULT",
        "do_copy_in_default_stream": "1",
    }


def tensorrt_options(device_id: int = 0, engine: EngineProfile | None = None) -> dict[str, str]:
    engine = engine or EngineProfile()
    spec, max_batch, max_length = engine.precision, engine.max_batch, engine.max_length
    root = engine.cache_root if engine.cache_root is not None else default_trt_cache_root()
    opt_batch = min(DEFAULT_OPT_BATCH, max_batch)
    opt_length = min(DEFAULT_OPT_LENGTH, max_length)
    options = {
        "device_id": str(device_id),
        # Building an engine for ELECTRA-large takes minutes: build once, reuse across runs.
        # The profile is part of the directory name because an engine only serves the shapes
        # of the profile it was built with.
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(root / engine.cache_key / f"b{max_batch}-s{max_length}"),
        # Kernel timings depend on the GPU, not the model: share them across bundles.
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(root),
        # One explicit profile covering every batch shape the encoder produces, so TensorRT
        # never rebuilds the engine when a batch's shape changes.
        "trt_profile_min_shapes": profile_shapes(1, 1, engine.inputs),
        "trt_profile_opt_shapes": profile_shapes(opt_batch, opt_length, engine.inputs),
        "trt_profile_max_shapes": profile_shapes(max_batch, max_length, engine.inputs),
        "trt_fp16_enable": "1" if spec.tensorrt_fp16 else "0",
    }
    if spec.tensorrt_int8 and engine.qdq:
        # Explicit quantisation: TensorRT reads the scales from the Q/DQ nodes, and refuses to
        # load a model with Q/DQ nodes *and* a calibration table (onnxruntime's TensorRT EP
        # documentation; onnxruntime issue #13071).
        options["trt_int8_enable"] = "1"
    elif spec.tensorrt_int8:
        if engine.calibration_table is None:
            warnings.warn(
                f"{spec.name} bundle has no calibration.flatbuffers; TensorRT runs it without "
                "int8 (rebuild the bundle with calibration to get int8 kernels)",
                RuntimeWarning,
                stacklevel=external_stacklevel(),
            )
        else:
            # Implicit quantisation of a graph without Q/DQ nodes: ranges from the table.
            options["trt_int8_enable"] = "1"
            # The EP joins this name onto trt_engine_cache_path; an absolute path wins the join.
            options["trt_int8_calibration_table_name"] = str(engine.calibration_table.absolute())
            options["trt_int8_use_native_calibration_table"] = "0"  # ORT's flatbuffers format
    return options


def _is_pair(spec: object) -> bool:
    return isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping)


def _option_str(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _install_hint(missing: str) -> str:
    if missing in GPU_PROVIDERS:
        return (
            " Install onnxruntime-gpu instead of onnxruntime (`pip install 'fastelectra[gpu]'`) "
            "and make sure CUDA"
            + (" and TensorRT are" if missing == TENSORRT else " is")
            + " on the library path."
        )
    return ""
