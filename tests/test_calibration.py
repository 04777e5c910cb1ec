"""Static INT8 calibration: every method, streamed batch by batch, covers every quantised input."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from fastelectra.calibration.feeds import TextCalibrationReader, calibration_encodings
from fastelectra.calibration.ranges import read_tensorrt_table
from fastelectra.convert.static_int8 import StaticInt8


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "texts.txt"
    lines = ["ok", "a much longer passage about tokenizers " * 6, "what is a roth ira"] * 5
    lines.append("a question\tand its paired passage")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_method_calibrates_every_quantised_input(tiny_bundle, tmp_path, texts, method):
    import onnxruntime as ort

    fp32 = tiny_bundle / "model.onnx"
    before = [p.name for p in tiny_bundle.iterdir()]
    corpus = calibration_encodings(tiny_bundle / "tokenizer.json", texts, 64)
    with StaticInt8(
        fp32,
        tmp_path / "model.onnx",
        corpus=corpus,
        texts=texts,
        method=method,
        table_dir=tmp_path,
        batch_size=4,
    ) as quantizer:
        quantizer.quantize([])
        rounding = quantizer.activation_rounding()
    graph = onnx.load(str(fp32)).graph
    inputs = {n.input[0] for n in graph.node if n.op_type in ("MatMul", "Attention")}
    table = read_tensorrt_table(tmp_path / "calibration.flatbuffers")
    assert inputs <= set(table)
    assert all(np.isfinite(v) and v > 0 for v in table.values())
    # The ranking's rounding uses those ranges: a value far outside is clipped to the range.
    name = sorted(inputs)[0]
    assert abs(rounding(name, np.array([1e6], np.float32))[0]) <= table[name] * 1.01
    # The work directory (range cache) and the typed graph beside the model are gone; the
    # model runs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.flatbuffers", "model.onnx"]
    assert sorted(p.name for p in tiny_bundle.iterdir()) == sorted(before)
    ids = np.array([[101, 2000, 102]], np.int32)
    feed = {"input_word_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": 0 * ids}
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    pooled, _ = session.run(None, feed)
    assert np.isfinite(pooled).all()


def test_reader_serves_a_range_of_batches(tiny_bundle, texts):
    reader = TextCalibrationReader(
        tiny_bundle / "tokenizer.json", texts.read_text().splitlines(), 4
    )
    assert len(reader) == 4
    reader.set_range(1, 3)
    served = []
    while (feed := reader.get_next()) is not None:
        served.append(feed["input_word_ids"].shape[0])
    assert served == [4, 4]
    reader.set_range(3, 10)  # clamped to the last batch
    assert reader.get_next()["input_word_ids"].shape[0] == 4
    assert reader.get_next() is None


def test_calibrate_gives_quantize_statics_own_ranges(tiny_bundle, tmp_path, texts):
    """`calibrate` (weightless in Python, before the quantiser loads) finds the ranges that
    onnxruntime's quantize_static finds when it calibrates itself."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    from fastelectra.calibration.ranges import BATCHES_PER_COLLECT, calibrate
    from fastelectra.convert.int8 import INT8_OPS
    from fastelectra.convert.static_int8 import typed_graph

    model = tmp_path / "fp32.onnx"
    shutil.copyfile(tiny_bundle / "model.onnx", model)
    typed = typed_graph(model, tmp_path / ".typed.onnx")
    lines = texts.read_text().splitlines()

    def reader():
        return TextCalibrationReader(tiny_bundle / "tokenizer.json", lines, 4, 64, 96)

    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    calibrate(typed, reader(), "minmax", ours, INT8_OPS)
    quantize_static(
        str(typed),
        str(tmp_path / "int8.onnx"),
        reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=INT8_OPS,
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            "CalibStridedMinMax": BATCHES_PER_COLLECT,
            "CalibTensorRangeSymmetric": True,
        },
        calibration_cache_path=str(theirs),
    )
    a, b = load_tensors_data(ours).data, load_tensors_data(theirs).data
    assert set(a) == set(b) and len(a) > 10
    for name in a:
        np.testing.assert_allclose(a[name].range_value, b[name].range_value, rtol=1e-6)
    # Nothing left beside the model by either: the augmented graph is gone.
    assert not list(tmp_path.glob("*augmented*"))


def test_batches_are_bounded_by_padded_tokens():
    from fastelectra.calibration.feeds import batch_spans

    assert batch_spans([3, 3, 3, 3, 3], 2) == [(0, 2), (2, 4), (4, 5)]
    # 2 x 100 fits 256; a third text would pad to 300; a text over the budget is alone.
    assert batch_spans([10, 100, 10, 10, 600, 5], 8, 256) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert batch_spans([], 4) == []
    spans = batch_spans([7, 50, 12, 33, 80, 1, 2, 90] * 5, 8, 128)
    assert [i for span in spans for i in range(*span)] == list(range(40))  # order kept, all
    lengths = [7, 50, 12, 33, 80, 1, 2, 90] * 5
    for start, end in spans:
        assert end - start == 1 or max(lengths[start:end]) * (end - start) <= 128


def test_an_int8_build_reads_and_tokenizes_its_corpus_once(tiny_bundle, tmp_path, monkeypatch):
    """The smoothing, the ranking, the search's check texts and the static calibration all
    take the one tokenized corpus."""
    from fastelectra.calibration import feeds
    from fastelectra.convert.precision import convert_precision
    from fastelectra.precisions import INT8_STATIC
    from fastelectra.runtime import tokenizer

    calls = {"read": 0, "encode": 0}
    read, encode = feeds.read_calibration_texts, tokenizer.encode_texts

    def counted_read(*args, **kwargs):
        calls["read"] += 1
        return read(*args, **kwargs)

    def counted_encode(*args, **kwargs):
        calls["encode"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(feeds, "read_calibration_texts", counted_read)
    monkeypatch.setattr(feeds, "encode_texts", counted_encode)
    monkeypatch.setattr(tokenizer, "encode_texts", counted_encode)
    convert_precision(
        INT8_STATIC,
        tiny_bundle / "model.onnx",
        tmp_path / "model.onnx",
        staging=tmp_path,
        tokenizer_path=tiny_bundle / "tokenizer.json",
        calibration_texts=None,
        calibration_method="minmax",
        max_length=64,
        int8_search=True,
        smoothing=0.5,
    )
    assert calls == {"read": 1, "encode": 1}
