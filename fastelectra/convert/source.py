"""Open a TF Hub BERT-family encoder: a SavedModel directory, a `.tar.gz` module or a hub handle.

`EncoderSource` hides the two calling conventions TF Hub has used for these encoders:

* legacy (2020, `google/electra_large/1`): `obj([word_ids, mask, segment_ids])` returning
  `[pooled_output, sequence_output]`;
* dict (later BERT exports): `obj({"input_word_ids", "input_mask", "input_type_ids"})`
  returning a dict with `pooled_output` and `sequence_output`.

Outputs are mapped by rank (pooled is `[batch, hidden]`, sequence is `[batch, seq, hidden]`),
never by signature key: the legacy `serving_default` names them `bert_encoder*`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastelectra.bundle import Dimensions
from fastelectra.errors import FastElectraError

# Where a variable's name says what it is (TF Models BertEncoder, and the older
# `official/nlp/bert` names that the 2020 exports carry). Keras uniquifies a layer name
# built twice in one process with a `_<n>` suffix (`position_embedding_1`).
_WORD_EMB = re.compile(r"word_embeddings(_\d+)?(/embeddings)?$")
_POS_EMB = re.compile(r"position_embedding(s)?(_\d+)?(/embeddings)?$")
_TYPE_EMB = re.compile(r"type_embeddings(_\d+)?(/embeddings)?$")
_LAYER = re.compile(r"(?:^|/)(?:layer|transformer/layer)_(\d+)/")
_QUERY_KERNEL = re.compile(r"self_attention/query/kernel$")
_INTERMEDIATE_KERNEL = re.compile(r"intermediate/kernel$")


class SourceError(FastElectraError, ValueError):
    """The source is missing, unreadable or not a BERT-family text encoder."""


@dataclass
class EncoderSource:
    """A loaded encoder module and what it tells about itself."""

    location: str
    obj: Any  # the restored TF object
    convention: str  # "legacy" or "dict"
    vocab_file: Path
    do_lower_case: bool
    dimensions: Dimensions

    def call(self, word_ids, mask, segment_ids):
        """Run the module in inference mode; returns (pooled_output, sequence_output)."""
        if self.convention == "legacy":
            outputs = self.obj([word_ids, mask, segment_ids], training=False)
        else:
            inputs = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": segment_ids}
            outputs = self.obj(inputs, training=False)
        return outputs_by_rank(outputs)

    def inference_function(self):
        """A `tf.function` over int32 `[batch, seq]` inputs with the bundle's IO names."""
        import tensorflow as tf

        spec = [
            tf.TensorSpec([None, None], tf.int32, name=name)
            for name in ("input_word_ids", "input_mask", "segment_ids")
        ]

        @tf.function(input_signature=spec, autograph=False)
        def encoder(input_word_ids, input_mask, segment_ids):
            pooled, sequence = self.call(input_word_ids, input_mask, segment_ids)
            return {"pooled_output": pooled, "sequence_output": sequence}

        return encoder


def outputs_by_rank(outputs: Any) -> tuple[Any, Any]:
    if isinstance(outputs, dict):
        if "pooled_output" in outputs and "sequence_output" in outputs:
            return outputs["pooled_output"], outputs["sequence_output"]
        named = list(outputs.items())
    elif isinstance(outputs, list | tuple):
        named = [(f"output {i}", v) for i, v in enumerate(outputs)]
    else:  # one tensor, e.g. a classifier's logits
        named = [("output 0", outputs)]
    ranks = {name: getattr(getattr(v, "shape", None), "rank", None) for name, v in named}
    pooled = [v for name, v in named if ranks[name] == 2]
    sequence = [v for name, v in named if ranks[name] == 3]
    if len(pooled) != 1 or len(sequence) != 1:
        found = ", ".join(f"{name} {_shape(v)}" for name, v in named)
        raise SourceError(
            "the model's outputs are not an encoder's: expected one [batch, hidden] "
            f"(pooled_output) and one [batch, seq, hidden] (sequence_output), found {found}"
        )
    return pooled[0], sequence[0]


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return str(list(shape)) if shape is not None else type(value).__name__


