"""A process's peak memory is its own, not that of the process that started it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from fastelectra.process_memory import peak_rss_mib, rss_mib

PROBE = "from fastelectra.process_memory import peak_rss_mib; print(peak_rss_mib())"


def test_peak_is_at_least_the_resident_set_now():
    now, peak = rss_mib(), peak_rss_mib()
    assert now is not None and peak is not None
    assert peak >= now * 0.99


def test_a_command_started_by_a_large_process_reports_its_own_peak():
    held = np.ones(64_000_000)  # 512 MB resident here while the child starts
    held += 1
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # getrusage's ru_maxrss would report this process's ~600 MB: Linux keeps it across the
    # vfork + exec that started the child.
    assert float(done.stdout) < 256
    assert held[0] == 2.0
