"""Check an exported model against the original TensorFlow module, on the same token ids.

Both run on identical right-padded batches; figures are accumulated batch by batch so memory
stays bounded (ELECTRA-large's sequence output for 240 texts of 512 tokens would be 0.5 GB).
The sequence output is compared on unpadded positions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fastelectra.bundle import OUTPUT_NAMES
from fastelectra.precisions import UPPER_BOUND_METRICS, Gate, Precision
from fastelectra.runtime.lines import Text, read_texts


def default_texts() -> list[Text]:
    """The built-in varied English set: singles, pairs and passages past 512 tokens."""
    data = resources.files("fastelectra") / "data" / "verify_texts.txt"
    return read_texts(data, "built-in verify_texts.txt")


@dataclass
class _Stats:
    """Running max |a-b| and per-row cosines of one output."""

    max_abs_diff: float = 0.0
    cosines: list[np.ndarray] = field(default_factory=list)

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref = ref.astype(np.float64)
        got = got.astype(np.float64)
        self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(ref - got), initial=0.0)))
        self.cosines.append(cosine_rows(ref, got))

    def summary(self) -> dict[str, float]:
        cos = np.concatenate(self.cosines) if self.cosines else np.zeros(0)
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_cosine": float(cos.mean()) if cos.size else math.nan,
            "min_cosine": float(cos.min()) if cos.size else math.nan,
        }


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    # Two all-zero rows are identical; cosine 1 rather than nan.
    return np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.sum(ra * rb) / math.sqrt(np.sum(ra * ra) * np.sum(rb * rb)))


def pairwise_similarities(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    return sims[np.triu_indices(len(unit), k=1)]


class _Comparison:
    """Figures of one candidate against the outputs expected of it, accumulated over batches."""

    def __init__(self) -> None:
        self.pooled = _Stats()
        self.sequence = _Stats()
        self.mean_pooled = _Stats()
        self.expected_means: list[np.ndarray] = []
        self.got_means: list[np.ndarray] = []

    def update(self, expected: tuple[np.ndarray, np.ndarray], got, lengths: np.ndarray) -> None:
        self.pooled.update(expected[0], got[0])
        valid = np.arange(expected[1].shape[1])[None, :] < lengths[:, None]
        self.sequence.update(expected[1][valid], got[1][valid])
        expected_mean = masked_mean(expected[1], lengths)
        got_mean = masked_mean(got[1], lengths)
        self.mean_pooled.update(expected_mean, got_mean)
        self.expected_means.append(expected_mean)
        self.got_means.append(got_mean)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pooled_output": self.pooled.summary(),
            "sequence_output": self.sequence.summary(),
            "mean_pooled_sequence": self.mean_pooled.summary(),
        }
        expected, got = np.concatenate(self.expected_means), np.concatenate(self.got_means)
        if len(expected) > 2:
            out["spearman"] = spearman(pairwise_similarities(expected), pairwise_similarities(got))
        return out


def masked_mean(sequence: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    valid = (np.arange(sequence.shape[1])[None, :] < lengths[:, None]).astype(sequence.dtype)
    return (sequence * valid[..., None]).sum(1) / np.maximum(lengths[:, None], 1)


Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def tensorflow_runner(source: Any) -> Runner:
    import tensorflow as tf

    fn = source.inference_function()

    def run(ids, mask, segments):
        out = fn(tf.constant(ids), tf.constant(mask), tf.constant(segments))
        return out["pooled_output"].numpy(), out["sequence_output"].numpy()

    return run


def record_outputs(
    runner: Runner, encodings: Sequence[Any], folder: Path, batch_size: int = 8
) -> Path:
    """Run `runner` over the batches `verify` will use and keep its outputs on disk.

    A build computes TensorFlow's outputs in its TensorFlow stage and lets that process end
    before onnxruntime loads a model: the two never hold their weights at the same time. The
    INT8 search records the FP32 model's outputs once the same way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for number, (ids, mask, segments, _) in enumerate(batches(encodings, batch_size)):
        pooled, sequence = runner(ids, mask, segments)
        np.savez(folder / f"batch-{number:05d}.npz", ids=ids, pooled=pooled, sequence=sequence)
    return folder


def recorded_runner(folder: Path) -> Runner:
    """Replays `record_outputs`'s outputs, batch by batch, checking each batch's token ids."""
    files = iter(sorted(folder.glob("batch-*.npz")))

    def run(ids, mask, segments):
        path = next(files, None)
        if path is None:
            raise RuntimeError(f"{folder}: more batches asked for than were recorded")
        with np.load(path) as recorded:
            if not np.array_equal(recorded["ids"], ids):
                raise RuntimeError(f"{path}: recorded for other token ids than this batch's")
            return recorded["pooled"], recorded["sequence"]

    return run


