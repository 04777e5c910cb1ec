"""The precisions a bundle can be built at: one table that conversion, verification, the runtime
and the exporters all read.

Each `Precision` says how the fused FP32 graph becomes its model (`conversion`: a name that
`fastelectra.convert.precision` dispatches on, so the runtime reads this table without
importing the converters), which accuracy the build must reach against TensorFlow (`gate`),
and what TensorRT is told to build for it. A new precision is one row here, plus its
conversion.

This module imports nothing heavy: runtime and convert both depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastelectra.errors import InputError

# The key verification.json's "thresholds" gives the Spearman bound; every other key there is a
# section of the report (a model output or "mean_pooled_sequence") with its bounds per metric.
SPEARMAN_VS_FP32 = "spearman_vs_fp32"
# The one metric that is an upper bound; cosines are lower bounds.
UPPER_BOUND_METRICS = ("max_abs_diff",)

# How the fused FP32 graph becomes the bundle's model (see `fastelectra.convert.precision`).
Conversion = Literal["none", "float16", "quantize-dynamic", "quantize-static"]


@dataclass(frozen=True)
class Gate:
    """The accuracy a build must reach against TensorFlow to be written.

    Attributes:
        bounds: report section (``"pooled_output"``, ``"sequence_output"``,
            ``"mean_pooled_sequence"``) -> metric -> bound; ``max_abs_diff`` is an upper
            bound, the cosines lower bounds.
        spearman_vs_fp32: least Spearman correlation of pairwise similarities against the FP32
            model (against TensorFlow where no FP32 model is compared); None: not gated.
    """

    bounds: Mapping[str, Mapping[str, float]]
    spearman_vs_fp32: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The gate as verification.json records it under "thresholds"."""
        out: dict[str, Any] = {section: dict(metrics) for section, metrics in self.bounds.items()}
        if self.spearman_vs_fp32 is not None:
            out[SPEARMAN_VS_FP32] = self.spearman_vs_fp32
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gate:
        sections = {key: dict(value) for key, value in data.items() if key != SPEARMAN_VS_FP32}
        return cls(sections, data.get(SPEARMAN_VS_FP32))


@dataclass(frozen=True)
class Precision:
    """One precision: how it is made, how it is judged, and how TensorRT runs it.

    Attributes:
        name: as the CLI, `fastelectra.json` and verification.json spell it.
        gate: the accuracy its build must reach.
        conversion: how the fused FP32 graph becomes its model ("none": it is that graph).
        tensorrt_fp16: TensorRT may build FP16 kernels for it.
        tensorrt_int8: TensorRT may build INT8 kernels, with the scales of the model's Q/DQ
            nodes or, for a model without them, the bundle's calibration table.
        int8_weight_products: its weight products run as INT8 GEMMs on the CPU (the rate its
            latency floor assumes).
        int8_smoothing: SmoothQuant's migration strength alpha applied before quantising
            (`fastelectra.convert.smoothing`), None for none; measured per precision on the
            real-weights MiniLM (`benchmarks/int8_smoothing.py`).
    """

    name: str
    gate: Gate
    conversion: Conversion
    tensorrt_fp16: bool = False
    tensorrt_int8: bool = False
    int8_weight_products: bool = False
    int8_smoothing: float | None = None

    @property
    def converted(self) -> bool:
        """Whether its model differs from the fused FP32 graph."""
        return self.conversion != "none"

    @property
    def tensorrt_precision_mode(self) -> str:
        """The precision TensorRT builds at, as Triton's onnxruntime backend names it."""
        if self.tensorrt_int8:
            return "INT8"
        return "FP16" if self.tensorrt_fp16 else "FP32"


_COSINE_INT8 = {"mean_cosine": 0.995, "min_cosine": 0.98}
_INT8_GATE = Gate(
    {"pooled_output": _COSINE_INT8, "mean_pooled_sequence": _COSINE_INT8}, spearman_vs_fp32=0.99
)

FP32 = Precision(
    "fp32",
    Gate({"pooled_output": {"max_abs_diff": 1e-4}, "sequence_output": {"max_abs_diff": 1e-4}}),
    conversion="none",
)
FP16 = Precision(
    "fp16",
    Gate({"pooled_output": {"min_cosine": 0.9995}, "sequence_output": {"min_cosine": 0.9995}}),
    conversion="float16",
    tensorrt_fp16=True,
)
# Dynamic quantisation's QAttention / MatMulInteger are CPU kernels: TensorRT runs the model
# at FP32, which is what it can do with it.
# Smoothing: at 0.5 and 0.75 alike the dynamic search keeps 3 of MiniLM's 25 nodes FP32 (8
# without), and 0.75 does better on the held-out verification texts (mean-pooled min cosine
# 0.990 against 0.984); static keeps 11 at both (14 without), and 0.5 does better there.
INT8_DYNAMIC = Precision(
    "int8-dynamic",
    _INT8_GATE,
    conversion="quantize-dynamic",
    int8_weight_products=True,
    int8_smoothing=0.75,
)
INT8_STATIC = Precision(
    "int8-static",
    _INT8_GATE,
    conversion="quantize-static",
    tensorrt_int8=True,
    int8_weight_products=True,
    int8_smoothing=0.5,
)

# `--int8-smoothing off`: quantise the fused graph as it is, whatever the precision's default.
SMOOTHING_OFF = "off"

TABLE: tuple[Precision, ...] = (FP32, FP16, INT8_DYNAMIC, INT8_STATIC)
BY_NAME: Mapping[str, Precision] = {p.name: p for p in TABLE}
PRECISIONS: tuple[str, ...] = tuple(BY_NAME)


def as_precision(value: Precision | str) -> Precision:
    """The one parse of a precision at an API's edge: a `Precision` as it is, a name looked up.

    Everything inward of the edge (the CLI's arguments, `build`, `plan_execution`, a bundle's
    metadata) takes a `Precision` and reads its fields; no code compares names.
    """
    return value if isinstance(value, Precision) else precision_named(value)


def precision_named(name: str) -> Precision:
    """The table's row for `name`; `InputError` for a name it lacks."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}"
        ) from None
