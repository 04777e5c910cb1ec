"""`fastelectra export`: one ONNX file with pooling (and optionally the tokenizer) inside, checked
against `Encoder.embed`, written only where this command may write."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from fastelectra.destinations import DestinationError
from fastelectra.export import ExportOptions, export_model
from fastelectra.export import check as export_check
from fastelectra.export.check import ExportCheckError
from fastelectra.export.metadata import read_metadata
from fastelectra.runtime import Encoder
from fastelectra.runtime.tokenizer import pad_batch

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "Embeddings for search: one vector per text, compared by cosine.",
    "word " * 700,  # past the bundle's max length: truncated as Encoder.embed truncates
]

# Runs an exported file in a process that never imports fastelectra: onnxruntime and numpy only.
WITHOUT_FASTELECTRA = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnxruntime as ort

    model, feeds_file, out_file = sys.argv[1:4]
    feeds = dict(np.load(feeds_file, allow_pickle=True))
    if "text" in feeds:
        from onnxruntime_extensions import get_library_path
        options = ort.SessionOptions()
        options.register_custom_ops_library(get_library_path())
    else:
        options = None
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    np.save(out_file, session.run(["embedding"], feeds)[0])
    assert not any(name.partition(".")[0] == "fastelectra" for name in sys.modules)
    """
)


def run_without_fastelectra(model: Path, feeds: dict[str, np.ndarray], tmp: Path) -> np.ndarray:
    np.savez(tmp / "feeds.npz", **feeds)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_FASTELECTRA,
            str(model),
            str(tmp / "feeds.npz"),
            str(tmp / "out.npy"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp,  # not the checkout: nothing of fastelectra on the path but what is installed
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(tmp / "out.npy")


def id_feeds(encoder: Encoder, texts: list[str]) -> dict[str, np.ndarray]:
    ids, mask, segments = pad_batch(encoder.tokenize(texts))
    return {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bundle) -> Encoder:
    return Encoder.load(tiny_bundle)


def test_ids_in_file_gives_encoder_embed_outside_fastelectra(tiny_bundle, tiny_encoder, tmp_path):
    out = tmp_path / "tiny.onnx"
    props = export_model(tiny_bundle, out, ExportOptions(pooling="mean", normalize=True))
    got = run_without_fastelectra(out, id_feeds(tiny_encoder, TEXTS), tmp_path)
    want = tiny_encoder.embed(TEXTS, pooling="mean", normalize=True)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input_word_ids", "input_mask", "segment_ids"]
    assert [o.name for o in model.graph.output] == ["embedding"]
    stored = read_metadata(out)
    assert stored == {p.key: p.value for p in model.metadata_props}
    assert stored["pooling"] == "mean" and json.loads(stored["normalize"]) is True
    assert stored["precision"] == "fp32" and stored["input"] == "ids"
    assert json.loads(stored["max_sequence_length"]) == tiny_encoder.meta.max_sequence_length
    assert len(stored["bundle_sha256"]) == 64
    figures = json.loads(stored["verification"])
    assert figures == props["verification"]
    assert figures["max_abs_diff"] <= 1e-5 and figures["texts"] > 100


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean"])
def test_every_pooling_matches_encoder_embed(tiny_bundle, tiny_encoder, tmp_path, pooling):
    import onnxruntime as ort

    out = tmp_path / f"{pooling}.onnx"
    export_model(tiny_bundle, out, ExportOptions(pooling=pooling))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], id_feeds(tiny_encoder, TEXTS))[0]
    want = tiny_encoder.embed(TEXTS, pooling=pooling)
    assert np.abs(got - want).max() <= 1e-5


def test_default_pooling_is_the_bundles(tiny_bundle, tiny_encoder, tmp_path):
    props = export_model(tiny_bundle, tmp_path / "m.onnx")
    assert props["pooling"] == tiny_encoder.meta.pooling


