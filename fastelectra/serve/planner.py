"""Which texts of a unit run together: padding-aware batch plans, and the cost they minimise.

A model run costs roughly a fixed amount (launch, reading every weight once) plus an amount per
padded token (rows × longest row). Merging requests saves the fixed part but pads every row to
the longest: one 400-token text among sixty 8-token ones makes a run of 24 000 tokens for ~900
real ones. On a CPU the fixed part is worth only a few tokens, so such a merge is several times
slower than running the texts apart; on a GPU it is worth thousands, and merging wins.

`plan_runs` therefore sorts the rows by length and cuts them into the contiguous groups that
minimise ``Σ (overhead_tokens + rows × longest)`` (an exact dynamic programme, O(rows ×
max_rows)), within the run caps. `measure_overhead_tokens` estimates the fixed part, in tokens,
for the model and device at hand, from two timed shapes at start-up.
"""

from __future__ import annotations

import time

import numpy as np

from fastelectra.runtime.encoder import Encoder

# Two shapes timed at start-up: one short text, and a batch with many times its tokens.
SMALL_SHAPE = (1, 16)  # rows, tokens per row
LARGE_SHAPE = (8, 64)
TIMING_REPEATS = 3


def plan_runs(
    lengths: np.ndarray, max_rows: int, max_tokens: int, overhead_tokens: float
) -> list[np.ndarray]:
    """Cut rows into model runs minimising ``Σ (overhead_tokens + rows × longest)``.

    Each run holds at most `max_rows` rows and `max_tokens` padded tokens (a row longer than
    `max_tokens` runs alone). Returns index arrays into `lengths`, longest rows first.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]
    n = len(order)
    best = np.zeros(n + 1)  # best[i]: least cost of running rows i.. (in `order`)
    take = np.ones(n, dtype=np.int64)  # take[i]: how many rows the run starting at i holds
    for i in range(n - 1, -1, -1):
        longest = max(int(ordered[i]), 1)  # sorted descending: row i is its run's longest
        most = min(max_rows, n - i, max(1, max_tokens // longest))
        sizes = np.arange(1, most + 1)
        costs = overhead_tokens + sizes * longest + best[i + sizes]
        # On a tie, the larger run: fewer runs for the same modelled cost.
        k = most - 1 - int(np.argmin(costs[::-1]))
        best[i], take[i] = costs[k], sizes[k]
    runs = []
    i = 0
    while i < n:
        runs.append(order[i : i + take[i]])
        i += int(take[i])
    return runs


def measure_overhead_tokens(encoder: Encoder, max_tokens: int) -> float:
    """A model run's fixed cost in padded tokens, on this model and device, from two shapes.

    With run time ≈ a + b × tokens timed at a small and a large shape (best of a few tries,
    since a shared machine only ever adds time), the overhead is a / b. Clamped to
    [0, max_tokens]: a device whose time hardly grows with tokens (a GPU) gets `max_tokens`,
    which merges everything the caps allow.
    """

    def best_time(rows: int, tokens: int) -> float:
        # "a" is one word piece in every BERT vocabulary: tokens - 2 of them plus [CLS]/[SEP].
        encodings = encoder.tokenize(["a " * (tokens - 2)] * rows)

        def run() -> None:
            for _ in encoder.run_batches(encodings, rows, None):
                pass

        run()  # the first run of a shape pays for allocations
        times = []
        for _ in range(TIMING_REPEATS):
            started = time.perf_counter()
            run()
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
