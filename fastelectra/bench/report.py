"""Results as tables: on the terminal, in `results.json`, and as Markdown for the README.

    python -m fastelectra.bench.report benchmarks/results/<date>-<machine>/bench-*/results.json

prints the Markdown tables of one or more recorded runs (the same text `bench` writes to
`results.md` beside each `results.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastelectra.bundle import write_json_atomic

SCHEMA = "fastelectra-bench/1"
Section = tuple[str, list[str], list[list[Any]]]  # title, headers, rows


def fmt(value: Any) -> str:
    """Numbers to about three significant digits; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_cosine(value: float | None) -> str:
    """Cosines sit near 1: their interesting digits are the fifth and sixth."""
    return "–" if value is None else f"{value:.6f}"


def summary_lines(results: dict[str, Any]) -> list[str]:
    m, s = results["machine"], results["settings"]
    versions = results["versions"]
    git = results.get("git") or {}
    commit = git.get("commit", "unknown")[:12] + (
        " (with local changes)" if git.get("dirty") else ""
    )
    libs = ", ".join(
        f"{k} {versions[k]}"
        for k in ("onnxruntime", "tensorflow", "torch", "numpy")
        if k in versions
    )
    lines = [
        f"{m['cpu_model']}, {m['cores_available']} cores available, "
        f"avx512_vnni {'yes' if m['avx512_vnni'] else 'no'}; {s['threads']} threads; "
        f"{libs}; fastelectra {versions.get('fastelectra', '?')} at {commit}"
    ]
    isa = m.get("isa")  # results recorded before the ISA was named have only cpu_flags
    if isa:
        features = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in isa.items())
        lines.append(f"CPU kind {m.get('cpu_kind', '?')}: {features}")
    gemm = results.get("gemm")
    if gemm:
        rates = gemm["gflops"]
        lines.append(
            f"GEMM at {gemm['threads']} threads: numpy FP32 {fmt(rates['numpy_fp32'])}, "
            f"onnxruntime FP32 {fmt(rates['onnxruntime_fp32'])}, onnxruntime INT8 "
            f"{fmt(rates['onnxruntime_int8'])} GFLOP/s (FP32 floor: "
            f"{gemm['fp32_floor_source'] or '–'})"
        )
    bandwidth = results.get("memory_bandwidth")
    if bandwidth:
        lines.append(
            f"Memory bandwidth at {bandwidth['threads']} threads: {fmt(bandwidth['gb_per_s'])} "
            f"GB/s (streaming read of {bandwidth['buffer_mib']} MiB); floor = the larger of "
            "FLOPs / GEMM rate (compute) and weight bytes / bandwidth (memory)"
        )
    return lines


def sections(results: dict[str, Any]) -> list[Section]:
    out: list[Section] = []
    if results.get("cells"):
        rows = [
            [
                c["variant"],
                c["batch"],
                c["seq"],
                c["runs"],
                c["latency_ms"]["p50"],
                c["latency_ms"]["p90"],
                c["latency_ms"]["p99"],
                c["throughput"]["sequences_per_s"],
                c["throughput"]["tokens_per_s"],
                c["floor_ms"],
                c.get("floor_bound"),
                c["measured_over_floor"],
            ]
            for c in results["cells"]
        ]
        headers = ["variant", "batch", "seq", "runs", "p50 ms", "p90 ms", "p99 ms"]
        headers += ["seq/s", "tokens/s", "floor ms", "bound", "p50 / floor"]
        out.append(("Latency and throughput", headers, rows))
    relative = results.get("relative_p50")
    if relative:
        baselines = [k for k in relative[0] if k.startswith("p50_over_")]
        rows = [[r["variant"], r["batch"], r["seq"], *(r[k] for k in baselines)] for r in relative]
        headers = ["variant", "batch", "seq", *(k.replace("_over_", " / ") for k in baselines)]
        out.append(("p50 latency relative to", headers, rows))
    memory = [v for v in results.get("variants", []) if v.get("memory")]
    if memory:
        errors = any("error" in v["memory"] for v in memory)
        rows = []
        for v in memory:
            mem = v["memory"]
            row = [v["name"], v["load_s"], mem.get("rss_after_load_mib"), mem.get("peak_rss_mib")]
            row.append(mem.get("peak_over_imports_mib"))
            rows.append([*row, mem.get("error", "")] if errors else row)
        headers = ["variant", "load s", "RSS after load MiB", "peak RSS MiB"]
        headers += ["peak over imports MiB", *(["error"] if errors else [])]
        out.append(("Memory (each variant alone in a fresh process)", headers, rows))
    peers = results.get("peers")
    if peers:
        accuracy = peers.get("accuracy", {})
        rows = [
            [
                r["variant"],
                r["batch"],
                r["texts_per_s"],
                r["tokens_per_s"],
                r["speedup_vs_st_torch"],
                fmt_cosine(accuracy.get(r["variant"], {}).get("mean_cosine")),
                fmt_cosine(accuracy.get(r["variant"], {}).get("min_cosine")),
                gate_mark(accuracy.get(r["variant"], {}).get("gate")),
            ]
            for r in peers["runs"]
        ]
        headers = ["variant", "batch", "texts/s", "tokens/s", "× st-torch"]
        headers += [f"mean cos vs {peers['reference']}", "min cos", "gate"]
        title = f"Peers: {peers['texts']} texts, max {peers['max_seq_length']} tokens"
        out.append((title, headers, rows))
    traffic = results.get("traffic")
    if traffic:
        rows = [
            [
                r["variant"],
                r["batch"],
                r["dynamic"]["texts_per_s"],
                r["fixed"]["texts_per_s"],
                r["dynamic_over_fixed_throughput"],
                r["dynamic"]["padding_efficiency"],
                r["fixed"]["padding_efficiency"],
                fmt_cosine(r["agreement"]["min_cosine"]),
            ]
            for r in traffic["runs"]
        ]
        headers = ["variant", "batch", "dynamic texts/s", "fixed texts/s", "dynamic / fixed"]
        headers += ["real/padded dynamic", "real/padded fixed", "min cos"]
        title = (
            f"Traffic: {traffic['texts']} texts of {Path(traffic['file']).name}, "
            f"padded or cut to {traffic['pad_to']} tokens"
        )
        out.append((title, headers, rows))
    return out


