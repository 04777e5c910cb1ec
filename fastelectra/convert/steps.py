"""Wall time and memory of each build step, for the progress lines and fastelectra.json."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Callable, Iterator
from typing import Any

from fastelectra.process_memory import peak_rss_mib, rss_mib

Progress = Callable[[str], None]


class Steps:
    """Times and measures named steps of one process.

    Memory is the whole process's, in MiB: the peak resident set so far at the step's end, and
    what is still resident after it, i.e. what the step kept.
    """

    def __init__(self, say: Progress):
        self.say = say
        self.timings: dict[str, float] = {}
        self.memory: dict[str, dict[str, float | None]] = {}
        self.peak_rss_mb: float | None = None

    @contextlib.contextmanager
    def __call__(self, name: str, message: str) -> Iterator[None]:
        import time

        self.say(message)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - start
            release_memory()
            rss = rss_mib()
            self.memory[name] = {"peak_rss_mb": self.peak(rss), "rss_after_mb": rss}
        figures = self.memory[name]
        self.say(
            f"  {name} took {self.timings[name]:.1f} s; RSS {mb(figures['rss_after_mb'])} after, "
            f"peak {mb(figures['peak_rss_mb'])}"
        )

    def merge(self, timings: dict[str, float], memory: dict[str, Any]) -> None:
        """Add the steps another process (the TensorFlow stage) measured of itself."""
        self.timings.update(timings)
        self.memory.update(memory)

    def peak(self, *seen: float | None) -> float | None:
        """The process's peak so far: its high-water mark (`process_memory.peak_rss_mib`),
        unless a resident size we read was higher.

        The kernel sums its RSS counters only approximately (per-CPU deltas), and raises the
        high-water mark only at unmaps and when asked, so that mark came out below the
        resident size read just before it (876.6 vs 876.7 MiB after `load`).
        """
        figures = [f for f in (self.peak_rss_mb, peak_rss_mib(), *seen) if f is not None]
        self.peak_rss_mb = max(figures) if figures else None
        return self.peak_rss_mb


def release_memory() -> None:
    """Give what a step freed back to the system before the next one starts.

    glibc's malloc keeps freed blocks in its arenas: after quantising ELECTRA-large the process
    still held ~2 GB it no longer used, and the verification that followed added its two
    sessions on top. `malloc_trim` returns the free pages; elsewhere this only collects.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        # Not glibc (musl): no such library or function, nothing to trim.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"
