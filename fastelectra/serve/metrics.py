"""Prometheus metrics of one server, in a registry of its own (so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

PREFIX = "fastelectra"
# Seconds: from a sub-millisecond tokenization to a long CPU batch of ELECTRA-large.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
COUNT_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 texts or requests
TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 18))  # 16 .. 131072 padded tokens


class ServerMetrics:
    """Everything /metrics exposes; the batcher reports through the `observe_*` methods."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "HTTP request duration, by route",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokenization_duration = Histogram(
            f"{PREFIX}_tokenization_duration_seconds",
            "Tokenizing one request's inputs",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            f"{PREFIX}_queue_duration_seconds",
            "From a request's queueing to its batch's start",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "One model run: padding, inference, pooling",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Texts per model run", buckets=COUNT_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests",
            "Requests with texts in one model run",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens",
            "Padded tokens (rows x longest row) per model run",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Requests waiting for the model", registry=r
        )
        self.running_requests = Gauge(
            f"{PREFIX}_running_requests",
            "Requests whose texts the model is running now",
            registry=r,
        )
        self.batch_failures = Counter(
            f"{PREFIX}_batch_failures",
            "Model runs that raised (their requests re-run alone)",
            registry=r,
        )
        self.tokens = Counter(
            f"{PREFIX}_input_tokens", "Tokens embedded ([CLS]/[SEP] included)", registry=r
        )

    # -- the batcher's observer interface (see batcher.BatchObserver) --------------------------

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_duration.observe(seconds)

    def observe_run(self, rows: int, requests: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_requests.observe(requests)
        self.batch_tokens.observe(padded_tokens)
        self.inference_duration.observe(seconds)

    def observe_failure(self) -> None:
        self.batch_failures.inc()

    def set_queue(self, waiting: int, running: int) -> None:
        self.queue_depth.set(waiting)
        self.running_requests.set(running)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
