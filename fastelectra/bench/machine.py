"""What a benchmark ran on: CPU model and flags, cores, memory, library versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastelectra.runtime.providers import available_cores

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
    "threadpoolctl",
    "matplotlib",
)


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU listed; ("", set()) where there is no cpuinfo."""
    try:
        text = path.read_text()
    except OSError:
        return platform.processor(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


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
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


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
        "cpu_flags": sorted(flags & set(RELEVANT_FLAGS)),
        "avx512_vnni": "avx512_vnni" in flags,
        "cores_available": available_cores(),
        "cores_online": os.cpu_count(),
        "memory_total_gib": memory_total_gib(),
        "python": platform.python_version(),
    }
