"""Each fusion rewrite on a hand-made one-layer ONNX graph: the form each TF Models generation
writes goes in, the form onnxruntime's `bert_tf` fusion matches comes out, and onnxruntime
computes the same numbers before and after. No TensorFlow module is built here."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.onnx_model import OnnxModel

from fastelectra.bundle import Dimensions
from fastelectra.convert.rewrite import (
    QK_EQUATION,
    AttentionEinsumLetters,
    AttentionMask,
    AttentionScaleOnQuery,
    EinsumOutputProjection,
    EmbeddingOrder,
    ErfcGelu,
    PositionEmbedding,
    ResidualOrder,
    RewriteError,
    canonical_letters,
)

DIMS = Dimensions(
    layers=1, hidden=8, heads=2, intermediate=16, vocab_size=50, max_positions=16, type_vocab_size=2
)
B, T, N, D, H = 2, 5, 2, 4, 8
RNG = np.random.default_rng(0)
L0 = "transformer/layer_0/"


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(inits),
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def rewritten(m: onnx.ModelProto, rewrite_cls, *args) -> tuple[onnx.ModelProto, object]:
    copy = onnx.ModelProto()
    copy.CopyFrom(m)
    wrapped = OnnxModel(copy)
    rewrite = rewrite_cls(wrapped, DIMS, *args)
    rewrite.apply()
    wrapped.topological_sort()
    return copy, rewrite


def ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def f32(*shape) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


# --- attention mask --------------------------------------------------------------------------


def mask_2020() -> onnx.ModelProto:
    """tf-models-official 2.2/2.3: (1 - Unsqueeze(ones[B,T,1] * Cast(Reshape(mask)))) * -10000."""
    n = helper.make_node
    nodes = [
        n("Shape", ["input_mask"], ["shape"]),
        n("Concat", ["shape", "one_dim"], ["ones_shape"], axis=0),
        n("ConstantOfShape", ["ones_shape"], ["ones"], value=helper.make_tensor("v", 1, [1], [1])),
        n("Reshape", ["input_mask", "mask_shape"], ["mask_r"]),
        n("Cast", ["mask_r"], ["mask_f"], to=TensorProto.FLOAT),
        n("Mul", ["ones", "mask_f"], ["mask_3d"]),
        n("Unsqueeze", ["mask_3d", "axis1"], ["mask_4d"]),
        n("Sub", ["one", "mask_4d"], ["inverted"]),
        n("Mul", ["inverted", "minus_10k"], ["adder"]),
        n("Add", ["scores", "adder"], ["masked"], name=L0 + "masked_softmax/add"),
        n("Softmax", ["masked"], ["probs"], name=L0 + "masked_softmax/Softmax", axis=-1),
    ]
    inits = [
        const("one_dim", np.array([1], np.int64)),
        const("mask_shape", np.array([0, 1, -1], np.int64)),
        const("axis1", np.array([1], np.int64)),
        const("one", np.float32(1.0)),
        const("minus_10k", np.float32(-10000.0)),
    ]
    inputs = [("input_mask", TensorProto.INT32), ("scores", TensorProto.FLOAT)]
    return model(nodes, inputs, ["probs"], inits)


def mask_2025() -> onnx.ModelProto:
    """TF Models 2.20: ExpandDims(BroadcastTo(Cast(Reshape(mask)))), (1 - m) * -1e9, mask first."""
    n = helper.make_node
    nodes = [
        n("Reshape", ["input_mask", "mask_shape"], ["mask_r"]),
        n("Cast", ["mask_r"], ["mask_f"], to=TensorProto.FLOAT),
        n("Expand", ["mask_f", "full_shape"], ["mask_3d"]),
        n("Unsqueeze", ["mask_3d", "axis"], ["mask_4d"]),
        n("Sub", ["one", "mask_4d"], ["inverted"]),
        n("Mul", ["minus_1e9", "inverted"], ["adder"]),
        n("Add", ["adder", "scores"], ["masked"], name=L0 + "softmax/add"),
        n("Softmax", ["masked"], ["probs"], name=L0 + "softmax/Softmax", axis=-1),
    ]
    inits = [
        const("mask_shape", np.array([0, 1, -1], np.int64)),
        const("full_shape", np.array([B, T, T], np.int64)),
        const("axis", np.array([-3], np.int64)),
        const("one", np.float32(1.0)),
        const("minus_1e9", np.float32(-1e9)),
    ]
    inputs = [("input_mask", TensorProto.INT32), ("scores", TensorProto.FLOAT)]
    return model(nodes, inputs, ["probs"], inits)


@pytest.mark.parametrize("form", [mask_2020, mask_2025], ids=["2020", "2025"])
def test_attention_mask_becomes_the_canonical_adder(form):
    before = form()
    after, rewrite = rewritten(before, AttentionMask)
    assert rewrite.check() == 1
    softmax_add = next(n for n in after.graph.node if n.op_type == "Add")
    assert softmax_add.input == ["scores", "fastelectra_mask_out"]  # scores at 0, mask at 1
    assert "ConstantOfShape" not in ops(after) and "Expand" not in ops(after)
    mask = np.ones((B, T), np.int32)
    mask[1, 3:] = 0
    feeds = {"input_mask": mask, "scores": f32(B, N, T, T)}
    np.testing.assert_allclose(run(after, feeds)[0], run(before, feeds)[0], atol=1e-7)


def test_a_mask_adder_that_is_not_large_and_negative_is_left_alone():
    m = mask_2020()
    next(i for i in m.graph.initializer if i.name == "minus_10k").CopyFrom(
        const("minus_10k", np.float32(-10.0))
    )
    _, rewrite = rewritten(m, AttentionMask)
    with pytest.raises(RewriteError, match=r"attention_mask: matched 0 of 1.*Softmax\(Add"):
        rewrite.check()


# --- attention einsums and scale -------------------------------------------------------------


def attention_scores(equation: str, scale_after: bool) -> onnx.ModelProto:
    """Scores of one layer: Einsum(key, query) scaled after (2020) or query scaled before."""
    n = helper.make_node
    nodes = [
        n("Einsum", ["x", "wq"], ["q_e"], equation="abc,cde->abde"),
        n("Add", ["q_e", "bq"], ["q"], name=L0 + "query/add"),
        n("Einsum", ["x", "wk"], ["k_e"], equation="abc,cde->abde"),
        n("Add", ["k_e", "bk"], ["k"], name=L0 + "key/add"),
    ]
    if scale_after:
        nodes += [
            n("Einsum", ["k", "q"], ["qk"], name=L0 + "einsum/Einsum", equation=equation),
            n("Mul", ["qk", "scale"], ["scores"], name=L0 + "Mul"),
        ]
    else:
        nodes += [
            n("Mul", ["q", "scale"], ["q_scaled"], name=L0 + "Mul"),
            n(
                "Einsum",
                ["k", "q_scaled"],
                ["scores"],
                name=L0 + "einsum/Einsum",
                equation=equation,
            ),
        ]
    inits = [
        const("wq", f32(H, N, D)),
        const("bq", f32(N, D)),
        const("wk", f32(H, N, D)),
        const("bk", f32(N, D)),
        const("scale", np.float32(1 / np.sqrt(D))),
    ]
    return model(nodes, [("x", TensorProto.FLOAT)], ["scores"], inits)


def test_einsum_letters_of_tf_models_2_2_are_respelt():
    before = attention_scores("btnh,bfnh->bnft", scale_after=True)
    assert canonical_letters("btnh,bfnh->bnft") == canonical_letters(QK_EQUATION)
    after, rewrite = rewritten(before, AttentionEinsumLetters)
    assert rewrite.count == 1  # the context einsum is absent from this graph
    qk = next(n for n in after.graph.node if n.name.endswith("einsum/Einsum"))
    assert OnnxModel.get_node_attribute(qk, "equation") == QK_EQUATION.encode()
    feeds = {"x": f32(B, T, H)}
    np.testing.assert_allclose(run(after, feeds)[0], run(before, feeds)[0], rtol=1e-5)


def test_scale_after_the_scores_moves_onto_the_query():
    before = attention_scores(QK_EQUATION, scale_after=True)
    after, rewrite = rewritten(before, AttentionScaleOnQuery)
    assert rewrite.check() == 1 and rewrite.layers == {0}
    qk = next(n for n in after.graph.node if n.op_type == "Einsum" and n.name.endswith("Einsum"))
    producers = OnnxModel(after).output_name_to_node()
    scaled = producers[qk.input[1]]
    assert scaled.op_type == "Mul" and producers[scaled.input[0]].op_type == "Add"  # bert_tf's path
    assert qk.output[0] == "scores"  # the Mul after the einsum is gone
    feeds = {"x": f32(B, T, H)}
    np.testing.assert_allclose(run(after, feeds)[0], run(before, feeds)[0], rtol=1e-5, atol=1e-6)


def test_scale_already_on_the_query_counts_and_changes_nothing():
    before = attention_scores(QK_EQUATION, scale_after=False)
    after, rewrite = rewritten(before, AttentionScaleOnQuery)
    assert rewrite.check() == 1
    assert ops(after) == ops(before)


def test_scale_rewrite_short_of_a_layer_names_it():
    before = attention_scores("abcd,aecd->acbe", scale_after=True)  # a form nobody wrote
    _, rewrite = rewritten(before, AttentionScaleOnQuery)
    with pytest.raises(RewriteError, match="attention_scale_on_query: matched 0 of 1") as e:
        rewrite.check()
    assert QK_EQUATION in str(e.value) and "docs/generations.md" in str(e.value)


def test_a_rewrite_names_the_layers_it_missed():
    dims = Dimensions(**{**DIMS.__dict__, "layers": 3})
    rewrite = AttentionScaleOnQuery(OnnxModel(attention_scores(QK_EQUATION, True)), dims)
    rewrite.apply()
    with pytest.raises(RewriteError, match=r"matched 1 of 3 \(not found in layer 1, 2\)"):
        rewrite.check()


# --- embeddings -------------------------------------------------------------------------------


def embeddings(position: str) -> onnx.ModelProto:
    """(word + position) + type, the position slice as each generation writes it."""
    n = helper.make_node
    nodes = [
        n("Gather", ["word_table", "input_word_ids"], ["word"]),
        n("Gather", ["type_table", "segment_ids"], ["type"]),
        n("Slice", ["pos_table", "starts", "ends", "axes"], ["pos_slice"]),
    ]
    if position == "reshape+expand":  # TF Models 2.20
        nodes += [
            n("Reshape", ["pos_slice", "pos_shape"], ["pos_r"]),
            n("Expand", ["pos_r", "full_shape"], ["pos"]),
        ]
    elif position == "expand":  # 2.3 (BroadcastTo)
        nodes += [n("Expand", ["pos_slice", "full_shape"], ["pos"])]
    elif position == "unsqueeze":  # 2.2 (ExpandDims(0))
        nodes += [n("Unsqueeze", ["pos_slice", "axis0"], ["pos"])]
    nodes += [
        n("Add", ["word", "pos"], ["word_pos"]),
        n("Add", ["word_pos", "type"], ["summed"]),
    ]
    inits = [
        const("word_table", f32(DIMS.vocab_size, H)),
        const("type_table", f32(2, H)),
        const("pos_table", f32(DIMS.max_positions, H)),
        const("starts", np.array([0], np.int64)),
        const("ends", np.array([T], np.int64)),
        const("axes", np.array([0], np.int64)),
        const("pos_shape", np.array([1, T, H], np.int64)),
        const("full_shape", np.array([B, T, H], np.int64)),
        const("axis0", np.array([0], np.int64)),
    ]
    inputs = [("input_word_ids", TensorProto.INT32), ("segment_ids", TensorProto.INT32)]
    return model(nodes, inputs, ["summed"], inits)


def embedding_feeds() -> dict[str, np.ndarray]:
    ids = RNG.integers(0, DIMS.vocab_size, (B, T)).astype(np.int32)
    return {"input_word_ids": ids, "segment_ids": (ids % 2).astype(np.int32)}


@pytest.mark.parametrize("position", ["reshape+expand", "expand", "unsqueeze"])
def test_position_embedding_becomes_a_reshaped_slice_then_the_sum_is_reordered(position):
    before = embeddings(position)
    after, rewrite = rewritten(before, PositionEmbedding)
    assert rewrite.check() == 1
    assert "Expand" not in ops(after) and "Unsqueeze" not in ops(after)
    producers = OnnxModel(after).output_name_to_node()
    outer = producers["summed"]
    reshape = next(
        producers[i] for i in producers["word_pos"].input if producers[i].op_type != "Gather"
    )
    assert reshape.op_type == "Reshape" and producers[reshape.input[0]].op_type == "Slice"

    ordered, order = rewritten(after, EmbeddingOrder)
    assert order.check() == 1 and order.sum_output == "summed"
    producers = OnnxModel(ordered).output_name_to_node()
    outer = producers["summed"]
    inner = producers[outer.input[0]]
    assert producers[outer.input[1]].op_type == "Reshape"  # (word + type) + position
    assert {producers[i].op_type for i in inner.input} == {"Gather"}
    feeds = embedding_feeds()
    np.testing.assert_allclose(run(ordered, feeds)[0], run(before, feeds)[0], atol=1e-6)


def test_an_unknown_position_path_fails_naming_the_pattern():
    before = embeddings("unsqueeze")
    axis = next(i for i in before.graph.initializer if i.name == "axis0")
    axis.CopyFrom(const("axis0", np.array([1], np.int64)))  # not the batch axis
    _, rewrite = rewritten(before, PositionEmbedding)
    with pytest.raises(RewriteError, match=r"position_embedding: matched 0 of 1.*Slice\(table"):
        rewrite.check()


# --- residuals, GELU, output projection -------------------------------------------------------


def test_residual_add_gets_the_sublayer_output_first():
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w"], ["mm"]),
        n("Add", ["mm", "b"], ["sublayer"]),
        n("Add", ["x", "sublayer"], ["residual"], name=L0 + "add"),  # 2020 and 2025 alike
        n("ReduceMean", ["residual"], ["mean"], axes=[-1]),
        n("MatMul", ["x", "w"], ["mm2"]),
        n("Add", ["mm2", "b"], ["sublayer2"]),
        n("Add", ["sublayer2", "x"], ["residual2"], name=L0 + "add_1"),  # already in order
        n("ReduceMean", ["residual2"], ["mean2"], axes=[-1]),
    ]
    before = model(
        nodes,
        [("x", TensorProto.FLOAT)],
        ["mean", "mean2"],
        [const("w", f32(H, H)), const("b", f32(H))],
    )
    after, rewrite = rewritten(before, ResidualOrder)
    assert rewrite.check() == 2  # two per layer, one swapped, one found so
    adds = {n.name: list(n.input) for n in after.graph.node if n.name.startswith(L0)}
    assert adds == {L0 + "add": ["sublayer", "x"], L0 + "add_1": ["sublayer2", "x"]}


def test_erfc_gelu_becomes_gelu():
    n = helper.make_node
    nodes = [
        n("Neg", ["x"], ["neg"]),
        n("Mul", ["neg", "inv_sqrt2"], ["z"]),
        n("Erfc", ["z"], ["erfc"]),
        n("Mul", ["x", "half"], ["half_x"]),
        n("Mul", ["half_x", "erfc"], ["y"], name=L0 + "activation/mul"),
    ]
    inits = [const("inv_sqrt2", np.float32(0.5**0.5)), const("half", np.float32(0.5))]
    before = model(nodes, [("x", TensorProto.FLOAT)], ["y"], inits)
    after, rewrite = rewritten(before, ErfcGelu)
    assert rewrite.required == 1 and rewrite.check() == 1
    assert ops(after) == ["Gelu"]
    x = f32(B, T, H)
    expected = 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    np.testing.assert_allclose(run(after, {"x": x})[0], expected, atol=1e-6)


def test_a_tanh_gelu_model_requires_no_erfc_rewrite():
    before = attention_scores(QK_EQUATION, scale_after=False)
    _, rewrite = rewritten(before, ErfcGelu)
    assert rewrite.required == 0 and rewrite.check() == 0


def test_einsum_output_projection_becomes_matmul_on_the_same_bytes():
    n = helper.make_node
    w = f32(N, D, H)
    nodes = [
        n("Reshape", ["attention", "heads_shape"], ["heads"]),
        n(
            "Einsum",
            ["heads", "w"],
            ["y"],
            name=L0 + "attention_output/einsum/Einsum",
            equation="abcd,cde->abe",
        ),
    ]
    inits = [const("heads_shape", np.array([0, 0, N, D], np.int64)), const("w", w)]
    before = model(nodes, [("attention", TensorProto.FLOAT)], ["y"], inits)
    after, rewrite = rewritten(before, EinsumOutputProjection)
    assert rewrite.check() == 1
    assert ops(after) == ["MatMul"]
    weight = next(i for i in after.graph.initializer if i.name == "w")
    assert (
        list(weight.dims) == [N * D, H] and weight.raw_data == numpy_helper.from_array(w).raw_data
    )
    x = f32(B, T, N * D)
    np.testing.assert_allclose(
        run(after, {"attention": x})[0], run(before, {"attention": x})[0], rtol=1e-5
    )
