"""Fusion into onnxruntime's transformer kernels, proven by counts and by numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fastelectra.convert.fuse import FusionError, expected_counts, fuse, fused_counts
from fastelectra.convert.tf_export import export_onnx


@pytest.fixture(scope="module")
def fused(tiny_source, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuse")
    exported = export_onnx(tiny_source, work / "exported.onnx")
    report = fuse(exported.path, work / "fused.onnx", tiny_source.dimensions)
    return exported.path, work / "fused.onnx", report


def _run(path, ids, mask, segments=None):
    segments = np.zeros_like(ids) if segments is None else segments
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}
    return session.run(["pooled_output", "sequence_output"], feed)


def test_fused_op_counts_are_exact(fused, tiny_source):
    _, path, report = fused
    layers = tiny_source.dimensions.layers
    counts = fused_counts(onnx.load(str(path)))
    assert counts["EmbedLayerNormalization"] == 1
    assert counts["Attention"] == layers
    assert counts["SkipLayerNormalization"] == 2 * layers
    assert counts.get("FastGelu", 0) + counts.get("BiasGelu", 0) == layers
    assert "Gelu" not in counts  # every GELU took its bias in
    assert report.complete and report.counts == counts
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Einsum", "Softmax", "ReduceMean", "Erf"}  # nothing left unfused


def test_fused_matches_unfused_and_tensorflow(fused, tiny_source):
    exported, path, _ = fused
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 30000, (4, 33)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[2, 20:] = 0
    segments = np.zeros_like(ids)
    segments[:, 16:] = 1
    unfused = _run(exported, ids, mask, segments)
    got = _run(path, ids, mask, segments)
    tf_pooled, tf_sequence = (t.numpy() for t in tiny_source.call(ids, mask, segments))
    np.testing.assert_allclose(got[0], tf_pooled, atol=1e-5)
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[1][valid], tf_sequence[valid], atol=1e-5)
    np.testing.assert_allclose(got[1][valid], unfused[1][valid], atol=1e-5)


def test_fused_attention_reads_the_mask_as_right_padding(fused):
    """Why the runtime only ever right-pads: left padding gives a different (wrong) result."""
    exported, path, _ = fused
    ids = np.array([[101, 7592, 2088, 2003, 102]], np.int32)
    right = np.concatenate([ids, np.zeros((1, 3), np.int32)], axis=1)
    right_mask = (right != 0).astype(np.int32)
    left = np.concatenate([np.zeros((1, 3), np.int32), ids], axis=1)
    left_mask = (left != 0).astype(np.int32)
    alone = _run(path, ids, np.ones_like(ids))[1][0]
    assert np.abs(_run(path, right, right_mask)[1][0, :5] - alone).max() < 1e-5
    # The unfused graph honours any mask layout (modulo position ids) ...
    unfused_left = _run(exported, left, left_mask)[1][0, 3:]
    fused_left = _run(path, left, left_mask)[1][0, 3:]
    # ... the fused kernel treats the mask as a length and attends to the leading pads instead.
    assert np.abs(fused_left - unfused_left).max() > 1e-2


def test_incomplete_fusion_fails_loudly(tiny_source, tmp_path, monkeypatch):
    import fastelectra.convert.fuse as fuse_module

    exported = export_onnx(tiny_source, tmp_path / "exported.onnx")
    dims = tiny_source.dimensions
    wanted = expected_counts(dims)
    wanted["Attention"] += 1  # as if a layer had not fused
    monkeypatch.setattr(fuse_module, "expected_counts", lambda d: wanted)
    with pytest.raises(FusionError, match="fusion incomplete"):
        fuse(exported.path, tmp_path / "fused.onnx", dims)
    assert not (tmp_path / "fused.onnx").exists()


def test_a_bare_gelu_does_not_count_as_fused(tiny_source):
    from fastelectra.convert.fuse import FusionReport

    dims = tiny_source.dimensions
    base = {"EmbedLayerNormalization": 1, "Attention": dims.layers}
    base["SkipLayerNormalization"] = 2 * dims.layers
    expected = expected_counts(dims)
    assert FusionReport({**base, "FastGelu": dims.layers}, expected).complete
    assert FusionReport({**base, "BiasGelu": dims.layers}, expected).complete
    # GELU fused but its bias Add left apart: not the kernel the issue asks for.
    assert not FusionReport({**base, "Gelu": dims.layers}, expected).complete


def test_the_streamed_writer_writes_the_model_onnx_save_would(fused, tmp_path):
    """`modelfile.write_inline` (bounded memory) parses back to the same model, and runs."""
    from fastelectra.convert.modelfile import write_inline

    _, path, _ = fused
    model = onnx.load(str(path))
    write_inline(model, tmp_path / "streamed.onnx")
    again = onnx.load(str(tmp_path / "streamed.onnx"))
    assert again == model
    assert len(again.graph.initializer) == len(model.graph.initializer) > 10
    ids = np.array([[101, 7592, 2088, 102]], np.int32)
    expected = _run(path, ids, np.ones_like(ids))
    for got, want in zip(
        _run(tmp_path / "streamed.onnx", ids, np.ones_like(ids)), expected, strict=True
    ):
        np.testing.assert_array_equal(got, want)
