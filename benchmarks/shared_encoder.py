"""Many threads sharing one `Encoder`: peak memory and throughput against one thread.

    python benchmarks/shared_encoder.py .cache/demo-bundle --threads 1,2,4,8 \\
        --baseline-src /tmp/fastelectra-f5aefa6

Each (source tree, thread count) runs in a fresh process: it loads the bundle once, then N
threads each call `Encoder.embed` on the same 400 traffic-mix texts (mean pooling, unit
length) `--calls` times. Recorded: the process's peak RSS (VmHWM), texts/s over all threads,
and the largest difference of any thread's vectors from the first thread's. `--baseline-src`
runs the same with another checkout of fastelectra (e.g. a `git worktree` of the commit
before the session lock), in the same run, interleaved, for the ratio.

Writes benchmarks/results/<date>-<cpu>/shared-encoder-<bundle>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC_MIX = ROOT / "fastelectra" / "data" / "traffic_mix.txt"

CHILD = """
import json, sys, threading, time
import numpy as np
from fastelectra.process_memory import peak_rss_mib
from fastelectra.runtime import Encoder

bundle, threads, calls, texts_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = [t for t in open(texts_file, encoding="utf-8").read().splitlines() if t.strip()][:400]
encoder = Encoder.load(bundle)
encoder.embed(texts[:8], pooling="mean", normalize=True)  # warm-up
results = [None] * threads

def work(k):
    for _ in range(calls):
        results[k] = encoder.embed(texts, pooling="mean", normalize=True)

started = time.perf_counter()
workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
seconds = time.perf_counter() - started
print(json.dumps({
    "peak_rss_mib": peak_rss_mib(),
    "texts_per_s": round(threads * calls * len(texts) / seconds, 1),
    "seconds": round(seconds, 2),
    "max_abs_diff_between_threads": float(max(np.abs(r - results[0]).max() for r in results)),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument("--calls", type=int, default=2, help="embed calls per thread")
    parser.add_argument("--baseline-src", type=Path, help="another fastelectra checkout")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    sources = {"now": ROOT}
    if args.baseline_src:
        sources["baseline"] = args.baseline_src.resolve()
    results: dict[str, dict[str, object]] = {name: {} for name in sources}
    for threads in map(int, args.threads.split(",")):
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            command = [sys.executable, "-c", CHILD, str(args.bundle.resolve()), str(threads)]
            command += [str(args.calls), str(TRAFFIC_MIX)]
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=src)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            results[name][str(threads)] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, threads, results[name][str(threads)], flush=True)

    from fastelectra.bench.machine import git_commit, library_versions, machine_info, results_dir

    summary = {
        name: {
            "peak_vs_one_thread": {
                t: round(r["peak_rss_mib"] / runs["1"]["peak_rss_mib"], 2) for t, r in runs.items()
            }
            if "1" in runs
            else None,
        }
        for name, runs in results.items()
    }
    if "baseline" in results:
        summary["throughput_now_vs_baseline"] = {
            t: round(results["now"][t]["texts_per_s"] / results["baseline"][t]["texts_per_s"], 2)
            for t in results["now"]
        }
    report = {
        "what": "threads sharing one Encoder: peak RSS and throughput",
        "bundle": args.bundle.resolve().name,
        "texts": "400 of fastelectra/data/traffic_mix.txt per call, mean pooling, unit length",
        "calls_per_thread": args.calls,
        "sources": {name: str(src) for name, src in sources.items()},
        "results": results,
        "summary": summary,
        "machine": machine_info(),
        "versions": library_versions(("fastelectra", "onnxruntime", "tokenizers", "numpy")),
        "commit": git_commit(ROOT),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    out = args.out or (
        results_dir(ROOT / "benchmarks" / "results")
        / f"shared-encoder-{args.bundle.resolve().name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
