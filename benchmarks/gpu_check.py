"""Check bundles on a GPU against the CPU, then time them: the Python half of benchmarks/gpu.sh.

    python benchmarks/gpu_check.py BUNDLE... [--json OUT.json] [--dry-run]

For each bundle:

* verification: the built-in verify texts (singles, pairs, passages past 512 tokens) through
  `Encoder.encode` on CUDA (and TensorRT when its libraries load) against the same bundle on
  the CPU, judged by the gates `fastelectra build` applies for the bundle's precision; an FP16
  bundle is also judged against an FP32 bundle of the same source on the CPU, when given one.
  FP32 on CUDA is also measured with TF32 matmuls off (`use_tf32=0`), for information only:
  it tells a TF32 rounding difference from a real one.
* timing: one model run (`EncoderSession.run`, with IO binding on a GPU) at batch 1, 8 and 32
  of 128 tokens, median and 90th percentile over a time budget, on every provider checked
  (and on the CPU for FP32 bundles, as the baseline).

The table is printed last; `--json` writes every figure. Exit status: 0 when every gated
comparison passed, 1 when one did not, 2 when no GPU provider could run at all.
`--dry-run` runs every step with the CPU standing in for the GPU, so that this script is
tested on machines without one (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing fastelectra
    sys.path.insert(0, str(ROOT))

from fastelectra.bundle import Bundle, load_bundle  # noqa: E402
from fastelectra.convert.verify import cosine_rows, default_texts  # noqa: E402
from fastelectra.precisions import FP32, UPPER_BOUND_METRICS, Precision  # noqa: E402
from fastelectra.runtime import Encoder, EncoderOutput  # noqa: E402
from fastelectra.runtime.providers import CPU, CUDA, TENSORRT, plan_for_bundle  # noqa: E402
from fastelectra.runtime.session import EncoderSession  # noqa: E402

SEQUENCE = 128
BATCHES = (1, 8, 32)
WARMUP_RUNS = 5
# onnxruntime-gpu's provider libraries, beside its Python extension.
PROVIDER_LIBRARIES = {
    CUDA: "libonnxruntime_providers_cuda.so",
    TENSORRT: "libonnxruntime_providers_tensorrt.so",
}
Log = Callable[[str], None]


@dataclass
class Check:
    """One bundle on one provider against a reference on the CPU."""

    bundle: str
    precision: str
    candidate: str
    reference: str
    gate: str  # the precision whose build gate applies; "" for information only
    providers_used: list[str] = field(default_factory=list)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Timing:
    bundle: str
    precision: str
    provider: str
    batch: int
    sequence: int
    runs: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    error: str = ""

    @property
    def sequences_per_s(self) -> float | None:
        return None if self.median_ms is None else self.batch / self.median_ms * 1000


# -- comparing -----------------------------------------------------------------------------


def compare_outputs(reference: EncoderOutput, candidate: EncoderOutput) -> dict[str, dict]:
    """max |a-b|, mean and min cosine per output; sequence rows are unpadded tokens."""
    pairs = {
        "pooled_output": (reference.pooled, candidate.pooled),
        "sequence_output": (np.concatenate(reference.sequence), np.concatenate(candidate.sequence)),
        "mean_pooled_sequence": (
            np.stack([s.mean(axis=0) for s in reference.sequence]),
            np.stack([s.mean(axis=0) for s in candidate.sequence]),
        ),
    }
    figures = {}
    for name, (ref, got) in pairs.items():
        ref, got = ref.astype(np.float64), got.astype(np.float64)
        cos = cosine_rows(ref, got)
        figures[name] = {
            "max_abs_diff": float(np.max(np.abs(ref - got), initial=0.0)),
            "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()),
        }
    return figures


def gate_failures(figures: dict[str, dict[str, float]], precision: Precision) -> list[str]:
    """What breaks the build gate of `precision` (`fastelectra.precisions`), per output.

    The gate's Spearman bound is not checked: it needs a TensorFlow or FP32 reference.
    """
    failures = []
    for output, bounds in precision.gate.bounds.items():
        if output not in figures:
            continue
        for metric, bound in bounds.items():
            value = figures[output][metric]
            upper = metric in UPPER_BOUND_METRICS
            if value > bound if upper else value < bound:
                failures.append(f"{output} {metric} {value:.6g} {'>' if upper else '<'} {bound}")
    return failures


def encode_all(encoder: Encoder, texts: list[tuple[str, str | None]]) -> EncoderOutput:
    """Singles and pairs through `encode`, concatenated in that order."""
    singles = [a for a, b in texts if b is None]
    pairs = [(a, b) for a, b in texts if b is not None]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*truncated", category=UserWarning)
        parts = [encoder.encode(singles, batch_size=8)]
        if pairs:
            first, second = zip(*pairs, strict=True)
            parts.append(encoder.encode(list(first), pairs=list(second), batch_size=8))
    return EncoderOutput(
        pooled=np.concatenate([p.pooled for p in parts]),
        sequence=[s for p in parts for s in p.sequence],
        lengths=np.concatenate([p.lengths for p in parts]),
        truncated=np.concatenate([p.truncated for p in parts]),
    )


def load_on(bundle: Bundle, providers: Any, wanted: str) -> tuple[Encoder | None, str]:
    """An encoder whose first provider is `wanted`, or None and why not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            encoder = Encoder.load(bundle, providers=providers)
        except ValueError as e:  # BundleError: onnxruntime refused the session
            return None, str(e)
    if encoder.providers[0] != wanted:
        said = "; ".join(str(w.message) for w in caught)
        return None, f"{wanted} did not start ({', '.join(encoder.providers)} instead): {said}"
    return encoder, ""


