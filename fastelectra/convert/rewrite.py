"""Semantics-preserving graph rewrites that let onnxruntime fuse a tf2onnx-converted encoder.

tf2onnx's output of a TF Models `BertEncoder` matches none of onnxruntime's `bert_tf` fusion
patterns as it stands (FINDINGS.md, "Fusion"). Each class below fixes one blocker, in the
style of onnxruntime's own `Fusion*` classes: find the pattern, rewrite it, count it.

* `CanonicalMask`: the attention mask adder (TF Models: Reshape -> Cast -> BroadcastTo ->
  ExpandDims -> (1 - m) * -1e9; the 2020 export: (1 - ones * m) * -10000) becomes the one
  `bert_tf` knows, Unsqueeze -> Slice -> Cast -> Sub(1) -> Mul(-10000), shared by all layers.
  -10000 and -1e9 both give exp() == 0 in float32 for any row with one unmasked key.
* `EmbeddingOrder`: (word + Expand(position)) + type becomes (word + type) + position, the
  Expand dropped (Add broadcasts the [1, seq, hidden] position slice by itself).
* `ResidualOrder`: the residual Add gets the sublayer output as input 0.
* `ErfcGelu`: exact GELU written with Erfc (TF) becomes onnxruntime's `Gelu`.
* `FirstLayerReshape`: a no-op Reshape between the embedding LayerNorm and the first layer, the
  anchor `bert_tf` needs to fuse layer 0's attention; onnxruntime removes it again.

The rewrites run on the model loaded *without* its external weights: they only read small
inline constants, so they cost a few MB even for ELECTRA-large.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.onnx_model import OnnxModel

log = logging.getLogger(__name__)

# Ops that only move, broadcast or re-type the mask: walking through them keeps its meaning.
_MASK_CARRIERS = {"Unsqueeze", "Reshape", "Cast", "Expand", "Squeeze", "Identity"}


class RewriteError(RuntimeError):
    """The graph does not have the structure the fusion rewrites expect."""


def _const(model: OnnxModel, name: str) -> np.ndarray | None:
    """Value of a small inline constant (initializer or Constant node), else None."""
    init = model.get_initializer(name)
    if init is not None:
        if init.data_location == TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(init)
    return model.get_constant_value(name)


def _scaled_by_constant(
    model: OnnxModel, name: str, producers, op_type: str
) -> list[tuple[onnx.NodeProto, float]]:
    """(node, k) for `name` = Mul(node, k) or Mul(k, node), node of `op_type`, k a scalar."""
    mul = producers.get(name)
    if mul is None or mul.op_type != "Mul":
        return []
    found = []
    for i in (0, 1):
        node = producers.get(mul.input[i])
        scale = _const(model, mul.input[1 - i])
        if node is not None and node.op_type == op_type and scale is not None and scale.size == 1:
            found.append((node, float(scale)))
    return found


class CanonicalMask:
    def __init__(self, model: OnnxModel, mask_input: str = "input_mask"):
        self.model = model
        self.mask_input = mask_input
        self.count = 0
        self._canonical: str | None = None

    def apply(self) -> int:
        producers = self.model.output_name_to_node()
        for softmax in self.model.get_nodes_by_op_type("Softmax"):
            add = producers.get(softmax.input[0])
            if add is None or add.op_type != "Add":
                continue
            for index in (1, 0):
                if self._is_mask_adder(add.input[index], producers):
                    if index == 0:  # bert_tf wants scores at 0, mask at 1
                        add.input[0], add.input[1] = add.input[1], add.input[0]
                    add.input[1] = self._canonical_adder()
                    self.count += 1
                    break
        self.model.prune_graph(allow_remove_graph_inputs=False)
        return self.count

    def _is_mask_adder(self, name: str, producers) -> bool:
        """(c - m) * k or k * (c - m), c == 1, k <= -1000, m a broadcast of the mask input."""
        for sub, scale in _scaled_by_constant(self.model, name, producers, "Sub"):
            one = _const(self.model, sub.input[0])
            if one is None or one.size != 1 or float(one) != 1.0 or scale > -1000.0:
                continue
            if self._reaches_mask(sub.input[1], producers):
                return True
        return False

    def _reaches_mask(self, name: str, producers, depth: int = 0) -> bool:
        if name == self.mask_input:
            return True
        node = producers.get(name)
        if node is None or depth > 12:
            return False
        if node.op_type in _MASK_CARRIERS:
            return self._reaches_mask(node.input[0], producers, depth + 1)
        if node.op_type == "Mul":  # the 2020 export: broadcast_ones * mask
            return any(
                self._reaches_mask(i, producers, depth + 1) and self._other_is_ones(node, i)
                for i in node.input
            )
        return False

    def _other_is_ones(self, mul, mask_side: str) -> bool:
        other = mul.input[1] if mul.input[0] == mask_side else mul.input[0]
        value = _const(self.model, other)
        if value is not None:
            return bool(np.all(value == 1))
        producer = self.model.output_name_to_node().get(other)
        # tf.ones(shape) converts to ConstantOfShape(1) (or Expand of a constant 1).
        if producer is not None and producer.op_type == "ConstantOfShape":
            attr = OnnxModel.get_node_attribute(producer, "value")
            return attr is not None and bool(np.all(numpy_helper.to_array(attr) == 1))
        if producer is not None and producer.op_type in ("Expand", "Cast"):
            return self._other_is_ones(producer, "")
        return False

    def _canonical_adder(self) -> str:
        if self._canonical is not None:
            return self._canonical
        m = self.model
        prefix = "fastelectra_mask"
        inits = {
            f"{prefix}_axes": np.array([1, 2], np.int64),
            f"{prefix}_starts": np.array([0], np.int64),
            f"{prefix}_ends": np.array([np.iinfo(np.int64).max], np.int64),
            f"{prefix}_slice_axes": np.array([0], np.int64),
            f"{prefix}_one": np.array(1.0, np.float32),
            f"{prefix}_adder": np.array(-10000.0, np.float32),
        }
        for name, value in inits.items():
            m.add_initializer(numpy_helper.from_array(value, name))
        nodes = [
            helper.make_node(
                "Unsqueeze",
                [self.mask_input, f"{prefix}_axes"],
                [f"{prefix}_4d"],
                f"{prefix}_unsqueeze",
            ),
            helper.make_node(
                "Slice",
                [f"{prefix}_4d", f"{prefix}_starts", f"{prefix}_ends", f"{prefix}_slice_axes"],
                [f"{prefix}_sliced"],
                f"{prefix}_slice",
            ),
            helper.make_node(
                "Cast",
                [f"{prefix}_sliced"],
                [f"{prefix}_float"],
                f"{prefix}_cast",
                to=TensorProto.FLOAT,
            ),
            helper.make_node(
                "Sub", [f"{prefix}_one", f"{prefix}_float"], [f"{prefix}_inverted"], f"{prefix}_sub"
            ),
            helper.make_node(
                "Mul", [f"{prefix}_inverted", f"{prefix}_adder"], [f"{prefix}_out"], f"{prefix}_mul"
            ),
        ]
        m.add_nodes(nodes)
        self._canonical = f"{prefix}_out"
        return self._canonical


class EmbeddingOrder:
    """Make the embedding sum (word + type) + Reshape(Slice(position table))."""

    def __init__(self, model: OnnxModel, max_positions: int):
        self.model = model
        self.max_positions = max_positions
        self.sum_output: str | None = None

    def apply(self) -> bool:
        m = self.model
        producers = m.output_name_to_node()
        for outer in m.get_nodes_by_op_type("Add"):
            leaves = self._leaves(outer, producers)
            if leaves is None:
                continue
            inner, position, others = leaves
            # `others` are word and type; which is which does not matter for the sum.
            inner.input[0], inner.input[1] = others
            outer.input[0], outer.input[1] = inner.output[0], position
            self.sum_output = outer.output[0]
            m.prune_graph(allow_remove_graph_inputs=False)
            return True
        return False

    def _leaves(self, outer, producers):
        """Match Add(Add(a, b), c) where exactly one of a, b, c is the position embedding."""
        for inner_index in (0, 1):
            inner = producers.get(outer.input[inner_index])
            if inner is None or inner.op_type != "Add":
                continue
            candidates = [inner.input[0], inner.input[1], outer.input[1 - inner_index]]
            positions = [self._position_reshape(c, producers) for c in candidates]
            found = [i for i, p in enumerate(positions) if p is not None]
            if len(found) != 1:
                continue
            others = [c for i, c in enumerate(candidates) if i != found[0]]
            if not all(self._is_table_lookup(o, producers) for o in others):
                continue
            return inner, positions[found[0]], others
        return None

    def _position_reshape(self, name: str, producers) -> str | None:
        """Output of Reshape(Slice(table[max_positions, hidden])), skipping a broadcast Expand."""
        node = producers.get(name)
        if node is not None and node.op_type == "Expand":
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Reshape":
            return None
        sliced = producers.get(node.input[0])
        if sliced is None or sliced.op_type != "Slice":
            return None
        table = self.model.get_initializer(sliced.input[0])
        if table is None or len(table.dims) != 2 or table.dims[0] != self.max_positions:
            return None
        return node.output[0]

    def _is_table_lookup(self, name: str, producers, depth: int = 0) -> bool:
        """Word (Gather) or type (Gather, or OneHot @ table) embedding of a graph input."""
        node = producers.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type in ("Gather", "MatMul"):
            return any(
                (init := self.model.get_initializer(i)) is not None and len(init.dims) == 2
                for i in node.input
            )
        if node.op_type in ("Reshape", "Identity"):
            return self._is_table_lookup(node.input[0], producers, depth + 1)
        return False


class ResidualOrder:
    """Residual Add before each LayerNorm: the sublayer output (Add(MatMul|Einsum, bias)) at 0."""

    def __init__(self, model: OnnxModel):
        self.model = model
        self.count = 0

    def apply(self) -> int:
        producers = self.model.output_name_to_node()
        consumers = self.model.input_name_to_nodes()
        for add in self.model.get_nodes_by_op_type("Add"):
            if not any(c.op_type == "ReduceMean" for c in consumers.get(add.output[0], [])):
                continue  # not the input of a LayerNorm
            if self._is_sublayer(add.input[1], producers) and not self._is_sublayer(
                add.input[0], producers
            ):
                add.input[0], add.input[1] = add.input[1], add.input[0]
                self.count += 1
        return self.count

    def _is_sublayer(self, name: str, producers) -> bool:
        node = producers.get(name)
        if node is None or node.op_type != "Add":
            return False
        return any(
            (p := producers.get(i)) is not None and p.op_type in ("MatMul", "Einsum")
            for i in node.input
        )


class FirstLayerReshape:
    """Insert Reshape(x, [0, -1, hidden]) after the embedding LayerNorm output.

    `bert_tf`'s attention fusion anchors on a LayerNorm / SkipLayerNorm / Reshape parent; the
    embedding LayerNorm becomes EmbedLayerNormalization before attention fusion runs, so layer
    0 would be left unfused. onnxruntime's `remove_reshape_before_first_attention` drops it.
    """

    def __init__(self, model: OnnxModel, embedding_sum: str, hidden: int):
        self.model = model
        self.embedding_sum = embedding_sum
        self.hidden = hidden

    def apply(self) -> bool:
        m = self.model
        layer_norm_output = self._layer_norm_output()
        if layer_norm_output is None:
            return False
        reshaped = "fastelectra_embedding_ln_reshaped"
        shape = "fastelectra_embedding_ln_shape"
        m.replace_input_of_all_nodes(layer_norm_output, reshaped)
        m.add_initializer(numpy_helper.from_array(np.array([0, -1, self.hidden], np.int64), shape))
        m.add_node(helper.make_node("Reshape", [layer_norm_output, shape], [reshaped], reshaped))
        return True

    def _layer_norm_output(self) -> str | None:
        """TF's LayerNorm ends in Add(Mul(x, gamma * rsqrt(var)), beta - mean * ...)."""
        consumers = self.model.input_name_to_nodes()
        for mul in consumers.get(self.embedding_sum, []):
            if mul.op_type != "Mul":
                continue
            for add in consumers.get(mul.output[0], []):
                if add.op_type == "Add":
                    return add.output[0]
        return None


