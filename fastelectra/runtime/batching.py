"""Length-aware batching: group texts of similar length so little compute goes to padding.

Encoder cost grows with ``rows × longest row`` (and attention with its square), so a batch
that mixes a 500-token text with 31 five-token texts does 32 × 500 tokens of work for ~650
real ones. Sorting by length before cutting batches, and padding each batch only to its own
longest row, removes most of that waste. The caller gets each batch's original indices back
and scatters results into place, so its order is preserved.

Padding is on the right only: position ids in BERT-family models are implicit (0..seq-1), so
left padding would shift every token's position and change the outputs.
"""

from __future__ import annotations

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


def plan_batches(
    lengths: Sequence[int] | np.ndarray, batch_size: int = 32, max_batch_tokens: int | None = 16384
) -> list[np.ndarray]:
    """Cut ``range(len(lengths))`` into batches of indices, longest texts first.

    A batch holds at most `batch_size` rows and at most `max_batch_tokens` padded tokens
    (rows × its longest row); a single row longer than `max_batch_tokens` goes alone, since it
    must run anyway.
    """
    check_batch_limits(batch_size, max_batch_tokens)
    lengths = np.asarray(lengths, dtype=np.int64)
    # Longest first: the most memory-hungry batch runs first, so an out-of-memory shows up at
    # once rather than after most of the work. Stable, so equal lengths keep the caller's order.
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])  # sorted descending: the first row is the longest
        rows = batch_size
        if max_batch_tokens is not None:
            rows = min(rows, max(1, max_batch_tokens // max(longest, 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def iter_batches(
    encodings: Sequence[Encoding], batch_size: int = 32, max_batch_tokens: int | None = 16384
) -> Iterator[Batch]:
    """Yield `Batch` es of `encodings`, each right-padded to its own longest row."""
    lengths = [len(e.ids) for e in encodings]
    for indices in plan_batches(lengths, batch_size, max_batch_tokens):
        ids, mask, segments = pad_batch([encodings[i] for i in indices])
        yield Batch(indices, ids, mask, segments)
