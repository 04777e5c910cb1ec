"""This process's resident memory, now and at its peak, in MiB: one reader for the build's
step figures and the bench's.

The peak is /proc's VmHWM, the high-water mark of this process's own address space.
getrusage's ru_maxrss is only a fallback (no /proc): Linux carries it across exec, so a
command started by a large process through vfork + exec (Python's subprocess does) reports
its parent's resident size as its own peak; a build started from a test process measured
1.1 GB of the test's memory that way.
"""

from __future__ import annotations

import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def rss_mib() -> float | None:
    """Resident set of this process now (None without /proc)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float | None:
    """Peak resident set of this process so far (not of its children)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)


def _status_mib(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)  # reported in kB
    except OSError:
        pass
    return None
