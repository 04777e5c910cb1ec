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

from fastelectra.bench.cells import QUIET, Cell, round_robin, synthetic_inputs
from fastelectra.bench.cli import default_out
from fastelectra.bench.floor import GemmRates, cell_flops, floor_seconds
from fastelectra.bundle import Dimensions
from fastelectra.precisions import FP32, INT8_DYNAMIC, INT8_STATIC

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
    bandwidth = results["memory_bandwidth"]
    assert bandwidth["threads"] == 1 and bandwidth["gb_per_s"] > 0
    assert bandwidth["buffer_mib"] * 2**20 >= (machine["llc_bytes"] or 0)
    assert variant["weights"]["read_per_call_mb"] > 0
    for c in results["cells"]:
        bounds = {"compute": c["compute_floor_ms"], "memory": c["memory_floor_ms"]}
        assert c["floor_ms"] == max(bounds.values()) and c["floor_bound"] in bounds
        assert c["floor_ms"] == bounds[c["floor_bound"]]
    assert set(machine["isa"]) >= {"AVX2", "AVX-512", "AVX512-VNNI", "AVX-VNNI", "AMX"}
    assert machine["cpu_kind"]

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
    assert "| bound |" in markdown and "Memory bandwidth at 1 threads" in markdown
    assert "AVX512-VNNI" in markdown and "AMX" in markdown


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
    ours = {minilm_bundle.name, "st-torch", "openvino-fp32", "openvino-default", "openvino-int8"}
    assert {r["variant"] for r in peers["runs"]} == ours
    assert all(r["texts_per_s"] > 0 for r in peers["runs"])
    # The FP32 bundle is the same network as the peer: the same vectors.
    assert peers["accuracy"]["st-torch"]["min_cosine"] > 0.9999
    assert peers["accuracy"]["openvino-fp32"]["min_cosine"] > 0.9999
    assert peers["openvino"]["in_effect"]["openvino-int8"]["int8_products"] > 0
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
    fp32, basis = floor_seconds(flops, FP32, rates)
    assert fp32 == pytest.approx(flops.total / 2e9) and basis == "fp32"
    int8, _ = floor_seconds(flops, INT8_DYNAMIC, rates)
    assert int8 == pytest.approx(flops.weight_products / 8e9 + flops.attention / 2e9)
    no_int8 = GemmRates(1, (8, 8, 8), 1e9, None, None)
    assert floor_seconds(flops, INT8_STATIC, no_int8)[0] is None


def test_synthetic_inputs_have_the_exact_shape():
    ids, mask, segments = synthetic_inputs(Cell(3, 7), vocab_size=50, cls_id=10, sep_id=11)
    assert ids.shape == mask.shape == segments.shape == (3, 7) and ids.dtype == np.int32
    assert (ids[:, 0] == 10).all() and (ids[:, -1] == 11).all()
    assert ids[:, 1:-1].min() >= 12 and ids.max() < 50
    assert mask.all() and not segments.any()


def test_round_robin_rotates_and_gives_every_run_the_same_count():
    calls: list[str] = []
    runs = [lambda n=n: calls.append(n) or n for n in "abc"]
    samples, first = round_robin(runs, duration=0.0, min_rounds=4, pacing=QUIET)
    assert [len(s) for s in samples] == [4, 4, 4] and first == ["a", "b", "c"]
    assert calls == list("abcbcacababc")


def test_round_robin_turns_settle_then_time_a_block():
    calls: list[str] = []
    runs = [lambda n=n: calls.append(n) or n for n in "ab"]
    samples, _ = round_robin(runs, 0.0, min_rounds=2, settle=1, block=2, pacing=QUIET)
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


def test_bench_sessions_spin_as_served_and_no_spinning_is_labelled(tiny_bundle):
    from fastelectra.bench.variants import OnnxVariant, variant_from_spec
    from fastelectra.runtime.providers import plan_execution

    key = "session.intra_op.allow_spinning"
    # Serving keeps onnxruntime's default: no entry, threads spin; the bench times that.
    serving = plan_execution("cpu", 1)
    assert serving.allow_spinning
    variant = OnnxVariant.from_bundle(tiny_bundle, "cpu", 1)
    plan = variant.session.plan
    assert plan.allow_spinning and variant.describe()["allow_spinning"] is True
    assert variant.name == tiny_bundle.name
    with pytest.raises(RuntimeError, match="does not have configuration"):
        plan.session_options().get_session_config_entry(key)
    # The memory runs rebuild each variant from its spec: the same sessions.
    assert variant_from_spec(variant.spec).session.plan.allow_spinning
    quiet = OnnxVariant.from_bundle(tiny_bundle, "cpu", 1, allow_spinning=False)
    assert not quiet.session.plan.allow_spinning and quiet.name.endswith("+no-spinning")
    options = quiet.session.plan.session_options()
    assert options.get_session_config_entry(key) == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert not variant_from_spec(quiet.spec).session.plan.allow_spinning


