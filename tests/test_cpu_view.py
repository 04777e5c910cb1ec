"""`cpu_view`: weights referenced in place, SkipLayerNormalization split, same numbers as the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastelectra.bundle import BundleError, load_bundle
from fastelectra.runtime import protowire as wire
from fastelectra.runtime.cpu_view import EXTERNAL_FOLDER_KEY, SKIP_LAYERNORM_FUSION, cpu_view
from fastelectra.runtime.providers import plan_execution
from fastelectra.runtime.session import EncoderSession

HIDDEN = 64
ROWS = 5


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def skip_layernorm_model(
    path: Path, *, bias: bool, beta: bool, sum_output: bool, mean_output: bool = False, opset=17
) -> Path:
    """x, s -> SkipLayerNormalization -> y (and, when asked, the sum and the mean as outputs)."""
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.normal(1, 0.2, HIDDEN).astype(np.float32), "g")]
    inputs = ["x", "s", "g"]
    if beta or bias:
        inputs.append("b" if beta else "")
        if beta:
            initializers.append(
                numpy_helper.from_array(rng.normal(0, 0.2, HIDDEN).astype(np.float32), "b")
            )
    if bias:
        inputs.append("bias")
        initializers.append(
            numpy_helper.from_array(rng.normal(0, 0.5, HIDDEN).astype(np.float32), "bias")
        )
    outputs = ["y", "mean" if mean_output else "", "", "sum" if sum_output else ""]
    node = helper.make_node(
        "SkipLayerNormalization", inputs, outputs, "skipln", domain="com.microsoft", epsilon=1e-5
    )
    # Something downstream of the sum, as the next layer's residual would be.
    nodes = [node] + ([helper.make_node("Mul", ["sum", "sum"], ["sum2"])] if sum_output else [])
    shape = [ROWS, HIDDEN]
    graph_outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if sum_output:
        graph_outputs.append(helper.make_tensor_value_info("sum2", TensorProto.FLOAT, shape))
    if mean_output:
        graph_outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "skipln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "s")],
        graph_outputs,
        initializers,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(model: str | bytes, folder: Path | None = None, split: bool = False) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if folder is not None:
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(folder))
    session = ort.InferenceSession(
        model,
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=[SKIP_LAYERNORM_FUSION] if split else [],
    )
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(0, 3, (ROWS, HIDDEN)).astype(np.float32) for n in ("x", "s")}
    return session.run(None, feeds)


@pytest.mark.parametrize(
    ("bias", "beta", "sum_output"),
    [(True, True, False), (True, True, True), (False, True, False), (True, False, True)],
)
def test_split_matches_the_kernel(tmp_path, bias, beta, sum_output):
    path = skip_layernorm_model(tmp_path / "m.onnx", bias=bias, beta=beta, sum_output=sum_output)
    view = cpu_view(path)
    assert view.split_skip_layernorms == 1
    rewritten = onnx.load_from_string(view.model)
    counts = op_counts(rewritten)
    assert "SkipLayerNormalization" not in counts
    assert counts["LayerNormalization"] == 1
    assert counts["Add"] == (2 if bias else 1)
    onnx.checker.check_model(rewritten)
    expected = run(str(path))
    got = run(view.model, view.folder, split=True)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_nodes_it_cannot_translate_are_kept(tmp_path):
    # The mean output has no Add + LayerNormalization equivalent we want to maintain.
    path = skip_layernorm_model(
        tmp_path / "mean.onnx", bias=True, beta=True, sum_output=False, mean_output=True
    )
    assert cpu_view(path).split_skip_layernorms == 0
    # Before opset 17 there is no LayerNormalization to split into.
    old = skip_layernorm_model(
        tmp_path / "old.onnx", bias=True, beta=True, sum_output=False, opset=16
    )
    view = cpu_view(old)
    assert view.split_skip_layernorms == 0
    assert op_counts(onnx.load_from_string(view.model)) == {"SkipLayerNormalization": 1}


@pytest.mark.slow
def test_bundle_view_references_the_weights_in_place(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    layers = bundle.meta.dimensions.layers
    original = onnx.load(str(bundle.model_path))
    view = cpu_view(bundle.model_path)
    rewritten = onnx.load_from_string(view.model)

    assert (
        view.split_skip_layernorms == 2 * layers == bundle.meta.fused_ops["SkipLayerNormalization"]
    )
    assert "SkipLayerNormalization" not in op_counts(rewritten)
    assert op_counts(rewritten)["LayerNormalization"] == 2 * layers
    # The view is small; the weights it points at are byte for byte the original initializers.
    assert len(view.model) < bundle.model_path.stat().st_size / 4
    data = bundle.model_path.read_bytes()
    originals = {t.name: t for t in original.graph.initializer}
    external = [t for t in rewritten.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert len(external) == view.external_initializers > 0
    for tensor in rewritten.graph.initializer:
        source = originals[tensor.name]
        if tensor.data_location != TensorProto.EXTERNAL:
            assert tensor == source
            continue
        info = {e.key: e.value for e in tensor.external_data}
        assert info["location"] == bundle.model_path.name
        offset, length = int(info["offset"]), int(info["length"])
        assert data[offset : offset + length] == source.raw_data
        assert length >= 1024
        assert list(tensor.dims) == list(source.dims) and tensor.data_type == source.data_type


@pytest.mark.slow
def test_split_session_matches_the_fused_kernel(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    plan = plan_execution("cpu", 1)
    split = EncoderSession(bundle.model_path, plan)
    kernel = EncoderSession(
        bundle.model_path, dataclasses.replace(plan, split_skip_layernorm=False)
    )
    assert split.split_skip_layernorms == 2 * bundle.meta.dimensions.layers
    assert kernel.split_skip_layernorms == 0
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 5000, (3, 17)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    segments = np.zeros_like(ids)
    for a, b in zip(split.run(ids, mask, segments), kernel.run(ids, mask, segments), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_damaged_files_are_bundle_errors(tmp_path):
    path = skip_layernorm_model(tmp_path / "m.onnx", bias=True, beta=True, sum_output=False)
    whole = path.read_bytes()
    cases = {
        "empty": b"",
        "truncated": whole[: len(whole) // 2],
        "not protobuf": b"\xff" * 64,
        "text": b"this is not an onnx model\n" * 10,
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name.replace(' ', '-')}.onnx"
        bad.write_bytes(content)
        with pytest.raises(BundleError, match=str(bad)):
            EncoderSession(bad, plan_execution("cpu", 1), inputs=("x", "s"), outputs=("y",))


def test_varints_round_trip_and_truncation_is_caught():
    for value in (0, 1, 127, 128, 300, 2**31, 2**64 - 1):
        encoded = wire.encode_varint(value)
        assert wire.read_varint(encoded, 0) == (value, len(encoded))
    assert len(wire.encode_varint(-1 & (2**64 - 1))) == 10  # int64 -1, as protobuf writes it
    message = wire.string(1, "hello") + wire.varint_field(2, 7)
    assert [(f.number, f.wire_type) for f in wire.fields(message)] == [
        (1, wire.LEN),
        (2, wire.VARINT),
    ]
    with pytest.raises(wire.WireError):
        list(wire.fields(message[:-3]))
    with pytest.raises(wire.WireError):
        wire.read_varint(b"\x80\x80", 0)


@pytest.mark.slow
def test_verification_runs_the_served_graph(tiny_bundle):
    # Build-time verification (and the INT8 search) must measure what the runtime serves.
    from fastelectra.convert.verify import onnx_runner

    bundle = load_bundle(tiny_bundle)
    runner = onnx_runner(bundle.model_path, threads=1)
    assert isinstance(runner.__self__, EncoderSession)
    assert runner.__self__.split_skip_layernorms == 2 * bundle.meta.dimensions.layers
