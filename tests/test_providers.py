"""Provider option building and fallback, without a GPU: `available` is faked."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest

from fastelectra.bundle import Bundle, BundleMeta, Dimensions
from fastelectra.precisions import FP16, INT8_STATIC, Precision
from fastelectra.runtime import providers as P
from fastelectra.runtime.providers import EngineProfile

CPU_ONLY = ["CPUExecutionProvider"]
CUDA_BOX = ["CUDAExecutionProvider", "CPUExecutionProvider"]
TRT_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def plan(providers, available, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback expected unless the test says so
        return P.plan_execution(providers, available=available, **kw)


def test_cpu_default_uses_the_cores_we_may_run_on(monkeypatch):
    monkeypatch.setattr(P.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    p = plan(None, CPU_ONLY)
    assert p.providers == ("CPUExecutionProvider",)
    assert p.provider_options == ({},)
    assert p.intra_op_num_threads == 3
    assert p.inter_op_num_threads == 1
    assert p.device == "cpu" and p.max_batch is None
    options = p.session_options()
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_threads_argument_and_validation():
    assert plan("cpu", CPU_ONLY, threads=2).intra_op_num_threads == 2
    with pytest.raises(ValueError):
        P.plan_execution("cpu", threads=0, available=CPU_ONLY)
    with pytest.raises(TypeError):
        P.plan_execution("cpu", threads="4", available=CPU_ONLY)


def test_available_providers_default_to_onnxruntimes(monkeypatch):
    monkeypatch.setattr(P.ort, "get_available_providers", lambda: CUDA_BOX)
    p = P.plan_execution("cuda")
    assert p.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_cuda_options():
    p = plan("cuda:1", CUDA_BOX)
    assert p.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    cuda = p.provider_options[0]
    assert cuda["device_id"] == "1"
    assert cuda["arena_extend_strategy"] == "kSameAsRequested"
    assert cuda["cudnn_conv_algo_search"] == "DEFAULT"
    assert p.device == "cuda" and p.device_id == 1
    assert all(isinstance(v, str) for v in cuda.values())


def test_a_bare_name_options_pair():
    p = plan(("cuda", {"device_id": 3}), CUDA_BOX)
    assert p.providers[0] == "CUDAExecutionProvider" and p.device_id == 3


def test_user_options_override_ours():
    p = plan([("cuda", {"device_id": 2, "arena_extend_strategy": "kNextPowerOfTwo"})], CUDA_BOX)
    assert p.provider_options[0]["device_id"] == "2"
    assert p.provider_options[0]["arena_extend_strategy"] == "kNextPowerOfTwo"
    assert p.device_id == 2


def test_tensorrt_options_fp32(tmp_path):
    engine = EngineProfile(max_length=128, max_batch=16, cache_key="abc", cache_root=tmp_path)
    p = plan("tensorrt", TRT_BOX, engine=engine)
    assert p.providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    trt = p.provider_options[0]
    assert trt["trt_profile_min_shapes"] == "input_word_ids:1x1,input_mask:1x1,segment_ids:1x1"
    assert (
        trt["trt_profile_max_shapes"]
        == "input_word_ids:16x128,input_mask:16x128,segment_ids:16x128"
    )
    assert trt["trt_profile_opt_shapes"].startswith("input_word_ids:16x128,")
    assert trt["trt_engine_cache_enable"] == "1"
    assert Path(trt["trt_engine_cache_path"]).is_relative_to(tmp_path / "abc")
    assert trt["trt_timing_cache_enable"] == "1"
    assert trt["trt_fp16_enable"] == "0"
    assert "trt_int8_enable" not in trt
    assert p.provider_options[1]["device_id"] == "0"  # CUDA behind TensorRT
    assert p.max_batch == 16
    assert trt["trt_engine_cache_path"] in p.cache_dirs


def test_tensorrt_fp16():
    trt = plan("tensorrt", TRT_BOX, engine=EngineProfile(FP16)).provider_options[0]
    assert trt["trt_fp16_enable"] == "1"
    assert "trt_int8_enable" not in trt


def test_tensorrt_int8_static_uses_calibration_table(tmp_path):
    table = tmp_path / "calibration.flatbuffers"
    engine = EngineProfile(INT8_STATIC, calibration_table=table)
    trt = plan("tensorrt", TRT_BOX, engine=engine).provider_options[0]
    assert trt["trt_int8_enable"] == "1"
    assert trt["trt_int8_calibration_table_name"] == str(table)
    assert Path(trt["trt_int8_calibration_table_name"]).is_absolute()


def test_tensorrt_int8_static_qdq_model_gets_no_table(tmp_path):
    """TensorRT refuses a calibration table for a model with Q/DQ nodes: scales come from them."""
    engine = EngineProfile(
        INT8_STATIC, calibration_table=tmp_path / "calibration.flatbuffers", qdq=True
    )
    trt = plan("tensorrt", TRT_BOX, engine=engine).provider_options[0]
    assert trt["trt_int8_enable"] == "1"
    assert "trt_int8_calibration_table_name" not in trt


def test_tensorrt_int8_static_without_table_warns():
    with pytest.warns(RuntimeWarning, match="calibration"):
        trt = P.plan_execution(
            "tensorrt", engine=EngineProfile(INT8_STATIC), available=TRT_BOX
        ).provider_options[0]
    assert "trt_int8_enable" not in trt


def test_default_trt_cache_is_under_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTELECTRA_TRT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    trt = plan("tensorrt", TRT_BOX, engine=EngineProfile(cache_key="0123")).provider_options[0]
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / ".cache/fastelectra/trt/0123"))
    monkeypatch.setenv("FASTELECTRA_TRT_CACHE", str(tmp_path / "elsewhere"))
    trt = plan("tensorrt", TRT_BOX, engine=EngineProfile(cache_key="0123")).provider_options[0]
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / "elsewhere/0123"))


def make_bundle(tmp_path: Path, precision: Precision, table: bool) -> Bundle:
    if table:
        (tmp_path / "calibration.flatbuffers").write_bytes(b"table")
    meta = BundleMeta(
        source="test",
        dimensions=Dimensions(2, 32, 2, 64, 100, 64, 2),
        precision=precision,
        max_sequence_length=64,
        files={"model.onnx": "a" * 64, "tokenizer.json": "b" * 64},
    )
    return Bundle(tmp_path, meta, None)


def test_plan_for_bundle(tmp_path):
    bundle = make_bundle(tmp_path, INT8_STATIC, table=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = P.plan_for_bundle(bundle, "tensorrt", max_batch=8, available=TRT_BOX)
    trt = p.provider_options[0]
    assert trt["trt_profile_max_shapes"] == "input_word_ids:8x64,input_mask:8x64,segment_ids:8x64"
    assert trt["trt_int8_calibration_table_name"] == str(tmp_path / "calibration.flatbuffers")
    key = P.bundle_cache_key(bundle.meta.files)
    assert f"/{key}/" in trt["trt_engine_cache_path"]
    # Another bundle (other file hashes) gets another engine cache.
    bundle.meta.files["model.onnx"] = "c" * 64
    assert P.bundle_cache_key(bundle.meta.files) != key
    # max_length narrows the profile (and the cache directory with it).
    narrow = P.plan_for_bundle(bundle, "tensorrt", max_length=32, available=TRT_BOX)
    assert narrow.provider_options[0]["trt_profile_max_shapes"].endswith("x32")
    # What fastelectra builds is QDQ: then the table stays out of TensorRT's options.
    bundle.meta.quantization = {"format": "QDQ"}
    qdq = P.plan_for_bundle(bundle, "tensorrt", available=TRT_BOX).provider_options[0]
    assert qdq["trt_int8_enable"] == "1" and "trt_int8_calibration_table_name" not in qdq


@pytest.mark.parametrize(
    ("requested", "available", "expected", "missing"),
    [
        ("tensorrt", CUDA_BOX, ("CUDAExecutionProvider", "CPUExecutionProvider"), "Tensorrt"),
        ("tensorrt", CPU_ONLY, ("CPUExecutionProvider",), "Tensorrt"),
        ("cuda", CPU_ONLY, ("CPUExecutionProvider",), "CUDA"),
        ("OpenVINOExecutionProvider", CPU_ONLY, ("CPUExecutionProvider",), "OpenVINO"),
    ],
)
def test_missing_provider_falls_back_with_warning(requested, available, expected, missing):
    with pytest.warns(RuntimeWarning, match=missing) as record:
        p = P.plan_execution(requested, available=available)
    assert p.providers == expected
    message = str(record[0].message)
    assert f"using {expected[0]} instead" in message
    if expected[0] == "CUDAExecutionProvider":  # CUDA gets its options after the fallback
        assert p.provider_options[0]["cudnn_conv_algo_search"] == "DEFAULT"
    else:
        assert p.device == "cpu"


def test_fallback_warns_once_per_missing_provider():
    with pytest.warns(RuntimeWarning) as record:
        P.plan_execution(["tensorrt", "cuda", "cpu"], available=CPU_ONLY)
    assert len(record) == 2  # tensorrt, cuda
    assert [r.category for r in record] == [RuntimeWarning, RuntimeWarning]
    assert {r.filename for r in record} == {__file__}  # points at the caller, not at us


def test_list_is_deduplicated_and_cpu_closes_it():
    p = plan(["cuda", "cuda", "cpu"], CUDA_BOX)
    assert p.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    p = plan(["CUDAExecutionProvider"], CUDA_BOX)
    assert p.providers[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", 3, [], [3], [("cuda", "x")]])
def test_bad_provider_specs(bad):
    with pytest.raises((TypeError, ValueError)):
        P.plan_execution(bad, available=TRT_BOX)


def test_engine_profile_refuses_an_empty_shape():
    with pytest.raises(ValueError, match="max_batch and max_length"):
        EngineProfile(max_batch=0)
    with pytest.raises(ValueError, match="max_batch and max_length"):
        P.plan_for_bundle(make_bundle_for_shape(), "cpu", max_batch=0, available=CPU_ONLY)


def make_bundle_for_shape() -> Bundle:
    meta = BundleMeta(source="test", dimensions=Dimensions(2, 32, 2, 64, 100, 64, 2))
    return Bundle(Path("."), meta, None)


def test_plan_carries_extra_session_settings_and_profiling():
    import dataclasses

    profiled = dataclasses.replace(
        plan("cpu", CPU_ONLY, threads=1),
        session_config=(("session.dynamic_block_base", "4"),),
        enable_profiling=True,
    )
    options = profiled.session_options()
    assert options.get_session_config_entry("session.dynamic_block_base") == "4"
    assert options.enable_profiling is True
    assert (
        P.plan_execution("cpu", 1, available=CPU_ONLY).session_options().enable_profiling is False
    )
