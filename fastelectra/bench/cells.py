"""Batch x sequence cells: synthetic inputs of an exact shape, timed round-robin.

Inputs go straight to the session (no tokenizer, no batching), so a cell's shape is exactly
`batch x seq`: random ids from the vocabulary between [CLS] and [SEP], no padding.

Timing is interleaved: each round gives every variant one turn, in an order rotated from
round to round, so a slow drift of the machine (another job, thermal or frequency changes)
hits every variant alike and no variant always follows the same neighbour. Rounds go on until
the cell has used `duration` seconds per variant on average and at least `min_runs` rounds
have run, so every variant has the same number of samples.

A cell's turn is `SETTLE_RUNS` untimed runs, then a block of timed ones: `BLOCK_RUNS`, or as
many as the fastest variant needs to fill `Pacing.turn_s` (the same count for every variant,
so each has the same number of samples). The sessions are timed as the runtime serves them: onnxruntime's
worker threads spin for work after each run (its default, kept by `fastelectra serve`), so
within a turn the variant runs as a busy server does, and before each turn the process idles
`Pacing.idle_s` so that the previous variant's spinning threads (up to 2^20 iterations; after
a MiniLM run they kept a core busy for ~90 ms) stop before the next variant starts.
`turn_s` keeps that idle a bounded share of the wall time for fast cells. `fastelectra bench
--no-spinning` times sessions with spinning off instead (`QUIET`: no idle, three-run turns),
the bench's method before issue 19, labelled "+no-spinning" in the variant names.

What the two do to interleaving is recorded by `benchmarks/order_check.py` (alone, one order,
the opposite order; both pacings): benchmarks/results/2026-12-01-xeon-avx512/ has the
no-spinning check (either order within 1 %), benchmarks/results/2026-12-05-xeon-amx/ the
served one. Without the idle, spinning sessions interleaved at 2.7-2.8x their alone p50 on 2
cores (2026-12-01); that is what the idle is for.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from fastelectra.bench.variants import Variant
from fastelectra.errors import InputError

PERCENTILES = (50, 90, 99)
# Per turn in a cell: untimed runs (the first run after an idle wakes sleeping threads), then
# timed runs.
SETTLE_RUNS = 1
BLOCK_RUNS = 3


@dataclass(frozen=True)
class Pacing:
    """How turns are spaced: `idle_s` of sleep before each turn, and blocks of timed runs long
    enough for the fastest variant to run `turn_s` per turn (`block_runs`)."""

    idle_s: float
    turn_s: float

    def to_json(self) -> dict[str, float]:
        return {"idle_before_turn_s": self.idle_s, "timed_per_turn_s": self.turn_s}

    def block_runs(self, fastest_run_s: float, least: int = BLOCK_RUNS) -> int:
        """Timed runs per turn: `least`, or enough for a `fastest_run_s` run to fill `turn_s`."""
        if fastest_run_s <= 0:
            return least
        return max(least, math.ceil(self.turn_s / fastest_run_s))


# Sessions as served (spinning): the idle outlasts onnxruntime's spin; the issue-19 method.
SERVED = Pacing(idle_s=0.3, turn_s=0.2)
# Sessions with spinning off: nothing outlives a run, so turns follow each other at once.
QUIET = Pacing(idle_s=0.0, turn_s=0.0)


def pacing_for(spinning: bool) -> Pacing:
    return SERVED if spinning else QUIET


@dataclass(frozen=True)
class Cell:
    batch: int
    seq: int


def parse_cells(text: str) -> list[Cell]:
    """`1x16,1x128`: cells spelt `BATCHxSEQ`, as `--precision auto --target-shape` reads them."""
    from fastelectra.convert.auto import parse_shape

    return [Cell(*parse_shape(item)) for item in text.split(",")]


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
    pacing: Pacing = SERVED,
) -> tuple[list[list[float]], list[object]]:
    """Interleave `runs` (see the module doc): per turn, `pacing.idle_s` of sleep, `settle`
    untimed calls, then `block` timed ones. Returns seconds per timed call of each, and what
    each returned on its first timed call."""
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
                if pacing.idle_s:
                    time.sleep(pacing.idle_s)
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
    pacing: Pacing = SERVED,
) -> dict[str, list[float]]:
    """Seconds per run of each variant on `inputs`, measured round-robin."""
    prepared = [v.prepare(*inputs) for v in variants]
    last_run = []
    for variant, x in zip(variants, prepared, strict=True):
        for _ in range(max(warmup, 1)):  # first runs of a shape grow arenas, trace, pre-pack
            started = time.perf_counter()
            variant.run(x)
        last_run.append(time.perf_counter() - started)
    runs = [partial(v.run, x) for v, x in zip(variants, prepared, strict=True)]
    block = pacing.block_runs(min(last_run))
    rounds = -(-min_runs // block)
    samples, _ = round_robin(runs, duration, rounds, settle=SETTLE_RUNS, block=block, pacing=pacing)
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
