"""Peak memory and wall time of the whole `fastelectra build` command, as a user runs it.

    python benchmarks/convert_memory.py --preset electra-large-2020 \\
        [--precisions fp32,fp16,int8-dynamic,int8-static] [--build-args "..."] [--out DIR]

(`--out` defaults to benchmarks/results/<date>-<cpu kind>/.)

Each precision is one fresh `fastelectra build PRESET -o OUT --precision P` under
`/usr/bin/time -v`, with the default verification and calibration sets unless `--build-args`
says otherwise. Two peaks are recorded: GNU time's "Maximum resident set size" (the largest
single process of the command: wait4's children rusage) and the peak of the *sum* of resident
sets over the command's whole process tree, sampled every 100 ms from /proc, which is what
the machine must hold while the TensorFlow stage's child and the build overlap. The bundle's
own `timings` and `memory` blocks (per step) are copied into the result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root: int) -> int:
    """Sum of the resident sets of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                resident = int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = resident
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))


def gnu_time(stderr: str) -> dict[str, float]:
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    figures: dict[str, float] = {}
    if wall:
        hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
        figures["wall_s"] = round(hours * 3600 + minutes * 60 + seconds, 1)
    if peak:
        figures["max_single_process_rss_gib"] = round(int(peak.group(1)) / (1 << 20), 3)
    return figures


def run_build(preset: str, precision: str, extra: list[str], work: Path) -> dict:
    out = work / f"{preset}-{precision}"
    fastelectra = Path(sys.executable).with_name("fastelectra")
    command = [str(fastelectra), "build", preset, "-o", str(out), "--precision", precision]
    command += extra
    timed = ["/usr/bin/time", "-v", *command]
    started = time.perf_counter()
    process = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(process.pid)
    sampler.start()
    _stdout, stderr = process.communicate()
    sampler.stop.set()
    sampler.join()
    row: dict = {
        "precision": precision,
        "command": shlex.join(command),
        "exit_code": process.returncode,
        "wall_s_measured": round(time.perf_counter() - started, 1),
        "peak_tree_rss_gib": round(sampler.peak / (1 << 30), 3),
        **gnu_time(stderr),
    }
    meta_path = out / "fastelectra.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        row.update(timings=meta.get("timings"), memory=meta.get("memory"))
        row["fused_ops"] = meta.get("fused_ops")
    verification = out / "verification.json"
    if verification.exists():
        report = json.loads(verification.read_text())
        row["verification"] = {
            "passed": report["passed"],
            "texts": report["texts"],
            "outputs": report["outputs"],
        }
    if process.returncode != 0:
        row["stderr_tail"] = stderr.strip().splitlines()[-15:]
    shutil.rmtree(out, ignore_errors=True)
    return row


def main(argv: list[str]) -> int:
    from fastelectra.bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="electra-large-2020")
    parser.add_argument("--precisions", default="fp32,fp16,int8-dynamic,int8-static")
    parser.add_argument("--build-args", default="", help="extra `fastelectra build` arguments")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    if args.out is None:  # benchmarks/results/<date>-<cpu kind>/
        from fastelectra.bench.machine import results_dir

        args.out = results_dir(Path(__file__).parent / "results")

    # Build the module first, outside the measured commands (a preset is built once, cached).
    subprocess.run(
        [sys.executable, "-m", "fastelectra.cli", "reference", args.preset],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out) as work:
        for precision in args.precisions.split(","):
            row = run_build(args.preset, precision, shlex.split(args.build_args), Path(work))
            print(
                json.dumps(
                    {
                        k: row.get(k)
                        for k in (
                            "precision",
                            "exit_code",
                            "wall_s",
                            "max_single_process_rss_gib",
                            "peak_tree_rss_gib",
                        )
                    }
                ),
                flush=True,
            )
            rows.append(row)
    result = {"preset": args.preset, "machine": machine_info(), "builds": rows}
    path = args.out / f"convert-memory-{args.preset}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
