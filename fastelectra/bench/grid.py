"""The batch x sequence grid: every cell timed round-robin and set against the roofline floor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastelectra.bench.cells import (
    SERVED,
    Cell,
    Pacing,
    latency_stats,
    synthetic_inputs,
    throughput,
    time_cell,
)
from fastelectra.bench.floor import GemmRates, cell_floor, cell_flops
from fastelectra.bench.variants import Variant

Vocab = tuple[int, int, int]  # vocab size, [CLS] id, [SEP] id


def _ms(seconds: float | None) -> float | None:
    # Significant digits, not decimals: a tiny model's floor is a few microseconds.
    return None if seconds is None else float(f"{seconds * 1000:.6g}")


def cell_result(
    variant: Variant,
    cell: Cell,
    seconds: Sequence[float],
    rates: GemmRates,
    bandwidth: float | None = None,
) -> dict[str, Any]:
    """`bandwidth` (bytes/s) adds the weight-streaming bound to the floor (`floor.cell_floor`)."""
    flops = cell_flops(variant.dimensions, cell.batch, cell.seq)
    if variant.device == "cpu":
        weights = variant.weight_bytes.read_per_call if variant.weight_bytes else None
        roofline = cell_floor(flops, variant.precision, rates, weights, bandwidth)
        floor, basis, bound = roofline.seconds, roofline.basis, roofline.bound
        compute, memory = roofline.compute_seconds, roofline.memory_seconds
    else:
        floor = compute = memory = bound = None
        basis = f"the floors are CPU rates; this variant ran on {variant.device}"
    stats = latency_stats(seconds)
    return {
        "variant": variant.name,
        "batch": cell.batch,
        "seq": cell.seq,
        "runs": len(seconds),
        "latency_ms": stats,
        "throughput": throughput(cell, seconds),
        "gflop": round(flops.total / 1e9, 4),
        "floor_ms": _ms(floor),
        "floor_bound": bound,
        "compute_floor_ms": _ms(compute),
        "memory_floor_ms": _ms(memory),
        "floor_basis": basis,
        "measured_over_floor": None if floor is None else round(stats["p50"] / (floor * 1000), 3),
    }


def measure_grid(
    variants: Sequence[Variant],
    cells: Sequence[Cell],
    vocab: Vocab,
    rates: GemmRates,
    *,
    duration: float,
    warmup: int,
    min_runs: int,
    progress: Callable[[str], None],
    on_cell: Callable[[list[dict[str, Any]]], None] | None = None,
    bandwidth: float | None = None,
    pacing: Pacing = SERVED,
) -> list[dict[str, Any]]:
    """One result per variant per cell; `on_cell` sees the results so far after each cell."""
    results: list[dict[str, Any]] = []
    for cell in cells:
        inputs = synthetic_inputs(cell, *vocab)
        samples = time_cell(variants, inputs, duration, warmup, min_runs, pacing)
        rows = [cell_result(v, cell, samples[v.name], rates, bandwidth) for v in variants]
        results += rows
        progress(
            f"batch {cell.batch:>3} seq {cell.seq:>4}: "
            + ", ".join(f"{r['variant']} {r['latency_ms']['p50']:.4g} ms" for r in rows)
        )
        if on_cell is not None:
            on_cell(results)
    return results


def relative_p50(cells: Sequence[dict[str, Any]], baselines: Sequence[str]) -> list[dict[str, Any]]:
    """Each variant's p50 over each baseline's p50 in the same cell (below 1: faster)."""
    p50 = {(c["variant"], c["batch"], c["seq"]): c["latency_ms"]["p50"] for c in cells}
    rows = []
    for c in cells:
        key = (c["batch"], c["seq"])
        row: dict[str, Any] = {"variant": c["variant"], "batch": c["batch"], "seq": c["seq"]}
        for base in baselines:
            base_p50 = p50.get((base, *key))
            row[f"p50_over_{base}"] = (
                round(c["latency_ms"]["p50"] / base_p50, 3) if base_p50 else None
            )
        rows.append(row)
    return rows
