"""This CPU's model and instruction-set features, from /proc/cpuinfo.

Read by the bench (every result names its CPU) and by the runtime (a bundle whose precision was
chosen by timing on one instruction set warns when it runs on a CPU without it).
"""

from __future__ import annotations

import platform
from pathlib import Path

# The instruction sets that decide the kernels, under the names the results give them: which
# /proc/cpuinfo flags show each (any one of them suffices).
ISA_FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "AVX512-VNNI": ("avx512_vnni",),
    "AVX-VNNI": ("avx_vnni",),
    "AVX512-BF16": ("avx512_bf16",),
    "AVX512-FP16": ("avx512_fp16",),
    "AMX": ("amx_tile",),
    "AMX-INT8": ("amx_int8",),
    "AMX-BF16": ("amx_bf16",),
}


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU listed; ("", set()) where there is no cpuinfo."""
    model, _, flags = cpuinfo_fields(path)
    return model, flags


def cpuinfo_fields(path: Path = Path("/proc/cpuinfo")) -> tuple[str, str, set[str]]:
    """(model name, vendor id, flags) of the first CPU listed."""
    try:
        text = path.read_text()
    except OSError:
        return platform.processor(), "", set()
    model, vendor, flags = "", "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, vendor, flags


def isa_features(flags: set[str]) -> dict[str, bool]:
    """Each of `ISA_FEATURES` by name: whether the CPU exposes it."""
    return {name: any(f in flags for f in shown_by) for name, shown_by in ISA_FEATURES.items()}


def this_cpu() -> dict[str, object]:
    """This machine's CPU model and the names of the `ISA_FEATURES` it has."""
    model, flags = cpuinfo()
    return {
        "model": model,
        "isa": sorted(n for n, present in isa_features(flags).items() if present),
    }


def isa_missing_here(timed_with: dict[str, object] | None) -> list[str]:
    """The instruction sets a bundle's precision was timed with (`auto.cpu`) that this CPU
    lacks: there the choice may not be the fastest."""
    if not timed_with:
        return []
    here = set(this_cpu()["isa"])  # type: ignore[arg-type]
    return sorted(set(timed_with.get("isa", [])) - here)  # type: ignore[arg-type]