# -- timing --------------------------------------------------------------------------------


def time_model_runs(
    bundle: Bundle, providers: Any, label: str, wanted: str, budget_s: float, max_runs: int
) -> list[Timing]:
    """Median and p90 of one model run at [batch, SEQUENCE] for each batch in BATCHES, over
    `budget_s` seconds (at least 3 runs, at most `max_runs`) each, on one session."""
    meta = bundle.meta
    # Bundles shorter than SEQUENCE (test ones) are timed at their own maximum.
    length = min(SEQUENCE, meta.max_sequence_length)
    timings = [Timing(bundle.path.name, meta.precision.name, label, b, length) for b in BATCHES]
    try:
        session = EncoderSession(
            bundle.model_path,
            plan_for_bundle(bundle, providers),
            inputs=meta.inputs,
            outputs=meta.outputs,
            input_dtype=meta.input_dtype,
        )
        if session.providers[0] != wanted:
            raise ValueError(f"{wanted} did not start ({', '.join(session.providers)} instead)")
    except ValueError as e:  # BundleError: onnxruntime refused the session
        for timing in timings:
            timing.error = str(e)
        return timings
    rng = np.random.default_rng(0)
    # Real token ids past the special ones; the tiny test vocabularies have fewer than 1000.
    low = min(1000, meta.dimensions.vocab_size // 2)
    for timing in timings:
        shape = (timing.batch, timing.sequence)
        ids = rng.integers(low, meta.dimensions.vocab_size, shape).astype(np.int32)
        mask, segments = np.ones_like(ids), np.zeros_like(ids)
        try:
            for _ in range(WARMUP_RUNS):  # allocator growth, cuBLAS plans, a TensorRT engine
                session.run(ids, mask, segments)
            seconds: list[float] = []
            started = time.perf_counter()
            while len(seconds) < max_runs and (
                len(seconds) < 3 or time.perf_counter() - started < budget_s
            ):
                t0 = time.perf_counter()
                session.run(ids, mask, segments)  # outputs copied to the host, as in real use
                seconds.append(time.perf_counter() - t0)
        except Exception as e:  # e.g. out of GPU memory: a row of its own, not the end
            timing.error = f"{type(e).__name__}: {e}"
            continue
        timing.runs = len(seconds)
        timing.median_ms = statistics.median(seconds) * 1000
        timing.p90_ms = float(np.percentile(seconds, 90)) * 1000
    return timings


# -- the machine ---------------------------------------------------------------------------


def missing_libraries(library: Path) -> list[str] | None:
    """The shared libraries `library` needs that the loader cannot find, by `ldd`; None when
    that cannot be told (no ldd, no such file).

    onnxruntime-gpu lists its CUDA and TensorRT providers whether or not CUDA, cuDNN and
    TensorRT are installed, and only logs when one fails to load: asking the loader first
    names what is missing (libnvinfer.so.10 where TensorRT is absent, say).
    """
    if not library.is_file() or not shutil.which("ldd"):
        return None
    done = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def gpu_description() -> str:
    if not shutil.which("nvidia-smi"):
        return "no nvidia-smi"
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return done.stdout.strip() or done.stderr.strip()


def environment(ort: Any, dry_run: bool) -> dict:
    capi = Path(ort.__file__).parent / "capi"
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "onnxruntime_path": str(Path(ort.__file__).parent),
        "available_providers": ort.get_available_providers(),
        "gpu": gpu_description(),
        "missing_libraries": {
            name: missing_libraries(capi / library) for name, library in PROVIDER_LIBRARIES.items()
        },
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
        "dry_run": dry_run,
    }