def test_a_file_that_fails_its_check_is_not_written(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(export_check, "FP32_MAX_ABS_DIFF", -1.0)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportCheckError, match="max_abs_diff"):
        export_model(tiny_bundle, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_refuses_to_replace_what_it_did_not_write(tiny_bundle, tmp_path):
    foreign = tmp_path / "model.onnx"
    foreign.write_bytes(b"a user's own file")
    with pytest.raises(DestinationError, match="refusing to replace"):
        export_model(tiny_bundle, foreign)
    assert foreign.read_bytes() == b"a user's own file"
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    with pytest.raises(DestinationError, match="is a directory"):
        export_model(tiny_bundle, folder)
    with pytest.raises(ValueError, match=r"\.onnx suffix"):
        export_model(tiny_bundle, tmp_path / "model.bin")


def test_replaces_a_file_it_wrote(tiny_bundle, tmp_path):
    out = tmp_path / "m.onnx"
    export_model(tiny_bundle, out, ExportOptions(pooling="cls"))
    export_model(tiny_bundle, out, ExportOptions(pooling="mean"))
    assert read_metadata(out)["pooling"] == "mean"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_export(tiny_bundle, tmp_path):
    out = tmp_path / "m.onnx"
    command = [sys.executable, "-m", "fastelectra.cli", "export", str(tiny_bundle), str(out)]
    done = subprocess.run(
        [*command, "--pooling", "mean", "--normalize"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert printed["pooling"] == "mean" and printed["normalize"] is True
    assert "min cosine" in done.stderr
    foreign = tmp_path / "theirs.onnx"
    foreign.write_bytes(b"not ours")
    again = subprocess.run([*command[:-1], str(foreign)], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 1
    assert again.stderr.startswith("fastelectra export: error:") and "refusing" in again.stderr
    assert foreign.read_bytes() == b"not ours"


ONNXRUNTIME_NODE = "onnxruntime-node@1.31.1"  # the onnxruntime release this project pins


def node_modules() -> Path:
    """onnxruntime-node from npm, installed once under .cache (its install script, which fetches
    CUDA libraries from NuGet, is skipped: the CPU binding ships in the package)."""
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    cache = ROOT / ".cache" / "onnxruntime-node"
    modules = cache / "node_modules"
    if not (modules / "onnxruntime-node" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", ONNXRUNTIME_NODE],
            capture_output=True,
            text=True,
            cwd=cache,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.skip(f"npm could not install {ONNXRUNTIME_NODE}: {done.stderr[-500:]}")
    return modules


@pytest.mark.slow
def test_ids_in_file_gives_the_same_vectors_in_node(minilm_bundle, tmp_path):
    """A non-Python onnxruntime binding (Node.js) gets Encoder.embed's vectors from the file."""
    import os

    modules = node_modules()
    out = tmp_path / "minilm.onnx"
    export_model(minilm_bundle, out, ExportOptions(pooling="mean", normalize=True))
    encoder = Encoder.load(minilm_bundle)
    feeds = {
        name: {"data": array.ravel().tolist(), "dims": list(array.shape)}
        for name, array in id_feeds(encoder, TEXTS[:3]).items()
    }
    (tmp_path / "feeds.json").write_text(json.dumps(feeds))
    done = subprocess.run(
        [
            "node",
            str(ROOT / "tests" / "node" / "run_exported.js"),
            str(out),
            str(tmp_path / "feeds.json"),
            str(tmp_path / "out.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(modules)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    got = np.array(result["data"], np.float32).reshape(result["dims"])
    want = encoder.embed(TEXTS[:3], pooling="mean", normalize=True)
    assert np.abs(got - want).max() <= 1e-5


TRICKY = [
    "Café NAÏVE straße İstanbul ΟΔΟΣ ΑΣ.",
    "中文字符, 日本語のテキスト! ﬁne",
    "a\x00b a\u200bb\ttab\nline",
    "",
    "antidisestablishmentarianism " + "x" * 250,
]


def export_cli(bundle: Path, out: Path, *flags: str) -> dict:
    """`fastelectra export` in a process of its own, as a user runs it."""
    command = [sys.executable, "-m", "fastelectra.cli", "export", str(bundle), str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_text_in_file_gives_encoder_embed_outside_fastelectra(tiny_bundle, tiny_encoder, tmp_path):
    out = tmp_path / "tiny-text.onnx"
    props = export_cli(tiny_bundle, out, "--pooling", "mean", "--normalize", "--text-input")
    assert props["input"] == "text" and props["verification"]["max_abs_diff"] <= 1e-5
    texts = TEXTS + TRICKY
    got = run_without_fastelectra(out, {"text": np.array(texts, dtype=object)}, tmp_path)
    want = tiny_encoder.embed(texts, pooling="mean", normalize=True)
    assert np.abs(got - want).max() <= 1e-5
    model = onnx.load(str(out), load_external_data=False)
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("text", onnx.TensorProto.STRING)
    ]
    assert [o.name for o in model.graph.output] == ["embedding"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [(), ("--text-input",)], ids=["ids-in", "text-in"])
def test_minilm_exports_match_encoder_embed(minilm_bundle, tmp_path, flags):
    out = tmp_path / "minilm.onnx"
    export_cli(minilm_bundle, out, "--pooling", "mean", "--normalize", *flags)
    encoder = Encoder.load(minilm_bundle)
    texts = TEXTS + TRICKY
    feeds = {"text": np.array(texts, dtype=object)} if flags else id_feeds(encoder, texts)
    got = run_without_fastelectra(out, feeds, tmp_path)
    want = encoder.embed(texts, pooling="mean", normalize=True)
    assert np.abs(got - want).max() <= 1e-5
