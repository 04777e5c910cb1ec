"""What a benchmark ran on: CPU model, instruction sets, cores, memory, versions, git commit.

Every figure names its CPU: `cpu_kind` ("xeon-avx512") is the CPU family and the widest
matrix instruction set it exposes, and recorded runs live in
`benchmarks/results/<date>-<cpu kind>/` (`results_dir`), so results of one kind of CPU sit
together whatever the host is called (VMs get a new hostname every time).

    python -m fastelectra.bench.machine     # prints this machine's results folder
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from fastelectra.cpu import ISA_FEATURES, cpuinfo, cpuinfo_fields, isa_features
from fastelectra.runtime.providers import available_cores
from fastelectra.version import installed_versions

__all__ = ["ISA_FEATURES", "cpuinfo", "isa_features"]  # also read from here by the bench

# CPU flags that decide which matrix-multiply kernels onnxruntime, OpenBLAS and TF can use.
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
# The widest tier first: the folder names the best matrix path the CPU offers.
ISA_TIERS = (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"))
# Words of the model name that say the CPU family, in the order they are looked for.
CPU_FAMILIES = ("xeon", "epyc", "threadripper", "ryzen", "core", "neoverse", "graviton")
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
RESULTS_ROOT = Path("benchmarks") / "results"
LIBRARIES = (
    "fastelectra",
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "onnx",
    "tensorflow",
    "torch",
    "sentence-transformers",
    "transformers",
    "optimum",
    "openvino",
    "nncf",
    "threadpoolctl",
    "matplotlib",
)


def cpu_kind(path: Path = Path("/proc/cpuinfo")) -> str:
    """``<family>-<widest ISA tier>``, e.g. ``xeon-avx512``: what results are filed under."""
    model, vendor, flags = cpuinfo_fields(path)
    words = model.lower().replace("(r)", " ").replace("(tm)", " ").split()
    family = next((f for f in CPU_FAMILIES if f in words), None)
    family = family or VENDORS.get(vendor) or platform.machine().lower() or "cpu"
    tier = next((name for name, flag in ISA_TIERS if flag in flags), None)
    return f"{family}-{tier}" if tier else family


def results_dir(root: Path = RESULTS_ROOT, day: date | None = None) -> Path:
    """``<root>/<date>-<cpu kind>``: where this machine's recorded runs of `day` go."""
    return Path(root) / f"{day or date.today()}-{cpu_kind()}"


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Size of the highest-level cache of CPU 0 (sysfs), None where sysfs does not say."""
    best: tuple[int, int] | None = None
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        value = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        if best is None or level > best[0]:
            best = (level, value)
    return best[1] if best else None


def memory_total_gib(path: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """The installed version of each of `names` (those not installed are left out)."""
    return installed_versions(names)


def git_commit(repo: Path | None = None) -> dict[str, Any] | None:
    """The commit of the checkout fastelectra is imported from, and whether it had changes."""
    repo = repo or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel), or no git
    return {"commit": commit, "dirty": dirty}


def machine_info() -> dict[str, Any]:
    model, flags = cpuinfo()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_kind": cpu_kind(),
        "cpu_flags": sorted(flags & set(RELEVANT_FLAGS)),
        "isa": isa_features(flags),
        "avx512_vnni": "avx512_vnni" in flags,
        "cores_available": available_cores(),
        "cores_online": os.cpu_count(),
        "llc_bytes": last_level_cache_bytes(),
        "memory_total_gib": memory_total_gib(),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    print(results_dir())
