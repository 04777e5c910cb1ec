"""`fastelectra build`: SavedModel -> fused ONNX -> (FP16 | INT8) -> verified bundle.

Every step writes into a private work directory; the bundle itself is assembled in a staging
directory beside the destination and renamed into place only after the accuracy gate passed,
so a failed or interrupted build leaves nothing at the destination. Both are removed on any
error, Ctrl-C or SIGTERM; the ones a killed build (SIGKILL, OOM) leaves behind are removed by
the next build to the same destination (see `fastelectra.workdirs`).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fastelectra.bundle import (
    BUNDLE,
    MODEL_FILE,
    TOKENIZER_FILE,
    VERIFICATION_FILE,
    BundleMeta,
    finalize_meta,
    write_json_atomic,
)
from fastelectra.convert.console import captured_output, printer
from fastelectra.convert.steps import Steps, mb
from fastelectra.destinations import check_directory
from fastelectra.errors import FastElectraError
from fastelectra.precisions import FP32, SMOOTHING_OFF, Precision, as_precision
from fastelectra.version import installed_versions
from fastelectra.workdirs import (
    cleanup_on_signals,
    remove_abandoned,
    scratch_directory,
    staged_directory,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
LOG_FILE = "build.log"  # in the work directory: the libraries' output


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
    memory: dict[str, Any] = field(default_factory=dict)


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The packages whose versions a bundle records (`BundleMeta.tool_versions`).
BUILD_TOOLS = ("fastelectra", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "tokenizers")


def tool_versions() -> dict[str, str]:
    return installed_versions(BUILD_TOOLS)


def smoothing_alpha(precision: Precision, asked: float | str | None) -> float | None:
    """The alpha to smooth with: `asked`, the precision's own when None, none for "off"."""
    if asked is None:
        return precision.int8_smoothing
    return None if asked == SMOOTHING_OFF else float(asked)


