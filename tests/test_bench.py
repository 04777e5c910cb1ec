"""`fastelectra bench` on the tiny bundle: the run completes, results.json has its structure,
floors are positive and finite, the plots exist. No assertion depends on how fast anything ran:
the machine is shared and the tiny model is all overhead."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastelectra.bench.cells import Cell, round_robin, synthetic_inputs
from fastelectra.bench.cli import default_out
from fastelectra.bench.floor import GemmRates, cell_flops, floor_seconds
from fastelectra.bundle import Dimensions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Tiny settings: the figures are meaningless, the structure is what is checked.
QUICK = ["--threads", "1", "--duration", "0.05", "--warmup", "1", "--min-runs", "3"]


def run_bench(args: list[str]) -> dict:
    """`fastelectra bench` in a fresh interpreter, which must not import TensorFlow."""
    code = (
        "import sys; from fastelectra.cli import main; rc = main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules, 'bench imported TensorFlow without --source'; "
        "sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "bench", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Latency and throughput" in proc.stdout or "--no-grid" in args
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "results.json").read_text())


def check_cells(results: dict, variants: list[str], batches: list[int], seqs: list[int]) -> None:
    cells = results["cells"]
    assert sorted((c["variant"], c["batch"], c["seq"]) for c in cells) == sorted(
        (v, b, s) for v in variants for b in batches for s in seqs
    )
    for c in cells:
        latency = c["latency_ms"]
        assert c["runs"] >= 3
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
        assert latency["p99"] <= latency["max"]
        assert c["throughput"]["tokens_per_s"] == pytest.approx(
            c["throughput"]["sequences_per_s"] * c["seq"], rel=1e-3
        )
        assert c["floor_ms"] > 0 and math.isfinite(c["floor_ms"])
        ratio = c["measured_over_floor"]
        assert ratio > 0 and math.isfinite(ratio)
        assert ratio == pytest.approx(latency["p50"] / c["floor_ms"], rel=1e-2)


def test_bench_tiny_bundle_grid_memory_traffic(tiny_bundle, tmp_path):
    out = tmp_path / "bench-tiny"
    grid = ["--batch", "1,2", "--seq", "8,32"]
    traffic = ["--traffic", "--traffic-limit", "12"]
    results = run_bench([str(tiny_bundle), *grid, *QUICK, *traffic, "--out", str(out)])
    assert results["schema"] == "fastelectra-bench/1"
    machine = results["machine"]
    assert machine["cores_available"] >= 1 and isinstance(machine["avx512_vnni"], bool)
    assert machine["cpu_model"]
    assert {"onnxruntime", "numpy", "tokenizers"} <= set(results["versions"])
    assert results["settings"]["threads"] == 1 and results["settings"]["batches"] == [1, 2]
    assert "--traffic" in results["command"]

    gemm = results["gemm"]
    assert gemm["threads"] == 1
    assert all(v > 0 for v in gemm["gflops"].values())
    assert gemm["fp32_floor_gflops"] == max(
        gemm["gflops"]["numpy_fp32"], gemm["gflops"]["onnxruntime_fp32"]
    )

    name = tiny_bundle.name
    (variant,) = results["variants"]
    assert variant["name"] == name and variant["precision"] == "fp32"
    assert variant["intra_op_threads"] == 1
    mem = variant["memory"]
    assert "error" not in mem, mem
    assert mem["peak_rss_mib"] >= mem["rss_after_load_mib"] > mem["rss_after_imports_mib"] > 0
    check_cells(results, [name], [1, 2], [8, 32])
    assert [r["p50_over_" + name] for r in results["relative_p50"]] == [1.0] * 4

    traffic = results["traffic"]
    assert traffic["texts"] == 12 and traffic["pad_to"] == 128
    assert [(r["variant"], r["batch"]) for r in traffic["runs"]] == [(name, 1), (name, 2)]
    for r in traffic["runs"]:
        assert r["fixed"]["padded_tokens"] == 12 * 128
        # Sorting by length can only remove padding; at batch 1 there is none left.
        assert r["dynamic"]["padded_tokens"] <= r["fixed"]["padded_tokens"]
        assert r["dynamic"]["texts_per_s"] > 0 and r["fixed"]["texts_per_s"] > 0
        # Same texts, same truncation, FP32: the two modes compute the same vectors.
        assert r["agreement"]["min_cosine"] > 0.9999
    assert (
        traffic["runs"][0]["dynamic"]["padded_tokens"] == traffic["tokens"]["real_after_truncation"]
    )

    assert set(results["plots"]) == {"latency_vs_seq.png", "throughput_vs_batch.png", "traffic.png"}
    for plot in results["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("### bench-tiny") and "| variant | batch | seq |" in markdown


@pytest.mark.filterwarnings("ignore:TensorFlow was already initialised:RuntimeWarning")
def test_bench_with_tensorflow_source(tiny_bundle, tiny_module, tmp_path):
    from fastelectra.cli import main

    out = tmp_path / "bench-tf"
    args = [str(tiny_bundle), "--source", str(tiny_module), "--batch", "2", "--seq", "16"]
    assert main(["bench", *args, *QUICK, "--no-memory", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = [v["name"] for v in results["variants"]]
    assert names == [tiny_bundle.name, "tensorflow"]
    tf = results["variants"][1]
    assert tf["framework"] == "tensorflow" and tf["intra_op_threads"] >= 0
    assert "memory" not in tf
    check_cells(results, names, [2], [16])
    assert results["settings"]["baselines"] == ["tensorflow", tiny_bundle.name]
    by_variant = {r["variant"]: r for r in results["relative_p50"]}
    assert by_variant["tensorflow"]["p50_over_tensorflow"] == 1.0
    assert by_variant[tiny_bundle.name]["p50_over_tensorflow"] > 0
    assert (out / "latency_vs_seq.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_bench_peers_on_minilm(minilm_bundle, tmp_path):
    out = tmp_path / "bench-peers"
    peers = ["--no-grid", "--peers", "--batch", "8", "--traffic-limit", "24"]
    results = run_bench([str(minilm_bundle), *peers, *QUICK, "--out", str(out)])
    peers = results["peers"]
    assert peers["texts"] == 24 and peers["max_seq_length"] == 256
    assert peers["reference"] == minilm_bundle.name
    assert {r["variant"] for r in peers["runs"]} == {minilm_bundle.name, "st-torch"}
    assert all(r["texts_per_s"] > 0 for r in peers["runs"])
    # The FP32 bundle is the same network as the peer: the same vectors.
    assert peers["accuracy"]["st-torch"]["min_cosine"] > 0.9999
    assert {p["name"] for p in peers["excluded"]} == {"st-onnx", "st-onnx-qint8"}
    assert all(p["reason"] for p in peers["excluded"])
    assert results["plots"] == ["peers.png"]
    assert "gemm" not in results and "cells" not in results  # --no-grid: no floor to measure


def test_flops_of_bert_base_by_hand():
    base = Dimensions(12, 768, 12, 3072, 30522, 512, 2)
    flops = cell_flops(base, batch=1, seq=128)
    per_layer = 8 * 128 * 768**2 + 4 * 128 * 768 * 3072 + 4 * 128**2 * 768
    assert flops.total == 12 * per_layer + 2 * 768**2
    assert cell_flops(base, batch=4, seq=128).total == pytest.approx(4 * flops.total)
    assert flops.weight_products + flops.attention == flops.total


def test_int8_floor_uses_int8_rate_for_weight_products_only():
    flops = cell_flops(Dimensions(2, 64, 4, 128, 100, 512, 2), batch=2, seq=64)
    rates = GemmRates(1, (8, 8, 8), numpy_fp32=1e9, onnxruntime_fp32=2e9, onnxruntime_int8=8e9)
    fp32, basis = floor_seconds(flops, "fp32", rates)
    assert fp32 == pytest.approx(flops.total / 2e9) and basis == "fp32"
    int8, _ = floor_seconds(flops, "int8-dynamic", rates)
    assert int8 == pytest.approx(flops.weight_products / 8e9 + flops.attention / 2e9)
    no_int8 = GemmRates(1, (8, 8, 8), 1e9, None, None)
    assert floor_seconds(flops, "int8-static", no_int8)[0] is None


def test_synthetic_inputs_have_the_exact_shape():
    ids, mask, segments = synthetic_inputs(Cell(3, 7), vocab_size=50, cls_id=10, sep_id=11)
    assert ids.shape == mask.shape == segments.shape == (3, 7) and ids.dtype == np.int32
    assert (ids[:, 0] == 10).all() and (ids[:, -1] == 11).all()
    assert ids[:, 1:-1].min() >= 12 and ids.max() < 50
    assert mask.all() and not segments.any()


def test_round_robin_rotates_and_gives_every_run_the_same_count():
    calls: list[str] = []
    runs = [lambda n=n: calls.append(n) or n for n in "abc"]
    samples, first = round_robin(runs, duration=0.0, min_rounds=4)
    assert [len(s) for s in samples] == [4, 4, 4] and first == ["a", "b", "c"]
    assert calls == list("abcbcacababc")


def test_round_robin_turns_settle_then_time_a_block():
    calls: list[str] = []
    runs = [lambda n=n: calls.append(n) or n for n in "ab"]
    samples, _ = round_robin(runs, duration=0.0, min_rounds=2, settle=1, block=2)
    assert [len(s) for s in samples] == [4, 4]  # settling runs are not timed
    assert calls == list("aaabbbbbbaaa")


def test_default_out_names_the_shared_prefix():
    out = default_out(["minilm-fp32", "minilm-int8-dynamic"])
    assert out.name == "bench-minilm" and out.parts[:2] == ("benchmarks", "results")
    assert default_out(["a-x-c", "a-y-c"]).name == "bench-a"
    assert default_out(["base-fp32", "electra-large-fp32"]).name == "bench-base-fp32"


def test_int8_gemm_chain_is_the_weight_products_of_the_floor(tmp_path):
    from fastelectra.bench.gemm_chain import weight_gemm_model, write_weight_gemm_model
    from fastelectra.runtime.providers import plan_execution
    from fastelectra.runtime.session import EncoderSession

    dims = Dimensions(
        layers=3,
        hidden=32,
        heads=4,
        intermediate=64,
        vocab_size=100,
        max_positions=16,
        type_vocab_size=2,
    )
    batch, seq = 2, 5
    model = weight_gemm_model(dims)
    weights = {t.name: t.dims for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    assert len(gemms) == 4 * dims.layers + 1
    assert len({n.input[1] for n in gemms}) == len(gemms)  # one matrix each, as in the model
    ops = 0
    for node in gemms:
        k, n = weights[node.input[1]]
        rows = batch if node.name == "pooler" else batch * seq
        ops += 2 * rows * k * n
    assert ops == cell_flops(dims, batch, seq).weight_products

    session = EncoderSession(
        write_weight_gemm_model(dims, tmp_path / "chain.onnx"), plan_execution("cpu", 1)
    )
    ids = np.random.default_rng(0).integers(0, dims.vocab_size, (batch, seq)).astype(np.int32)
    pooled, sequence = session.run(ids, np.ones_like(ids), np.zeros_like(ids))
    assert pooled.shape == (batch, dims.hidden) and sequence.shape == (batch, seq, dims.hidden)
    # The scales keep activations in an ordinary range through every layer.
    assert np.isfinite(sequence).all() and 0.1 < sequence.std() < 10
