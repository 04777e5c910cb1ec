"""A model run's fixed cost, in padded tokens, measured on the model and device at hand.

The server plans each unit's model runs with `batching.plan_runs`, which weighs padding
against this overhead: on a CPU it is worth a few tokens (running texts of different lengths
apart wins), on a GPU thousands (merging wins). It is estimated once at start-up from two
timed shapes.
"""

from __future__ import annotations

import time

import numpy as np

from fastelectra.runtime.batching import batch_of
from fastelectra.runtime.encoder import Encoder

# Two shapes timed at start-up: one short text, and a batch with many times its tokens.
SMALL_SHAPE = (1, 16)  # rows, tokens per row
LARGE_SHAPE = (8, 64)
TIMING_REPEATS = 3


def measure_overhead_tokens(encoder: Encoder, max_tokens: int) -> float:
    """A model run's fixed cost in padded tokens, on this model and device, from two shapes.

    With run time ≈ a + b × tokens timed at a small and a large shape (best of a few tries,
    since a shared machine only ever adds time), the overhead is a / b. Clamped to
    [0, max_tokens]: a device whose time hardly grows with tokens (a GPU) gets `max_tokens`,
    which merges everything the caps allow.
    """

    def best_time(rows: int, tokens: int) -> float:
        # "a" is one word piece in every BERT vocabulary: tokens - 2 of them plus [CLS]/[SEP].
        batch = batch_of(encoder.tokenize(["a " * (tokens - 2)] * rows), np.arange(rows))
        encoder.run_batch(batch)  # the first run of a shape pays for allocations
        times = []
        for _ in range(TIMING_REPEATS):
            started = time.perf_counter()
            encoder.run_batch(batch)
            times.append(time.perf_counter() - started)
        return min(times)

    small_tokens = SMALL_SHAPE[0] * SMALL_SHAPE[1]
    large_tokens = LARGE_SHAPE[0] * LARGE_SHAPE[1]
    small, large = best_time(*SMALL_SHAPE), best_time(*LARGE_SHAPE)
    per_token = (large - small) / (large_tokens - small_tokens)
    if per_token <= 0:
        return float(max_tokens)
    fixed = small - per_token * small_tokens
    return float(min(max(fixed / per_token, 0.0), max_tokens))
