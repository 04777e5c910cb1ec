"""`fastelectra build`: the verified, atomically written bundle, and the CLI around it."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from fastelectra.bundle import FORMAT_VERSION, load_bundle, sha256_file
from fastelectra.cli import main
from fastelectra.convert.build import VerificationFailed, build
from fastelectra.precisions import FP32, Gate


def test_bundle_files_and_metadata(tiny_bundle):
    names = {p.name for p in tiny_bundle.iterdir()}
    assert {"model.onnx", "tokenizer.json", "fastelectra.json", "verification.json"} <= names
    assert not [n for n in names if n.startswith(".")]
    meta = json.loads((tiny_bundle / "fastelectra.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["precision"] == "fp32"
    assert meta["inputs"] == ["input_word_ids", "input_mask", "segment_ids"]
    assert meta["outputs"] == ["pooled_output", "sequence_output"]
    assert meta["max_sequence_length"] == 512
    assert meta["dimensions"]["layers"] == 2 and meta["dimensions"]["hidden"] == 64
    assert meta["fused_ops"]["Attention"] == 2
    assert {"tensorflow", "tf2onnx", "onnxruntime", "onnx"} <= set(meta["tool_versions"])
    for name, digest in meta["files"].items():
        assert sha256_file(tiny_bundle / name) == digest
    load_bundle(tiny_bundle)


def test_timings_and_memory_per_step(tiny_bundle):
    meta = json.loads((tiny_bundle / "fastelectra.json").read_text())
    timings, memory = meta["timings"], meta["memory"]
    tensorflow_steps = ["load", "export", "tensorflow_reference"]  # the child process
    onnxruntime_steps = ["fuse", "verify"]  # this process; fp32: no precision step
    assert list(timings) == tensorflow_steps + onnxruntime_steps
    assert all(seconds > 0 for seconds in timings.values())
    assert list(memory["steps"]) == list(timings)
    figures = [f for step in memory["steps"].values() for f in step.values()]
    assert all(step.keys() == {"peak_rss_mb", "rss_after_mb"} for step in memory["steps"].values())
    assert all(isinstance(f, float) and f > 0 for f in figures)
    assert memory["peak_rss_mb"] >= max(figures)
    assert memory["peak_rss_mb"] == max(
        memory["tensorflow_stage_peak_rss_mb"], memory["onnxruntime_peak_rss_mb"]
    )
    for process in (tensorflow_steps, onnxruntime_steps):  # the peak so far never falls
        peaks = [memory["steps"][name]["peak_rss_mb"] for name in process]
        assert all(a <= b for a, b in itertools.pairwise(peaks))
    # The onnxruntime steps never loaded TensorFlow: their process stays below the TF stage's.
    assert memory["onnxruntime_peak_rss_mb"] < memory["tensorflow_stage_peak_rss_mb"]


def test_bundles_without_timings_still_load(tiny_bundle, tmp_path):
    import shutil

    from fastelectra.bundle import META_FILE, BundleMeta, write_json_atomic

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    raw = json.loads((old / META_FILE).read_text())
    del raw["timings"], raw["memory"]
    write_json_atomic(old / META_FILE, raw)
    meta = load_bundle(old).meta
    assert meta.timings == {} and meta.memory == {}
    assert BundleMeta.from_json(raw).to_json() == {**raw, "timings": {}, "memory": {}}


def test_verification_report(tiny_bundle):
    report = json.loads((tiny_bundle / "verification.json").read_text())
    assert report["precision"] == "fp32" and report["reference"] == "tensorflow"
    assert report["texts"] >= 200
    assert report["truncated_texts"] > 0  # the built-in set reaches past 512 tokens
    assert report["passed"] is True
    for name in ("pooled_output", "sequence_output"):
        figures = report["outputs"][name]
        assert figures["max_abs_diff"] <= 1e-4
        assert figures["min_cosine"] > 0.9999
    assert report["thresholds"]["pooled_output"]["max_abs_diff"] == 1e-4


def test_failed_gate_writes_nothing(tiny_module, tmp_path):
    impossible = Gate(
        {"pooled_output": {"max_abs_diff": -1.0}, "sequence_output": {"max_abs_diff": -1.0}}
    )
    strict_fp32 = dataclasses.replace(FP32, gate=impossible)
    texts = tmp_path / "texts.txt"
    texts.write_text("hello world\nsecond text\tas a pair\n")
    out = tmp_path / "bundle"
    with pytest.raises(VerificationFailed, match="failed verification"):
        build(tiny_module, out, precision=strict_fp32, verify_texts=texts, progress=None)
    assert list(tmp_path.iterdir()) == [texts]  # no bundle, no staging or work leftovers

    result = build(
        tiny_module, out, precision=strict_fp32, verify_texts=texts, force=True, progress=None
    )
    assert result.verification["passed"] is False
    assert json.loads((out / "verification.json").read_text())["passed"] is False


def test_failed_rebuild_keeps_the_existing_bundle(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    import fastelectra.convert.fuse as fuse_module

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise fuse_module.FusionError("simulated failure")

    monkeypatch.setattr(fuse_module, "fuse", broken)
    with pytest.raises(fuse_module.FusionError):
        build(_module(), out, progress=None)
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _module():
    from fastelectra.convert.presets import preset_module

    return preset_module("tiny")


def test_bad_verify_texts(tiny_module, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        build(tiny_module, tmp_path / "out", verify_texts=bad, progress=None)
    tabs = tmp_path / "tabs.txt"
    tabs.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match="line 1 has 2 tabs"):
        build(tiny_module, tmp_path / "out", verify_texts=tabs, progress=None)
    assert not (tmp_path / "out").exists()


def test_cli_info_and_verify(tiny_bundle, tiny_module, capsys):
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "fp32" in out and "Attention" in out and "PASSED" in out
    assert main(["info", str(tiny_bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["precision"] == "fp32"
    assert main(["verify", str(tiny_bundle), "--source", str(tiny_module), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["build", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "no such file" in err
    assert main(["info", str(tmp_path)]) == 1
    assert "not a fastelectra bundle" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_bundle_passes_fp32_gate(minilm_bundle):
    report = json.loads((minilm_bundle / "verification.json").read_text())
    assert report["passed"]
    assert report["outputs"]["pooled_output"]["max_abs_diff"] <= 1e-4
    assert report["outputs"]["sequence_output"]["max_abs_diff"] <= 1e-4
    meta = json.loads((minilm_bundle / "fastelectra.json").read_text())
    assert meta["fused_ops"]["Attention"] == 6 and meta["fused_ops"]["SkipLayerNormalization"] == 12
