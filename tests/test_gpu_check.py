"""benchmarks/gpu.sh, gpu_wheel.sh and gpu_check.py without a GPU: the dry run (the CPU stands
in for CUDA), the gates, and carrying files in parts (a small file stands in for the wheel)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_runtime import write_synthetic_bundle

from fastelectra.bundle import MODEL_FILE, finalize_meta, load_bundle
from fastelectra.precisions import FP16, FP32
from fastelectra.runtime import EncoderOutput

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
GPU_WHEEL_SH = ROOT / "benchmarks" / "gpu_wheel.sh"

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundles") / "synthetic-fp32")


@pytest.fixture(scope="module")
def fp16_bundle(fp32_bundle, tmp_path_factory) -> Path:
    from fastelectra.convert.precision import to_fp16

    out = shutil.copytree(fp32_bundle, tmp_path_factory.mktemp("bundles") / "synthetic-fp16")
    to_fp16(fp32_bundle / MODEL_FILE, out / MODEL_FILE)
    meta = load_bundle(out, verify_hashes=False).meta
    meta.precision = FP16
    finalize_meta(out, meta)
    return out


def dry_run(*bundles: Path, json_path: Path) -> int:
    args = [*map(str, bundles), "--dry-run", "--json", str(json_path)]
    return gpu_check.main([*args, "--budget", "0.05", "--max-runs", "5"])


def test_dry_run_checks_and_times_every_bundle(fp32_bundle, fp16_bundle, tmp_path, capsys):
    assert dry_run(fp32_bundle, fp16_bundle, json_path=tmp_path / "gpu.json") == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["passed"] and report["environment"]["dry_run"]
    pairs = {(c["bundle"], c["reference"]) for c in report["checks"]}
    # The FP16 bundle is judged against its own CPU run and the FP32 bundle's.
    assert pairs == {
        ("synthetic-fp32", "cpu fp32"),
        ("synthetic-fp16", "cpu fp16"),
        ("synthetic-fp16", "cpu fp32 (synthetic-fp32)"),
    }
    against_fp32 = next(c for c in report["checks"] if "synthetic-fp32)" in c["reference"])
    assert 0 < against_fp32["figures"]["pooled_output"]["max_abs_diff"] < 0.05  # FP16 rounding
    assert against_fp32["gate"] == "fp16"
    rows = [(t["bundle"], t["batch"]) for t in report["timings"]]
    assert sorted(rows) == sorted((b, n) for b in pairs_bundles(pairs) for n in gpu_check.BATCHES)
    assert all(t["runs"] >= 3 and t["median_ms"] > 0 and not t["error"] for t in report["timings"])
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[-1] == "PASSED (exit status 0)"
    assert any(line.startswith("synthetic-fp16  cpu (dry run)") for line in out)


def pairs_bundles(pairs: set[tuple[str, str]]) -> set[str]:
    return {bundle for bundle, _ in pairs}


def test_a_failed_gate_fails_the_run(fp32_bundle, tmp_path, monkeypatch, capsys):
    measure = gpu_check.compare_outputs

    def off_by_a_little(reference: EncoderOutput, candidate: EncoderOutput) -> dict:
        figures = measure(reference, candidate)
        figures["pooled_output"]["max_abs_diff"] = 3e-4
        return figures

    monkeypatch.setattr(gpu_check, "compare_outputs", off_by_a_little)
    assert dry_run(fp32_bundle, json_path=tmp_path / "gpu.json") == 1
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert not report["passed"]
    assert report["checks"][0]["failures"] == ["pooled_output max_abs_diff 0.0003 > 0.0001"]
    out = capsys.readouterr().out
    assert "FAIL: pooled_output max_abs_diff" in out and "FAILED (exit status 1)" in out


def test_gate_failures_follow_the_build_gates():
    good = {name: {"max_abs_diff": 0.0, "mean_cosine": 1.0, "min_cosine": 1.0} for name in "ps"}
    figures = {"pooled_output": dict(good["p"]), "sequence_output": dict(good["s"])}
    assert gpu_check.gate_failures(figures, FP32) == []
    figures["sequence_output"]["max_abs_diff"] = 2e-4
    assert gpu_check.gate_failures(figures, FP32) == [
        "sequence_output max_abs_diff 0.0002 > 0.0001"
    ]
    assert gpu_check.gate_failures(figures, FP16) == []  # FP16 is judged by cosine only
    figures["pooled_output"]["min_cosine"] = 0.999
    assert gpu_check.gate_failures(figures, FP16) == ["pooled_output min_cosine 0.999 < 0.9995"]


def test_compare_outputs_measures_unpadded_rows():
    rng = np.random.default_rng(0)
    sequence = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 5)]
    reference = EncoderOutput(rng.normal(size=(2, 4)), sequence, np.array([3, 5]), np.zeros(2))
    shifted = [s.copy() for s in sequence]
    shifted[1][4, 0] += 0.5  # the last real token of the longer text
    candidate = EncoderOutput(reference.pooled, shifted, reference.lengths, reference.truncated)
    figures = gpu_check.compare_outputs(reference, candidate)
    assert figures["pooled_output"]["max_abs_diff"] == 0
    assert figures["sequence_output"]["max_abs_diff"] == pytest.approx(0.5)
    assert figures["mean_pooled_sequence"]["max_abs_diff"] == pytest.approx(0.1)
    assert figures["sequence_output"]["min_cosine"] < 1 == figures["pooled_output"]["min_cosine"]


# -- the shell scripts ---------------------------------------------------------------------


def run_script(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )


def test_gpu_sh_dry_run(fp32_bundle, tmp_path):
    env = {"FASTELECTRA_GPU_DRY": "1", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = run_script(GPU_SH, "run", str(fp32_bundle), env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == "PASSED (exit status 0)"  # the table is last
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["passed"]
    assert "PASSED" in (tmp_path / "out" / "gpu_check.log").read_text()
    assert run_script(GPU_SH, "run", env=env).returncode == 2  # a dry run needs bundles


@pytest.fixture
def payload(tmp_path) -> tuple[dict[str, str], Path, Path]:
    """A 2.5 MiB stand-in for the wheel, packed into 1 MiB parts under tmp_path."""
    original = tmp_path / "onnxruntime_gpu-0.0.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    original.write_bytes(np.random.default_rng(0).bytes(5 * 2**19))
    env = {
        "FASTELECTRA_GPU_PAYLOAD": str(tmp_path / "payload"),
        "FASTELECTRA_GPU_PART_MIB": "1",
        "FASTELECTRA_GPU_WORK": str(tmp_path / "device"),
    }
    for _ in range(2):  # packing again replaces the parts, not adds to them
        done = run_script(GPU_WHEEL_SH, "pack", str(original), env=env)
        assert done.returncode == 0, done.stderr
    return env, original, tmp_path / "payload" / "parts"


def call_with(parts: Path, names: list[str], directory: Path) -> Path:
    """A call's carried payload: MANIFEST, parts.sha256 and the named parts."""
    carried = directory / "parts"
    carried.mkdir(parents=True)
    for name in ["MANIFEST", "parts.sha256", *names]:
        shutil.copy(parts / name, carried / name)
    return directory


