"""What smoothing buys INT8: FP32 nodes kept, accuracy and latency, per alpha (issue 13).

    python benchmarks/int8_smoothing.py --source minilm --alphas off,0.5,0.75 \\
        --precisions int8-dynamic,int8-static --threads 2 --duration 5

Builds `SOURCE` once at FP32 and once per (precision, alpha) with `fastelectra build
--int8-smoothing ALPHA` (INT8 search on, the gate as shipped: a variant that misses it is
recorded as such), then times them all in one `fastelectra bench` run at batch 1 x 16 and
1 x 128 (interleaved, each variant after an idle gap, spinning off) and writes
benchmarks/results/<date>-<cpu>/int8-smoothing-<source>/summary.json and summary.md beside
the bench's own results: per variant the nodes kept FP32, the verification figures against
TensorFlow, and p50 over the FP32 bundle's p50 in the same run. Bundles are kept in
--bundles (default .cache/bundles/smoothing) and reused when present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "fastelectra.cli"]  # `fastelectra`, from this interpreter
TARGETS = {(1, 16): 0.7, (1, 128): 0.6}  # issue 13: INT8 p50 / FP32 p50 at most this


def build(source: str, out: Path, precision: str, alpha: str) -> dict[str, Any]:
    """`fastelectra build` (reused if `out` holds a bundle); its metadata and verification."""
    if not (out / "fastelectra.json").exists():
        command = ["fastelectra", "build", source, "-o", str(out), "--precision", precision]
        if precision != "fp32":
            command += ["--int8-smoothing", alpha]
        print("+", " ".join(command), file=sys.stderr, flush=True)
        done = subprocess.run([*CLI, *command[1:]])
        if done.returncode != 0:
            return {"built": False, "command": " ".join(command), "exit_status": done.returncode}
    meta = json.loads((out / "fastelectra.json").read_text())
    report = json.loads((out / "verification.json").read_text())
    quantization = meta.get("quantization") or {}
    return {
        "built": True,
        "bundle": str(out),
        "precision": precision,
        "smoothing": quantization.get("smoothing"),
        "fp32_nodes": quantization.get("fp32_nodes"),
        "quantizable_nodes": (quantization.get("int8_search") or {}).get("quantizable_nodes"),
        "gate_passed": report["passed"],
        "pooled_min_cosine": report["outputs"]["pooled_output"].get("min_cosine"),
        "mean_pooled_min_cosine": report["mean_pooled_sequence"]["min_cosine"],
    }


def main(argv: list[str] | None = None) -> int:
    from fastelectra.bench.machine import results_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="minilm")
    parser.add_argument("--alphas", default="off,0.5,0.75")
    parser.add_argument("--precisions", default="int8-dynamic,int8-static")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--bundles", type=Path, default=Path(".cache/bundles/smoothing"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or results_dir() / f"int8-smoothing-{args.source}"

    fp32_dir = args.bundles / f"{args.source}-fp32"
    variants = {fp32_dir.name: build(args.source, fp32_dir, "fp32", "")}
    for precision in args.precisions.split(","):
        for alpha in args.alphas.split(","):
            name = f"{args.source}-{precision}-smoothing-{alpha}"
            variants[name] = build(args.source, args.bundles / name, precision, alpha)
    timed = [v["bundle"] for v in variants.values() if v["built"]]
    bench = ["fastelectra", "bench", *timed, "--batch", "1", "--seq", "16,128"]
    bench += ["--threads", str(args.threads), "--duration", str(args.duration)]
    bench += ["--no-memory", "--out", str(out)]
    print("+", " ".join(bench), file=sys.stderr, flush=True)
    subprocess.run([*CLI, *bench[1:]], check=True)

    results = json.loads((out / "results.json").read_text())
    fp32 = Path(timed[0]).name
    p50 = {(c["variant"], c["batch"], c["seq"]): c["latency_ms"]["p50"] for c in results["cells"]}
    for variant in variants.values():
        if not variant["built"]:
            continue
        name = Path(variant["bundle"]).name
        variant["p50_ms"], variant["p50_over_fp32"] = {}, {}
        for batch, seq in TARGETS:
            cell = f"{batch}x{seq}"
            variant["p50_ms"][cell] = p50[(name, batch, seq)]
            variant["p50_over_fp32"][cell] = round(
                p50[(name, batch, seq)] / p50[(fp32, batch, seq)], 3
            )
    summary = {
        "command": " ".join(["python", "benchmarks/int8_smoothing.py", *(argv or sys.argv[1:])]),
        "bench_command": " ".join(bench),
        "machine": results["machine"],
        "targets_p50_over_fp32": {f"{b}x{s}": t for (b, s), t in TARGETS.items()},
        "variants": variants,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(format_summary(summary))
    print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["isa"].items())
    lines = [
        f"# INT8 smoothing on {machine['cpu_model']} ({machine['cpu_kind']})",
        "",
        f"{machine['cores_available']} cores; {isa}",
        "",
        "| variant | FP32 nodes | gate | pooled min cos | mean-pooled min cos "
        "| p50/FP32 1x16 | p50/FP32 1x128 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in summary["variants"].items():
        if not v["built"]:
            lines.append(f"| {name} | - | not built (exit {v['exit_status']}) | | | | |")
            continue
        ratio = v.get("p50_over_fp32", {})
        lines.append(
            f"| {name} | {v['fp32_nodes'] if v['fp32_nodes'] is not None else '-'}"
            f"/{v['quantizable_nodes'] or '-'} | {'passed' if v['gate_passed'] else 'FAILED'} "
            f"| {_round(v['pooled_min_cosine'])} | {_round(v['mean_pooled_min_cosine'])} "
            f"| {ratio.get('1x16', '-')} | {ratio.get('1x128', '-')} |"
        )
    lines += ["", f"Targets (issue 13): {summary['targets_p50_over_fp32']}", ""]
    return "\n".join(lines)


def _round(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
