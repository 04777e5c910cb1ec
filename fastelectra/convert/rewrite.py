"""Semantics-preserving graph rewrites that let onnxruntime fuse a tf2onnx-converted encoder.

tf2onnx's output of a TF Models encoder matches none of onnxruntime's `bert_tf` fusion patterns
as it stands, and each generation of TF Models writes the encoder a little differently
(docs/generations.md). Each class below has one job, in the style of onnxruntime's `Fusion`
classes: bring one construct into the form `bert_tf` matches, whichever form the generation
wrote. Every rewrite follows one protocol:

* `apply() -> int` counts the places where the construct is in the fusable form afterwards,
  whether the rewrite changed them or found them so;
* `required` is the count it must reach for the model's layers (one mask adder per
  layer, one embedding sum per model, ...);
* a rewrite that falls short fails the build with `RewriteError`, naming the rewrite, the
  layers it missed and the node pattern it looked for (`check()`).

Pre-fusion (`rewrite_for_fusion`): `AttentionMask`, `AttentionEinsumLetters`, `AttentionScaleOnQuery`,
`PositionEmbedding`, `EmbeddingOrder`, `ResidualOrder`, `FirstLayerReshape`, `ErfcGelu`.
Post-fusion (`fuse.py`): `EinsumOutputProjection`.

The rewrites run on the model loaded *without* its external weights: they only read small
inline constants, so they cost a few MB even for ELECTRA-large.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.onnx_model import OnnxModel

from fastelectra.bundle import Dimensions
from fastelectra.errors import FastElectraError

# Ops that only move, broadcast or re-type the mask: walking through them keeps its meaning.
_MASK_CARRIERS = {"Unsqueeze", "Reshape", "Cast", "Expand", "Squeeze", "Identity"}
# TF Models names every transformer block's ops `.../layer_<i>/...` (`transformer/layer_<i>`).
_LAYER_IN_NAME = re.compile(r"(?:^|/)(?:transformer/)?layer_(\d+)/")
# TF Models' self-attention scores: einsum(key, query) -> [batch, heads, from, to], and the
# context: einsum(probabilities, value) -> [batch, from, heads, head_dim].
QK_EQUATION = "aecd,abcd->acbe"
CONTEXT_EQUATION = "acbe,aecd->abcd"


class RewriteError(FastElectraError, RuntimeError):
    """The graph does not have the structure the fusion rewrites expect."""


def layer_of(node: onnx.NodeProto) -> int | None:
    """The transformer layer a node belongs to, read from its TF scope name."""
    found = _LAYER_IN_NAME.search(node.name)
    return int(found.group(1)) if found else None


class Rewrite:
    """Base of the rewrites: the protocol of the module docstring."""

    name: ClassVar[str]
    looks_for: ClassVar[str]  # the node pattern, for the error that names it

    def __init__(self, model: OnnxModel, dims: Dimensions):
        self.model = model
        self.dims = dims
        self.count = 0
        self.layers: set[int] = set()  # layers where the construct was found fusable

    @property
    def per_layer(self) -> int:
        """How many of the construct each layer holds."""
        return 1

    @property
    def required(self) -> int:
        """The count `apply` must reach: `per_layer` in every layer, unless overridden."""
        return self.dims.layers * self.per_layer

    def apply(self) -> int:
        raise NotImplementedError

    def found(self, node: onnx.NodeProto) -> None:
        self.count += 1
        layer = layer_of(node)
        if layer is not None:
            self.layers.add(layer)

    def run(self, report: dict[str, dict[str, int]], *, check: bool = True) -> Rewrite:
        """Apply, check (unless `check=False`: a partial fusion on purpose) and record the
        figures in `report` as `{name: {"count": n, "required": r}}`: the one runner."""
        self.apply()
        count = self.check() if check else self.count
        report[self.name] = {"count": count, "required": self.required}
        return self

    def check(self) -> int:
        """`count` if it reached `required`, else a RewriteError naming what is missing."""
        if self.count == self.required:
            return self.count
        where = ""
        if self.required == self.dims.layers * self.per_layer and self.dims.layers > 1:
            missing = sorted(set(range(self.dims.layers)) - self.layers)
            if missing:
                where = f" (not found in layer {', '.join(map(str, missing))})"
        raise RewriteError(
            f"rewrite {self.name}: matched {self.count} of {self.required}{where}; "
            f"it looks for {self.looks_for}. This graph form is not supported: "
            "see docs/generations.md"
        )


def _const(model: OnnxModel, name: str) -> np.ndarray | None:
    """Value of a small inline constant (initializer or Constant node), else None."""
    init = model.get_initializer(name)
    if init is not None:
        if init.data_location == TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(init)
    return model.get_constant_value(name)


def _scalar(model: OnnxModel, name: str) -> float | None:
    value = _const(model, name)
    return float(value) if value is not None and value.size == 1 else None


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
        scale = _scalar(model, mul.input[1 - i])
        if node is not None and node.op_type == op_type and scale is not None:
            found.append((node, scale))
    return found


def _equation(node: onnx.NodeProto) -> str | None:
    equation = OnnxModel.get_node_attribute(node, "equation")
    return equation.decode() if isinstance(equation, bytes) else equation


class AttentionMask(Rewrite):
    """Every Softmax's mask adder becomes the one `bert_tf` knows, shared by all layers:
    Unsqueeze -> Slice -> Cast -> Sub(1) -> Mul(-10000), at input 1 of the scores' Add.

    TF Models 2.20 writes Reshape -> Cast -> BroadcastTo -> ExpandDims -> (1 - m) * -1e9; the
    2020 export (1 - ones * m) * -10000. -10000 and -1e9 both give exp() == 0 in float32 for
    any row with one unmasked key.
    """

    name = "attention_mask"
    looks_for = "Softmax(Add(scores, Mul(Sub(1, broadcast of input_mask), k <= -1000)))"

    def __init__(self, model: OnnxModel, dims: Dimensions, mask_input: str = "input_mask"):
        super().__init__(model, dims)
        self.mask_input = mask_input
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
                    self.found(softmax)
                    break
        self.model.prune_graph(allow_remove_graph_inputs=False)
        return self.count

    def _is_mask_adder(self, name: str, producers) -> bool:
        """(c - m) * k or k * (c - m), c == 1, k <= -1000, m a broadcast of the mask input."""
        if name == self._canonical:
            return True
        for sub, scale in _scaled_by_constant(self.model, name, producers, "Sub"):
            if _scalar(self.model, sub.input[0]) != 1.0 or scale > -1000.0:
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


def canonical_letters(equation: str) -> str:
    """The einsum equation with its letters renamed in order of first appearance."""
    names: dict[str, str] = {}
    for ch in equation:
        if ch.isalpha() and ch not in names:
            names[ch] = chr(ord("a") + len(names))
    return "".join(names.get(ch, ch) for ch in equation)


class AttentionEinsumLetters(Rewrite):
    """The attention einsums spelt as TF Models 2.3+ spells them. The same products, other
    letters: tf-models-official 2.2 writes 'btnh,bfnh->bnft' and 'bnft,btnh->bfnh'. Two per
    layer (scores and context)."""

    name = "attention_einsum_letters"
    looks_for = f"Einsum equations equal to '{QK_EQUATION}' and '{CONTEXT_EQUATION}' up to letters"

    @property
    def per_layer(self) -> int:
        return 2

    def apply(self) -> int:
        wanted = {canonical_letters(e): e for e in (QK_EQUATION, CONTEXT_EQUATION)}
        for einsum in self.model.get_nodes_by_op_type("Einsum"):
            spelt = wanted.get(canonical_letters(_equation(einsum) or ""))
            if spelt is None:
                continue
            for attr in einsum.attribute:
                if attr.name == "equation":
                    attr.s = spelt.encode()
            self.found(einsum)
        return self.count


class AttentionScaleOnQuery(Rewrite):
    """The 1/sqrt(head_dim) scale on the query, before the QK einsum, as `bert_tf` matches it.

    TF Models 2.20 scales the query; the 2020 `TransformerEncoder` scales the scores after the
    einsum: Mul(Einsum(k, q), s) becomes Einsum(k, Mul(q, s)), the same product.
    """

    name = "attention_scale_on_query"
    looks_for = (
        f"Einsum('{QK_EQUATION}', key, Mul(query, scalar)) or Mul(Einsum('{QK_EQUATION}'), scalar)"
    )

    def apply(self) -> int:
        m = self.model
        producers = m.output_name_to_node()
        consumers = m.input_name_to_nodes()
        for einsum in m.get_nodes_by_op_type("Einsum"):
            if _equation(einsum) != QK_EQUATION:
                continue
            if _scaled_by_constant(m, einsum.input[1], producers, "Add"):
                self.found(einsum)  # already on the query
                continue
            users = consumers.get(einsum.output[0], [])
            if len(users) != 1 or users[0].op_type != "Mul":
                continue
            mul = users[0]
            scale = mul.input[1] if mul.input[0] == einsum.output[0] else mul.input[0]
            if _scalar(m, scale) is None:
                continue
            scaled = einsum.name + "_scaled_query"
            m.add_node(helper.make_node("Mul", [einsum.input[1], scale], [scaled], scaled))
            einsum.input[1] = scaled
            m.remove_node(mul)
            einsum.output[0] = mul.output[0]  # the scores keep their name for every reader
            self.found(einsum)
        return self.count


class PositionEmbedding(Rewrite):
    """The position embedding as `bert_tf` matches it: Reshape(Slice(table)) straight into the
    embedding sum, no broadcast.

    TF Models 2.20 writes Reshape(Slice(table)) -> Expand; 2.3 Slice(table) -> BroadcastTo
    (Expand) with no Reshape; 2.2 Slice(table) -> ExpandDims(0) (Unsqueeze). Add broadcasts a
    [1, seq, hidden] slice by itself.
    """

    name = "position_embedding"
    looks_for = (
        "Slice(table[max_positions, hidden]) -> Reshape | Unsqueeze(axis 0) | Expand "
        "[-> Expand] into the embedding sum"
    )

    @property
    def required(self) -> int:
        return 1

    def apply(self) -> int:
        m = self.model
        consumers = m.input_name_to_nodes()
        for sliced in m.get_nodes_by_op_type("Slice"):
            table = m.get_initializer(sliced.input[0])
            if table is None or list(table.dims) != [self.dims.max_positions, self.dims.hidden]:
                continue
            users = consumers.get(sliced.output[0], [])
            if len(users) != 1 or not self._is_carrier(users[0]):
                continue
            if users[0].op_type == "Reshape":
                reshaped = users[0].output[0]
            else:
                reshaped = self._add_reshape(sliced)
            for carrier in m.input_name_to_nodes().get(reshaped, []):
                if carrier.op_type != "Reshape" and self._is_carrier(carrier):
                    m.replace_input_of_all_nodes(carrier.output[0], reshaped)
            self.found(sliced)
            m.prune_graph(allow_remove_graph_inputs=False)
            break
        return self.count

    def _is_carrier(self, node: onnx.NodeProto) -> bool:
        """Reshape, Expand (BroadcastTo) or Unsqueeze at axis 0: what only adds the batch axis."""
        if node.op_type in ("Reshape", "Expand"):
            return True
        if node.op_type == "Unsqueeze" and len(node.input) > 1:
            axes = _const(self.model, node.input[1])
            return axes is not None and axes.tolist() in ([0], 0)
        return False

    def _add_reshape(self, sliced: onnx.NodeProto) -> str:
        shape = "fastelectra_position_shape"
        out = "fastelectra_position_reshaped"
        self.model.add_initializer(
            numpy_helper.from_array(np.array([1, -1, self.dims.hidden], np.int64), shape)
        )
        self.model.replace_input_of_all_nodes(sliced.output[0], out)
        self.model.add_node(helper.make_node("Reshape", [sliced.output[0], shape], [out], out))
        return out


class EmbeddingOrder(Rewrite):
    """The embedding sum as (word + type) + position, position at input 1 of the outer Add.

    Both generations write (word + position) + type.
    """

    name = "embedding_sum_order"
    looks_for = "Add(Add(a, b), c): one of a, b, c Reshape(Slice(position table)), two lookups"

    def __init__(self, model: OnnxModel, dims: Dimensions):
        super().__init__(model, dims)
        self.sum_output: str | None = None

    @property
    def required(self) -> int:
        return 1

    def apply(self) -> int:
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
            self.found(outer)
            m.prune_graph(allow_remove_graph_inputs=False)
            break
        return self.count

    def _leaves(self, outer, producers):
        """Match Add(Add(a, b), c) where exactly one of a, b, c is the position embedding."""
        for inner_index in (0, 1):
            inner = producers.get(outer.input[inner_index])
            if inner is None or inner.op_type != "Add":
                continue
            candidates = [inner.input[0], inner.input[1], outer.input[1 - inner_index]]
            positions = [self._is_position(c, producers) for c in candidates]
            if positions.count(True) != 1:
                continue
            found = positions.index(True)
            others = [c for i, c in enumerate(candidates) if i != found]
            if not all(self._is_table_lookup(o, producers) for o in others):
                continue
            return inner, candidates[found], others
        return None

    def _is_position(self, name: str, producers) -> bool:
        node = producers.get(name)
        if node is None or node.op_type != "Reshape":
            return False
        sliced = producers.get(node.input[0])
        if sliced is None or sliced.op_type != "Slice":
            return False
        table = self.model.get_initializer(sliced.input[0])
        return (
            table is not None and len(table.dims) == 2 and table.dims[0] == self.dims.max_positions
        )

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


class ResidualOrder(Rewrite):
    """Residual Add before each LayerNorm: the sublayer output (Add(MatMul|Einsum, bias)) at
    input 0, as `bert_tf`'s SkipLayerNorm and Attention fusions expect. Two per layer."""

    name = "residual_operand_order"
    looks_for = "Add(x, Add(MatMul|Einsum, bias)) feeding a LayerNorm's ReduceMean"

    @property
    def per_layer(self) -> int:
        return 2

    def apply(self) -> int:
        producers = self.model.output_name_to_node()
        consumers = self.model.input_name_to_nodes()
        for add in self.model.get_nodes_by_op_type("Add"):
            if not any(c.op_type == "ReduceMean" for c in consumers.get(add.output[0], [])):
                continue  # not the input of a LayerNorm
            first, second = (self._is_sublayer(i, producers) for i in add.input)
            if second and not first:
                add.input[0], add.input[1] = add.input[1], add.input[0]
            if first or second:
                self.found(add)
        return self.count

    def _is_sublayer(self, name: str, producers) -> bool:
        node = producers.get(name)
        if node is None or node.op_type != "Add":
            return False
        return any(
            (p := producers.get(i)) is not None and p.op_type in ("MatMul", "Einsum")
            for i in node.input
        )


