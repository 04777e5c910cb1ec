"""Realistic traffic: dynamic batching against fixed padding, on the same texts.

Both modes embed every text (mean pooling, L2-normalised), tokenization included, with the
same batch size and the same truncation (`pad_to` tokens), so they compute the same vectors:

    dynamic  `Encoder.embed`: texts sorted by length, each batch padded to its own longest
             text, at most `max_batch_tokens` padded tokens per batch
    fixed    texts in arrival order, every one padded (or cut) to exactly `pad_to` tokens

The texts default to the packaged mix of short queries and long passages
(`fastelectra/data/traffic_mix.txt`). Passes over all texts are interleaved round-robin
across bundles and modes; throughput comes from the median pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from fastelectra.bench.cells import SERVED, Pacing, round_robin
from fastelectra.bench.texts import cosine_to, truncation_expected
from fastelectra.bench.variants import OnnxVariant
from fastelectra.errors import InputError
from fastelectra.runtime.batching import plan_batches
from fastelectra.runtime.encoder import l2_normalize, pool
from fastelectra.runtime.session import EncoderSession
from fastelectra.runtime.tokenizer import WordPieceTokenizer, pad_batch

MAX_BATCH_TOKENS = 16384  # Encoder.embed's default token cap, stated so results record it


def embed_fixed_padding(
    tokenizer: WordPieceTokenizer,
    session: EncoderSession,
    hidden: int,
    texts: list[str],
    batch: int,
    pad_to: int,
) -> np.ndarray:
    """What serving without length-aware batching costs: every row padded to `pad_to`."""
    encodings = tokenizer.encode(texts, max_length=pad_to)
    vectors = np.empty((len(texts), hidden), np.float32)
    for start in range(0, len(encodings), batch):
        ids, mask, segments = pad_batch(encodings[start : start + batch], pad_to=pad_to)
        pooled, sequence = session.run(ids, mask, segments)
        vectors[start : start + len(ids)] = pool("mean", pooled, sequence, mask)
    return l2_normalize(vectors)


def padded_tokens(lengths: np.ndarray, batch: int) -> int:
    """Tokens `Encoder.embed` computes, padding included, for texts of these lengths."""
    return int(
        sum(
            len(rows) * int(lengths[rows].max())
            for rows in plan_batches(lengths, batch, MAX_BATCH_TOKENS)
        )
    )


def run_traffic(
    variants: Sequence[OnnxVariant],
    texts: list[str],
    source: str,
    batches: Sequence[int],
    pad_to: int,
    duration: float,
    warmup: int,
    progress: Callable[[str], None],
    pacing: Pacing = SERVED,
) -> dict[str, Any]:
    if not variants:
        raise InputError("traffic needs at least one bundle")
    # Both modes share the variant's session: one copy of the weights, the same kernels.
    encoders = {v.name: v.encoder(min(pad_to, v.max_sequence_length)) for v in variants}
    tokenizer = next(iter(encoders.values()))[1]
    full = tokenizer.token_count(texts)
    lengths = np.minimum(full, pad_to)
    real = int(lengths.sum())
    result: dict[str, Any] = {
        "file": source,
        "texts": len(texts),
        "pad_to": pad_to,
        "max_batch_tokens": MAX_BATCH_TOKENS,
        "tokens": {
            "real_after_truncation": real,
            "mean_length": round(float(full.mean()), 1),
            "median_length": float(np.median(full)),
            "max_length": int(full.max()),
            "truncated_texts": int((full > pad_to).sum()),
        },
        "timing": "passes over all texts, round-robin over bundles and modes; median pass",
        "runs": [],
    }
    for batch in batches:
        progress(f"traffic: batch {batch}, {len(texts)} texts, pad to {pad_to}")
        names, runs = [], []
        for variant in variants:
            encoder, tok = encoders[variant.name]
            names += [(variant.name, "dynamic"), (variant.name, "fixed")]
            runs += [
                partial(encoder.embed, texts, pooling="mean", normalize=True, batch_size=batch),
                partial(
                    embed_fixed_padding, tok, variant.session, encoder.hidden, texts, batch, pad_to
                ),
            ]
        with truncation_expected():
            if warmup > 0:  # one untimed pass warms every shape the timed passes will use
                for run in runs:
                    run()
            samples, first = round_robin(runs, duration, min_rounds=1, pacing=pacing)
        timing = dict(zip(names, samples, strict=True))
        vectors = dict(zip(names, first, strict=True))
        padded = {"dynamic": padded_tokens(lengths, batch), "fixed": len(texts) * pad_to}
        for name in encoders:
            modes = {}
            for mode in ("dynamic", "fixed"):
                pass_s = float(np.median(timing[name, mode]))
                modes[mode] = {
                    "passes": len(timing[name, mode]),
                    "pass_s_median": round(pass_s, 4),
                    "texts_per_s": round(len(texts) / pass_s, 2),
                    "real_tokens_per_s": round(real / pass_s, 1),
                    "padded_tokens": padded[mode],
                    "padding_efficiency": round(real / padded[mode], 4),
                }
            result["runs"].append(
                {
                    "variant": name,
                    "batch": batch,
                    **modes,
                    "dynamic_over_fixed_throughput": round(
                        modes["dynamic"]["texts_per_s"] / modes["fixed"]["texts_per_s"], 3
                    ),
                    # Same vectors either way (up to INT8's per-batch activation ranges).
                    "agreement": cosine_to(vectors[name, "fixed"], vectors[name, "dynamic"]),
                }
            )
    return result