def test_served_pacing_idles_before_every_turn_and_blocks_fill_it(monkeypatch):
    """Each turn starts after the idle (the last variant's spin ends); a block holds as many
    timed runs as the fastest variant needs to fill `turn_s`, the same for every variant; the
    quiet pacing neither sleeps nor lengthens a block."""
    from fastelectra.bench import cells

    events: list[str] = []
    monkeypatch.setattr(cells.time, "sleep", lambda s: events.append(f"idle {s}"))
    runs = [lambda n=n: events.append(n) for n in "ab"]
    pacing = cells.Pacing(idle_s=0.3, turn_s=0.2)
    samples, _ = cells.round_robin(runs, 0.0, 1, settle=1, block=4, pacing=pacing)
    assert events == ["idle 0.3", *["a"] * 5, "idle 0.3", *["b"] * 5]  # 1 settle + 4 timed
    assert [len(s) for s in samples] == [4, 4]
    events.clear()
    samples, _ = cells.round_robin(runs, 0.0, 1, settle=1, block=3, pacing=cells.QUIET)
    assert events == [*["a"] * 4, *["b"] * 4] and [len(s) for s in samples] == [3, 3]

    assert pacing.block_runs(0.002) == 100  # a 2 ms run: 100 of them fill 0.2 s
    assert pacing.block_runs(1.5) == cells.BLOCK_RUNS  # never fewer than the block
    assert cells.QUIET.block_runs(0.002) == cells.BLOCK_RUNS


def test_cpu_kind_names_family_and_widest_isa(tmp_path):
    from fastelectra.bench.machine import cpu_kind, isa_features

    def kind(model: str, vendor: str, flags: str) -> str:
        info = tmp_path / "cpuinfo"
        info.write_text(f"vendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\n")
        return cpu_kind(info)

    assert kind("Intel(R) Xeon(R) Processor", "GenuineIntel", "avx avx2 avx512f") == "xeon-avx512"
    assert kind("Intel(R) Xeon(R) Platinum 8480+", "GenuineIntel", "avx2 avx512f amx_tile") == (
        "xeon-amx"
    )
    assert kind("AMD EPYC 7B13", "AuthenticAMD", "avx avx2") == "epyc-avx2"
    assert kind("QEMU Virtual CPU", "AuthenticAMD", "sse2") == "amd"
    isa = isa_features({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"})
    assert isa["AVX2"] and isa["AVX-512"] and isa["AVX512-VNNI"] and isa["AVX-VNNI"]
    assert isa["AVX512-BF16"] and not isa["AMX"] and not isa["AVX512-FP16"]


def test_results_folder_is_date_and_cpu_kind():
    from datetime import date

    from fastelectra.bench.machine import cpu_kind, results_dir

    assert results_dir(Path("r"), date(2026, 12, 1)) == Path(f"r/2026-12-01-{cpu_kind()}")
    assert default_out(["minilm-fp32"]).parent == results_dir()


def test_weight_bytes_count_int8_fp32_and_leave_lookups_out(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    from fastelectra.bench.weights import model_weight_bytes

    table = numpy_helper.from_array(np.zeros((1000, 8), np.float32), "table")
    w_int8 = numpy_helper.from_array(np.zeros((8, 16), np.int8), "w_int8")
    w_fp32 = numpy_helper.from_array(np.zeros((16, 8), np.float32), "w_fp32")  # kept FP32
    unused = numpy_helper.from_array(np.zeros(64, np.float32), "unused")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"]),
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "scale", "zero"]),
        helper.make_node("MatMulInteger", ["xq", "w_int8", "zero"], ["y"]),
        helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["yf", "w_fp32"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])],
        [table, w_int8, w_fp32, unused],
    )
    save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    weights = model_weight_bytes(tmp_path / "m.onnx")
    assert weights.by_dtype == {"int8": 8 * 16, "float32": 16 * 8 * 4}
    assert weights.read_per_call == 8 * 16 + 16 * 8 * 4
    assert weights.lookup_tables == 1000 * 8 * 4


