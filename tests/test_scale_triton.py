"""`fastelectra export-triton`: the model repository, its config.pbtxt as Triton's own
ModelConfig protobuf parses it, and the files a client and the server need.

No Triton server runs here: the config is checked by Triton's model-config protobuf
(`tritonclient.grpc.model_config_pb2`), and the exported model by onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fastelectra.bundle import (
    META_FILE,
    TRT_CALIBRATION_FILE,
    BundleMeta,
    finalize_meta,
    sha256_file,
)
from fastelectra.cli import main
from fastelectra.runtime import Encoder
from fastelectra.runtime.tokenizer import WordPieceTokenizer, pad_batch
from fastelectra.scale import triton
from fastelectra.scale.triton import TritonOptions, export_triton

HIDDEN = 64  # the tiny preset's hidden size
MAX_LENGTH = 512  # and its max_sequence_length


def parse(model_dir: Path) -> mc.ModelConfig:
    """config.pbtxt parsed the way the server parses it: text format into ModelConfig."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def tensorrt_parameters(config: mc.ModelConfig) -> dict[str, str]:
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    return dict(accelerators[0].parameters)


def variant(bundle: Path, out: Path, **changes: object) -> Path:
    """A copy of `bundle` with metadata fields changed (and re-hashed), as a builder would
    write a bundle of another precision; the exporter reads nothing else."""
    shutil.copytree(bundle, out)
    meta = BundleMeta.from_json({**json.loads((out / META_FILE).read_text()), **changes})
    finalize_meta(out, meta)
    return out


@pytest.fixture(scope="module")
def int8_static_bundle(tiny_module, tmp_path_factory) -> Path:
    """A real int8-static build: QDQ model plus a TensorRT calibration table."""
    from fastelectra.convert.build import build

    out = tmp_path_factory.mktemp("bundles") / "tiny-int8-static"
    # force: the random-weight tiny model is not what the INT8 gate is tuned for.
    return build(tiny_module, out, precision="int8-static", force=True, progress=None).out


def test_default_export_parses_as_triton_model_config(tiny_bundle, tmp_path):
    model_dir = export_triton(tiny_bundle, tmp_path / "repo")

    assert model_dir == tmp_path / "repo" / tiny_bundle.name
    config = parse(model_dir)
    assert config.name == tiny_bundle.name
    assert (config.backend, config.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert config.max_batch_size == 64
    assert config.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_word_ids", mc.TYPE_INT32, [-1]),
        ("input_mask", mc.TYPE_INT32, [-1]),
        ("segment_ids", mc.TYPE_INT32, [-1]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("pooled_output", mc.TYPE_FP32, [HIDDEN]),
        ("sequence_output", mc.TYPE_FP32, [-1, HIDDEN]),
    ]
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_GPU)
    ]
    assert list(config.dynamic_batching.preferred_batch_size) == [32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    params = tensorrt_parameters(config)
    assert params["precision_mode"] == "FP32"
    assert params["trt_profile_max_shapes"] == (
        f"input_word_ids:64x{MAX_LENGTH},input_mask:64x{MAX_LENGTH},segment_ids:64x{MAX_LENGTH}"
    )
    assert params["trt_profile_min_shapes"].startswith("input_word_ids:1x1,")
    assert "int8_calibration_table_name" not in params
    assert "trt_engine_cache_enable" not in params  # no cache directory was given


def test_repository_files(tiny_bundle, tmp_path):
    model_dir = export_triton(tiny_bundle, tmp_path / "repo")

    assert sorted(p.name for p in model_dir.iterdir()) == [
        "1",
        "config.pbtxt",
        triton.MARKER_FILE,
    ]
    marker = json.loads((model_dir / triton.MARKER_FILE).read_text())
    assert marker["files"] == ["1/model.onnx", "1/tokenizer.json", "config.pbtxt"]
    version = model_dir / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "tokenizer.json"]
    model = version / "model.onnx"
    # Same filesystem: a hard link, not a copy of the model.
    assert model.stat().st_ino == (tiny_bundle / "model.onnx").stat().st_ino
    assert sha256_file(version / "tokenizer.json") == sha256_file(tiny_bundle / "tokenizer.json")
    # mkdtemp makes the staging directory 0700; the server may run as another user.
    umask = triton.current_umask()
    assert model_dir.stat().st_mode & 0o777 == 0o777 & ~umask
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]


