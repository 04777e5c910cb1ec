"""`fastelectra build`: SavedModel -> fused ONNX -> (FP16 | INT8) -> verified bundle.

Every step writes into a private work directory; the bundle itself is assembled in a staging
directory beside the destination and renamed into place only after the accuracy gate passed,
so a failed or interrupted build leaves nothing at the destination.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastelectra.bundle import (
    MODEL_FILE,
    PRECISIONS,
    TOKENIZER_FILE,
    VERIFICATION_FILE,
    BundleMeta,
    finalize_meta,
    staged_directory,
    write_json_atomic,
)
from fastelectra.errors import FastElectraError, InputError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class VerificationFailed(FastElectraError, RuntimeError):
    """The model did not match the TensorFlow original within the precision's gate."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(
            f"{report['precision']} model failed verification against TensorFlow: "
            + "; ".join(report["failures"])
            + " (no bundle written; --force writes it anyway)"
        )


@dataclass
class BuildResult:
    out: Path
    meta: BundleMeta
    verification: dict[str, Any]
    timings: dict[str, float]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("fastelectra", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def build(
    source: str | Path,
    out: str | Path,
    precision: str = "fp32",
    verify_texts: str | Path | None = None,
    calibration_texts: str | Path | None = None,
    calibration_method: str = "minmax",
    force: bool = False,
    route: str = "hollow",
    progress: Progress | None = _stderr_progress,
    int8_search: bool = True,
) -> BuildResult:
    """Convert `source` into a verified bundle at `out` (see the module docstring)."""
    from fastelectra.convert.source import load_source
    from fastelectra.convert.tf_export import export_onnx
    from fastelectra.convert.tokenizer import build_tokenizer

    if precision not in PRECISIONS:
        raise InputError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    say = progress or (lambda _message: None)
    out = Path(out)
    timings: dict[str, float] = {}

    def step(name: str, message: str):
        say(message)
        return _Timer(timings, name)

    with step("load", f"loading {source}"):
        src = load_source(source)
    dims = src.dimensions
    say(
        f"  {dims.layers} layers, hidden {dims.hidden}, {dims.heads} heads, FFN {dims.intermediate}, "
        f"vocab {dims.vocab_size}, max positions {dims.max_positions}, "
        f"do_lower_case={src.do_lower_case}, calling convention {src.convention}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        with step("export", f"exporting to ONNX (tf2onnx, {route} route)"):
            exported = export_onnx(src, work / "exported.onnx", route=route)
        with step("fuse", "fusing into onnxruntime transformer kernels"):
            from fastelectra.convert.fuse import fuse

            fusion = fuse(exported.path, work / "fused.onnx", dims)
        say(f"  fused ops: {fusion.counts}")
        with staged_directory(out) as staging:
            tokenizer = build_tokenizer(src.vocab_file, src.do_lower_case)
            tokenizer.save(str(staging / TOKENIZER_FILE))
            model_path = staging / MODEL_FILE
            quantization: dict[str, Any] = {}
            if precision == "fp32":
                _move_model(work / "fused.onnx", model_path)
            else:
                with step("precision", f"converting to {precision}"):
                    from fastelectra.convert.precision import convert_precision

                    quantization = convert_precision(
                        precision,
                        work / "fused.onnx",
                        model_path,
                        staging=staging,
                        tokenizer_path=staging / TOKENIZER_FILE,
                        calibration_texts=calibration_texts,
                        calibration_method=calibration_method,
                        max_length=dims.max_positions,
                        int8_search=int8_search,
                        progress=say,
                    )
            with step("verify", "verifying against TensorFlow"):
                report = verify_model(
                    src,
                    model_path,
                    staging / TOKENIZER_FILE,
                    precision,
                    verify_texts,
                    fp32_model=None if precision == "fp32" else work / "fused.onnx",
                    max_length=dims.max_positions,
                )
            from fastelectra.convert.verify import format_report

            say(format_report(report))
            if not report["passed"] and not force:
                raise VerificationFailed(report)
            write_json_atomic(staging / VERIFICATION_FILE, report)
            meta = BundleMeta(
                source=str(source),
                dimensions=dims,
                precision=precision,
                do_lower_case=src.do_lower_case,
                max_sequence_length=dims.max_positions,
                fused_ops=fusion.counts,
                rewrites=fusion.rewrites,
                quantization=quantization,
                tool_versions=tool_versions(),
            )
            meta.quantization.setdefault("export_route", exported.route)
            finalize_meta(staging, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {out} ({precision}) in {sum(timings.values()):.1f} s")
    return BuildResult(out, meta, report, timings)


def verify_model(
    src: Any,
    model_path: Path,
    tokenizer_path: Path,
    precision: str,
    verify_texts: str | Path | None = None,
    fp32_model: Path | None = None,
    max_length: int = 512,
) -> dict[str, Any]:
    from fastelectra.convert.verify import default_texts, onnx_runner, tensorflow_runner, verify
    from fastelectra.runtime.lines import read_texts
    from fastelectra.runtime.tokenizer import WordPieceTokenizer, encode_texts

    texts = read_texts(verify_texts) if verify_texts else default_texts()
    encodings = encode_texts(WordPieceTokenizer.from_file(tokenizer_path), texts, max_length)
    return verify(
        tensorflow_runner(src),
        onnx_runner(model_path),
        encodings,
        precision,
        fp32=onnx_runner(fp32_model) if fp32_model else None,
    )


def _move_model(src: Path, dst: Path) -> None:
    """Move an ONNX file and its external data (if any) together."""
    shutil.move(str(src), str(dst))
    data = src.with_name(src.name + ".data")
    if data.exists():
        # The .onnx refers to its data by file name: keep the names paired.
        import onnx

        model = onnx.load(str(dst), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = dst.name + ".data"
        shutil.move(str(data), str(dst.with_name(dst.name + ".data")))
        onnx.save(model, str(dst))


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.start
        return False