class ErfcGelu:
    """Exact GELU as TF writes it, 0.5 * x * erfc(-x / sqrt(2)), becomes one `Gelu` node.

    onnxruntime's GELU fusion knows the Erf forms only; erfc(-z) == 1 + erf(z), so this is
    the same function. `BiasGelu` fusion later folds the preceding bias Add in.
    """

    def __init__(self, model: OnnxModel):
        self.model = model
        self.count = 0

    def apply(self) -> int:
        m = self.model
        producers = m.output_name_to_node()
        consumers = m.input_name_to_nodes()
        for erfc in m.get_nodes_by_op_type("Erfc"):
            x = self._scaled_negation_input(erfc.input[0], producers)
            if x is None:
                continue
            for mul in consumers.get(erfc.output[0], []):
                if mul.op_type != "Mul":
                    continue
                other = mul.input[1] if mul.input[0] == erfc.output[0] else mul.input[0]
                if not self._is_half_of(other, x, producers):
                    continue
                gelu = helper.make_node(
                    "Gelu", [x], [mul.output[0]], mul.name + "_gelu", domain="com.microsoft"
                )
                m.add_node(gelu, m.get_graph_by_node(mul).name)
                m.remove_node(mul)
                self.count += 1
        if self.count:
            m.prune_graph(allow_remove_graph_inputs=False)
        return self.count

    def _scaled_negation_input(self, name: str, producers) -> str | None:
        """x for Mul(Neg(x), 1/sqrt(2)) in either operand order."""
        for neg, scale in _scaled_by_constant(self.model, name, producers, "Neg"):
            if abs(scale - 0.5**0.5) < 1e-6:
                return neg.input[0]
        return None

    def _is_half_of(self, name: str, x: str, producers) -> bool:
        half = producers.get(name)
        if half is None or half.op_type != "Mul" or x not in half.input:
            return False
        value = _const(self.model, half.input[1] if half.input[0] == x else half.input[0])
        return value is not None and value.size == 1 and abs(float(value) - 0.5) < 1e-7


