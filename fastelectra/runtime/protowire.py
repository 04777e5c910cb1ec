"""Just enough of the protobuf wire format to edit an ONNX model without the `onnx` package.

The runtime depends on numpy, onnxruntime and tokenizers only, yet `cpu_view` must rewrite a few
fields of model.onnx. It never decodes a message it does not edit: `fields` walks field
boundaries over the bytes (an mmap of the file, so 1.3 GB of weights are never read), and
the writers below re-encode only what changes. Field numbers are those of onnx.proto3.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastelectra.errors import FastElectraError

VARINT, I64, LEN, I32 = 0, 1, 2, 5

Buffer = bytes | bytearray | memoryview  # an mmap reads the same way

# onnx.proto3 field numbers: the one table of them, for every reader and writer of ONNX bytes.
MODEL_GRAPH, MODEL_OPSET_IMPORT, MODEL_METADATA_PROPS = 7, 8, 14
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_F, ATTR_I, ATTR_TYPE = 1, 2, 3, 20
ATTR_FLOAT, ATTR_INT = 1, 2
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME = 1, 2, 8
TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 9, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
DATA_LOCATION_EXTERNAL = 1


class WireError(FastElectraError, ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    wire_type: int
    start: int  # first byte of the tag: buf[start:end] is the whole field, ready to copy
    value: int  # first byte of the value; for LEN fields, of the payload
    end: int  # one past the last byte


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("a varint runs past the end of the data")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"a varint longer than 10 bytes ends at byte {pos}")


def fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """The fields of the message in ``buf[start:end]``, in file order."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        tag, value = read_varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire_type == VARINT:
            _, stop = read_varint(buf, value)
        elif wire_type == I64:
            stop = value + 8
        elif wire_type == I32:
            stop = value + 4
        elif wire_type == LEN:
            length, value = read_varint(buf, value)
            stop = value + length
        else:  # 3 and 4 are groups, which onnx.proto does not use; 6 and 7 do not exist
            raise WireError(f"unsupported wire type {wire_type} at byte {pos}")
        if stop > end:
            raise WireError(f"field {number} at byte {pos} runs past the end of its message")
        yield Field(number, wire_type, pos, value, stop)
        pos = stop


@dataclass
class Node:
    """A NodeProto's names and edges; its attributes left as fields, to be read if wanted."""

    op_type: str = ""
    domain: str = ""
    name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    attributes: list[Field] = field(default_factory=list)


def read_node(buf: Buffer, node: Field) -> Node:
    """The NodeProto whose bytes `node` (a graph's node field) spans."""
    out = Node()
    for item in fields(buf, node.value, node.end):
        if item.wire_type != LEN:
            continue
        if item.number == NODE_OP_TYPE:
            out.op_type = text(buf, item)
        elif item.number == NODE_DOMAIN:
            out.domain = text(buf, item)
        elif item.number == NODE_NAME:
            out.name = text(buf, item)
        elif item.number == NODE_INPUT:
            out.inputs.append(text(buf, item))
        elif item.number == NODE_OUTPUT:
            out.outputs.append(text(buf, item))
        elif item.number == NODE_ATTRIBUTE:
            out.attributes.append(item)
    return out


def payload(buf: Buffer, field: Field) -> bytes:
    return bytes(buf[field.value : field.end])


def text(buf: Buffer, field: Field) -> str:
    return payload(buf, field).decode("utf-8")


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative varints are not needed here")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def tag(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def length_delimited(number: int, data: bytes) -> bytes:
    return tag(number, LEN) + encode_varint(len(data)) + data


def string(number: int, value: str) -> bytes:
    return length_delimited(number, value.encode("utf-8"))


def varint_field(number: int, value: int) -> bytes:
    return tag(number, VARINT) + encode_varint(value)


def float_field(number: int, value: float) -> bytes:
    return tag(number, I32) + struct.pack("<f", value)


def read_float(buf: Buffer, field: Field) -> float:
    if field.wire_type != I32:
        raise WireError(f"field {field.number} is not a 32-bit float")
    return struct.unpack("<f", bytes(buf[field.value : field.end]))[0]