# -- the run -------------------------------------------------------------------------------


def device_providers(env: dict, log: Log) -> list[tuple[str, Any, str]]:
    """(label, providers= value, first provider expected) for each device to check."""
    if env["dry_run"]:
        return [("cpu (dry run)", "cpu", CPU)]
    devices = []
    for label, name in (("cuda", CUDA), ("tensorrt", TENSORRT)):
        missing = env["missing_libraries"][name]
        if name not in env["available_providers"]:
            log(f"{name}: not in this onnxruntime ({env['onnxruntime_path']})")
        elif missing and name == TENSORRT:
            log(f"{name}: skipped, the loader cannot find {', '.join(missing)}")
        else:
            if missing:
                log(f"{name}: the loader cannot find {', '.join(missing)}; {preload_with_torch()}")
            devices.append((label, label, name))
    return devices


def preload_with_torch() -> str:
    """Let PyTorch load its CUDA libraries into this process, where onnxruntime's CUDA
    provider finds them by name (onnxruntime's documented fallback for missing paths)."""
    try:
        import torch
    except ImportError:
        return "no PyTorch to load them either"
    return (
        f"PyTorch {torch.__version__} loaded its own (CUDA available: {torch.cuda.is_available()})"
    )


def cuda_preflight(bundle: Bundle, devices: list[tuple[str, Any, str]]) -> str:
    """Why no CUDA session can start, or "" when one does."""
    if not any(wanted == CUDA for _, _, wanted in devices):
        return "this onnxruntime has no CUDAExecutionProvider"
    encoder, why = load_on(bundle, "cuda", CUDA)
    return why if encoder is None else ""


def same_model(a: Bundle, b: Bundle) -> bool:
    return a.meta.source == b.meta.source and a.meta.dimensions == b.meta.dimensions


def check_bundles(
    bundles: list[Bundle], devices: list[tuple[str, Any, str]], dry_run: bool, log: Log
) -> list[Check]:
    texts = default_texts()
    cpu_outputs: dict[Path, EncoderOutput] = {}
    for bundle in bundles:
        log(f"{bundle.path.name}: CPU reference on {len(texts)} texts")
        cpu_outputs[bundle.path] = encode_all(Encoder.load(bundle), texts)
    checks = []
    for bundle in bundles:
        precision = bundle.meta.precision
        fp32_twins = [
            b
            for b in bundles
            if precision != FP32 and b.meta.precision == FP32 and same_model(b, bundle)
        ]
        variants = list(devices)
        if precision == FP32 and not dry_run and any(label == "cuda" for label, _, _ in devices):
            variants.append(("cuda (use_tf32=0)", [("cuda", {"use_tf32": "0"})], CUDA))
        for label, providers, wanted in variants:
            log(f"{bundle.path.name}: {label}")
            encoder, why = load_on(bundle, providers, wanted)
            output = None
            if encoder is not None:
                try:
                    output = encode_all(encoder, texts)
                except Exception as e:  # onnxruntime's errors share no base class but Exception
                    why = f"{type(e).__name__}: {e}"
            gated = "use_tf32" not in label
            references = [(f"cpu {precision.name}", cpu_outputs[bundle.path])]
            references += [(f"cpu fp32 ({b.path.name})", cpu_outputs[b.path]) for b in fp32_twins]
            for reference_label, reference in references:
                check = Check(
                    bundle.path.name,
                    precision.name,
                    label,
                    reference_label,
                    precision.name if gated else "",
                )
                if encoder is None or output is None:
                    check.failures.append(why)
                else:
                    check.providers_used = list(encoder.providers)
                    check.figures = compare_outputs(reference, output)
                    if gated:
                        check.failures = gate_failures(check.figures, precision)
                checks.append(check)
    return checks