class FirstLayerReshape(Rewrite):
    """Insert Reshape(x, [0, -1, hidden]) after the embedding LayerNorm output.

    `bert_tf`'s attention fusion anchors on a LayerNorm / SkipLayerNorm / Reshape parent; the
    embedding LayerNorm becomes EmbedLayerNormalization before attention fusion runs, so layer
    0 would be left unfused. onnxruntime's `remove_reshape_before_first_attention` drops it.
    """

    name = "first_layer_reshape"
    looks_for = "Add(Mul(embedding sum, gamma * rsqrt(var)), beta - mean * ...) (TF LayerNorm)"

    def __init__(self, model: OnnxModel, dims: Dimensions, embedding_sum: str | None):
        super().__init__(model, dims)
        self.embedding_sum = embedding_sum

    @property
    def required(self) -> int:
        return 1

    def apply(self) -> int:
        m = self.model
        layer_norm = self._layer_norm_output()
        if layer_norm is None:
            return self.count
        reshaped = "fastelectra_embedding_ln_reshaped"
        shape = "fastelectra_embedding_ln_shape"
        m.replace_input_of_all_nodes(layer_norm.output[0], reshaped)
        m.add_initializer(
            numpy_helper.from_array(np.array([0, -1, self.dims.hidden], np.int64), shape)
        )
        m.add_node(helper.make_node("Reshape", [layer_norm.output[0], shape], [reshaped], reshaped))
        self.found(layer_norm)
        return self.count

    def _layer_norm_output(self) -> onnx.NodeProto | None:
        """TF's LayerNorm ends in Add(Mul(x, gamma * rsqrt(var)), beta - mean * ...)."""
        consumers = self.model.input_name_to_nodes()
        for mul in consumers.get(self.embedding_sum or "", []):
            if mul.op_type != "Mul":
                continue
            for add in consumers.get(mul.output[0], []):
                if add.op_type == "Add":
                    return add
        return None


