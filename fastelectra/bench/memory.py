"""Peak memory of each variant, each measured in a fresh process.

All variants share one process while they are timed (that is what makes round-robin timing
possible), so that process's peak RSS says nothing about any one of them. Instead each variant
is loaded again in a new interpreter (`python -m fastelectra.bench.memory`, spec on stdin),
which runs every cell once and reports its own RSS:

    rss_after_imports_mib   the interpreter with numpy, onnxruntime (and TensorFlow for the
                            TensorFlow variant) imported, nothing loaded
    rss_after_load_mib      after loading the variant (weights, session, graph optimisation)
    peak_rss_mib            the process's high-water mark (VmHWM) after running every cell
    peak_over_imports_mib   peak - after imports: what the variant itself costs at its peak

Onnxruntime's arena keeps what the largest cell needed, so the peak is set by the largest cell.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastelectra.bench.cells import Cell, synthetic_inputs
from fastelectra.process_memory import peak_rss_mib, rss_mib


def measure_in_subprocess(
    spec: dict[str, Any], cells: Sequence[Cell], vocab: tuple[int, int, int]
) -> dict[str, Any]:
    """Run `_child` on one variant spec; returns its figures, or {"error": ...}."""
    request = {"spec": spec, "cells": [[c.batch, c.seq] for c in cells], "vocab": list(vocab)}
    proc = subprocess.run(
        [sys.executable, "-m", "fastelectra.bench.memory"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def measure_variants(
    variants: Sequence[Any],
    cells: Sequence[Cell],
    vocab: tuple[int, int, int],
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """`measure_in_subprocess` for each variant in turn (they never overlap)."""
    figures = []
    for variant in variants:
        progress(f"memory: {variant.name} alone in a fresh process")
        figures.append(measure_in_subprocess(variant.spec, cells, vocab))
    return figures


def _child(request: dict[str, Any]) -> dict[str, Any]:
    import numpy  # noqa: F401  (part of the baseline every variant pays)
    import onnxruntime  # noqa: F401

    spec = request["spec"]
    if spec["kind"] == "tensorflow":
        import tensorflow  # noqa: F401

    from fastelectra.bench.variants import variant_from_spec

    after_imports = rss_mib()
    variant = variant_from_spec(spec)
    after_load = rss_mib()
    vocab_size, cls_id, sep_id = request["vocab"]
    for batch, seq in request["cells"]:
        inputs = synthetic_inputs(Cell(batch, seq), vocab_size, cls_id, sep_id)
        variant.run(variant.prepare(*inputs))
    peak = peak_rss_mib()
    return {
        "rss_after_imports_mib": after_imports,
        "rss_after_load_mib": after_load,
        "peak_rss_mib": peak,
        "peak_over_imports_mib": None if after_imports is None else round(peak - after_imports, 1),
    }


if __name__ == "__main__":
    print(json.dumps(_child(json.load(sys.stdin))))