def test_copies_the_model_when_it_cannot_hard_link(tiny_bundle, tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(triton.os, "link", refuse)
    model = export_triton(tiny_bundle, tmp_path / "repo") / "1" / "model.onnx"

    assert model.stat().st_ino != (tiny_bundle / "model.onnx").stat().st_ino
    assert sha256_file(model) == sha256_file(tiny_bundle / "model.onnx")


def test_config_matches_the_model_a_client_runs(tiny_bundle, tmp_path):
    """What the config declares is what the exported model takes and gives, and a client
    using only the repository (tokenizer.json + model) gets the bundle's own results."""
    model_dir = export_triton(tiny_bundle, tmp_path / "repo")
    config = parse(model_dir)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    assert {i.name: i.type for i in session.get_inputs()} == {
        i.name: "tensor(int32)" for i in config.input
    }
    assert {o.name for o in session.get_outputs()} == {o.name for o in config.output}

    texts = ["a short one", "a somewhat longer text about a fox and a lazy dog"]
    tokenizer = WordPieceTokenizer.from_file(model_dir / "1" / "tokenizer.json")
    ids, mask, segments = pad_batch(tokenizer.encode(texts, max_length=MAX_LENGTH))
    feed = dict(zip([i.name for i in config.input], (ids, mask, segments), strict=True))
    pooled, sequence = session.run([o.name for o in config.output], feed)

    declared = {o.name: list(o.dims) for o in config.output}
    assert list(pooled.shape) == [len(texts), *declared["pooled_output"]]
    assert sequence.shape[0] == len(texts) and sequence.shape[2] == declared["sequence_output"][1]
    expected = Encoder.load(tiny_bundle).encode(texts).pooled
    np.testing.assert_allclose(pooled, expected, atol=1e-5)


def test_cli_options_reach_the_config(tiny_bundle, tmp_path, capsys):
    code = main(
        [
            "export-triton",
            str(tiny_bundle),
            str(tmp_path / "repo"),
            "--name",
            "encoder",
            "--max-batch-size",
            "8",
            "--instances",
            "3",
            "--kind",
            "KIND_CPU",
            "--max-queue-delay-us",
            "100",
        ]
    )

    assert code == 0
    model_dir = tmp_path / "repo" / "encoder"
    assert capsys.readouterr().out.strip() == str(model_dir)
    config = parse(model_dir)
    assert config.name == "encoder"
    assert config.max_batch_size == 8
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (3, mc.ModelInstanceGroup.KIND_CPU)
    ]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    # TensorRT defaults to off on CPU instances: the backend would ignore it there.
    assert not config.HasField("optimization")


def test_cli_no_tensorrt_and_caches(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(tiny_bundle), str(repo), "--no-tensorrt"]) == 0
    assert not parse(repo / tiny_bundle.name).HasField("optimization")

    args = ["export-triton", str(tiny_bundle), str(repo), "--max-batch-size", "16"]
    assert main([*args, "--trt-cache", "/var/cache/trt"]) == 0
    params = tensorrt_parameters(parse(repo / tiny_bundle.name))
    assert params["trt_engine_cache_enable"] == "1"
    assert params["trt_engine_cache_path"] == "/var/cache/trt"
    assert params["trt_timing_cache_path"] == "/var/cache/trt"
    # The optimisation profile follows --max-batch-size.
    assert params["trt_profile_opt_shapes"].startswith("input_word_ids:16x128,")
    assert params["trt_profile_max_shapes"].startswith(f"input_word_ids:16x{MAX_LENGTH},")


