"""Write an ONNX model with its weights inline, one initializer at a time.

`onnx.save` serialises the whole ModelProto into one bytes object first: for ELECTRA-large's
1.3 GB of weights, upb's growing buffer and the copy into Python bytes took the fusion step's
peak from 1.8 to 7.2 GB (measured with getrusage around each call). The file written here is the
same protobuf: the model's fields without the graph, then the graph as one length-delimited
field whose length is computed from the initializers' `ByteSize()`, its small fields first and
its initializers streamed after, so at most one tensor is serialised at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import onnx

from fastelectra.runtime.protowire import GRAPH_INITIALIZER, LEN, MODEL_GRAPH, encode_varint, tag


def write_inline(model: onnx.ModelProto, path: Path) -> None:
    """`onnx.save(model, path)` for a model under protobuf's 2 GB limit, in bounded memory."""
    head = copy_without(model.graph, "initializer")
    rest = copy_without(model, "graph")
    sizes = [t.ByteSize() for t in model.graph.initializer]
    initializer = tag(GRAPH_INITIALIZER, LEN)
    graph_bytes = head.SerializeToString()
    length = len(graph_bytes) + sum(len(initializer) + len(encode_varint(n)) + n for n in sizes)
    with open(path, "wb") as f:
        f.write(rest.SerializeToString())
        f.write(tag(MODEL_GRAPH, LEN) + encode_varint(length) + graph_bytes)
        for tensor, size in zip(model.graph.initializer, sizes, strict=True):
            f.write(initializer + encode_varint(size) + tensor.SerializeToString())


def copy_without(message, skipped: str):
    """A new message of the same type holding every set field of `message` but `skipped`."""
    copy = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == skipped:
            continue
        if descriptor.label == descriptor.LABEL_REPEATED:
            getattr(copy, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(copy, descriptor.name).CopyFrom(value)
        else:
            setattr(copy, descriptor.name, value)
    return copy


def inline_external_data(path: Path, limit_bytes: int) -> bool:
    """Rewrite the model at `path` with the weights of `path`.data inline, when they come to
    less than `limit_bytes`; returns whether it did. onnxruntime's quantizers write their
    output with `onnx.save` (the whole model serialised at once) unless told to write external
    data, which they do tensor by tensor: asked for that, the result is inlined here."""
    data = path.with_name(path.name + ".data")
    if not data.exists() or path.stat().st_size + data.stat().st_size >= limit_bytes:
        return False
    model = onnx.load(str(path))  # external data read in, tensor by tensor
    for tensor in model.graph.initializer:
        # onnx leaves data_location = DEFAULT set on what it read in; a model saved inline
        # never carries the field.
        tensor.ClearField("data_location")
    tmp = path.with_name(f".{path.name}.inline")
    write_inline(model, tmp)
    del model
    tmp.replace(path)
    data.unlink()
    return True


def without_large_data(model: onnx.ModelProto, min_bytes: int = 1024) -> onnx.ModelProto:
    """A copy of `model` whose initializers of `min_bytes` or more keep their type and dims
    only: what shape inference needs, without a second copy of the weights."""
    graph = copy_without(model.graph, "initializer")
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) < min_bytes:
            graph.initializer.append(tensor)
        else:
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    copy = copy_without(model, "graph")
    copy.graph.CopyFrom(graph)
    return copy


@contextlib.contextmanager
def weights_set_aside(model: onnx.ModelProto, min_bytes: int = 1024) -> Iterator[None]:
    """The bytes of `model`'s initializers of `min_bytes` or more held outside the model for the
    block (their type and dims stay): for graph passes that copy the model to infer shapes."""
    stash: dict[str, bytes] = {}
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) >= min_bytes:
            stash[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    try:
        yield
    finally:
        for tensor in model.graph.initializer:
            if tensor.name in stash:
                tensor.raw_data = stash.pop(tensor.name)
