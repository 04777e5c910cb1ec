"""`fastelectra build`: SavedModel -> fused ONNX -> (FP16 | INT8) -> verified bundle.

Every step writes into a private work directory; the bundle itself is assembled in a staging
directory beside the destination and renamed into place only after the accuracy gate passed,
so a failed or interrupted build leaves nothing at the destination. Both are removed on any
error, Ctrl-C or SIGTERM; the ones a killed build (SIGKILL, OOM) leaves behind are removed by
the next build to the same destination (see `fastelectra.workdirs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from fastelectra.workdirs import cleanup_on_signals, remove_abandoned, scratch_directory

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class VerificationFailed(RuntimeError):
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


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("fastelectra", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


@cleanup_on_signals()  # SIGTERM runs the `finally` below (and the staging's) before dying
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
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    say = progress or (lambda _message: None)
    out = Path(out)
    for leftover in remove_abandoned(out):
        say(f"removed {leftover.name}, left beside {out} by a killed build")
    step = _Steps(say)

    with step("load", f"loading {source}"):
        src = load_source(source)
    dims = src.dimensions
    say(
        f"  {dims.layers} layers, hidden {dims.hidden}, {dims.heads} heads, FFN {dims.intermediate}, "
        f"vocab {dims.vocab_size}, max positions {dims.max_positions}, "
        f"do_lower_case={src.do_lower_case}, calling convention {src.convention}"
    )
    with scratch_directory(out, "work") as work:
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
                timings={name: round(s, 3) for name, s in step.timings.items()},
                memory=step.memory_summary(),
            )
            meta.quantization.setdefault("export_route", exported.route)
            finalize_meta(staging, meta)
    say(
        f"wrote {out} ({precision}) in {sum(step.timings.values()):.1f} s, "
        f"peak RSS {_mb(meta.memory['peak_rss_mb'])}"
    )
    return BuildResult(out, meta, report, step.timings, meta.memory)


def verify_model(
    src: Any,
    model_path: Path,
    tokenizer_path: Path,
    precision: str,
    verify_texts: str | Path | None = None,
    fp32_model: Path | None = None,
    max_length: int = 512,
) -> dict[str, Any]:
    from fastelectra.convert.verify import (
        default_texts,
        onnx_runner,
        read_texts,
        tensorflow_runner,
        verify,
    )

    texts = read_texts(verify_texts) if verify_texts else default_texts()
    encodings = encode_texts(tokenizer_path, texts, max_length)
    return verify(
        tensorflow_runner(src),
        onnx_runner(model_path),
        encodings,
        precision,
        fp32=onnx_runner(fp32_model) if fp32_model else None,
    )


def encode_texts(tokenizer_path: Path, texts: list[tuple[str, str | None]], max_length: int):
    """Encode singles and pairs (in one list) in their original order."""
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.from_file(tokenizer_path)
    singles = [i for i, (_, b) in enumerate(texts) if b is None]
    pairs = [i for i, (_, b) in enumerate(texts) if b is not None]
    encodings: list[Any] = [None] * len(texts)
    if singles:
        for i, e in zip(
            singles,
            tokenizer.encode([texts[i][0] for i in singles], max_length=max_length),
            strict=True,
        ):
            encodings[i] = e
    if pairs:
        encoded = tokenizer.encode(
            [texts[i][0] for i in pairs], pairs=[texts[i][1] for i in pairs], max_length=max_length
        )
        for i, e in zip(pairs, encoded, strict=True):
            encodings[i] = e
    return encodings


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


class _Steps:
    """Wall time and memory of each build step, for the progress lines and fastelectra.json.

    Memory is the whole process's (TensorFlow included), in MiB: the peak resident set so far
    at the step's end, and what is still resident after it, i.e. what the step kept.
    """

    def __init__(self, say: Progress):
        self.say = say
        self.timings: dict[str, float] = {}
        self.memory: dict[str, dict[str, float | None]] = {}
        self.peak_rss_mb: float | None = None

    @contextlib.contextmanager
    def __call__(self, name: str, message: str) -> Iterator[None]:
        self.say(message)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - start
            rss = _rss_mb()
            self.memory[name] = {"peak_rss_mb": self._peak(rss), "rss_after_mb": rss}
        figures = self.memory[name]
        self.say(
            f"  {name} took {self.timings[name]:.1f} s; RSS {_mb(figures['rss_after_mb'])} after, "
            f"peak {_mb(figures['peak_rss_mb'])}"
        )

    def memory_summary(self) -> dict[str, Any]:
        return {"steps": dict(self.memory), "peak_rss_mb": self._peak()}

    def _peak(self, *seen: float | None) -> float | None:
        """The process's peak so far: getrusage's, unless a resident size we read was higher.

        The kernel sums its RSS counters only approximately (per-CPU deltas), and raises the
        high-water mark getrusage reports only at unmaps and when asked, so that mark came out
        below the resident size read just before it (876.6 vs 876.7 MiB after `load`).
        """
        figures = [f for f in (self.peak_rss_mb, _peak_rss_mb(), *seen) if f is not None]
        self.peak_rss_mb = max(figures) if figures else None
        return self.peak_rss_mb


def _peak_rss_mb() -> float | None:
    """Peak resident set of this process so far (not of its children), in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux counts KiB, macOS bytes.
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def _rss_mb() -> float | None:
    """Resident set of this process now, in MiB (None without /proc)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except OSError:
        return None
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"
