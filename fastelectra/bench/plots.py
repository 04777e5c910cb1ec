"""PNG figures of a bench run (matplotlib with the Agg backend: no display needed).

latency_vs_seq.png       p50 latency (band: p50..p99) against sequence length, one panel
                         per batch size, one line per variant, dashed: its floor
throughput_vs_batch.png  sequences/s against batch size, one panel per sequence length
peers.png                texts/s of each bundle and peer, per batch size
traffic.png              dynamic batching against fixed padding, texts/s per bundle
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(plt, count: int):
    columns = min(count, 3)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _exact_ticks(ax, values: list[int]) -> None:
    """Label the log x axis with the measured values only (no 2x10^1 minor labels)."""
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(values, [str(v) for v in values])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_cells(results: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    cells = results["cells"]
    variants = list(dict.fromkeys(c["variant"] for c in cells))
    batches = sorted({c["batch"] for c in cells})
    seqs = sorted({c["seq"] for c in cells})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    written = []

    fig, axes = _panels(plt, len(batches))
    for ax, batch in zip(axes, batches, strict=True):
        for variant in variants:
            rows = sorted(
                (c for c in cells if c["variant"] == variant and c["batch"] == batch),
                key=lambda c: c["seq"],
            )
            x = [c["seq"] for c in rows]
            p50 = [c["latency_ms"]["p50"] for c in rows]
            ax.plot(x, p50, "o-", color=colors[variant], label=variant)
            ax.fill_between(
                x, p50, [c["latency_ms"]["p90"] for c in rows], color=colors[variant], alpha=0.15
            )
            floors = [(c["seq"], c["floor_ms"]) for c in rows if c["floor_ms"]]
            if floors:
                ax.plot(*zip(*floors, strict=True), "--", color=colors[variant], linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="ms")
        ax.set_title(f"batch {batch}: p50 (band to p90), dashed: floor")
        _exact_ticks(ax, seqs)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(results["name"])
    written.append(_save(fig, out / "latency_vs_seq.png"))
    plt.close(fig)

    fig, axes = _panels(plt, len(seqs))
    for ax, seq in zip(axes, seqs, strict=True):
        for variant in variants:
            rows = sorted(
                (c for c in cells if c["variant"] == variant and c["seq"] == seq),
                key=lambda c: c["batch"],
            )
            ax.plot(
                [c["batch"] for c in rows],
                [c["throughput"]["sequences_per_s"] for c in rows],
                "o-",
                color=colors[variant],
                label=variant,
            )
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="sequences / s")
        ax.set_title(f"{seq} tokens per sequence")
        _exact_ticks(ax, batches)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(results["name"])
    written.append(_save(fig, out / "throughput_vs_batch.png"))
    plt.close(fig)
    return written


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        positions = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(positions, values, width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def plot_peers(results: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    runs = results["peers"]["runs"]
    batches = sorted({r["batch"] for r in runs})
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    rate = {(r["variant"], r["batch"]): r["texts_per_s"] for r in runs}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(batches) * len(variants) / 2), 4))
    _grouped_bars(
        ax, [f"batch {b}" for b in batches], {v: [rate[v, b] for b in batches] for v in variants}
    )
    ax.set_ylabel("texts / s")
    ax.set_title(f"{results['name']}: {results['peers']['texts']} texts, embed (mean, normalised)")
    path = _save(fig, out / "peers.png")
    plt.close(fig)
    return path


def plot_traffic(results: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    traffic = results["traffic"]
    labels = [f"{r['variant']}\nbatch {r['batch']}" for r in traffic["runs"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(labels)), 4))
    _grouped_bars(
        ax,
        labels,
        {
            "dynamic batching": [r["dynamic"]["texts_per_s"] for r in traffic["runs"]],
            f"fixed padding to {traffic['pad_to']}": [
                r["fixed"]["texts_per_s"] for r in traffic["runs"]
            ],
        },
    )
    ax.set_ylabel("texts / s")
    ax.set_title(f"{results['name']}: {traffic['texts']} texts of {Path(traffic['file']).name}")
    path = _save(fig, out / "traffic.png")
    plt.close(fig)
    return path


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    written = []
    if results.get("cells"):
        written += plot_cells(results, out)
    if results.get("peers"):
        written.append(plot_peers(results, out))
    if results.get("traffic"):
        written.append(plot_traffic(results, out))
    return written
