"""The bundle: the one contract between `convert` (which writes it) and `runtime` (which reads it).

A bundle is a directory::

    model.onnx            the encoder graph (weights inline, or in model.onnx.data)
    model.onnx.data       external weights, only for models past protobuf's 2 GB
    tokenizer.json        HF `tokenizers` file that alone reproduces FullTokenizer ids
    fastelectra.json      metadata: format version, dimensions, IO names, sha256 of every file
    verification.json     the accuracy figures against the TensorFlow original

This module imports nothing heavy: the runtime reads bundles without TensorFlow or onnx.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastelectra.destinations import DirectoryKind
from fastelectra.errors import FastElectraError
from fastelectra.precisions import FP32, Precision, precision_named

# Re-exported: fastelectra.json's "precision" is one of these names.
from fastelectra.precisions import PRECISIONS as PRECISIONS

FORMAT = "fastelectra-bundle"
FORMAT_VERSION = 1

MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "fastelectra.json"
VERIFICATION_FILE = "verification.json"
TRT_CALIBRATION_FILE = "calibration.flatbuffers"

# How a text's vector is taken from the outputs: the model's pooled_output, sequence_output at
# [CLS], or the mean of sequence_output over the text's tokens.
POOLINGS = ("pooled", "cls", "mean")
# The one default of `Encoder.embed`, `fastelectra embed`, `fastelectra serve` and the Ray paths:
# a bundle records it, and every entry point uses the bundle's. Mean pooling is how
# sentence-transformers models (MiniLM, the demo) are trained and compared; TF Hub BERT /
# ELECTRA `pooled_output` is a next-sentence / discriminator head, not a similarity embedding.
DEFAULT_POOLING = "mean"

INPUT_NAMES = ("input_word_ids", "input_mask", "segment_ids")
OUTPUT_NAMES = ("pooled_output", "sequence_output")


class BundleError(FastElectraError, ValueError):
    """A bundle is missing, truncated, foreign or of an unsupported format version."""


@dataclass
class Dimensions:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int

    @property
    def params(self) -> int:
        """Parameter count of a BERT encoder with these dimensions (pooler included)."""
        h, i = self.hidden, self.intermediate
        embeddings = (self.vocab_size + self.max_positions + self.type_vocab_size) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        return embeddings + self.layers * layer + h * h + h


@dataclass
class BundleMeta:
    """Everything in `fastelectra.json`."""

    source: str
    dimensions: Dimensions
    # Read from and written to fastelectra.json as its name ("fp32", "int8-dynamic", ...).
    precision: Precision = FP32
    # The pooling every entry point uses when none is asked (bundles from before it: mean).
    pooling: str = DEFAULT_POOLING
    do_lower_case: bool = True
    max_sequence_length: int = 512
    inputs: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    outputs: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    input_dtype: str = "int32"
    opset: int = 17
    fused_ops: dict[str, int] = field(default_factory=dict)
    # Graph rewrites before / after fusion: name -> {"count": n, "required": r}.
    rewrites: dict[str, dict[str, int]] = field(default_factory=dict)
    # `--precision auto`: the candidates' gates and latencies, the CPU they were timed on, the
    # choice (empty for a bundle built at one precision).
    auto: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    # How the build went: seconds per step, and the process's memory (MiB) per step and overall:
    # {"steps": {step: {"peak_rss_mb": .., "rss_after_mb": ..}}, "peak_rss_mb": ..}. Empty in
    # bundles from before they were recorded (and in bundles not made by `fastelectra build`).
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision"] = self.precision.name
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleMeta:
        data = dict(data)
        data["dimensions"] = Dimensions(**data["dimensions"])
        data["precision"] = precision_named(data.get("precision", FP32.name))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Bundle:
    path: Path
    meta: BundleMeta
    verification: dict[str, Any] | None

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def calibration_table_path(self) -> Path | None:
        p = self.path / TRT_CALIBRATION_FILE
        return p if p.exists() else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise BundleError(f"{path.parent}: not a fastelectra bundle (no {path.name})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e}); the bundle is damaged") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return data


# The JSON type of every field of fastelectra.json (`BundleMeta`), and of every dimension.
META_TYPES: dict[str, type] = {
    "source": str,
    "dimensions": dict,
    "precision": str,
    "pooling": str,
    "do_lower_case": bool,
    "max_sequence_length": int,
    "inputs": list,
    "outputs": list,
    "input_dtype": str,
    "opset": int,
    "fused_ops": dict,
    "rewrites": dict,
    "auto": dict,
    "quantization": dict,
    "tool_versions": dict,
    "timings": dict,
    "memory": dict,
    "files": dict,
    "format": str,
    "format_version": int,
}
REQUIRED_FIELDS = ("source", "dimensions", "files")
TYPE_NAMES = {
    str: "a string",
    dict: "an object",
    list: "a list",
    bool: "true or false",
    int: "an integer",
}


def check_meta_types(raw: dict[str, Any], path: Path) -> None:
    """Raise a one-line `BundleError` for the first field of fastelectra.json that is missing,
    of the wrong JSON type or out of range, so no reader meets a wrong type later."""

    def wrong(field: str, expected: str, value: object) -> BundleError:
        return BundleError(
            f"{path}: {field} must be {expected}, got {json.dumps(value)[:80]}; the bundle is "
            "damaged or was not written by fastelectra"
        )

    for name in REQUIRED_FIELDS:
        if name not in raw:
            raise BundleError(f"{path}: malformed metadata (no {name!r})")
    for name, kind in META_TYPES.items():
        if name in raw and not _is_json_type(raw[name], kind):
            raise wrong(name, TYPE_NAMES[kind], raw[name])
    for name in Dimensions.__dataclass_fields__:
        value = raw["dimensions"].get(name)
        least = 0 if name == "layers" else 1  # a layerless encoder serves as a test model
        if not _is_json_type(value, int) or value < least:
            raise wrong(f"dimensions.{name}", f"an integer of at least {least}", value)
    for name in ("inputs", "outputs"):
        if name in raw and not all(isinstance(v, str) for v in raw[name]):
            raise wrong(name, "a list of strings", raw[name])
    if raw.get("pooling", DEFAULT_POOLING) not in POOLINGS:
        raise wrong("pooling", f"one of {', '.join(POOLINGS)}", raw["pooling"])
    if raw.get("precision", FP32.name) not in PRECISIONS:
        raise wrong("precision", f"one of {', '.join(PRECISIONS)}", raw["precision"])
    if not _is_json_type(raw.get("max_sequence_length", 512), int) or (
        raw.get("max_sequence_length", 512) < 3
    ):
        raise wrong("max_sequence_length", "an integer of at least 3", raw["max_sequence_length"])
    for name, digest in raw["files"].items():
        if not is_plain_name(name):
            raise wrong("files", "plain file names inside the bundle", name)
        if not isinstance(digest, str):
            raise wrong(f"files[{name!r}]", "a sha256 string", digest)


def is_plain_name(name: str) -> bool:
    """A file name of the bundle's own directory: no separator, not `.` or `..`, not absolute."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and not Path(name).is_absolute()
        and "\0" not in name
    )