def gate_mark(verdict: dict[str, Any] | None) -> str:
    """A peer table's gate column: pass, or FAIL with what missed."""
    if not verdict:
        return ""
    return "pass" if verdict["passed"] else "FAIL: " + "; ".join(verdict["failures"])


def peer_notes(peers: dict[str, Any]) -> list[str]:
    """How the OpenVINO peers were made, and which peers did not run and why (one line per
    reason: the OpenVINO peers and sentence-transformers' ONNX ones miss for different ones)."""
    lines = []
    ov = peers.get("openvino")
    if ov:
        versions, nncf = ov["versions"], ov["nncf"]
        lines.append(
            f"OpenVINO {versions['openvino']}: converted from {ov['saved_model']} "
            f"({ov['saved_model_from']}) in {fmt(ov['convert_s'])} s; INT8 by nncf "
            f"{versions['nncf']} quantize(model_type={nncf['model_type']}, "
            f"subset_size={nncf['subset_size']}) on {nncf['calibration_texts']} in "
            f"{fmt(ov['quantize_s'])} s; CPU plugin "
            + "; ".join(
                f"{name}: "
                + (", ".join(f"{k}={v}" for k, v in config.items()))
                + f" (runs {ov['in_effect'][name]['INFERENCE_PRECISION_HINT']})"
                for name, config in ov["config"].items()
            )
        )
    reasons: dict[str, list[str]] = {}
    for peer in peers.get("excluded", []):
        reasons.setdefault(peer["reason"], []).append(peer["name"])
    lines += [f"Not run: {', '.join(names)}: {reason}." for reason, names in reasons.items()]
    return lines


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_text(results: dict[str, Any]) -> str:
    parts = summary_lines(results)
    for title, headers, rows in sections(results):
        parts += ["", title, text_table(headers, rows)]
    notes = peer_notes(results.get("peers") or {})
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)


def format_markdown(results: dict[str, Any]) -> str:
    parts = [f"### {results['name']}", "", *(f"{line}  " for line in summary_lines(results))]
    parts += ["", f"`{results['command']}`"]
    for title, headers, rows in sections(results):
        parts += ["", f"**{title}**", "", markdown_table(headers, rows)]
    notes = peer_notes(results.get("peers") or {})
    if notes:
        parts += ["", *(f"{line}  " for line in notes)]
    return "\n".join(parts) + "\n"


def new_results(name: str, command: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The header every results.json starts with: what ran, where, with which versions."""
    from fastelectra.bench.machine import git_commit, library_versions, machine_info

    return {
        "schema": SCHEMA,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "versions": library_versions(),
        "git": git_commit(),
        "settings": settings,
    }


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(format_markdown(results), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Markdown tables of recorded bench results")
    parser.add_argument(
        "results", nargs="+", help="results.json files written by fastelectra bench"
    )
    args = parser.parse_args(argv)
    print("\n".join(format_markdown(json.loads(Path(p).read_text())) for p in args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
