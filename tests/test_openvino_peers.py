"""OpenVINO FP32 / NNCF INT8 as peers of the tiny bundle in `fastelectra bench --peers`: they
run in the same round-robin, compute the FP32 bundle's vectors (FP32) or close to them (INT8,
with INT8 kernels really in use), and are excluded with the reason when there is no SavedModel.

The graph helpers (which output is sequence_output, Einsum -> MatMul) are checked on small
hand-built OpenVINO models, so the dict-IO layouts need no TF Hub generation built here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bench import run_bench

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import openvino as ov
import openvino.opset13 as ops

from fastelectra.bench.openvino_peer import (
    OPENVINO_DEFAULT,
    OPENVINO_FP32,
    OPENVINO_INT8,
    compile_config,
    encoder_outputs,
    find_saved_model,
    input_names,
    weight_einsums_to_matmuls,
)
from fastelectra.calibration.feeds import default_calibration_texts
from fastelectra.convert.source import SourceError
from fastelectra.errors import ToolError

BATCHES = [1, 4]


def test_bench_peers_time_openvino_fp32_and_int8_beside_the_bundle(
    tiny_bundle, tiny_module, tmp_path
):
    out = tmp_path / "bench-ov"
    args = [str(tiny_bundle), "--peers", "--no-grid", "--no-memory", "--duration", "0.2"]
    args += ["--traffic-limit", "8", "--batch", ",".join(map(str, BATCHES)), "--threads", "1"]
    results = run_bench([*args, "--warmup", "1", "--out", str(out)])
    peers = results["peers"]
    name = tiny_bundle.name
    assert peers["reference"] == name
    # One round-robin: every variant at every batch, the OpenVINO ones as peers.
    kinds = {(r["variant"], r["batch"]): r["kind"] for r in peers["runs"]}
    for batch in BATCHES:
        assert kinds[name, batch] == "bundle"
        for peer in (OPENVINO_FP32, OPENVINO_DEFAULT, OPENVINO_INT8):
            assert kinds[peer, batch] == "peer"
    passes = {r["variant"]: r["passes"] for r in peers["runs"] if r["batch"] == BATCHES[0]}
    assert len(set(passes.values())) == 1  # round-robin: the same number of passes each
    assert all(r["texts_per_s"] > 0 for r in peers["runs"])

    # The same model, tokenized by the bundle's tokenizer, pooled by the runtime's code.
    fp32, int8 = peers["accuracy"][OPENVINO_FP32], peers["accuracy"][OPENVINO_INT8]
    assert fp32["min_cosine"] >= 0.9999
    assert math.isfinite(int8["min_cosine"]) and 0.9 < int8["min_cosine"] <= 1.0
    # Every row carries its verdict against the bundles' gate for mean-pooled vectors.
    assert fp32["gate"]["passed"] is True and fp32["gate"]["failures"] == []
    assert peers["accuracy"][name]["gate"]["passed"] is True
    default = peers["accuracy"][OPENVINO_DEFAULT]
    bounds = default["gate"]["bounds"]
    assert bounds == {"mean_cosine": 0.995, "min_cosine": 0.98}
    meets = default["mean_cosine"] >= 0.995 and default["min_cosine"] >= 0.98
    assert default["gate"]["passed"] is meets and bool(default["gate"]["failures"]) is not meets
    assert {p["name"] for p in peers["excluded"]} == {"st-onnx", "st-onnx-qint8"}

    info = peers["openvino"]
    assert info["versions"] == {"openvino": results["versions"]["openvino"], "nncf": "3.4.0"}
    assert Path(info["saved_model"]) == tiny_module
    assert info["saved_model_from"] == f"{name}'s fastelectra.json source"
    assert info["inputs"]["segment_ids"] == "segment_ids"
    assert info["graph"] == {"einsums_as_matmul": 12, "einsums_left": 4}  # 2 layers x 6, 2 x 2
    assert info["convert_s"] > 0 and info["quantize_s"] > 0
    nncf = info["nncf"]
    assert nncf["model_type"] == "TRANSFORMER" and nncf["fake_quantize_nodes"] > 0
    assert nncf["subset_size"] == len(default_calibration_texts())
    for peer in (OPENVINO_FP32, OPENVINO_INT8):
        effect = info["in_effect"][peer]
        assert effect["INFERENCE_NUM_THREADS"] == "1" and effect["NUM_STREAMS"] == "1"
        assert effect["INFERENCE_PRECISION_HINT"] == "f32"
        assert effect["PERFORMANCE_HINT"] == "LATENCY"
    # As a user gets it: the thread budget alone; the plugin picks its precision (bf16 where the
    # CPU has AVX512-BF16 or AMX), recorded as it ran.
    assert info["config"][OPENVINO_DEFAULT] == {"INFERENCE_NUM_THREADS": 1}
    in_effect = info["in_effect"][OPENVINO_DEFAULT]["INFERENCE_PRECISION_HINT"]
    assert in_effect == ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    # INT8 kernels run in the INT8 peer (all 12 weight products and the pooler), none in FP32.
    assert info["in_effect"][OPENVINO_INT8]["int8_products"] >= 12
    assert info["in_effect"][OPENVINO_FP32]["int8_products"] == 0

    markdown = (out / "results.md").read_text()
    assert f"| {OPENVINO_FP32} | {BATCHES[0]} |" in markdown
    assert f"| {OPENVINO_INT8} | {BATCHES[1]} |" in markdown
    assert f"| {OPENVINO_DEFAULT} | {BATCHES[0]} |" in markdown
    assert f"{OPENVINO_DEFAULT}: INFERENCE_NUM_THREADS=1 (runs {in_effect})" in markdown
    assert "OpenVINO 2026.4.1: converted from" in markdown and "subset_size=" in markdown
    assert "peers.png" in results["plots"]


def test_openvino_peers_excluded_without_a_saved_model(tiny_bundle, tmp_path):
    from fastelectra.bench.peers import run_peers
    from fastelectra.bench.variants import OnnxVariant

    moved = tmp_path / "tiny-moved"
    shutil.copytree(tiny_bundle, moved)
    meta = json.loads((moved / "fastelectra.json").read_text())
    meta["source"] = str(tmp_path / "gone" / "tiny-hub-v1")  # built elsewhere, since removed
    (moved / "fastelectra.json").write_text(json.dumps(meta))
    variant = OnnxVariant.from_bundle(moved, "cpu", 1)

    texts = ["a short text", "another one, a little longer than the first"]
    peers = run_peers([variant], texts, [2], 1, 0.01, 0, lambda _: None)
    assert {r["variant"] for r in peers["runs"]} == {"tiny-moved", "st-torch"}
    assert peers["openvino"] is None
    reasons = {p["name"]: p["reason"] for p in peers["excluded"]}
    for name in (OPENVINO_FP32, OPENVINO_DEFAULT, OPENVINO_INT8):
        assert "no SavedModel to convert" in reasons[name]
        assert "tiny-moved's fastelectra.json source" in reasons[name]
        assert meta["source"] in reasons[name]

    # --source overrides the recorded source; a preset name is built into the cache.
    path, where = find_saved_model(variant, "tiny")
    assert where == "--source" and (path / "saved_model.pb").is_file()
    with pytest.raises(SourceError, match=r"--source '/nowhere/model'"):
        find_saved_model(variant, "/nowhere/model")


def test_missing_packages_name_the_extra(monkeypatch):
    from fastelectra.bench import openvino_peer
    from fastelectra.errors import DependencyMissing

    monkeypatch.setattr(openvino_peer, "library_versions", lambda names: {"openvino": "1"})
    with pytest.raises(DependencyMissing, match=r"need nncf \(not installed\).*\[openvino\]"):
        openvino_peer.check_installed()


def _parameter(name: str, rank: int) -> ov.Node:
    node = ops.parameter([-1] * rank, ov.Type.i32 if rank == 2 else ov.Type.f32, name=name)
    node.output(0).get_tensor().set_names({name})
    return node


def _named(node: ov.Node, *names: str) -> ov.Output:
    port = node.output(0)
    port.get_tensor().set_names(set(names))
    return port


def dict_export_like() -> ov.Model:
    """Outputs as a TF Hub dict export's signature gives them: numbered keys, the pooled
    tensor twice (default, pooled_output), the last layer twice (encoder_outputs[-1],
    sequence_output); pooled = tanh(dense(sequence[:, 0]))."""
    x = ops.parameter([-1, -1, 8], ov.Type.f32, name="embeddings")
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    layer0 = ops.relu(ops.matmul(x, ops.constant(w), False, False))
    layer1 = ops.relu(ops.matmul(layer0, ops.constant(w), False, False))
    first = ops.gather(layer1, ops.constant(np.int64(0)), ops.constant(np.int64(1)))
    pooled = ops.tanh(ops.matmul(first, ops.constant(w), False, False))
    outputs = [
        _named(pooled, "bert_encoder_1", "bert_encoder_1_3"),
        _named(layer0, "bert_encoder_1_1"),
        _named(layer1, "bert_encoder_1_2", "bert_encoder_1_4"),
    ]
    return ov.Model([outputs[0], outputs[1], outputs[2], outputs[0], outputs[2]], [x], "m")


def test_sequence_output_is_the_one_the_pooler_reads():
    model = dict_export_like()
    pooled, sequence = encoder_outputs(model)
    assert "bert_encoder_1" in pooled.get_names()
    assert sequence.get_names() == {"bert_encoder_1_2", "bert_encoder_1_4"}  # not layer 0


def test_named_outputs_are_taken_by_name():
    x = ops.parameter([-1, -1, 8], ov.Type.f32, name="x")
    a, b = ops.relu(x), ops.tanh(x)  # both rank 3: only the names can tell
    first = ops.gather(a, ops.constant(np.int64(0)), ops.constant(np.int64(1)))
    model = ov.Model(
        [_named(b, "sequence_output"), _named(a, "other"), _named(first, "pooled_output")], [x]
    )
    pooled, sequence = encoder_outputs(model)
    assert pooled.get_names() == {"pooled_output"} and sequence.get_names() == {"sequence_output"}


def test_outputs_that_are_no_encoders_fail_clearly():
    x = ops.parameter([-1, -1, 8], ov.Type.f32, name="x")
    model = ov.Model([_named(ops.relu(x), "logits")], [x])
    with pytest.raises(ToolError, match=r"not an encoder's.*\['logits'\]"):
        encoder_outputs(model)


def test_inputs_are_mapped_by_name_for_both_generations():
    def model(*names: str) -> ov.Model:
        params = [_parameter(n, 2) for n in names]
        total = ops.add(ops.add(params[0], params[1]), params[2])
        return ov.Model([total.output(0)], params)

    legacy = input_names(model("input_word_ids", "input_mask", "segment_ids"))
    assert legacy == {n: n for n in ("input_word_ids", "input_mask", "segment_ids")}
    dict_io = input_names(model("input_mask", "input_type_ids", "input_word_ids"))
    assert dict_io["segment_ids"] == "input_type_ids" and dict_io["input_mask"] == "input_mask"
    with pytest.raises(ToolError, match="inputs are input_mask, input_word_ids, token_type"):
        input_names(model("input_word_ids", "input_mask", "token_type"))


def test_weight_einsums_become_matmuls_with_the_same_values():
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, -1, 6], ov.Type.f32, name="x")
    qkv = ops.einsum([x, ops.constant(rng.standard_normal((6, 2, 3), np.float32))], "abc,cde->abde")
    attention = ops.einsum([qkv, qkv], "aecd,abcd->acbe")  # two activations: stays Einsum
    out = ops.einsum(
        [qkv, ops.constant(rng.standard_normal((2, 3, 6), np.float32))], "abcd,cde->abe"
    )
    ffn = ops.einsum([out, ops.constant(rng.standard_normal((6, 5), np.float32))], "abc,cd->abd")
    model = ov.Model([attention.output(0), ffn.output(0)], [x])
    feed = rng.standard_normal((2, 7, 6)).astype(np.float32)
    # f32 asked for: on a CPU with AVX512-BF16 the plugin would otherwise run bf16.
    before = ov.Core().compile_model(model, "CPU", compile_config(1))(feed)
    before = [before[0].copy(), before[1].copy()]

    assert weight_einsums_to_matmuls(model) == (3, 1)
    kinds = [op.get_type_name() for op in model.get_ops()]
    assert kinds.count("Einsum") == 1 and kinds.count("MatMul") == 3
    after = ov.Core().compile_model(model, "CPU", compile_config(1))(feed)
    assert np.allclose(after[0], before[0], atol=1e-5) and np.allclose(
        after[1], before[1], atol=1e-5
    )