def _is_json_type(value: object, kind: type) -> bool:
    # bool is an int in Python, never in the schema.
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def load_bundle(path: str | os.PathLike[str], verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle: format, version, presence and sha256 of every listed file."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    raw = read_json(root / META_FILE)
    if raw.get("format") != FORMAT:
        raise BundleError(
            f"{root / META_FILE}: not a fastelectra bundle (format={raw.get('format')!r})"
        )
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{root}: bundle format version {version} is not supported "
            f"(this fastelectra reads version {FORMAT_VERSION}); rebuild the bundle"
        )
    check_meta_types(raw, root / META_FILE)
    try:
        meta = BundleMeta.from_json(raw)
    except (KeyError, TypeError) as e:  # e.g. an unknown dimension
        raise BundleError(f"{root / META_FILE}: malformed metadata ({e})") from e
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if required not in meta.files:
            raise BundleError(f"{root}: metadata lists no {required}")
    for name, expected in meta.files.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{root}: {name} is missing")
        if verify_hashes and sha256_file(file) != expected:
            raise BundleError(
                f"{file}: sha256 mismatch (truncated, modified or foreign file); rebuild the bundle"
            )
    verification_path = root / VERIFICATION_FILE
    verification = read_json(verification_path) if verification_path.exists() else None
    return Bundle(root, meta, verification)


def finalize_meta(staging: Path, meta: BundleMeta) -> None:
    """Hash every file in `staging` into `meta.files` and write fastelectra.json there."""
    meta.files = {
        p.name: sha256_file(p)
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name != META_FILE
    }
    write_json_atomic(staging / META_FILE, meta.to_json())


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def foreign_bundle_entries(path: Path) -> list[str] | None:
    """The entries of the bundle at `path` that its metadata does not name; None if `path` is
    not a bundle (no readable `fastelectra.json` of this format)."""
    try:
        raw = read_json(path / META_FILE)
    except BundleError:
        return None
    files = raw.get("files")
    if raw.get("format") != FORMAT or not isinstance(files, dict):
        return None
    ours = {META_FILE, *files}
    return sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.name not in ours or not entry.is_file(follow_symlinks=False)
    )


BUNDLE = DirectoryKind("a fastelectra bundle", foreign_bundle_entries)
