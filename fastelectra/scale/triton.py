"""Export a bundle as a Triton Inference Server model repository (ONNX Runtime backend).

    REPO/<name>/config.pbtxt            built with Triton's own ModelConfig protobuf
    REPO/<name>/1/model.onnx            hard link to (or copy of) the bundle's model; with
                                        `pooling`, the `fastelectra export` ids-in file instead
                                        (output `embedding`: Triton answers embeddings directly)
    REPO/<name>/1/model.onnx.data       its external weights, if the bundle has them
    REPO/<name>/1/tokenizer.json        for clients: Triton takes token ids, not text
    REPO/<name>/1/calibration.flatbuffers   only where the TensorRT config names it (below)
    REPO/<name>/fastelectra-triton.json     the marker: every file above, by relative path

The model directory is staged beside its final place and renamed into it, so a Triton server
polling the repository never sees a half-written model. An existing `REPO/<name>` is replaced
only if it is empty or a model folder this project wrote with nothing added (its marker names
every file in it): a model folder of the user's is refused, never overwritten
(`fastelectra.destinations`).

TensorRT (on KIND_GPU instances) gets the precision the bundle was verified at: FP16 for fp16
bundles, INT8 for int8-static ones, FP32 otherwise. int8-static bundles hold a QDQ model: its
Q/DQ nodes carry the int8 scales, and the onnxruntime backend documents that naming a
calibration table (`int8_calibration_table_name`) for a model with Q/DQ nodes makes session
creation fail (TensorRT refuses dynamic ranges in a network with Q/DQ layers). So the bundle's
`calibration.flatbuffers` is passed only for an int8-static model without Q/DQ nodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastelectra.bundle import (
    MODEL_DATA_FILE,
    MODEL_FILE,
    POOLINGS,
    TOKENIZER_FILE,
    Bundle,
    load_bundle,
)
from fastelectra.destinations import DirectoryKind, check_directory
from fastelectra.errors import DependencyMissing, InputError
from fastelectra.workdirs import remove_abandoned, staged_directory

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

CONFIG_FILE = "config.pbtxt"
MARKER_FILE = "fastelectra-triton.json"
MARKER_FORMAT = "fastelectra-triton-model"
VERSION = "1"
KINDS = ("KIND_GPU", "KIND_CPU")
TRITON_TYPES = {"int32": "TYPE_INT32", "int64": "TYPE_INT64"}
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonOptions:
    """How Triton should serve the model; `check()` rejects what Triton would refuse."""

    max_batch_size: int = 64
    instances: int = 1
    kind: str = "KIND_GPU"
    # None: TensorRT on GPU instances, none on CPU ones (the backend ignores it there).
    tensorrt: bool | None = None
    max_queue_delay_us: int = 500
    # Where the server sees the repository (e.g. /models in the Triton container): TensorRT
    # opens the calibration table by absolute path. Default: the repository's path here.
    server_repository: str | None = None
    # A server-side directory for TensorRT engine and timing caches; None: no cache, so every
    # model load rebuilds the engines.
    trt_cache_dir: str | None = None
    # None: the bundle's model as it is (outputs pooled_output, sequence_output). A pooling:
    # the exported file with that pooling (and `normalize`) inside, output `embedding`.
    pooling: str | None = None
    normalize: bool = False

    def check(self) -> None:
        for name in ("max_batch_size", "instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        if self.max_queue_delay_us < 0:
            raise InputError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.tensorrt and self.kind != "KIND_GPU":
            raise InputError("TensorRT runs only on KIND_GPU instances")
        for name in ("server_repository", "trt_cache_dir"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise InputError(f"{name} must be an absolute path on the server, got {value!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.normalize and self.pooling is None:
            raise InputError("normalize needs a pooling (the model then outputs embedding)")

    @property
    def uses_tensorrt(self) -> bool:
        return self.kind == "KIND_GPU" if self.tensorrt is None else self.tensorrt


def export_triton(
    bundle: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    *,
    name: str | None = None,
    options: TritonOptions | None = None,
) -> Path:
    """Write `repository/<name>/` for `bundle` (replacing an older one); returns that path.

    Args:
        name: the Triton model name; default: the bundle directory's name.
        options: batching, instances and TensorRT settings (`TritonOptions`).

    Raises:
        BundleError: a missing or damaged bundle. ValueError: bad name or options.
        RuntimeError: tritonclient is not installed (it supplies the ModelConfig protobuf).
    """
    options = options or TritonOptions()
    options.check()
    source = load_bundle(bundle)
    name = name if name is not None else source.path.absolute().name
    if not MODEL_NAME.fullmatch(name):
        raise InputError(
            f"model name {name!r} must be letters, digits, '_', '.' or '-' (and not start with"
            " '.' or '-'); pass --name"
        )
    repo = Path(repository).absolute()
    check_directory(repo / name, TRITON_MODEL, sources=[source.path])  # before any copying
    remove_abandoned(repo / name)  # staging left by an export that was killed outright
    server_repository = options.server_repository or str(repo)
    table = calibration_table_for_tensorrt(source) if options.uses_tensorrt else None
    server_table = (
        f"{server_repository.rstrip('/')}/{name}/{VERSION}/{table.name}" if table else None
    )
    config = model_config(source, name, options, server_table)
    with staged_directory(repo / name, TRITON_MODEL) as staging:
        # The staging directory is private (mkdtemp: 0700); a Triton server running as another
        # user must be able to read the model directory it becomes.
        staging.chmod(0o777 & ~current_umask())
        version = staging / VERSION
        version.mkdir()
        if options.pooling is None:
            for file in (MODEL_FILE, MODEL_DATA_FILE):
                if file in source.meta.files:
                    link_or_copy(source.path / file, version / file)
        else:
            from fastelectra.export import ExportOptions, export_model

            export_model(
                source.path,
                version / MODEL_FILE,
                ExportOptions(pooling=options.pooling, normalize=options.normalize),
            )
        shutil.copyfile(source.tokenizer_path, version / TOKENIZER_FILE)
        if table is not None:
            shutil.copyfile(table, version / table.name)
        (staging / CONFIG_FILE).write_text(
            config_header(source) + config_text(config), encoding="utf-8"
        )
        write_marker(staging)
    return repo / name


def write_marker(folder: Path) -> None:
    """Name every file under `folder` in its marker, so a later export knows what it owns."""
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if not path.is_dir())
    marker = {"format": MARKER_FORMAT, "files": files}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def foreign_model_entries(folder: Path) -> list[str] | None:
    """The entries under a model folder of ours that its marker does not name; None if
    `folder` is not one (no readable marker)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    ours = {MARKER_FILE, *marker.get("files", [])}
    # Directories are ours when they hold only our files; a file (or link) must be named.
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if not path.is_dir() or path.is_symlink()
        if str(path.relative_to(folder)) not in ours
    )


