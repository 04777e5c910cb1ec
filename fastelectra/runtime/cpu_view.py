"""What the CPU provider loads instead of model.onnx: weights read in place, SkipLayerNorm split.

The bundle's model.onnx keeps the fused graph that its metadata counts; the runtime changes
two things on the way to onnxruntime 1.31's CPU provider, both measured
(`benchmarks/results/*/latency-*` and `skip_layernorm.json`, explained in
`docs/performance.md`):

1. **Weights are read from the file, not parsed.** Given a path, onnxruntime parses the whole
   protobuf, weights included, and copies them into tensors: loading ELECTRA-large FP32 peaks at
   2.2 GB RSS for 1.3 GB of weights. The view is the model with each initializer of 1 KiB or
   more turned into an external-data reference into model.onnx itself (the offset and length of
   its ``raw_data``), and onnxruntime reads the weights straight from the file: 1.3 GB peak.
   Smaller tensors stay inline, since shape inference must see constant shapes and indices.
2. **SkipLayerNormalization becomes Add (+ Add) + LayerNormalization.** onnxruntime's CPU
   SkipLayerNorm kernel is a scalar loop with a division per element: at 128 × 1024 it takes
   264 µs where Add + Add + LayerNormalization take 77 µs, and splitting the 48 of
   ELECTRA-large takes INT8 inference from 74 to 63 ms. The nodes add in the order the kernel does (input + skip, then the
   bias), and the session disables `SkipLayerNormFusion`, the optimizer that would fuse them
   back. GPU providers load model.onnx as it is: their SkipLayerNorm kernels are fast.

Only the protobuf field boundaries are walked (`protowire`), over an mmap of the file.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from fastelectra.runtime import protowire as wire
from fastelectra.runtime.protowire import (
    ATTR_F,
    ATTR_FLOAT,
    ATTR_I,
    ATTR_INT,
    ATTR_NAME,
    ATTR_TYPE,
    DATA_LOCATION_EXTERNAL,
    ENTRY_KEY,
    ENTRY_VALUE,
    GRAPH_INITIALIZER,
    GRAPH_NODE,
    MODEL_GRAPH,
    MODEL_OPSET_IMPORT,
    NODE_ATTRIBUTE,
    NODE_INPUT,
    NODE_NAME,
    NODE_OP_TYPE,
    NODE_OUTPUT,
    OPSET_DOMAIN,
    OPSET_VERSION,
    TENSOR_DATA_LOCATION,
    TENSOR_EXTERNAL_DATA,
    TENSOR_RAW_DATA,
    Buffer,
    Field,
)

# onnxruntime's graph optimizer that fuses Add + LayerNormalization into SkipLayerNormalization.
SKIP_LAYERNORM_FUSION = "SkipLayerNormFusion"
# Where onnxruntime resolves external-data locations of a model given as bytes.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
MIN_EXTERNAL_BYTES = 1024  # onnx's own threshold for external data
LAYERNORM_OPSET = 17  # LayerNormalization joined the default domain in opset 17


@dataclass(frozen=True)
class CpuView:
    model: bytes  # an ONNX ModelProto whose large initializers point into `folder / location`
    folder: Path  # for `EXTERNAL_FOLDER_KEY`
    external_initializers: int
    split_skip_layernorms: int


def cpu_view(model_path: str | os.PathLike[str], split_skip_layernorm: bool = True) -> CpuView:
    """Build the view of ``model_path``; raises `protowire.WireError` on a damaged file."""
    path = Path(model_path).resolve()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise wire.WireError("the model file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            rewriter = _Rewriter(buf, path.name, split_skip_layernorm)
            model = rewriter.model()
    return CpuView(model, path.parent, rewriter.external, rewriter.split)


class _Rewriter:
    def __init__(self, buf: Buffer, location: str, split_skip_layernorm: bool) -> None:
        self.buf = buf
        self.location = location
        self.external = 0
        self.split = 0
        self.split_enabled = split_skip_layernorm and self._default_opset() >= LAYERNORM_OPSET

    def model(self) -> bytes:
        out = bytearray()
        graphs = 0
        for field in wire.fields(self.buf):
            if field.number == MODEL_GRAPH and field.wire_type == wire.LEN:
                out += wire.length_delimited(MODEL_GRAPH, self._graph(field))
                graphs += 1
            else:
                out += self.buf[field.start : field.end]
        if graphs != 1:
            raise wire.WireError(f"expected one graph in the model, found {graphs}")
        return bytes(out)

    def _default_opset(self) -> int:
        for field in wire.fields(self.buf):
            if field.number != MODEL_OPSET_IMPORT or field.wire_type != wire.LEN:
                continue
            domain, version = "", 0
            for sub in wire.fields(self.buf, field.value, field.end):
                if sub.number == OPSET_DOMAIN and sub.wire_type == wire.LEN:
                    domain = wire.text(self.buf, sub)
                elif sub.number == OPSET_VERSION and sub.wire_type == wire.VARINT:
                    version = wire.read_varint(self.buf, sub.value)[0]
            if domain in ("", "ai.onnx"):
                return version
        return 0

    def _graph(self, graph: Field) -> bytes:
        out = bytearray()
        for field in wire.fields(self.buf, graph.value, graph.end):
            if field.wire_type != wire.LEN:
                out += self.buf[field.start : field.end]
            elif field.number == GRAPH_INITIALIZER:
                out += wire.length_delimited(GRAPH_INITIALIZER, self._initializer(field))
            elif field.number == GRAPH_NODE and self.split_enabled:
                out += self._node(field)
            else:
                out += self.buf[field.start : field.end]
        return bytes(out)

    def _initializer(self, tensor: Field) -> bytes:
        """The TensorProto with its raw_data replaced by a reference to where it lies."""
        kept = bytearray()
        raw: Field | None = None
        for field in wire.fields(self.buf, tensor.value, tensor.end):
            if field.number == TENSOR_RAW_DATA and field.wire_type == wire.LEN:
                raw = field
            else:
                kept += self.buf[field.start : field.end]
        if raw is None or raw.end - raw.value < MIN_EXTERNAL_BYTES:
            return wire.payload(self.buf, tensor)
        self.external += 1
        for key, value in (
            ("location", self.location),
            ("offset", str(raw.value)),
            ("length", str(raw.end - raw.value)),
        ):
            entry = wire.string(ENTRY_KEY, key) + wire.string(ENTRY_VALUE, value)
            kept += wire.length_delimited(TENSOR_EXTERNAL_DATA, entry)
        kept += wire.varint_field(TENSOR_DATA_LOCATION, DATA_LOCATION_EXTERNAL)
        return bytes(kept)

    def _node(self, node: Field) -> bytes:
        parsed = _SkipLayerNorm.parse(self.buf, node)
        if parsed is None:
            return bytes(self.buf[node.start : node.end])
        self.split += 1
        return parsed.split(prefix=f"fastelectra_cpu/{self.split}")


@dataclass
class _SkipLayerNorm:
    """A com.microsoft SkipLayerNormalization node: inputs, outputs, name and epsilon."""

    inputs: list[str]
    outputs: list[str]
    name: str
    epsilon: float

    @classmethod
    def parse(cls, buf: Buffer, node: Field) -> _SkipLayerNorm | None:
        parsed = wire.read_node(buf, node)
        if parsed.op_type != "SkipLayerNormalization" or parsed.domain != "com.microsoft":
            return None
        # Outputs 1 and 2 (mean, inverse std-dev) are training outputs we never produce; a
        # node that has them is left to the kernel rather than half-translated.
        if len(parsed.inputs) < 3 or any(o for o in parsed.outputs[1:3]):
            return None
        epsilon = 1e-12  # the contrib op's default
        for attribute in parsed.attributes:
            epsilon = _epsilon(buf, attribute, epsilon)
        return cls(parsed.inputs, parsed.outputs, parsed.name, epsilon)

    def split(self, prefix: str) -> bytes:
        data, skip, gamma = self.inputs[:3]
        beta = self.inputs[3] if len(self.inputs) > 3 else ""
        bias = self.inputs[4] if len(self.inputs) > 4 else ""
        named_sum = self.outputs[3] if len(self.outputs) > 3 else ""
        total = named_sum or f"{prefix}/sum"
        nodes = []
        if bias:  # the kernel adds input + skip first, then the bias
            nodes.append(_node("Add", [data, skip], [f"{prefix}/input_skip"], f"{prefix}/add"))
            nodes.append(_node("Add", [f"{prefix}/input_skip", bias], [total], f"{prefix}/bias"))
        else:
            nodes.append(_node("Add", [data, skip], [total], f"{prefix}/add"))
        layernorm_inputs = [total, gamma, beta] if beta else [total, gamma]
        attributes = _float_attribute("epsilon", self.epsilon) + _int_attribute("axis", -1)
        nodes.append(
            _node(
                "LayerNormalization",
                layernorm_inputs,
                [self.outputs[0]],
                self.name or f"{prefix}/layernorm",
                attributes,
            )
        )
        return b"".join(wire.length_delimited(GRAPH_NODE, n) for n in nodes)


def _epsilon(buf: Buffer, attribute: Field, default: float) -> float:
    name, value = "", None
    for field in wire.fields(buf, attribute.value, attribute.end):
        if field.number == ATTR_NAME and field.wire_type == wire.LEN:
            name = wire.text(buf, field)
        elif field.number == ATTR_F:
            value = wire.read_float(buf, field)
    return value if name == "epsilon" and value is not None else default


def _node(
    op_type: str, inputs: list[str], outputs: list[str], name: str, attributes: bytes = b""
) -> bytes:
    body = b"".join(wire.string(NODE_INPUT, i) for i in inputs)
    body += b"".join(wire.string(NODE_OUTPUT, o) for o in outputs)
    return body + wire.string(NODE_NAME, name) + wire.string(NODE_OP_TYPE, op_type) + attributes


def _float_attribute(name: str, value: float) -> bytes:
    body = wire.string(ATTR_NAME, name) + wire.float_field(ATTR_F, value)
    return wire.length_delimited(NODE_ATTRIBUTE, body + wire.varint_field(ATTR_TYPE, ATTR_FLOAT))


def _int_attribute(name: str, value: int) -> bytes:
    # int64 varints are two's complement: -1 is ten bytes of all ones.
    encoded = wire.encode_varint(value & (2**64 - 1))
    body = wire.string(ATTR_NAME, name) + wire.tag(ATTR_I, wire.VARINT) + encoded
    return wire.length_delimited(NODE_ATTRIBUTE, body + wire.varint_field(ATTR_TYPE, ATTR_INT))
