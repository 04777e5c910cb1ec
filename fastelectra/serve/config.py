"""What one `fastelectra serve` process is configured with: the bundle, pooling and its limits."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastelectra.errors import InputError


@dataclass(frozen=True)
class Limits:
    """Request limits (answered with 413 / 429) and dynamic-batching settings."""

    max_inputs: int = 512  # texts per request
    max_input_chars: int = 65536  # characters per text
    max_request_bytes: int = 16 * 1024 * 1024  # HTTP body, checked before it is read
    # Padded tokens (rows x longest row) per scheduling step: the most a request that arrives
    # while others run waits for (about 0.8 s of MiniLM FP32 on 2 cores; see batcher).
    max_batch_tokens: int = 4096
    max_batch_size: int = 64  # texts per model run
    max_wait_ms: float = 2.0  # how long a lone request waits for company before it runs
    max_queue: int = 512  # requests waiting for the model; more are answered with 429
    shutdown_timeout_s: float = 30.0  # how long SIGTERM waits for in-flight requests

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            allow_zero = name in ("max_wait_ms", "shutdown_timeout_s")
            if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
                raise InputError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {value}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServeConfig:
    bundle: Path
    model_name: str
    # None: the bundle's own (`BundleMeta.pooling`), as `Encoder.embed` and `fastelectra embed`.
    pooling: str | None = None
    # Too-long inputs are cut (True) or answered with 413 (False, as in OpenAI's API and TEI's
    # default); TEI's `truncate` field overrides it per request on /embed.
    auto_truncate: bool = False
    api_key: str | None = field(default=None, repr=False)
    # A model run's fixed cost in padded tokens, which decides how texts of different lengths
    # are grouped into runs (see planner); None: measured at start-up.
    run_overhead_tokens: float | None = None
    providers: str | list[str] | None = None
    threads: int | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        # Imported here: the CLI reads this module's defaults for every command's --help,
        # which must not load onnxruntime.
        from fastelectra.bundle import POOLINGS

        if self.pooling is not None and self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.run_overhead_tokens is not None and not self.run_overhead_tokens >= 0:
            raise InputError(f"run_overhead_tokens must be >= 0, got {self.run_overhead_tokens}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key must not be empty")
