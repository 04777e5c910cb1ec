"""The TensorFlow half of a build, run in a child process: load, export, record outputs.

TensorFlow holds the module's weights (1.3 GB for ELECTRA-large) from the moment it loads
it, and a process that imported it keeps its allocations and thread pools; onnxruntime then
loads the same weights again for fusion, quantisation and verification. So everything that
needs TensorFlow runs first, in a child process that ends before the onnxruntime steps begin:
the SavedModel is loaded, exported to ONNX (hollow route), and run once on the verification
texts, its outputs kept on disk for `verify.recorded_runner`. Peak memory then grows with the
weights once, not with the number of steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import pickle
import queue
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastelectra.bundle import TOKENIZER_FILE, Dimensions
from fastelectra.errors import ToolError

TENSORFLOW_OUTPUTS_DIR = "tensorflow-outputs"
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
    tensorflow_outputs: Path  # TensorFlow's outputs on the verification texts (`record_outputs`)
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)  # per step, as `steps.Steps` keeps it
    peak_rss_mb: float = 0.0  # the child process's own peak


def run_tensorflow_stage(
    source: str,
    work: Path,
    texts: list[tuple[str, str | None]],
    route: str = "hollow",
    say: Callable[[str], None] | None = None,
) -> TensorFlowStage:
    """Run `tensorflow_stage` in a fresh (spawned) process and return its result.

    Spawned, not forked: a fork would copy whatever this process holds, and TensorFlow is not
    fork-safe. Its progress lines come back to `say`; an error raised there (SourceError, ...)
    is raised here as it was. The child dies with this process (SIGKILL included), so a killed
    build leaves no exporter writing into a work directory the next build will remove.
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    child = context.Process(
        target=_child, args=(messages, source, work, texts, route, say is not None), daemon=True
    )
    child.start()
    try:
        while True:
            try:
                kind, value = messages.get(timeout=1.0)
            except queue.Empty:
                if not child.is_alive():
                    raise ToolError(
                        f"the TensorFlow stage died (exit code {child.exitcode}); out of memory?"
                    ) from None
                continue
            if kind == "say" and say is not None:
                say(value)
            elif kind == "error":
                raise value
            elif kind == "result":
                return value
    finally:
        if child.is_alive():
            child.kill()
        child.join()


def _child(messages, source, work, texts, route, verbose) -> None:
    _die_with_parent()
    say = (lambda message: messages.put(("say", message))) if verbose else None
    try:
        messages.put(("result", tensorflow_stage(source, work, texts, route, say)))
    except BaseException as e:
        try:
            pickle.dumps(e)
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        messages.put(("error", e))


def _die_with_parent() -> None:
    """Linux: ask for SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def tensorflow_stage(
    source: str,
    work: Path,
    texts: list[tuple[str, str | None]],
    route: str = "hollow",
    say: Callable[[str], None] | None = None,
) -> TensorFlowStage:
    """Load `source`, export it to `work`, and record its outputs on `texts` (see module doc)."""
    from fastelectra.convert.source import load_source
    from fastelectra.convert.steps import Steps
    from fastelectra.convert.tf_export import export_onnx
    from fastelectra.convert.tokenizer import build_tokenizer
    from fastelectra.convert.verify import record_outputs, tensorflow_runner
    from fastelectra.runtime.tokenizer import WordPieceTokenizer, encode_texts

    say = say or (lambda _message: None)
    step = Steps(say)
    with step("load", f"loading {source}"):
        src = load_source(source)
    dims = src.dimensions
    say(
        f"  {dims.layers} layers, hidden {dims.hidden}, {dims.heads} heads, FFN "
        f"{dims.intermediate}, vocab {dims.vocab_size}, max positions {dims.max_positions}, "
        f"do_lower_case={src.do_lower_case}, calling convention {src.convention}"
    )
    with step("export", f"exporting to ONNX (tf2onnx, {route} route)"):
        exported = export_onnx(src, work / EXPORTED_FILE, route=route)
    message = f"running TensorFlow on {len(texts)} verification texts"
    with step("tensorflow_reference", message):  # the step's name is a key in meta.json
        tokenizer = work / TOKENIZER_FILE
        build_tokenizer(src.vocab_file, src.do_lower_case).save(str(tokenizer))
        encodings = encode_texts(WordPieceTokenizer.from_file(tokenizer), texts, dims.max_positions)
        tensorflow_outputs = record_outputs(
            tensorflow_runner(src), encodings, work / TENSORFLOW_OUTPUTS_DIR
        )

    return TensorFlowStage(
        dimensions=dims,
        do_lower_case=src.do_lower_case,
        convention=src.convention,
        exported=exported.path,
        export_route=exported.route,
        tokenizer=tokenizer,
        tensorflow_outputs=tensorflow_outputs,
        timings=step.timings,
        memory=step.memory,
        peak_rss_mb=step.peak() or 0.0,
    )
