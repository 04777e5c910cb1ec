"""How many bytes of weights one call of a model reads: the memory side of the floor.

At batch 1 × 16 an encoder does little arithmetic per weight, so reading its weight matrices
once from memory takes longer than multiplying by them (ELECTRA-large FP32: 1.21 GB
of weight matrices per call; 1.34 GB with the embedding tables, which it does not read whole).
The bytes are read off the model file itself, so they are exact for every precision: an INT8
bundle's quantised matrices count 1 byte per weight, the nodes it keeps FP32 for accuracy
(`quantization.fp32_nodes` in fastelectra.json, which records only how many) 4 bytes, and
scales, biases and LayerNorm parameters what they hold.

Tables a call only looks rows up in (the word, position and segment embeddings) are left out:
at 16 tokens a call reads 16 rows of a 30,522-row table, not the table. An initializer counts
as a lookup table when every node that reads it takes only rows from it (`LOOKUP_INPUTS`).

Only protobuf field boundaries are walked (`fastelectra.runtime.protowire`, over an mmap), so
a 1.3 GB model is never read into memory.
"""

from __future__ import annotations

import mmap
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fastelectra.bundle import Dimensions
from fastelectra.runtime import protowire as wire
from fastelectra.runtime.protowire import (
    GRAPH_INITIALIZER,
    GRAPH_NODE,
    MODEL_GRAPH,
    TENSOR_DATA_TYPE,
    TENSOR_DIMS,
    TENSOR_NAME,
)

# TensorProto.DataType -> (name, bytes per element)
DTYPES = {
    1: ("float32", 4),
    2: ("uint8", 1),
    3: ("int8", 1),
    4: ("uint16", 2),
    5: ("int16", 2),
    6: ("int32", 4),
    7: ("int64", 8),
    9: ("bool", 1),
    10: ("float16", 2),
    11: ("float64", 8),
    16: ("bfloat16", 2),
}
# (op type, input index) pairs that read only the rows a call selects from a constant table.
LOOKUP_INPUTS = frozenset(
    {
        ("Gather", 0),
        ("Slice", 0),  # the position table cut to the sequence length
        ("EmbedLayerNormalization", 2),  # word, position, segment embeddings
        ("EmbedLayerNormalization", 3),
        ("EmbedLayerNormalization", 4),
    }
)
FP32_BYTES = 4


@dataclass(frozen=True)
class WeightBytes:
    """Bytes one call reads from the weights, by dtype; lookup tables counted apart."""

    read_per_call: int
    by_dtype: dict[str, int] = field(default_factory=dict)
    lookup_tables: int = 0
    source: str = "model file"

    def to_json(self) -> dict[str, object]:
        mb = 1e6
        return {
            "read_per_call_mb": round(self.read_per_call / mb, 2),
            "by_dtype_mb": {k: round(v / mb, 2) for k, v in sorted(self.by_dtype.items())},
            "lookup_tables_mb": round(self.lookup_tables / mb, 2),
            "source": self.source,
        }


def matrix_weights(dims: Dimensions) -> int:
    """Weights of the products `floor.cell_flops` counts: per layer QKV + attention output
    (4·h²) and FFN up + down (2·h·f), and the pooler (h²). Biases and LayerNorms left out."""
    h, f = dims.hidden, dims.intermediate
    return dims.layers * (4 * h * h + 2 * h * f) + h * h


def fp32_weight_bytes(dims: Dimensions) -> WeightBytes:
    """For a variant with no ONNX file to read (the TensorFlow original): FP32 matrices."""
    size = FP32_BYTES * matrix_weights(dims)
    return WeightBytes(size, {"float32": size}, source="dimensions (4 bytes per matrix weight)")


def _dims(buf: wire.Buffer, f: wire.Field) -> list[int]:
    if f.wire_type == wire.VARINT:
        return [wire.read_varint(buf, f.value)[0]]
    out, pos = [], f.value  # packed
    while pos < f.end:
        value, pos = wire.read_varint(buf, pos)
        out.append(value)
    return out


def _initializer(buf: wire.Buffer, tensor: wire.Field) -> tuple[str, str, int]:
    name, data_type, shape = "", 0, []
    for f in wire.fields(buf, tensor.value, tensor.end):
        if f.number == TENSOR_NAME and f.wire_type == wire.LEN:
            name = wire.text(buf, f)
        elif f.number == TENSOR_DATA_TYPE and f.wire_type == wire.VARINT:
            data_type = wire.read_varint(buf, f.value)[0]
        elif f.number == TENSOR_DIMS:
            shape += _dims(buf, f)
    dtype, size = DTYPES.get(data_type, (f"type{data_type}", 0))
    count = 1
    for d in shape:
        count *= d
    return name, dtype, count * size


def model_weight_bytes(model_path: str | os.PathLike[str]) -> WeightBytes:
    """The initializer bytes one call of the model at `model_path` reads (module doc)."""
    initializers: dict[str, tuple[str, int]] = {}
    uses: dict[str, list[tuple[str, int]]] = defaultdict(list)
    with (
        open(Path(model_path), "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf,
    ):
        graphs = [
            g for g in wire.fields(buf) if g.number == MODEL_GRAPH and g.wire_type == wire.LEN
        ]
        if len(graphs) != 1:
            raise wire.WireError(f"expected one graph in the model, found {len(graphs)}")
        for item in wire.fields(buf, graphs[0].value, graphs[0].end):
            if item.wire_type != wire.LEN:
                continue
            if item.number == GRAPH_INITIALIZER:
                name, dtype, size = _initializer(buf, item)
                initializers[name] = (dtype, size)
            elif item.number == GRAPH_NODE:
                node = wire.read_node(buf, item)
                for index, name in enumerate(node.inputs):
                    uses[name].append((node.op_type, index))
    by_dtype: dict[str, int] = defaultdict(int)
    lookup = 0
    for name, (dtype, size) in initializers.items():
        # Unused initializers are not read at all; onnxruntime drops them.
        if not uses[name]:
            continue
        if all(use in LOOKUP_INPUTS for use in uses[name]):
            lookup += size
        else:
            by_dtype[dtype] += size
    return WeightBytes(sum(by_dtype.values()), dict(by_dtype), lookup)
