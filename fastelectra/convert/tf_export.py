"""SavedModel -> ONNX with tf2onnx, in bounded memory ("hollow freeze").

Plain tf2onnx freezes the function with every weight inlined into the GraphDef, runs grappler,
then deep-copies the graph before each of its ~49 optimizer passes: 13-16 GiB for BERT-base,
killed at 23 GiB for ELECTRA-large here (README.md, "How it works", has the hollow route's
figures). The hollow route keeps weight bytes out of everything tf2onnx touches:

1. freeze with TF's own variables-to-constants machinery, but hand it zero-stride stand-ins
   for the large variables, so the GraphDef holds their shape and dtype and no bytes;
2. turn those Const nodes into Placeholders of the same name, shape and dtype;
3. convert with tf2onnx with the real inputs *plus the weight placeholders* as graph inputs
   (the ONNX proto is a few MB, so tf2onnx's copies cost nothing), grappler skipped;
4. replace each weight input by an initializer whose bytes are streamed, one variable at a
   time, into ONNX external data.

It leans on private TF APIs (`convert_to_constants._FunctionConverterDataInEager`,
`_replace_variables_by_constants`), the same ones tf2onnx's own large-model path uses; the
versions are pinned and tests compare it with plain tf2onnx (`route="plain"`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastelectra.bundle import INPUT_NAMES, OUTPUT_NAMES
from fastelectra.errors import InputError, ToolError

log = logging.getLogger(__name__)

OPSET = 17
# tf2onnx optimizers that destroy the patterns onnxruntime's fusion looks for: the einsum
# optimizer decomposes EinsumDense into Reshape/Gemm chains (and adds weight-side ops), the
# global-pool optimizer turns LayerNorm's ReduceMean into GlobalAveragePool.
FUSION_BLOCKING_OPTIMIZERS = ("einsum_optimizer", "global_pool_optimizer")
# Variables at least this large leave the GraphDef; smaller ones stay inline constants.
HOLLOW_MIN_BYTES = 1024
EXTERNAL_ALIGN = 4096


@dataclass
class ExportResult:
    path: Path
    route: str  # "hollow" or "plain"
    weights: int = 0  # tensors streamed to external data
    weight_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def export_onnx(source: Any, out: Path, route: str = "hollow", opset: int = OPSET) -> ExportResult:
    """Write `source` (an `EncoderSource`) as ONNX to `out` (+ `out`.data for weights)."""
    import tensorflow as tf

    concrete = source.inference_function().get_concrete_function()
    outputs = {k: t.name for k, t in concrete.structured_outputs.items()}
    renames = {f"{name}:0": name for name in INPUT_NAMES}
    renames.update({outputs[name]: name for name in OUTPUT_NAMES})
    input_names = [f"{name}:0" for name in INPUT_NAMES]
    output_names = [outputs[name] for name in OUTPUT_NAMES]

    if route == "hollow":
        graph_def, weights = hollow_freeze(concrete)
        weight_inputs = [f"{name}:0" for name in weights]
    elif route == "plain":
        from tf2onnx import tf_loader

        with tf.device("/cpu:0"):
            graph_def = tf_loader.from_function(concrete, input_names, output_names)
        weights, weight_inputs = {}, []
    else:
        raise InputError(f"unknown export route {route!r} (hollow or plain)")

    model = _tf2onnx(graph_def, input_names + weight_inputs, output_names, renames, opset)
    result = ExportResult(out, route)
    _attach_weights(model, weights, out, result)
    return result


def _tf2onnx(graph_def, input_names, output_names, renames, opset):
    import tf2onnx.optimizer
    from tf2onnx import convert

    optimizers = {
        name: opt
        for name, opt in tf2onnx.optimizer._get_optimizers().items()
        if name not in FUSION_BLOCKING_OPTIMIZERS
    }
    with _quiet_tf2onnx():
        model, _ = convert._convert_common(
            graph_def,
            name="fastelectra",
            opset=opset,
            input_names=input_names,
            output_names=output_names,
            tensors_to_rename=renames,
            optimizers=optimizers,
        )
    return model


@contextlib.contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def hollow_freeze(concrete) -> tuple[Any, dict[str, Any]]:
    """Freeze `concrete` with its large variables as Placeholders.

    Returns the GraphDef and `{placeholder name: tf.Variable}` for the weights left out.
    """
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.python.framework import convert_to_constants as c2c
    from tensorflow.python.framework import tensor_shape, tensor_util

    standins: dict[int, Any] = {}  # id(stand-in array) -> variable

    class HollowConverterData(c2c._FunctionConverterDataInEager):
        def _eval(self, tensor):
            dtype = tensor.dtype.as_numpy_dtype
            size = int(np.prod(tensor.shape)) * np.dtype(dtype).itemsize
            if hasattr(tensor, "handle") and size >= HOLLOW_MIN_BYTES:
                # Right shape and dtype, zero bytes: np.broadcast_to gives a 0-stride view.
                standin = np.broadcast_to(np.zeros((), dtype), tuple(tensor.shape))
                standins[id(standin)] = tensor
                return standin
            return tensor.numpy()

    original = tensor_util.make_tensor_proto

    def make_tensor_proto(values, dtype=None, shape=None, *args, **kwargs):
        if id(values) in standins:
            return tensor_pb2.TensorProto(
                dtype=tf_dtype_enum(values.dtype),
                tensor_shape=tensor_shape.as_shape(values.shape).as_proto(),
            )
        return original(values, dtype, shape, *args, **kwargs)

    tensor_util.make_tensor_proto = make_tensor_proto
    try:
        data = HollowConverterData(concrete, lower_control_flow=False, aggressive_inlining=True)
        graph_def, _ = c2c._replace_variables_by_constants(converter_data=data)
    finally:
        tensor_util.make_tensor_proto = original

    weights = {
        name: standins[id(td.numpy)]
        for name, td in data.tensor_data.items()
        if id(td.numpy) in standins
    }
    converted = 0
    for node in graph_def.node:
        if node.op == "Const" and node.name in weights:
            value = node.attr["value"].tensor
            dtype, shape = value.dtype, value.tensor_shape
            node.op = "Placeholder"
            node.ClearField("attr")
            node.attr["dtype"].type = dtype
            node.attr["shape"].shape.CopyFrom(shape)
            converted += 1
    if converted != len(weights):
        raise ToolError(
            f"hollow freeze: {len(weights)} weights left out but {converted} placeholders made; "
            "this TensorFlow version is not supported by the hollow route (use route='plain')"
        )
    return graph_def, weights


def tf_dtype_enum(np_dtype) -> int:
    import tensorflow as tf

    return tf.dtypes.as_dtype(np_dtype).as_datatype_enum


def _attach_weights(model, weights: dict[str, Any], out: Path, result: ExportResult) -> None:
    """Turn weight inputs into initializers streamed into `out`.data, then save `out`."""
    import onnx
    from onnx import helper

    out.parent.mkdir(parents=True, exist_ok=True)
    graph = model.graph
    by_input = {f"{name}:0": var for name, var in weights.items()}
    kept = [i for i in graph.input if i.name not in by_input]
    found = {i.name for i in graph.input} & set(by_input)
    if found != set(by_input):
        missing = sorted(set(by_input) - found)[:5]
        raise ToolError(f"tf2onnx dropped weight inputs {missing}")
    data_name = out.name + ".data"
    offset = 0
    with open(out.parent / data_name, "wb") as data:
        for input_name, var in by_input.items():
            array = np.ascontiguousarray(var.numpy())
            pad = -offset % EXTERNAL_ALIGN
            data.write(b"\0" * pad)
            offset += pad
            tensor = onnx.TensorProto(
                name=input_name,
                data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                dims=array.shape,
                data_location=onnx.TensorProto.EXTERNAL,
            )
            for key, value in (
                ("location", data_name),
                ("offset", str(offset)),
                ("length", str(array.nbytes)),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            data.write(array.tobytes())
            offset += array.nbytes
            graph.initializer.append(tensor)
            result.weights += 1
            result.weight_bytes += array.nbytes
            del array
    del graph.input[:]
    graph.input.extend(kept)
    onnx.save(model, str(out))
