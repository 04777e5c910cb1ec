"""The TensorFlow half of a build, run in a child process: load, export, reference outputs.

TensorFlow holds the module's weights (1.3 GB for ELECTRA-large) from the moment it loads
it, and a process that imported it keeps its allocations and thread pools; onnxruntime then
loads the same weights again for fusion, quantisation and verification. So everything that
needs TensorFlow runs first, in a child process that ends before the onnxruntime steps begin:
the SavedModel is loaded, exported to ONNX (hollow route), and run once on the verification
texts, its outputs kept on disk for `verify.recorded_runner`. Peak memory then grows with the
weights once, not with the number of steps.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastelectra.bundle import TOKENIZER_FILE, Dimensions

REFERENCE_DIR = "tensorflow-reference"
EXPORTED_FILE = "exported.onnx"


@dataclass
class TensorFlowStage:
    """What the TensorFlow stage hands to the rest of the build (all of it picklable)."""

    dimensions: Dimensions
    do_lower_case: bool
    convention: str
    exported: Path  # the ONNX export (weights in `exported.onnx.data`)
    export_route: str
    tokenizer: Path  # tokenizer.json built from the module's vocab_file and do_lower_case
    reference: Path  # TensorFlow's outputs on the verification texts (`record_reference`)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0  # the child process's own peak


def run_tensorflow_stage(
    source: str,
    work: Path,
    texts: list[tuple[str, str | None]],
    route: str = "hollow",
    verbose: bool = True,
) -> TensorFlowStage:
    """Run `tensorflow_stage` in a fresh (spawned) process and return its result.

    Spawned, not forked: a fork would copy whatever the parent holds, and TensorFlow is not
    fork-safe. Errors raised there (SourceError, ...) are re-raised here as they were.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(tensorflow_stage, source, work, texts, route, verbose).result()


def tensorflow_stage(
    source: str,
    work: Path,
    texts: list[tuple[str, str | None]],
    route: str = "hollow",
    verbose: bool = True,
) -> TensorFlowStage:
    """Load `source`, export it to `work`, and record its outputs on `texts` (see module doc)."""
    import resource

    from fastelectra.convert.build import encode_texts
    from fastelectra.convert.source import load_source
    from fastelectra.convert.tf_export import export_onnx
    from fastelectra.convert.tokenizer import build_tokenizer
    from fastelectra.convert.verify import record_reference, tensorflow_runner

    def say(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    timings: dict[str, float] = {}
    started = time.perf_counter()
    say(f"loading {source}")
    src = load_source(source)
    dims = src.dimensions
    say(
        f"  {dims.layers} layers, hidden {dims.hidden}, {dims.heads} heads, FFN "
        f"{dims.intermediate}, vocab {dims.vocab_size}, max positions {dims.max_positions}, "
        f"do_lower_case={src.do_lower_case}, calling convention {src.convention}"
    )
    timings["load"] = time.perf_counter() - started

    started = time.perf_counter()
    say(f"exporting to ONNX (tf2onnx, {route} route)")
    exported = export_onnx(src, work / EXPORTED_FILE, route=route)
    timings["export"] = time.perf_counter() - started

    started = time.perf_counter()
    say(f"running TensorFlow on {len(texts)} verification texts")
    tokenizer = work / TOKENIZER_FILE
    build_tokenizer(src.vocab_file, src.do_lower_case).save(str(tokenizer))
    encodings = encode_texts(tokenizer, texts, dims.max_positions)
    reference = record_reference(tensorflow_runner(src), encodings, work / REFERENCE_DIR)
    timings["tensorflow_reference"] = time.perf_counter() - started

    return TensorFlowStage(
        dimensions=dims,
        do_lower_case=src.do_lower_case,
        convention=src.convention,
        exported=exported.path,
        export_route=exported.route,
        tokenizer=tokenizer,
        reference=reference,
        timings=timings,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