def onnx_runner(model_path: Path, threads: int | None = None) -> Runner:
    """The model as the runtime serves it on CPU (`EncoderSession`): what is verified is what runs."""
    from fastelectra.runtime.providers import plan_execution
    from fastelectra.runtime.session import EncoderSession

    return EncoderSession(model_path, plan_execution("cpu", threads)).run


def batches(encodings: Sequence[Any], batch_size: int) -> Iterable[tuple[np.ndarray, ...]]:
    """Length-sorted, right-padded batches: (ids, mask, segments, lengths)."""
    from fastelectra.runtime.tokenizer import pad_batch

    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = [encodings[i] for i in order[start : start + batch_size]]
        ids, mask, segments = pad_batch(chunk)
        yield ids, mask, segments, mask.sum(1)


def verify(
    expected: Runner,
    candidate: Runner,
    encodings: Sequence[Any],
    precision: Precision,
    fp32: Runner | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Compare `candidate` with `expected` (and with the FP32 model if given).

    `expected` is TensorFlow (live or recorded) in a build and in `fastelectra verify`, whose
    reports say so (`"reference": "tensorflow"`); the INT8 search passes the FP32 model's
    recorded outputs instead, and reads only the figures and the gate of the report.
    `precision.gate` judges it (the INT8 search passes a tightened one).
    """
    vs_tf, vs_fp32 = _Comparison(), _Comparison()
    truncated = sum(bool(e.truncated) for e in encodings)
    for ids, mask, segments, lengths in batches(encodings, batch_size):
        got = candidate(ids, mask, segments)
        vs_tf.update(expected(ids, mask, segments), got, lengths)
        if fp32 is not None:
            vs_fp32.update(fp32(ids, mask, segments), got, lengths)
        if progress:
            progress(len(ids))
    figures = vs_tf.summary()
    report: dict[str, Any] = {
        "precision": precision.name,
        "reference": "tensorflow",
        "texts": len(encodings),
        "truncated_texts": truncated,
        "outputs": {name: figures[name] for name in OUTPUT_NAMES},
        "mean_pooled_sequence": figures["mean_pooled_sequence"],
        "spearman_vs_tensorflow": figures.get("spearman"),
    }
    if fp32 is not None:
        against = vs_fp32.summary()
        report["against_fp32"] = {
            "outputs": {name: against[name] for name in OUTPUT_NAMES},
            "mean_pooled_sequence": against["mean_pooled_sequence"],
            "spearman": against.get("spearman"),
        }
    report["thresholds"] = precision.gate.to_json()
    report["failures"] = gate_failures(report, precision.gate)
    report["passed"] = not report["failures"]
    return report


def gate_failures(report: dict[str, Any], gate: Gate) -> list[str]:
    """What in `report` misses `gate`; [] if none."""
    failures = []
    for section, bounds in gate.bounds.items():
        figures = report["outputs"].get(section) or report.get(section) or {}
        for metric, bound in bounds.items():
            value = figures.get(metric)
            upper = metric in UPPER_BOUND_METRICS
            bad = value is None or math.isnan(value) or (value > bound if upper else value < bound)
            if bad:
                needs = "<=" if upper else ">="
                failures.append(f"{section}.{metric} = {value} (needs {needs} {bound})")
    if gate.spearman_vs_fp32 is not None:
        value = (report.get("against_fp32") or {}).get("spearman")
        if value is None:
            value = report.get("spearman_vs_tensorflow")
        if value is None or value < gate.spearman_vs_fp32:
            failures.append(f"spearman {value} < {gate.spearman_vs_fp32}")
    return failures


def format_report(report: dict[str, Any]) -> str:
    """A small table for the terminal."""
    rows = [("output", "max_abs_diff", "mean_cosine", "min_cosine")]
    sections = dict(report["outputs"])
    sections["mean_pooled_sequence"] = report.get("mean_pooled_sequence", {})
    for name, f in sections.items():
        if f:
            rows.append(
                (
                    name,
                    f"{f['max_abs_diff']:.3g}",
                    f"{f['mean_cosine']:.6f}",
                    f"{f['min_cosine']:.6f}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"{report['precision']} vs {report['reference']} on {report['texts']} texts "
        f"({report.get('truncated_texts', 0)} truncated)"
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if report.get("spearman_vs_tensorflow") is not None:
        lines.append(
            f"spearman of pairwise similarities vs TF: {report['spearman_vs_tensorflow']:.6f}"
        )
    if report.get("against_fp32", {}).get("spearman") is not None:
        lines.append(f"spearman vs FP32 bundle: {report['against_fp32']['spearman']:.6f}")
    verdict = "PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    lines.append(f"gate {report['thresholds']}: {verdict}")
    return "\n".join(lines)