class ErfcGelu(Rewrite):
    """Exact GELU as TF writes it, 0.5 * x * erfc(-x / sqrt(2)), becomes one `Gelu` node.

    onnxruntime's GELU fusion knows the Erf forms only; erfc(-z) == 1 + erf(z), so this is
    the same function. `BiasGelu` fusion later folds the preceding bias Add in. Required: every
    Erfc the graph holds (none in a tanh-GELU model).
    """

    name = "erfc_gelu"
    looks_for = "Mul(Mul(x, 0.5), Erfc(Mul(Neg(x), 1/sqrt(2))))"

    def __init__(self, model: OnnxModel, dims: Dimensions):
        super().__init__(model, dims)
        self._required = len(model.get_nodes_by_op_type("Erfc"))

    @property
    def required(self) -> int:
        return self._required

    @property
    def per_layer(self) -> int:
        return self._required // max(self.dims.layers, 1)

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
                self.found(erfc)
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
        value = _scalar(self.model, half.input[1] if half.input[0] == x else half.input[0])
        return value is not None and abs(value - 0.5) < 1e-7


class EinsumOutputProjection(Rewrite):
    """After fusion: Reshape(attn, [0, 0, N, D]) -> Einsum('abcd,cde->abe', W[N, D, H])
    becomes MatMul(attn, W viewed as [N*D, H]), the same bytes. MatMul is faster than Einsum
    in onnxruntime and, unlike Einsum, gets quantised to INT8. One per layer."""

    name = "einsum_output_projection_to_matmul"
    looks_for = "Einsum('abcd,cde->abe', Reshape(attention), W[heads, head_dim, hidden])"

    def apply(self) -> int:
        model = self.model
        producers = model.output_name_to_node()
        for einsum in model.get_nodes_by_op_type("Einsum"):
            if _equation(einsum) != "abcd,cde->abe":
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
                "MatMul",
                [reshape.input[0], weight.name],
                list(einsum.output),
                einsum.name + "_matmul",
            )
            model.add_node(matmul, model.get_graph_by_node(einsum).name)
            model.remove_node(einsum)
            self.found(einsum)
        if self.count:
            model.prune_graph(allow_remove_graph_inputs=False)
            model.topological_sort()
        return self.count


def rewrite_for_fusion(model: onnx.ModelProto, dims: Dimensions) -> dict[str, dict[str, int]]:
    """Apply every pre-fusion rewrite in place, each checked against its required count.

    Returns `{name: {"count": n, "required": r}}`; raises RewriteError at the first rewrite
    that falls short.
    """
    onnx_model = OnnxModel(model)
    report: dict[str, dict[str, int]] = {}
    AttentionMask(onnx_model, dims).run(report)
    AttentionEinsumLetters(onnx_model, dims).run(report)
    AttentionScaleOnQuery(onnx_model, dims).run(report)
    PositionEmbedding(onnx_model, dims).run(report)
    embedding = EmbeddingOrder(onnx_model, dims)
    embedding.run(report)
    ResidualOrder(onnx_model, dims).run(report)
    FirstLayerReshape(onnx_model, dims, embedding.sum_output).run(report)
    ErfcGelu(onnx_model, dims).run(report)
    onnx_model.topological_sort()
    return report
