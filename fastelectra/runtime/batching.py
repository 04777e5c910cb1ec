"""Length-aware batching: which texts run together, so little compute goes to padding.

Encoder cost grows with ``rows × longest row`` (and attention with its square), so a batch
that mixes a 500-token text with 31 five-token texts does 32 × 500 tokens of work for ~650
real ones. Sorting by length before cutting batches, and padding each batch only to its own
longest row, removes most of that waste. The caller gets each batch's original indices back
and scatters results into place, so its order is preserved.

A model run also costs a fixed amount (launch, reading every weight once): `plan_runs` cuts
the length-sorted rows into the contiguous runs that minimise
``Σ (overhead_tokens + rows × longest)`` within the caps (an exact dynamic programme,
O(rows × max_rows)). On a CPU the fixed part is worth only a few tokens, so merging one
400-token text with sixty 8-token ones is several times slower than running them apart; on a
GPU it is worth thousands and merging wins. `Encoder.encode` / `embed` plan with an unbounded
overhead (`plan_batches`): each run filled to the caps, the fewest runs; the server plans
with the overhead it measured (`fastelectra.serve.overhead`).

Padding is on the right only: position ids in BERT-family models are implicit (0..seq-1), so
left padding would shift every token's position and change the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from fastelectra.errors import InputError
from fastelectra.runtime.tokenizer import Encoding, pad_batch


class Batch(NamedTuple):
    indices: np.ndarray  # int64 [rows]: positions of these rows in the caller's sequence
    input_word_ids: np.ndarray  # int32 [rows, longest]
    input_mask: np.ndarray  # int32 [rows, longest]
    segment_ids: np.ndarray  # int32 [rows, longest]


def check_batch_limits(batch_size: int, max_batch_tokens: int | None) -> None:
    for name, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
        if value is None and name == "max_batch_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")


def plan_runs(
    lengths: Sequence[int] | np.ndarray,
    max_rows: int,
    max_tokens: int | None,
    overhead_tokens: float = math.inf,
) -> list[np.ndarray]:
    """Cut rows into model runs minimising ``Σ (overhead_tokens + rows × longest)``.

    Each run holds at most `max_rows` rows and `max_tokens` padded tokens (None: no token
    cap); a row longer than `max_tokens` runs alone, since it must run anyway. Returns index
    arrays into `lengths`, longest rows first: the most memory-hungry run comes first, so an
    out-of-memory shows up at once rather than after most of the work. Rows of equal length
    keep the caller's order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]
    n = len(order)

    def most_rows(i: int) -> int:
        """The largest run that may start at sorted row i (its longest, sorted descending)."""
        rows = min(max_rows, n - i)
        if max_tokens is not None:
            rows = min(rows, max(1, max_tokens // max(int(ordered[i]), 1)))
        return rows

    take = np.ones(n, dtype=np.int64)  # take[i]: how many rows the run starting at i holds
    if math.isinf(overhead_tokens):
        # Only the number of runs counts. Rows after i never need more runs than rows from i,
        # so the largest run at each start is optimal: fill each run to the caps.
        i = 0
        while i < n:
            take[i] = most_rows(i)
            i += int(take[i])
    else:
        best = np.zeros(n + 1)  # best[i]: least cost of running rows i.. (in `order`)
        for i in range(n - 1, -1, -1):
            most = most_rows(i)
            sizes = np.arange(1, most + 1)
            costs = overhead_tokens + sizes * max(int(ordered[i]), 1) + best[i + sizes]
            # On a tie, the larger run: fewer runs for the same modelled cost.
            k = most - 1 - int(np.argmin(costs[::-1]))
            best[i], take[i] = costs[k], sizes[k]
    runs = []
    i = 0
    while i < n:
        runs.append(order[i : i + take[i]])
        i += int(take[i])
    return runs


def plan_batches(
    lengths: Sequence[int] | np.ndarray, batch_size: int = 32, max_batch_tokens: int | None = 16384
) -> list[np.ndarray]:
    """`Encoder.encode`'s plan: `plan_runs` filling each run to the caps, the caps checked.

    A batch holds at most `batch_size` rows and at most `max_batch_tokens` padded tokens
    (rows × its longest row).
    """
    check_batch_limits(batch_size, max_batch_tokens)
    return plan_runs(lengths, batch_size, max_batch_tokens)


def batch_of(encodings: Sequence[Encoding], indices: np.ndarray) -> Batch:
    """The rows `indices` of `encodings` as one `Batch`, right-padded to its longest row."""
    ids, mask, segments = pad_batch([encodings[i] for i in indices])
    return Batch(np.asarray(indices, dtype=np.int64), ids, mask, segments)


def iter_batches(
    encodings: Sequence[Encoding], batch_size: int = 32, max_batch_tokens: int | None = 16384
) -> Iterator[Batch]:
    """Yield `Batch` es of `encodings` as `plan_batches` cuts them."""
    lengths = [len(e.ids) for e in encodings]
    for indices in plan_batches(lengths, batch_size, max_batch_tokens):
        yield batch_of(encodings, indices)
