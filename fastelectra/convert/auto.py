"""`--precision auto`: build the CPU candidates, time them here, keep the fastest that passes.

Which precision is fastest depends on the CPU: INT8 pays 0.3x FP32 on ELECTRA-large with
AVX-512 VNNI and 0.8x on MiniLM with AVX2 alone (docs/performance.md). So the choice is
measured, not assumed: every candidate is built and verified as `build` does (a candidate that
misses its gate is out), each passing one is timed on this machine at the target shapes, and
the fastest by geometric mean of its median latencies becomes the bundle. Its fastelectra.json
records the candidates' figures, this CPU and the choice under `auto`; the runtime warns when
the bundle runs on a CPU without an instruction set the choice was timed with.
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastelectra.bundle import (
    BUNDLE,
    META_FILE,
    BundleMeta,
    load_bundle,
    read_json,
    write_json_atomic,
)
from fastelectra.cpu import this_cpu
from fastelectra.destinations import check_directory
from fastelectra.errors import InputError
from fastelectra.precisions import FP32, INT8_DYNAMIC, Precision
from fastelectra.workdirs import remove_abandoned, scratch_directory, staged_directory

AUTO = "auto"
# CPU candidates: fp16 is for GPUs, and onnxruntime's CPU kernels run the static QDQ graph
# slower than FP32 (docs/performance.md).
CANDIDATES = (FP32, INT8_DYNAMIC)
DEFAULT_SHAPES = ((1, 16), (1, 128))
TIMED_SECONDS = 1.0  # per candidate and shape, after the warm-up
MIN_RUNS = 5
SETTLE_SECONDS = 0.2  # idle before each candidate: the last one's threads stop spinning


def parse_shape(text: str) -> tuple[int, int]:
    """`BATCHxSEQ`, e.g. `1x128`."""
    batch, sep, seq = text.lower().partition("x")
    if not sep or not batch.isdigit() or not seq.isdigit() or int(batch) < 1 or int(seq) < 2:
        raise InputError(f"target shape {text!r}: expected BATCHxSEQ, e.g. 1x128")
    return int(batch), int(seq)


def build_auto(
    source: str | Path,
    out: str | Path,
    target_shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
    candidates: Sequence[Precision] = CANDIDATES,
    threads: int | None = None,
    **build_options: Any,
) -> Any:
    """Build each of `candidates`, time the passing ones, and write the fastest at `out`.

    `build_options` go to every candidate's `build` (verify texts, INT8 search, ...); `force`
    is not one of them: a candidate that misses its gate cannot be chosen.
    """
    from fastelectra.convert.build import VerificationFailed, build

    if build_options.pop("force", False):
        raise InputError("--precision auto keeps only candidates that pass their gate (no --force)")
    out = Path(out)
    check_directory(out, BUNDLE, sources=[source])  # before any work (see `destinations`)
    max_positions = 0
    figures: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    remove_abandoned(out)
    with scratch_directory(out, "work") as work:
        for precision in candidates:
            name = precision.name
            try:
                result = build(source, work / name, precision=precision, **build_options)
            except VerificationFailed as failed:
                figures[name] = {"passed": False, "failures": failed.report["failures"]}
                continue
            results[name] = result
            max_positions = result.meta.max_sequence_length
        if not results:
            raise VerificationFailed(
                {
                    "precision": AUTO,
                    "failures": [f"{p}: {f['failures']}" for p, f in figures.items()],
                }
            )
        # Shapes past the model's positions cannot run; every candidate has the source's.
        shapes = [s for s in target_shapes if s[1] <= max_positions]
        for precision, result in results.items():
            figures[precision] = {
                "passed": True,
                "p50_ms": time_bundle(result.out, shapes, threads),
            }
        chosen = min(results, key=lambda p: _geometric_mean(figures[p]["p50_ms"].values()))
        record = {
            "chosen": chosen,
            "target_shapes": [f"{b}x{s}" for b, s in target_shapes],
            "cpu": this_cpu(),
            "threads": threads,
            "candidates": figures,
        }
        _install(results[chosen].out, out, record)
    return load_bundle(out)


def time_bundle(
    bundle: Path, shapes: Sequence[tuple[int, int]], threads: int | None = None
) -> dict[str, float]:
    """Median latency (ms) of the bundle's CPU session at each `BATCHxSEQ` shape."""
    from fastelectra.convert.verify import onnx_runner

    gc.collect()
    time.sleep(SETTLE_SECONDS)
    run = onnx_runner(load_bundle(bundle).model_path, threads)
    rng = np.random.default_rng(0)
    medians = {}
    for batch, seq in shapes:
        ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int32)
        mask, segments = np.ones_like(ids), np.zeros_like(ids)
        for _ in range(2):
            run(ids, mask, segments)  # warm-up: first-run allocations and kernel choice
        samples: list[float] = []
        deadline = time.perf_counter() + TIMED_SECONDS
        while len(samples) < MIN_RUNS or time.perf_counter() < deadline:
            start = time.perf_counter()
            run(ids, mask, segments)
            samples.append((time.perf_counter() - start) * 1000)
        medians[f"{batch}x{seq}"] = round(float(np.median(samples)), 3)
    return medians


def _geometric_mean(values: Any) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _install(candidate: Path, out: Path, record: dict[str, Any]) -> None:
    """Move the chosen candidate's files to `out` (atomically), its metadata carrying `record`."""
    meta = BundleMeta.from_json(read_json(candidate / META_FILE))
    meta.auto = record
    with staged_directory(out, BUNDLE) as staging:
        for item in candidate.iterdir():
            shutil.move(str(item), str(staging / item.name))
        # fastelectra.json is not among the hashed files: rewriting it leaves the hashes true.
        write_json_atomic(staging / META_FILE, meta.to_json())
