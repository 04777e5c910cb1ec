"""The pooling head: the bundle's encoder outputs -> one `embedding` [batch, hidden] per row.

The same arithmetic as `fastelectra.runtime.encoder.pool` and `l2_normalize`, written as ONNX
nodes after the encoder graph, so that a consumer without this package (another language,
Triton's onnxruntime backend) gets the vectors `Encoder.embed` gives.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fastelectra.bundle import INPUT_NAMES, OUTPUT_NAMES
from fastelectra.errors import InputError

EMBEDDING = "embedding"
# `l2_normalize`'s floor on the norm: a zero vector stays zero instead of becoming NaN.
NORM_FLOOR = 1e-12
# ReduceSum takes its axes as an input from opset 13 on (the head uses no other reduction, so
# it needs no opset newer than the encoder's own).
MIN_OPSET = 13
_PREFIX = "fastelectra_head/"


def add_head(model: onnx.ModelProto, pooling: str, normalize: bool) -> None:
    """Replace `model`'s outputs by `embedding` float32 [batch, hidden], pooled over the mask.

    `model` is the bundle's encoder (inputs `INPUT_NAMES`, outputs `OUTPUT_NAMES`).
    """
    names = [o.name for o in model.graph.output]
    if names != list(OUTPUT_NAMES):
        raise InputError(f"the bundle's model gives {names}, not {list(OUTPUT_NAMES)}")
    _check_opset(model, MIN_OPSET)
    pooled, sequence = OUTPUT_NAMES
    mask = INPUT_NAMES[1]
    nodes: list[onnx.NodeProto] = []
    constants = {
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
        "zero": np.array(0.0, np.float32),
        "floor": np.array(NORM_FLOOR, np.float32),
        "first": np.array(0, np.int64),
    }
    used: set[str] = set()

    def node(op: str, inputs: list[str], **attrs: object) -> str:
        used.update(i for i in inputs if i.startswith(_PREFIX))
        out = f"{_PREFIX}{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    c = {k: _PREFIX + k for k in constants}
    if pooling == "pooled":
        vector = node("Identity", [pooled])
    elif pooling == "cls":
        vector = node("Gather", [sequence, c["first"]], axis=1)
    elif pooling == "mean":
        # Padded positions never contribute: Where, not Mul (0 x a non-finite value is NaN).
        keep = node("Cast", [node("Unsqueeze", [mask, c["axis2"]])], to=TensorProto.BOOL)
        total = node(
            "ReduceSum", [node("Where", [keep, sequence, c["zero"]]), c["axis1"]], keepdims=0
        )
        count = node(
            "ReduceSum",
            [node("Cast", [mask], to=TensorProto.FLOAT), c["axis1"]],
            keepdims=1,
        )
        vector = node("Div", [total, count])
    else:
        raise InputError(f"pooling must be one of pooled, cls, mean; got {pooling!r}")
    if normalize:
        squares = node("ReduceSum", [node("Mul", [vector, vector]), c["axis1"]], keepdims=1)
        norm = node("Sqrt", [squares])
        vector = node("Div", [vector, node("Max", [norm, c["floor"]])])
    nodes.append(helper.make_node("Identity", [vector], [EMBEDDING], name=_PREFIX + EMBEDDING))

    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    hidden = model.graph.output[0].type.tensor_type.shape.dim[-1]
    output = helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, [None, None])
    dims = output.type.tensor_type.shape.dim
    dims[0].CopyFrom(batch)
    dims[1].CopyFrom(hidden)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(
        numpy_helper.from_array(v, _PREFIX + k) for k, v in constants.items() if _PREFIX + k in used
    )
    del model.graph.output[:]
    model.graph.output.append(output)


def _check_opset(model: onnx.ModelProto, version: int) -> None:
    found = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if found < version:
        raise InputError(
            f"the bundle's model imports ONNX opset {found}; the pooling head needs {version} or "
            "later (rebuild the bundle with this version of fastelectra)"
        )
