"""Where a run's time goes, per operator: onnxruntime's profiler trace and OpenVINO's per-layer
counters, summed alike (benchmarks/op_profile.py, benchmarks/openvino_cells.py)."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OpTimes:
    """Microseconds and node counts per operator over `calls` runs."""

    calls: int
    micros: collections.Counter[str] = field(default_factory=collections.Counter)
    nodes: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, key: str, us: float) -> None:
        self.micros[key] += us
        self.nodes[key] += 1

    def to_json(self, total_key: str, list_key: str, item_key: str) -> dict[str, Any]:
        """Per run: the total ms under `total_key`, and under `list_key` one entry per operator
        (`item_key`: its name; ms, nodes and share), largest first."""
        total = sum(self.micros.values()) / self.calls
        return {
            total_key: round(total / 1000, 3),
            list_key: [
                {
                    item_key: key,
                    "ms_per_run": round(us / self.calls / 1000, 3),
                    "nodes": self.nodes[key] // self.calls,
                    "share": round(us / self.calls / total, 3),
                }
                for key, us in self.micros.most_common()
            ],
        }


def onnxruntime_op_times(trace: Path, calls: int) -> OpTimes:
    """Kernel time by op type from an onnxruntime profile (`end_profiling()`'s file), which
    is removed after reading; `calls`: the runs it covers."""
    times = OpTimes(calls)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times.add(event["args"]["op_name"], event["dur"])
    trace.unlink()
    return times


def openvino_layer_times(request: Any, feeds: dict[str, Any], runs: int) -> OpTimes:
    """Executed layers' real time by layer type and kernel (`exec_type`) over `runs` infers of
    a request compiled with PERF_COUNT on."""
    times = OpTimes(runs)
    for _ in range(runs):
        request.infer(feeds)
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                key = f"{info.node_type} [{info.exec_type}]"
                times.add(key, info.real_time.total_seconds() * 1e6)
    return times