def time_bundles(
    bundles: list[Bundle],
    devices: list[tuple[str, Any, str]],
    dry_run: bool,
    budget_s: float,
    max_runs: int,
    log: Log,
) -> list[Timing]:
    timings = []
    for bundle in bundles:
        runs_on = list(devices)
        if bundle.meta.precision == FP32 and not dry_run:
            runs_on.append(("cpu", "cpu", CPU))  # the baseline the GPU numbers are read against
        for label, providers, wanted in runs_on:
            log(f"{bundle.path.name}: timing on {label}, batch {BATCHES} x {SEQUENCE}")
            timings += time_model_runs(bundle, providers, label, wanted, budget_s, max_runs)
    return timings


def format_table(checks: list[Check], timings: list[Timing]) -> str:
    lines = ["", "verification (candidate against reference, on the built-in verify texts)"]
    header = ("bundle", "on", "against", "pooled max|d|", "pooled min cos", "seq min cos", "")
    rows = [header]
    for c in checks:
        pooled, seq = c.figures.get("pooled_output", {}), c.figures.get("sequence_output", {})
        verdict = ("ok" if c.passed else "FAIL") if c.gate else "info"
        rows.append(
            (
                c.bundle,
                c.candidate,
                c.reference,
                f"{pooled['max_abs_diff']:.2e}" if pooled else "-",
                f"{pooled['min_cosine']:.6f}" if pooled else "-",
                f"{seq['min_cosine']:.6f}" if seq else "-",
                verdict if c.passed else f"{verdict}: {'; '.join(c.failures)}",
            )
        )
    lines += align(rows)
    lengths = "/".join(str(n) for n in sorted({t.sequence for t in timings}) or [SEQUENCE])
    lines += ["", f"model run, {lengths} tokens: median ms (p90) and sequences/s"]
    rows = [("bundle", "provider", *(f"batch {b}" for b in BATCHES))]
    keys = dict.fromkeys((t.bundle, t.provider) for t in timings)
    for bundle, provider in keys:
        cells = []
        for batch in BATCHES:
            t = next(
                t for t in timings if (t.bundle, t.provider, t.batch) == (bundle, provider, batch)
            )
            cells.append(
                f"error: {t.error[:40]}"
                if t.median_ms is None or t.p90_ms is None or t.sequences_per_s is None
                else f"{t.median_ms:.2f} ({t.p90_ms:.2f}) {t.sequences_per_s:.0f}/s"
            )
        rows.append((bundle, provider, *cells))
    lines += align(rows)
    return "\n".join(lines)


def align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle directories")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--dry-run", action="store_true", help="the CPU stands in for the GPU")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per row")
    parser.add_argument("--max-runs", type=int, default=200, help="timed runs per row at most")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    def log(message: str) -> None:
        print(f"gpu_check: {message}", file=sys.stderr, flush=True)

    env = environment(ort, args.dry_run)
    log(json.dumps(env))
    devices = device_providers(env, log)
    bundles = [load_bundle(path) for path in args.bundles]
    report: dict[str, Any] = {"environment": env}
    cuda_error = "" if args.dry_run else cuda_preflight(bundles[0], devices)
    if cuda_error:
        log(f"CUDA cannot run here: {cuda_error}")
        log("nothing checked; onnxruntime's own diagnosis follows")
        if hasattr(ort, "print_debug_info"):
            ort.print_debug_info()
        status = 2
        checks: list[Check] = []
        timings: list[Timing] = []
    else:
        checks = check_bundles(bundles, devices, args.dry_run, log)
        timings = time_bundles(bundles, devices, args.dry_run, args.budget, args.max_runs, log)
        gated = [c for c in checks if c.gate]
        # Nothing ran on the GPU at all (every session fell back): a set-up problem, not a
        # numerical one.
        status = 0 if all(c.passed for c in gated) else 1
        if gated and all(not c.figures for c in gated):
            status = 2
    report["checks"] = [asdict(c) | {"passed": c.passed} for c in checks]
    report["timings"] = [asdict(t) | {"sequences_per_s": t.sequences_per_s} for t in timings]
    report["passed"] = status == 0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(checks, timings))
    print(f"\n{'PASSED' if status == 0 else 'FAILED'} (exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