def test_parts_travel_in_calls_and_join(payload, tmp_path):
    env, original, parts = payload
    names = sorted(p.name for p in parts.glob("*.part*"))
    assert [n[-6:] for n in names] == ["part00", "part01", "part02"]
    manifest = (parts / "MANIFEST").read_text().split()
    assert manifest[1:] == [original.name, "3"]

    first = call_with(parts, names[:1], tmp_path / "call1")
    done = run_script(GPU_SH, "receive", env={**env, "FASTELECTRA_GPU_PAYLOAD": str(first)})
    assert done.returncode == 0, done.stderr
    assert "1 of 3 parts here" in done.stderr and f"missing: {names[1]} {names[2]}" in done.stderr

    second = call_with(parts, names[1:], tmp_path / "call2")
    done = run_script(GPU_SH, "join", env={**env, "FASTELECTRA_GPU_PAYLOAD": str(second)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "device" / "files" / original.name).read_bytes() == original.read_bytes()


def test_missing_and_damaged_parts_are_named(payload, tmp_path):
    env, original, parts = payload
    names = sorted(p.name for p in parts.glob("*.part*"))
    some = call_with(parts, names[:2], tmp_path / "call1")
    done = run_script(GPU_SH, "join", env={**env, "FASTELECTRA_GPU_PAYLOAD": str(some)})
    assert done.returncode == 3
    assert f"missing: {names[2]}" in done.stderr
    assert not (tmp_path / "device" / "files" / original.name).exists()

    damaged = call_with(parts, names[2:], tmp_path / "call2")
    (damaged / "parts" / names[2]).write_bytes(b"not what was packed")
    done = run_script(GPU_SH, "receive", env={**env, "FASTELECTRA_GPU_PAYLOAD": str(damaged)})
    assert done.returncode == 4
    assert f"{names[2]} does not match its sha256" in done.stderr


def test_plan_carries_every_part_once_within_the_call_limit(payload):
    env, _, parts = payload
    # Calls just big enough for the working tree (as the plan measures it), a MiB of slack and
    # about one 1 MiB part each, however big the tree has grown.
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = [ROOT / os.fsdecode(name) for name in listed if name]
    tree = sum(p.stat().st_size for p in paths if p.is_file())
    call_mib = math.ceil(tree / 2**20) + 3
    done = run_script(GPU_WHEEL_SH, "plan", env={**env, "FASTELECTRA_GPU_CALL_MIB": str(call_mib)})
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    carried = [Path(p).name for call in calls for p in call["carry"] if ".part" in p]
    assert sorted(carried) == sorted(p.name for p in parts.glob("*.part*"))
    assert all(len(call["carry"]) <= 8 for call in calls)
    assert [c["command"] for c in calls] == ["bash benchmarks/gpu.sh receive"] * (
        len(calls) - 1
    ) + ["bash benchmarks/gpu.sh"]
    tree = float(done.stdout.split("working tree ")[1].split(" MiB")[0])
    for call in calls:
        size = sum(Path(p).stat().st_size for p in call["carry"]) / 2**20
        assert size + tree <= call_mib  # the limit this test gave the plan


def test_scripts_parse_and_pass_shellcheck():
    for script in (GPU_SH, GPU_WHEEL_SH):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", str(GPU_SH), str(GPU_WHEEL_SH)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode()