def test_weight_bytes_of_the_tiny_bundle_are_its_matrices(tiny_bundle):
    from fastelectra.bench.weights import matrix_weights, model_weight_bytes
    from fastelectra.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    dims = bundle.meta.dimensions
    weights = model_weight_bytes(bundle.model_path)
    matrices = 4 * matrix_weights(dims)
    # The FP32 matrices, plus biases and LayerNorm parameters (a few per cent).
    assert matrices <= weights.read_per_call <= 1.1 * matrices
    assert weights.lookup_tables >= 4 * dims.vocab_size * dims.hidden


def test_floor_is_the_larger_of_compute_and_weight_streaming():
    from fastelectra.bench.floor import cell_floor

    dims = Dimensions(24, 1024, 16, 4096, 30522, 512, 2)  # ELECTRA-large
    rates = GemmRates(2, (8, 8, 8), numpy_fp32=1e11, onnxruntime_fp32=2e11, onnxruntime_int8=8e11)
    weights, bandwidth = 1.34e9, 20e9
    small = cell_flops(dims, batch=1, seq=16)
    floor = cell_floor(small, FP32, rates, int(weights), bandwidth)
    assert floor.compute_seconds == pytest.approx(small.total / 2e11)
    assert floor.memory_seconds == pytest.approx(weights / bandwidth)
    assert floor.bound == "memory" and floor.seconds == floor.memory_seconds
    big = cell_flops(dims, batch=32, seq=512)
    floor = cell_floor(big, FP32, rates, int(weights), bandwidth)
    assert floor.bound == "compute" and floor.seconds == floor.compute_seconds
    # Without a bandwidth figure the floor is the compute floor, as before.
    alone = cell_floor(small, FP32, rates, int(weights), None)
    assert alone.seconds == floor_seconds(small, FP32, rates)[0] and alone.bound == "compute"


def test_op_times_sums_onnxruntime_kernels_per_op_type(tmp_path):
    """The profiler's kernel events summed per op type, per run, with shares that add up."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from fastelectra.bench.op_times import OpTimes, onnxruntime_op_times

    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"]), helper.make_node("Relu", ["Y"], ["Z"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [4, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.profile_file_prefix = str(tmp_path / "trace")
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"X": np.ones((4, 8), np.float32)})
    trace = Path(session.end_profiling())
    summary = onnxruntime_op_times(trace, 3).to_json("kernel_ms_per_run", "ops", "op")
    assert not trace.exists()  # read once, then removed
    assert {op["op"]: op["nodes"] for op in summary["ops"]} == {"MatMul": 1, "Relu": 1}
    assert sum(op["share"] for op in summary["ops"]) == pytest.approx(1.0, abs=0.002)

    times = OpTimes(calls=2)
    for key, us in (("a", 3000.0), ("b", 1000.0), ("a", 1000.0), ("b", 3000.0), ("a", 2000.0)):
        times.add(key, us)
    out = times.to_json("total", "items", "name")
    assert out["total"] == 5.0 and [i["name"] for i in out["items"]] == ["a", "b"]
    assert out["items"][0] == {"name": "a", "ms_per_run": 3.0, "nodes": 1, "share": 0.6}


@pytest.mark.parametrize(
    "words",
    [
        ["b1"],
        ["b1", "b2", "--source", "tiny", "--batch", "2,4", "--seq", "8", "--threads", "3"],
        ["b1", "--peers", "--traffic", "--traffic-limit", "9", "--no-grid", "--no-memory"],
        ["b1", "--traffic", "t.txt", "--traffic-pad", "64", "--no-spinning", "--out", "o"],
    ],
)
def test_bench_options_spell_every_setting_back(words):
    """`BenchOptions.command()` is what results.json records as the run's command: parsed
    again, it gives the same options (defaults included), so the record reproduces the run."""
    import argparse
    import shlex

    from fastelectra.bench.cli import BenchOptions, add_bench_arguments

    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    options = BenchOptions.from_args(parser.parse_args(words))
    spelled = shlex.split(options.command())
    assert spelled[:2] == ["fastelectra", "bench"]
    assert BenchOptions.from_args(parser.parse_args(spelled[2:])) == options
    assert options.spinning is ("--no-spinning" not in words)
    with pytest.raises(ValueError, match="--warmup"):
        BenchOptions(bundles=("b1",), warmup=-1)
