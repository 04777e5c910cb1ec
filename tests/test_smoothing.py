"""SmoothQuant-style smoothing: exact in FP32, and it evens out the products' inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from fastelectra.bundle import MODEL_FILE, TOKENIZER_FILE
from fastelectra.calibration.feeds import default_calibration_texts
from fastelectra.convert.int8 import INT8_OPS
from fastelectra.convert.int8_search import (
    captured_inputs,
    quantizable_nodes,
    single_feeds,
    spread_sample,
)
from fastelectra.convert.smoothing import SCALE_LIMITS, smooth, smoothing_scales
from fastelectra.runtime.tokenizer import WordPieceTokenizer, encode_texts


@pytest.fixture(scope="module")
def feeds(tiny_bundle):
    tokenizer = WordPieceTokenizer.from_file(tiny_bundle / TOKENIZER_FILE)
    encodings = encode_texts(tokenizer, default_calibration_texts(), 64)
    return single_feeds(spread_sample(encodings, 12, key=lambda e: len(e.ids)))


@pytest.fixture(scope="module")
def smoothed(tiny_bundle, feeds, tmp_path_factory):
    dst = tmp_path_factory.mktemp("smoothed") / "smoothed.onnx"
    meta = smooth(tiny_bundle / MODEL_FILE, dst, feeds, INT8_OPS, alpha=0.5)
    return dst, meta


def _run(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def test_smoothing_is_exact_in_fp32(tiny_bundle, smoothed, feeds):
    path, _ = smoothed
    for before, after in zip(_run(tiny_bundle / MODEL_FILE, feeds), _run(path, feeds), strict=True):
        for a, b in zip(before, after, strict=True):
            np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-4)


def test_every_product_gets_its_own_division(tiny_bundle, smoothed):
    path, meta = smoothed
    original = onnx.load(str(tiny_bundle / MODEL_FILE))
    model = onnx.load(str(path))
    nodes = quantizable_nodes(model, INT8_OPS)
    assert meta["nodes"] == len(nodes) == len(quantizable_nodes(original, INT8_OPS)) > 0
    # Same names as before (the INT8 search excludes nodes by name), each fed by a new Mul.
    assert {n.name for n in nodes} == {n.name for n in quantizable_nodes(original, INT8_OPS)}
    producers = {out: n for n in model.graph.node for out in n.output}
    for node in nodes:
        assert producers[node.input[0]].op_type == "Mul"
    muls = sum(n.op_type == "Mul" for n in model.graph.node)
    assert muls == sum(n.op_type == "Mul" for n in original.graph.node) + len(nodes)


def test_smoothing_narrows_the_spread_of_channel_ranges(smoothed, feeds):
    path, meta = smoothed
    spread = meta["input_spread_median"]
    assert spread["after"] < spread["before"]
    # And what the quantiser will see is the narrower input: max / median channel max.
    nodes = quantizable_nodes(onnx.load(str(path)), INT8_OPS)
    peaks: dict[str, np.ndarray] = {}
    for values in captured_inputs(path, feeds, nodes):
        for name, x in values.items():
            peaks[name] = np.maximum(peaks.get(name, 0), np.abs(x).max(axis=0))
    measured = np.median([p.max() / np.median(p) for p in peaks.values()])
    assert measured == pytest.approx(spread["after"], rel=0.05)


def test_scales_balance_activation_and_weight():
    x_max = np.array([8.0, 1.0, 0.0, 2.0], np.float32)
    w = np.array([[0.5, -0.5], [2.0, 1.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    s = smoothing_scales(x_max, w, alpha=0.5)
    # sqrt(8 / 0.5) = 4; sqrt(1 / 2); a dead activation channel or weight row keeps scale 1.
    np.testing.assert_allclose(s, [4.0, np.sqrt(0.5), 1.0, 1.0], rtol=1e-6)
    # After smoothing, channel k's activation and weight maxima are equal at alpha 0.5.
    np.testing.assert_allclose((x_max / s)[:2], (np.abs(w).max(axis=1) * s)[:2], rtol=1e-6)
    huge = smoothing_scales(np.array([1e30], np.float32), np.array([[1e-30]], np.float32))
    assert huge[0] == SCALE_LIMITS[1]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "strong"])
def test_cli_rejects_a_bad_alpha(value):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastelectra.cli",
            "build",
            "tiny",
            "-o",
            "x",
            "--int8-smoothing",
            value,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "expected a number in [0, 1] or 'off'" in done.stderr


def test_each_int8_precision_has_its_own_alpha():
    from fastelectra.convert.build import smoothing_alpha
    from fastelectra.precisions import FP32, INT8_DYNAMIC, INT8_STATIC

    assert smoothing_alpha(INT8_DYNAMIC, None) == INT8_DYNAMIC.int8_smoothing == 0.75
    assert smoothing_alpha(INT8_STATIC, None) == INT8_STATIC.int8_smoothing == 0.5
    assert smoothing_alpha(INT8_STATIC, 0.25) == 0.25
    assert smoothing_alpha(INT8_DYNAMIC, "off") is None
    assert smoothing_alpha(FP32, None) is None
