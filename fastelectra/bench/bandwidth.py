"""This machine's memory bandwidth: how fast a call can stream its weights, for the floor.

A streaming read of a buffer several times the last-level cache (so no pass finds it cached),
split over `threads` threads like the sessions under test: numpy reductions release the GIL,
so each thread reads its own contiguous slice at full speed. The reduction is a maximum, not
a sum: numpy's pairwise float32 sum is slower than memory (on the Xeon of
`benchmarks/results/2026-12-01-xeon-avx512`: 8.7 GB/s for sum, 16 GB/s for max, one thread),
and an understated bandwidth would put the floor above what the machine can do. The best of
repeated passes is the figure, since a floor must be the best the machine showed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastelectra.bench.floor import fastest_run

MIN_BUFFER_BYTES = 1 << 30
LLC_MULTIPLE = 4  # the buffer is at least this many last-level caches
MIN_PASSES = 3
METHOD = "numpy float32 max over contiguous slices, one per thread, of a buffer >= 4x the LLC"


@dataclass(frozen=True)
class Bandwidth:
    threads: int
    buffer_bytes: int
    bytes_per_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "buffer_mib": round(self.buffer_bytes / 2**20),
            "gb_per_s": round(self.bytes_per_s / 1e9, 2),
            "method": METHOD,
        }


def buffer_bytes(llc_bytes: int | None) -> int:
    return max(MIN_BUFFER_BYTES, LLC_MULTIPLE * (llc_bytes or 0))


def measure_bandwidth(threads: int, seconds: float, size: int = MIN_BUFFER_BYTES) -> Bandwidth:
    """Bytes per second of the fastest pass over `size` bytes, repeated for about `seconds`."""
    data = np.ones(size // 4, np.float32)  # written once: every page is really there
    slices = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:

        def one_pass() -> None:
            list(pool.map(np.max, slices))

        # The untimed first pass starts the threads and touches the pages.
        best = fastest_run(one_pass, seconds, MIN_PASSES)
    return Bandwidth(threads, data.nbytes, data.nbytes / best)