TRITON_MODEL = DirectoryKind("a Triton model folder written by fastelectra", foreign_model_entries)


def model_config(
    bundle: Bundle, name: str, options: TritonOptions, calibration_table: str | None = None
) -> ModelConfig:
    """The Triton `ModelConfig` for a bundle (see the module docstring for the TensorRT rules)."""
    pb = _model_config_pb2()
    meta = bundle.meta
    if meta.input_dtype not in TRITON_TYPES:
        raise InputError(f"bundle input dtype {meta.input_dtype!r} has no Triton type")
    if len(meta.outputs) != 2:
        raise InputError(f"expected outputs (pooled, sequence), the bundle has {meta.outputs}")
    hidden = meta.dimensions.hidden
    pooled, sequence = meta.outputs

    config = pb.ModelConfig(
        name=name,
        backend="onnxruntime",
        platform="onnxruntime_onnx",
        max_batch_size=options.max_batch_size,
        default_model_filename=MODEL_FILE,
    )
    # Dims leave out the batch dimension (max_batch_size > 0): ids are [batch, seq].
    for input_name in meta.inputs:
        config.input.add(
            name=input_name, data_type=pb.DataType.Value(TRITON_TYPES[meta.input_dtype]), dims=[-1]
        )
    # fp16 bundles keep float32 inputs and outputs: only the weights and kernels are fp16.
    if options.pooling is None:
        config.output.add(name=pooled, data_type=pb.TYPE_FP32, dims=[hidden])
        config.output.add(name=sequence, data_type=pb.TYPE_FP32, dims=[-1, hidden])
    else:
        from fastelectra.export.head import EMBEDDING

        config.output.add(name=EMBEDDING, data_type=pb.TYPE_FP32, dims=[hidden])
    config.instance_group.add(
        count=options.instances, kind=pb.ModelInstanceGroup.Kind.Value(options.kind)
    )
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = options.max_queue_delay_us
    batching.preferred_batch_size.extend(preferred_batch_sizes(options))
    if options.uses_tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters.update(
            tensorrt_parameters(bundle, options, meta.max_sequence_length, calibration_table)
        )
    return config