@cleanup_on_signals()  # SIGTERM runs the `finally` below (and the staging's) before dying
def build(
    source: str | Path,
    out: str | Path,
    precision: Precision | str = FP32,
    verify_texts: str | Path | None = None,
    calibration_texts: str | Path | None = None,
    calibration_method: str = "minmax",
    force: bool = False,
    route: str = "hollow",
    progress: Progress | None = _stderr_progress,
    int8_search: bool = True,
    int8_smoothing: float | str | None = None,
    verbose: bool = False,
) -> BuildResult:
    """Convert `source` into a verified bundle at `out` (see the module docstring).

    `precision`: a row of `fastelectra.precisions` or its name; its gate judges the build.

    `int8_smoothing`: SmoothQuant's alpha before INT8, "off", or None for the precision's
    own (`fastelectra.precisions`).

    The libraries' own output (TensorFlow, tf2onnx, onnxruntime's tools) goes to a log in the
    work directory, shown in part only if a step fails (`console.captured_output`);
    `verbose=True` lets it through.

    TensorFlow runs only in the first stage, in a child process (`tf_stage`): load, export,
    and TensorFlow's outputs on the verification texts. Fusion, precision and verification
    then run here with onnxruntime alone.
    """
    from fastelectra.convert.tf_stage import run_tensorflow_stage
    from fastelectra.convert.verify import default_texts, format_report
    from fastelectra.runtime.lines import read_texts

    precision = as_precision(precision)
    converted = precision.converted
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    out = Path(out)
    # Before any work: `out` may only be new, empty, or a bundle of ours (never the source).
    check_directory(out, BUNDLE, sources=[source])
    texts = read_texts(verify_texts) if verify_texts else default_texts()
    for leftover in remove_abandoned(out):
        say(f"removed {leftover.name}, left beside {out} by a killed build")
    with (
        scratch_directory(out, "work") as work,
        captured_output(work / LOG_FILE, enabled=not verbose) as terminal,
    ):
        if progress is _stderr_progress:  # the build's own lines, past the capture
            say = printer(terminal)
        step = Steps(say)
        # Its steps (load, export, tensorflow_reference) are timed and measured in the child.
        stage = run_tensorflow_stage(
            str(source), work, texts, route=route, say=say if progress else None
        )
        step.merge(stage.timings, stage.memory)
        dims = stage.dimensions
        with step("fuse", "fusing into onnxruntime transformer kernels"):
            from fastelectra.convert.fuse import fuse

            # The FP32 graph is the bundle's model at fp32; otherwise only the next step's input,
            # its weights kept apart so that step does not parse them twice.
            fusion = fuse(stage.exported, work / "fused.onnx", dims, external_data=converted)
        say(f"  fused ops: {fusion.counts}")
        with staged_directory(out, BUNDLE) as staging:
            shutil.copyfile(stage.tokenizer, staging / TOKENIZER_FILE)
            model_path = staging / MODEL_FILE
            quantization: dict[str, Any] = {}
            if not converted:
                _move_model(work / "fused.onnx", model_path)
            else:
                with step("precision", f"converting to {precision.name}"):
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
                        smoothing=smoothing_alpha(precision, int8_smoothing),
                        progress=say,
                    )
            with step("verify", "verifying against TensorFlow's recorded outputs"):
                from fastelectra.convert.verify import recorded_runner

                report = verify_model(
                    recorded_runner(stage.tensorflow_outputs),
                    model_path,
                    staging / TOKENIZER_FILE,
                    precision,
                    texts,
                    fp32_model=work / "fused.onnx" if converted else None,
                    max_length=dims.max_positions,
                    bar=terminal if progress is _stderr_progress else None,
                )
            say(format_report(report))
            if not report["passed"] and not force:
                raise VerificationFailed(report)
            write_json_atomic(staging / VERIFICATION_FILE, report)
            meta = BundleMeta(
                source=str(source),
                dimensions=dims,
                precision=precision,
                do_lower_case=stage.do_lower_case,
                max_sequence_length=dims.max_positions,
                fused_ops=fusion.counts,
                rewrites=fusion.rewrites,
                quantization=quantization,
                tool_versions=tool_versions(),
                timings={name: round(s, 3) for name, s in step.timings.items()},
                memory={
                    "steps": dict(step.memory),
                    # Two processes, one after the other: the command's peak is the larger.
                    "tensorflow_stage_peak_rss_mb": stage.peak_rss_mb,
                    "onnxruntime_peak_rss_mb": step.peak(),
                    "peak_rss_mb": max(stage.peak_rss_mb, step.peak() or 0.0),
                },
            )
            meta.quantization.setdefault("export_route", stage.export_route)
            finalize_meta(staging, meta)
        say(
            f"wrote {out} ({precision.name}) in {time.perf_counter() - started:.1f} s, "
            f"peak RSS {mb(meta.memory['peak_rss_mb'])}"
        )
    return BuildResult(out, meta, report, step.timings, meta.memory)


def verify_model(
    tensorflow: Any,
    model_path: Path,
    tokenizer_path: Path,
    precision: Precision,
    texts: list[tuple[str, str | None]],
    fp32_model: Path | None = None,
    max_length: int = 512,
    bar: TextIO | None = None,
) -> dict[str, Any]:
    """Compare the model at `model_path` with `tensorflow` (a `verify.Runner`: TensorFlow live,
    or its recorded outputs) on `texts`; a progress bar on `bar` if it is a terminal."""
    from fastelectra.convert.verify import onnx_runner, record_outputs, recorded_runner, verify
    from fastelectra.runtime.progress import text_bar
    from fastelectra.runtime.tokenizer import WordPieceTokenizer, encode_texts

    encodings = encode_texts(WordPieceTokenizer.from_file(tokenizer_path), texts, max_length)
    with tempfile.TemporaryDirectory(prefix=".fp32-outputs-", dir=model_path.parent) as folder:
        fp32 = None
        if fp32_model is not None:
            # The FP32 model's outputs first, its session gone before the candidate's loads:
            # the two never hold their weights at the same time.
            fp32 = recorded_runner(record_outputs(onnx_runner(fp32_model), encodings, Path(folder)))
        with text_bar(len(encodings), bar, "verifying", leave=False) as advance:
            return verify(
                tensorflow,
                onnx_runner(model_path),
                encodings,
                precision,
                fp32=fp32,
                progress=advance,
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
