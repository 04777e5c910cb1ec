"""Run an exported file with plain onnxruntime and hold it to `Encoder.embed` on the same texts.

The reference is the bundle itself through the runtime, with the same pooling and
normalisation: for ids-in files the test is the head's arithmetic, for text-in files the
tokenizer graph too. FP32 files must agree to `FP32_MAX_ABS_DIFF`; FP16 / INT8 files, whose
kernels round differently once the runtime's CPU rewrite is not applied, to their precision's
cosine gate (`fastelectra.precisions`).
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastelectra.errors import FastElectraError
from fastelectra.precisions import Precision
from fastelectra.runtime.lines import read_texts

if TYPE_CHECKING:
    from fastelectra.bundle import Bundle
    from fastelectra.export.model import ExportOptions

FP32_MAX_ABS_DIFF = 1e-5
BATCH = 16


class ExportCheckError(FastElectraError, ValueError):
    """The exported file does not give the runtime's vectors; it was not written."""


def check_texts() -> list[str]:
    """The build's verification texts (singles, both halves of pairs, passages past 512
    tokens, so truncation is tested too)."""
    data = resources.files("fastelectra") / "data" / "verify_texts.txt"
    texts = []
    for text, pair in read_texts(data, "built-in verify_texts.txt"):
        texts += [text] if pair is None else [text, pair]
    return texts


def check_export(path: Path, bundle: Bundle, options: ExportOptions) -> dict[str, Any]:
    """The file's figures against `Encoder.embed`; raises `ExportCheckError` past the gate."""
    from fastelectra.runtime import Encoder

    texts = check_texts()
    encoder = Encoder.load(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long passages' truncation warning
        want = encoder.embed(texts, pooling=options.pooling, normalize=options.normalize)
    session = exported_session(path, options.text_input)
    got = np.concatenate(
        [
            run_exported(session, texts[i : i + BATCH], encoder if not options.text_input else None)
            for i in range(0, len(texts), BATCH)
        ]
    )
    figures = compare(got, want)
    figures["texts"] = len(texts)
    failures = gate_failures(figures, bundle.meta.precision)
    figures["gate"] = gate_of(bundle.meta.precision)
    if failures:
        raise ExportCheckError(
            f"the exported file's vectors differ from Encoder.embed's ({'; '.join(failures)}); "
            "nothing was written"
        )
    return figures


def exported_session(path: Path, text_input: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if text_input:
        from fastelectra.export.text_graph import extensions_library

        options.register_custom_ops_library(extensions_library())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_exported(session: Any, texts: list[str], encoder: Any | None) -> np.ndarray:
    """One batch through the file: token ids from `encoder`'s tokenizer, or the texts."""
    if encoder is None:
        return session.run(["embedding"], {"text": np.array(texts, dtype=object)})[0]
    from fastelectra.runtime.tokenizer import pad_batch

    ids, mask, segments = pad_batch(encoder.tokenize(texts))
    feeds = {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}
    return session.run(["embedding"], feeds)[0]


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    if got.shape != want.shape or not np.isfinite(got).all():
        return {"max_abs_diff": float("inf"), "min_cosine": -1.0, "mean_cosine": -1.0}
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosines = (got * want).sum(axis=1) / np.maximum(norms, 1e-12)
    return {
        "max_abs_diff": float(np.abs(got - want).max()),
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
    }


def gate_of(precision: Precision) -> dict[str, float]:
    """The fused FP32 graph: max |diff|; converted ones: the least of their gate's cosines."""
    if not precision.converted:
        return {"max_abs_diff": FP32_MAX_ABS_DIFF}
    bounds = precision.gate.bounds.values()
    gate = {}
    for metric in ("min_cosine", "mean_cosine"):
        found = [b[metric] for b in bounds if metric in b]
        if found:
            gate[metric] = min(found)
    return gate


def gate_failures(figures: dict[str, Any], precision: Precision) -> list[str]:
    failures = []
    for metric, bound in gate_of(precision).items():
        value = figures[metric]
        passed = value <= bound if metric == "max_abs_diff" else value >= bound
        if not passed:
            side = "above" if metric == "max_abs_diff" else "below"
            failures.append(f"{metric} {value:.3g} {side} {bound:g}")
    return failures