def preferred_batch_sizes(options: TritonOptions) -> list[int]:
    """Batches Triton sends without waiting out the queue delay: the full batch, and with
    TensorRT also the batch its optimisation profile is tuned for (as the runtime's)."""
    from fastelectra.runtime.providers import DEFAULT_OPT_BATCH

    sizes = {options.max_batch_size}
    if options.uses_tensorrt:
        sizes.add(min(DEFAULT_OPT_BATCH, options.max_batch_size))
    return sorted(sizes)


def tensorrt_parameters(
    bundle: Bundle, options: TritonOptions, max_length: int, calibration_table: str | None
) -> dict[str, str]:
    """The onnxruntime backend's TensorRT keys (its README's table of parameters)."""
    from fastelectra.runtime.providers import DEFAULT_OPT_BATCH, DEFAULT_OPT_LENGTH, profile_shapes

    inputs = bundle.meta.inputs
    batch = options.max_batch_size
    parameters = {
        "precision_mode": bundle.meta.precision.tensorrt_precision_mode,
        # One explicit profile over every shape Triton can send: without it TensorRT rebuilds
        # its engine each time a batch is longer or larger than all before it.
        "trt_profile_min_shapes": profile_shapes(1, 1, inputs),
        "trt_profile_opt_shapes": profile_shapes(
            min(DEFAULT_OPT_BATCH, batch), min(DEFAULT_OPT_LENGTH, max_length), inputs
        ),
        "trt_profile_max_shapes": profile_shapes(batch, max_length, inputs),
    }
    if calibration_table is not None:
        parameters["int8_calibration_table_name"] = calibration_table
        parameters["int8_use_native_calibration_table"] = "0"  # onnxruntime's FlatBuffers table
    if options.trt_cache_dir is not None:
        parameters["trt_engine_cache_enable"] = "1"
        parameters["trt_engine_cache_path"] = options.trt_cache_dir
        parameters["trt_timing_cache_enable"] = "1"
        parameters["trt_timing_cache_path"] = options.trt_cache_dir
    return parameters


def calibration_table_for_tensorrt(bundle: Bundle) -> Path | None:
    """The bundle's TensorRT calibration table, if TensorRT should be given it (see above)."""
    int8 = bundle.meta.precision.tensorrt_int8
    if not int8 or bundle.calibration_table_path is None:
        return None
    if bundle.meta.quantization.get("format") == "QDQ":
        return None  # the scales are in the model's Q/DQ nodes; a table would fail the load
    return bundle.calibration_table_path


def config_text(config: ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def config_header(bundle: Bundle) -> str:
    meta = bundle.meta
    return (
        f"# Written by `fastelectra export-triton` from {bundle.path.absolute()}\n"
        f"# precision {meta.precision.name}, hidden {meta.dimensions.hidden}, max_sequence_length "
        f"{meta.max_sequence_length}, {MODEL_FILE} sha256 {meta.files[MODEL_FILE]}\n"
        f"# Clients tokenize with {VERSION}/{TOKENIZER_FILE} and send ids, mask and segments.\n"
    )


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of a multi-GB model) where the filesystem allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:  # tritonclient raises RuntimeError without grpc
        raise DependencyMissing(
            f"export-triton needs tritonclient's model config ({e}): "
            "pip install 'fastelectra[triton]'"
        ) from e
    return model_config_pb2
