"""Batch x sequence cells: synthetic inputs of an exact shape, timed round-robin.

Inputs go straight to the session (no tokenizer, no batching), so a cell's shape is exactly
`batch x seq`: random ids from the vocabulary between [CLS] and [SEP], no padding.

Timing is interleaved: each round gives every variant one turn, in an order rotated from
round to round, so a slow drift of the machine (another job, thermal or frequency changes)
hits every variant alike and no variant always follows the same neighbour. Rounds go on until
the cell has used `duration` seconds per variant on average and at least `min_runs` rounds
have run, so every variant has the same number of samples.

A cell's turn is `SETTLE_RUNS` untimed runs, then `BLOCK_RUNS` timed ones. Worker threads
keep spinning for work after a run returns, and on 2 cores they take the cores of whoever runs
next. onnxruntime's spin for up to 2^20 iterations (after a MiniLM run the process kept
burning a core for ~90 ms), longer than any settle run, so the onnxruntime sessions `bench`
times run with spinning off (`variants.BENCH_ALLOW_SPINNING`; serving keeps onnxruntime's
default). Recorded on the 2-core Xeon VM (`benchmarks/order_check.py`,
benchmarks/results/2026-12-01-xeon-avx512/order-check-minilm-b1-s16.json), MiniLM at batch
1 x 16, p50 of two repeats, FP32 / INT8:

    spinning (before)  interleaved 13.2-13.5 / 11.0-11.6 ms, alone 2.0-7.5 / 2.6-5.7 ms
    spinning off       interleaved  4.0-4.8 /  2.7-2.9 ms,  alone 3.3 / 2.5 ms

With spinning the interleaved figures were 2.7-2.8x the alone ones and the alone ones swung
by up to 2x between repeats; with it off either order gives the same p50 (within 1%), alone
repeats agree within 1%, and interleaving still costs 1.3x (FP32) and 1.13x (INT8): the
variants evict each other's weights from the caches the VM shares. Spinning off is not free
alone: the best spinning FP32 repeat (2.0 ms) beat it, the other (7.5 ms) lost. An idle wait
before each turn (the other remedy tried) costs ~30 ms per turn and left spinning sessions
1.3-2.7x above alone. The settle run stays for TensorFlow, whose threads spin briefly too.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from fastelectra.bench.variants import Variant
from fastelectra.errors import InputError

PERCENTILES = (50, 90, 99)
# Per turn in a cell: untimed runs that let the previous variant's threads wind down, then
# timed runs.
SETTLE_RUNS = 1
BLOCK_RUNS = 3


@dataclass(frozen=True)
class Cell:
    batch: int
    seq: int


def synthetic_inputs(
    cell: Cell, vocab_size: int, cls_id: int, sep_id: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[CLS] w_1 .. w_{seq-2} [SEP]`` rows, ids drawn above the special tokens, no padding."""
    if cell.seq < 2:
        raise InputError(f"seq must be >= 2 for [CLS] and [SEP], got {cell.seq}")
    lowest_word = max(cls_id, sep_id) + 1
    if lowest_word >= vocab_size:
        raise InputError(f"no word ids above [CLS]/[SEP] ({cls_id}, {sep_id}) in {vocab_size}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(lowest_word, vocab_size, (cell.batch, cell.seq), dtype=np.int32)
    ids[:, 0] = cls_id
    ids[:, -1] = sep_id
    return ids, np.ones_like(ids), np.zeros_like(ids)


def round_robin(
    runs: Sequence[Callable[[], object]],
    duration: float,
    min_rounds: int,
    settle: int = 0,
    block: int = 1,
) -> tuple[list[list[float]], list[object]]:
    """Interleave `runs` (see the module doc): per turn, `settle` untimed calls then `block`
    timed ones. Returns seconds per timed call of each, and what each returned on its first
    timed call."""
    samples: list[list[float]] = [[] for _ in runs]
    first: list[object] = [None] * len(runs)
    budget = duration * len(runs)
    spent = 0.0
    rounds = 0
    gc.collect()
    # A collection pause inside one run would land on whichever variant happened to be running.
    gc.disable()
    try:
        while rounds < min_rounds or spent < budget:
            shift = rounds % len(runs)
            for i in [*range(shift, len(runs)), *range(shift)]:
                for _ in range(settle):
                    runs[i]()
                for _ in range(block):
                    started = time.perf_counter()
                    result = runs[i]()
                    elapsed = time.perf_counter() - started
                    if not samples[i]:
                        first[i] = result
                    samples[i].append(elapsed)
                    spent += elapsed
            rounds += 1
    finally:
        gc.enable()
    return samples, first


def time_cell(
    variants: Sequence[Variant],
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    duration: float,
    warmup: int,
    min_runs: int,
) -> dict[str, list[float]]:
    """Seconds per run of each variant on `inputs`, measured round-robin."""
    prepared = [v.prepare(*inputs) for v in variants]
    for variant, x in zip(variants, prepared, strict=True):
        for _ in range(warmup):  # first runs of a shape grow memory arenas, trace, pre-pack
            variant.run(x)
    runs = [partial(v.run, x) for v, x in zip(variants, prepared, strict=True)]
    rounds = -(-min_runs // BLOCK_RUNS)
    samples, _ = round_robin(runs, duration, rounds, settle=SETTLE_RUNS, block=BLOCK_RUNS)
    return {v.name: s for v, s in zip(variants, samples, strict=True)}


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50 / p90 / p99 (linear interpolation), mean, min, max."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    stats = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    stats.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()))
    return {k: round(v, 4) for k, v in stats.items()}


def throughput(cell: Cell, seconds: Sequence[float]) -> dict[str, float]:
    """Sequences and tokens per second over all timed runs (total work / total time)."""
    total = float(np.sum(seconds))
    sequences = cell.batch * len(seconds) / total
    return {
        "sequences_per_s": round(sequences, 3),
        "tokens_per_s": round(sequences * cell.seq, 1),
    }
