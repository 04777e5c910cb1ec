"""Peak memory and wall time of each conversion stage, each in its own process.

    python benchmarks/convert_memory.py --preset electra-large-2020 [--route hollow|plain]

Stages: `export` (load the SavedModel, tf2onnx hollow route -> ONNX + external data) and
`fuse` (rewrite + onnxruntime fusion). Each runs in a fresh subprocess so its peak RSS
(`ru_maxrss` of the child) is its own. Writes benchmarks/results/<date>-<cpu>/convert-<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE_CODE = {
    "export": """
import sys
from pathlib import Path
from fastelectra.convert.source import load_source
from fastelectra.convert.tf_export import export_onnx
src = load_source(sys.argv[1])
r = export_onnx(src, Path(sys.argv[2]) / "exported.onnx", route=sys.argv[3])
print(r.weights, r.weight_bytes)
""",
    "fuse": """
import sys
from pathlib import Path
from fastelectra.convert.presets import PRESETS
from fastelectra.convert.fuse import fuse
from fastelectra.bundle import Dimensions
p = PRESETS[sys.argv[4]]
dims = Dimensions(p.layers, p.hidden, p.heads, p.intermediate, p.vocab_size, p.max_positions,
                  p.type_vocab_size)
report = fuse(Path(sys.argv[2]) / "exported.onnx", Path(sys.argv[2]) / "fused.onnx", dims)
print(report.counts)
""",
}


def run_stage(stage: str, module: Path, work: Path, route: str, preset: str) -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", STAGE_CODE[stage], str(module), str(work), route, preset],
            stdout=out,
            stderr=err,
        )
        # wait4 gives this child's own rusage: its peak RSS, not the max over all children.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {"stage": stage, "ok": proc.returncode == 0, "wall_s": round(wall, 1)}
    result["peak_rss_gib"] = round(usage.ru_maxrss / 2**20, 2)
    if proc.returncode != 0:
        result["error"] = stderr[-2000:]
    else:
        result["output"] = stdout.strip().splitlines()[-1:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="electra-large-2020")
    parser.add_argument("--route", default="hollow")
    parser.add_argument("--stages", default="export,fuse")
    args = parser.parse_args()

    from fastelectra.convert.presets import preset_module

    module = preset_module(args.preset)
    results = {
        "preset": args.preset,
        "route": args.route,
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}",
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
        "stages": [],
    }
    from fastelectra.convert.build import tool_versions

    results["versions"] = tool_versions()
    with tempfile.TemporaryDirectory() as work:
        for stage in args.stages.split(","):
            result = run_stage(stage, module, Path(work), args.route, args.preset)
            print(json.dumps(result), flush=True)
            results["stages"].append(result)
            if not result["ok"]:
                break
    from fastelectra.bench.machine import results_dir

    out = results_dir(Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"convert-{args.preset}-{args.route}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if all(s["ok"] for s in results["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
