"""Static INT8 calibration: every method, streamed batch by batch, covers every quantised input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fastelectra.calibration.feeds import TextCalibrationReader
from fastelectra.calibration.static import StaticInt8, read_tensorrt_table


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
    with StaticInt8(
        fp32,
        tmp_path / "model.onnx",
        tokenizer_path=tiny_bundle / "tokenizer.json",
        texts=texts,
        method=method,
        max_length=64,
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
    # The work directory (typed copy, range cache) is gone; the model runs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.flatbuffers", "model.onnx"]
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