def resolve_location(source: str | os.PathLike[str]) -> Path:
    """A local SavedModel directory for `source`; archives and hub handles are unpacked/cached."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
            raise SourceError(f"{path}: not a SavedModel directory (no saved_model.pb)")
        return path
    if path.is_file():
        if text.endswith((".tar.gz", ".tgz")):
            return _unpack_archive(path)
        raise SourceError(f"{path}: expected a SavedModel directory or a .tar.gz TF Hub module")
    if re.match(r"^(https?://|gs://)", text) or re.match(r"^[\w.-]+/[\w.-]+/\d+$", text):
        try:
            import tensorflow_hub as hub

            return Path(hub.resolve(text))
        except Exception as e:  # network, 404, bad handle ... all say the same to the user
            raise SourceError(f"{text}: could not resolve the TF Hub handle ({e})") from e
    raise SourceError(f"{text}: no such file, directory or TF Hub handle")


def _unpack_archive(archive: Path) -> Path:
    from fastelectra.convert.cache import cache_dir

    digest = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_mtime_ns}".encode())
    target = cache_dir() / "unpacked" / f"{archive.name}-{digest.hexdigest()[:12]}"
    if (target / "saved_model.pb").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".partial")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"{archive}: not a readable .tar.gz module ({e})") from e
    # Hub archives hold the SavedModel at their root; tolerate one wrapping folder.
    root = staging
    if not (root / "saved_model.pb").exists():
        found = sorted(staging.rglob("saved_model.pb"))
        if not found:
            raise SourceError(f"{archive}: the archive holds no saved_model.pb")
        root = found[0].parent
    os.replace(root, target)
    return target


def load_source(source: str | os.PathLike[str]) -> EncoderSource:
    """Load `source` and check that it is a BERT-family text encoder in TF Hub format."""
    import tensorflow as tf

    location = resolve_location(source)
    try:
        obj = tf.saved_model.load(str(location))
    except Exception as e:
        raise SourceError(f"{location}: TensorFlow could not load the SavedModel ({e})") from e

    # A module as published holds both at its root; one fine-tuned inside a Keras model
    # (`hub.KerasLayer(..., trainable=True)`, then `model.save`) holds them in the wrapped layer.
    found = {name: find_attribute(obj, name) for name in ("vocab_file", "do_lower_case")}
    missing = [name for name, value in found.items() if value is None]
    if not callable(obj):
        missing.append("__call__ (the encoder function)")
    if missing:
        raise SourceError(
            f"{source}: not a TF Hub BERT-family text encoder; it lacks {', '.join(missing)} "
            "(looked at the module and every layer it wraps)"
        )
    vocab_file = Path(found["vocab_file"].asset_path.numpy().decode())
    if not vocab_file.is_file():
        raise SourceError(f"{source}: the vocab_file asset {vocab_file} is missing")
    do_lower_case = bool(found["do_lower_case"].numpy())
    dimensions = infer_dimensions(obj, source)
    convention = _calling_convention(obj, source)
    enc = EncoderSource(str(source), obj, convention, vocab_file, do_lower_case, dimensions)
    _check_call(enc)
    return enc


def find_attribute(obj: Any, name: str, max_depth: int = 6) -> Any | None:
    """`obj.<name>`, else the nearest `<name>` among the objects it tracks (breadth first)."""
    frontier, seen = [obj], {id(obj)}
    for _ in range(max_depth):
        next_frontier = []
        for node in frontier:
            try:
                children = node._trackable_children()
            except Exception:  # not a trackable: nothing below it
                continue
            if name in children:
                return children[name]
            for child in children.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    next_frontier.append(child)
        frontier = next_frontier
    return None


def _calling_convention(obj: Any, source: Any) -> str:
    """Read from the saved traces whether the module takes a list or a dict of inputs."""
    functions = getattr(obj.__call__, "concrete_functions", None) or []
    for fn in functions:
        args = fn.structured_input_signature[0]
        if not args:
            continue
        first = args[0]
        if isinstance(first, dict):
            if "input_word_ids" in first:
                return "dict"
        elif isinstance(first, list | tuple) and len(first) == 3:
            return "legacy"
    raise SourceError(
        f"{source}: the module's __call__ takes neither [input_word_ids, input_mask, "
        "segment_ids] nor a dict with input_word_ids/input_mask/input_type_ids"
    )


def _check_call(enc: EncoderSource) -> None:
    import tensorflow as tf

    ids = tf.constant([[101, 102]], tf.int32)
    try:
        pooled, sequence = enc.call(ids, tf.ones_like(ids), tf.zeros_like(ids))
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{enc.location}: calling the encoder failed ({e})") from e
    hidden = enc.dimensions.hidden
    if tuple(pooled.shape) != (1, hidden) or tuple(sequence.shape) != (1, 2, hidden):
        raise SourceError(
            f"{enc.location}: the model's outputs are not the encoder's: found "
            f"{_shape(pooled)} and {_shape(sequence)} for 1 text of 2 tokens, the encoder's "
            f"are [1, {hidden}] (pooled_output) and [1, 2, {hidden}] (sequence_output)"
        )


def infer_dimensions(obj: Any, source: Any = "") -> Dimensions:
    """Layers, hidden, heads, FFN, vocab and max positions from the module's variables."""
    variables = {v.name.split(":")[0]: tuple(v.shape) for v in obj.variables}

    def find(pattern: re.Pattern[str], what: str) -> tuple[int, ...]:
        hits = [shape for name, shape in variables.items() if pattern.search(name)]
        if not hits:
            raise SourceError(f"{source}: not a BERT-family encoder; no {what} variable found")
        return hits[0]

    vocab_size, hidden = find(_WORD_EMB, "word embedding")
    max_positions, _ = find(_POS_EMB, "position embedding")
    type_vocab_size, _ = find(_TYPE_EMB, "type (segment) embedding")
    query = find(_QUERY_KERNEL, "attention query kernel")
    # EinsumDense keeps heads as an axis: [hidden, heads, head_dim].
    heads = query[1] if len(query) == 3 else 0
    if heads == 0:
        raise SourceError(f"{source}: cannot infer the number of attention heads from {query}")
    intermediate = find(_INTERMEDIATE_KERNEL, "feed-forward (intermediate) kernel")[-1]
    layers = len({m.group(1) for name in variables if (m := _LAYER.search(name))})
    if layers == 0:
        raise SourceError(f"{source}: no transformer layers found among the variables")
    return Dimensions(
        layers=layers,
        hidden=hidden,
        heads=heads,
        intermediate=intermediate,
        vocab_size=vocab_size,
        max_positions=max_positions,
        type_vocab_size=type_vocab_size,
    )