def test_cli_rejects_tensorrt_on_cpu(tiny_bundle, tmp_path, capsys):
    repo = tmp_path / "repo"
    code = main(["export-triton", str(tiny_bundle), str(repo), "--kind", "KIND_CPU", "--tensorrt"])

    assert code == 1
    assert "KIND_GPU" in capsys.readouterr().err
    assert not repo.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TritonOptions(max_batch_size=0), "max_batch_size"),
        (TritonOptions(instances=0), "instances"),
        (TritonOptions(max_queue_delay_us=-1), "max_queue_delay_us"),
        (TritonOptions(kind="KIND_TPU"), "kind"),
        (TritonOptions(server_repository="models"), "absolute"),
        (TritonOptions(trt_cache_dir="cache"), "absolute"),
    ],
)
def test_bad_options_write_nothing(tiny_bundle, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        export_triton(tiny_bundle, tmp_path / "repo", options=options)
    assert not (tmp_path / "repo").exists()


def test_bad_model_name(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="--name"):
        export_triton(tiny_bundle, tmp_path / "repo", name="../escape")


@pytest.mark.parametrize(("precision", "mode"), [("fp16", "FP16"), ("int8-dynamic", "FP32")])
def test_tensorrt_precision_follows_the_bundle(tiny_bundle, tmp_path, precision, mode):
    bundle = variant(tiny_bundle, tmp_path / precision, precision=precision)
    config = parse(export_triton(bundle, tmp_path / "repo"))

    assert tensorrt_parameters(config)["precision_mode"] == mode
    # fp16 bundles keep float32 outputs.
    assert {o.data_type for o in config.output} == {mc.TYPE_FP32}


def test_int8_static_qdq_model_runs_int8_without_a_calibration_table(int8_static_bundle, tmp_path):
    """The builder's int8-static model carries its scales in Q/DQ nodes: TensorRT gets INT8,
    and no calibration table (the onnxruntime backend fails a Q/DQ model given one)."""
    meta = json.loads((int8_static_bundle / META_FILE).read_text())
    assert meta["quantization"]["format"] == "QDQ"
    assert (int8_static_bundle / TRT_CALIBRATION_FILE).is_file()

    model_dir = export_triton(int8_static_bundle, tmp_path / "repo")
    params = tensorrt_parameters(parse(model_dir))

    assert params["precision_mode"] == "INT8"
    assert "int8_calibration_table_name" not in params
    assert not (model_dir / "1" / TRT_CALIBRATION_FILE).exists()


def test_int8_static_model_without_qdq_gets_the_calibration_table(int8_static_bundle, tmp_path):
    """An int8-static bundle whose model has no Q/DQ nodes: TensorRT calibrates from the
    table, opened by its absolute path on the server."""
    quantization = json.loads((int8_static_bundle / META_FILE).read_text())["quantization"]
    bundle = variant(
        int8_static_bundle, tmp_path / "plain", quantization={**quantization, "format": None}
    )
    options = TritonOptions(server_repository="/models")
    model_dir = export_triton(bundle, tmp_path / "repo", name="enc", options=options)
    params = tensorrt_parameters(parse(model_dir))

    assert params["precision_mode"] == "INT8"
    assert params["int8_calibration_table_name"] == f"/models/enc/1/{TRT_CALIBRATION_FILE}"
    assert params["int8_use_native_calibration_table"] == "0"
    table = model_dir / "1" / TRT_CALIBRATION_FILE
    assert sha256_file(table) == sha256_file(bundle / TRT_CALIBRATION_FILE)


def test_reexport_replaces_and_a_failed_export_keeps_the_old_model(
    tiny_bundle, tmp_path, monkeypatch
):
    repo = tmp_path / "repo"
    export_triton(tiny_bundle, repo, options=TritonOptions(max_batch_size=8))
    export_triton(tiny_bundle, repo, options=TritonOptions(max_batch_size=16))
    assert parse(repo / tiny_bundle.name).max_batch_size == 16

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton.shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_triton(tiny_bundle, repo, options=TritonOptions(max_batch_size=32))

    assert parse(repo / tiny_bundle.name).max_batch_size == 16
    assert sorted(os.listdir(repo)) == [tiny_bundle.name]  # no staging directory left


def test_pooling_writes_the_exported_embedding_model(tiny_bundle, tmp_path):
    """`--pooling mean --normalize`: Triton's onnxruntime backend answers embeddings directly,
    the vectors `Encoder.embed` gives."""
    code = main(
        [
            "export-triton",
            str(tiny_bundle),
            str(tmp_path / "repo"),
            "--kind",
            "KIND_CPU",
            "--pooling",
            "mean",
            "--normalize",
        ]
    )
    assert code == 0
    model_dir = tmp_path / "repo" / tiny_bundle.name
    config = parse(model_dir)
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("embedding", mc.TYPE_FP32, [HIDDEN])
    ]
    marker = json.loads((model_dir / triton.MARKER_FILE).read_text())
    assert marker["files"] == ["1/model.onnx", "1/tokenizer.json", "config.pbtxt"]
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    texts = ["a short one", "a somewhat longer text about a fox and a lazy dog"]
    tokenizer = WordPieceTokenizer.from_file(model_dir / "1" / "tokenizer.json")
    ids, mask, segments = pad_batch(tokenizer.encode(texts, max_length=MAX_LENGTH))
    feed = dict(zip([i.name for i in config.input], (ids, mask, segments), strict=True))
    (embedding,) = session.run(["embedding"], feed)
    expected = Encoder.load(tiny_bundle).embed(texts, pooling="mean", normalize=True)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)


def test_normalize_needs_a_pooling(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="normalize needs a pooling"):
        export_triton(tiny_bundle, tmp_path / "repo", options=TritonOptions(normalize=True))
    assert not (tmp_path / "repo").exists()
