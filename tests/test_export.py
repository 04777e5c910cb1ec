"""SavedModel -> ONNX: the memory-bounded hollow route against plain tf2onnx and TensorFlow."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fastelectra.convert.tf_export import export_onnx


def _feeds(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (3, 24)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 11:] = 0  # right padding
    segments = np.zeros_like(ids)
    segments[:, 14:] = 1
    return ids, mask, segments


@pytest.fixture(scope="module")
def exported(tiny_source, tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    return {
        route: export_onnx(tiny_source, work / route / "model.onnx", route=route)
        for route in ("hollow", "plain")
    }


def _run(path, ids, mask, segments):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}
    return session.run(["pooled_output", "sequence_output"], feed)


def test_hollow_route_matches_tensorflow_and_plain_tf2onnx(exported, tiny_source):
    ids, mask, segments = _feeds()
    tf_pooled, tf_sequence = (t.numpy() for t in tiny_source.call(ids, mask, segments))
    hollow = _run(exported["hollow"].path, ids, mask, segments)
    plain = _run(exported["plain"].path, ids, mask, segments)
    np.testing.assert_allclose(hollow[0], tf_pooled, atol=1e-5)
    np.testing.assert_allclose(hollow[1], tf_sequence, atol=1e-5)
    np.testing.assert_allclose(hollow[1], plain[1], atol=1e-5)


def test_hollow_route_keeps_weights_out_of_the_graph(exported):
    result = exported["hollow"]
    proto = onnx.load(str(result.path), load_external_data=False)
    # Every large tensor lives in the .data file, streamed one variable at a time.
    assert result.weights >= 10
    data = result.path.with_name(result.path.name + ".data")
    assert data.stat().st_size >= result.weight_bytes > 8_000_000
    assert result.path.stat().st_size < 500_000
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) == result.weights


def test_onnx_interface(exported):
    proto = onnx.load(str(exported["hollow"].path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["input_word_ids", "input_mask", "segment_ids"]
    assert [o.name for o in proto.graph.output] == ["pooled_output", "sequence_output"]
    for value in proto.graph.input:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT32
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 2 and not dims[0].HasField("dim_value")  # dynamic batch and seq
    assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in proto.opset_import)


def test_unknown_route_is_rejected(tiny_source, tmp_path):
    with pytest.raises(ValueError, match="unknown export route"):
        export_onnx(tiny_source, tmp_path / "m.onnx", route="magic")