def rewrite_for_fusion(model: onnx.ModelProto, hidden: int, max_positions: int) -> dict[str, int]:
    """Apply every rewrite in place; returns what each did. Raises RewriteError if one fails."""
    onnx_model = OnnxModel(model)
    report: dict[str, int] = {}
    report["mask"] = CanonicalMask(onnx_model).apply()
    if report["mask"] == 0:
        raise RewriteError("no attention-mask adder found before any Softmax")
    embedding = EmbeddingOrder(onnx_model, max_positions)
    if not embedding.apply() or embedding.sum_output is None:
        raise RewriteError("embedding sum (word + position + type) not found")
    report["embedding"] = 1
    report["residual"] = ResidualOrder(onnx_model).apply()
    if not FirstLayerReshape(onnx_model, embedding.sum_output, hidden).apply():
        raise RewriteError("embedding LayerNorm output not found")
    report["first_layer_reshape"] = 1
    report["erfc_gelu"] = ErfcGelu(onnx_model).apply()
    onnx_model.topological_sort()
    return report


def einsum_output_projection_to_matmul(model: OnnxModel) -> int:
    """After fusion: Reshape(attn, [0, 0, N, D]) -> Einsum('abcd,cde->abe', W[N, D, H]) becomes
    MatMul(attn, W viewed as [N*D, H]), the same bytes. MatMul is faster than Einsum in
    onnxruntime and, unlike Einsum, gets quantised to INT8."""
    producers = model.output_name_to_node()
    count = 0
    for einsum in model.get_nodes_by_op_type("Einsum"):
        equation = OnnxModel.get_node_attribute(einsum, "equation")
        if isinstance(equation, bytes):
            equation = equation.decode()
        if equation != "abcd,cde->abe":
            continue
        reshape = producers.get(einsum.input[0])
        weight = model.get_initializer(einsum.input[1])
        if (
            reshape is None
            or reshape.op_type != "Reshape"
            or weight is None
            or len(weight.dims) != 3
        ):
            continue
        if len(model.input_name_to_nodes().get(weight.name, [])) != 1:
            continue  # shared weight: viewing it differently would change the other user
        heads, head_dim, hidden = weight.dims
        del weight.dims[:]
        weight.dims.extend([heads * head_dim, hidden])
        matmul = helper.make_node(
            "MatMul", [reshape.input[0], weight.name], list(einsum.output), einsum.name + "_matmul"
        )
        model.add_node(matmul, model.get_graph_by_node(einsum).name)
        model.remove_node(einsum)
        count += 1
    if count:
        model.prune_graph(allow_remove_graph_inputs=False)
        model.topological_sort()
    return count
