"""The embedding service behind the HTTP routes: load, warm up, check limits, tokenize, batch.

HTTP-free apart from `ApiError` (a status, a message and the name of the limit), so the routes
in `app.py` stay a thin translation of request and response formats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from fastelectra.bundle import load_bundle
from fastelectra.runtime.batching import batch_of, plan_runs
from fastelectra.runtime.encoder import Encoder, pool
from fastelectra.runtime.providers import available_cores
from fastelectra.runtime.tokenizer import Encoding
from fastelectra.serve.batcher import Batcher, BatcherClosed, ModelRunner, QueueFull, RunResult
from fastelectra.serve.config import ServeConfig
from fastelectra.serve.errors import ApiError
from fastelectra.serve.metrics import ServerMetrics
from fastelectra.serve.overhead import measure_overhead_tokens
from fastelectra.version import __version__

log = logging.getLogger("fastelectra.serve")


def is_path(source: str) -> bool:
    """Whether a bundle's `source` is an absolute path of the machine that built it (a TF Hub
    handle such as ``google/electra_large/1`` or a URL is not)."""
    return PurePath(source).is_absolute() or source.startswith("~")


# Requests with fewer characters than this are tokenized on the event loop: about 1 ms of
# tokenizer time (~0.2 us a character here), less than a round trip to a worker thread costs
# under load. Longer ones go to a thread so that one big request never stalls the others.
INLINE_TOKENIZE_CHARS = 4096


def pooling_runner(
    encoder: Encoder,
    pooling: str,
    max_batch_size: int,
    max_batch_tokens: int,
    overhead_tokens: float,
) -> ModelRunner:
    """The batcher's model: a unit cut into runs by `plan_runs`, pooled as `Encoder.embed` does."""
    # A TensorRT profile admits no more rows per run than it was built for.
    max_rows = min(max_batch_size, encoder.max_run_rows or max_batch_size)

    def run(encodings: Sequence[Encoding]) -> Iterator[RunResult]:
        lengths = np.array([len(e) for e in encodings])
        plan = plan_runs(lengths, max_rows, max_batch_tokens, overhead_tokens)
        # Shortest runs first: most requests are short, and each is answered as soon as its
        # own texts have run.
        for rows in reversed(plan):
            batch = batch_of(encodings, rows)
            pooled, sequence = encoder.run_batch(batch)
            vectors = pool(pooling, pooled, sequence, batch.input_mask)
            yield batch.indices, vectors, int(batch.input_word_ids.size)

    return run


class EmbeddingService:
    """One bundle's encoder and batcher, with the server's limits; states: loading → ready."""

    def __init__(self, config: ServeConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        # Metadata without hashing the model, so /info answers while the model loads.
        self.bundle = load_bundle(config.bundle, verify_hashes=False)
        self.status = "loading"
        self.error: str | None = None
        self.encoder: Encoder | None = None
        self.batcher: Batcher | None = None
        self.overhead_tokens = config.run_overhead_tokens
        # One core stays with the event loop (HTTP, JSON, tokenization): onnxruntime's threads
        # spin while they wait for work, so on a full machine they would starve it.
        self.threads = config.threads or max(1, available_cores() - 1)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self, on_fatal: Callable[[str], None] | None = None) -> None:
        """Load the bundle (sha256 checked) and warm it up; then /health answers 200."""
        started = time.perf_counter()
        try:
            await self._load()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure to load leaves a server that cannot serve
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("cannot load %s: %s", self.config.bundle, self.error)
            if on_fatal is not None:
                on_fatal(self.error)
            return
        self.status = "ready"
        seconds = time.perf_counter() - started
        log.info("ready: %s on %s in %.1f s", self.config.model_name, self.providers, seconds)

    async def _load(self) -> None:
        config, limits = self.config, self.config.limits
        encoder = await asyncio.to_thread(
            Encoder.load, config.bundle, providers=config.providers, threads=self.threads
        )
        # The first run of a shape allocates onnxruntime's memory arena (on a GPU it also picks
        # kernels): pay that here, at the longest input, not on a client's request.
        longest = batch_of(encoder.tokenize(["warm-up " * encoder.max_length]), np.arange(1))
        await asyncio.to_thread(encoder.run_batch, longest)
        if self.overhead_tokens is None:
            self.overhead_tokens = await asyncio.to_thread(
                measure_overhead_tokens, encoder, limits.max_batch_tokens
            )
        log.info("a model run's fixed cost: %.0f padded tokens", self.overhead_tokens)
        runner = pooling_runner(
            encoder,
            self.pooling,
            limits.max_batch_size,
            limits.max_batch_tokens,
            self.overhead_tokens,
        )
        batcher = Batcher(
            runner,
            max_batch_size=limits.max_batch_size,
            max_batch_tokens=limits.max_batch_tokens,
            max_wait_s=limits.max_wait_ms / 1000,
            max_queue=limits.max_queue,
            observer=self.metrics,
        )
        batcher.start()
        self.encoder, self.batcher = encoder, batcher
        await batcher.embed(encoder.tokenize(["the whole path works"]))

    async def stop(self) -> None:
        """Finish queued work (bounded by the shutdown timeout), then stop the model thread."""
        self.status = "stopping"
        if self.batcher is not None:
            await self.batcher.close(self.config.limits.shutdown_timeout_s)

    @property
    def pooling(self) -> str:
        """The configured pooling, else the bundle's (the default of every entry point)."""
        return self.config.pooling or self.bundle.meta.pooling

    @property
    def providers(self) -> list[str]:
        return list(self.encoder.providers) if self.encoder else []

    def require_ready(self) -> tuple[Encoder, Batcher]:
        if self.status != "ready" or self.encoder is None or self.batcher is None:
            raise ApiError(503, f"the model is not ready (status: {self.status})", "not_ready")
        return self.encoder, self.batcher

    # -- a request -----------------------------------------------------------------------------

    async def tokenize(self, texts: list[str], truncate: bool) -> list[Encoding]:
        """Check the request against the limits and tokenize it (the only tokenization).

        Raises:
            ApiError: 503 before warm-up; 422 no texts; 413 a limit (named in `code`).
        """
        encoder, _ = self.require_ready()
        self.check_size(texts)
        started = time.perf_counter()
        try:
            if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
                encodings = encoder.tokenize(texts)
            else:
                encodings = await asyncio.to_thread(encoder.tokenize, texts)
        except (TypeError, ValueError) as e:  # e.g. a lone surrogate ("\ud800" is valid JSON)
            raise ApiError(422, f"invalid input: {e}", "invalid_input") from e
        self.metrics.tokenization_duration.observe(time.perf_counter() - started)
        if not truncate:
            too_long = [i for i, e in enumerate(encodings) if e.truncated]
            if too_long:
                shown = ", ".join(map(str, too_long[:10])) + (", ..." if len(too_long) > 10 else "")
                raise ApiError(
                    413,
                    f"max_length: {len(too_long)} input(s) (index {shown}) have more than "
                    f"{encoder.max_length} tokens, the most this model takes; send them "
                    "shorter, or with truncation (TEI's truncate=true, or serve with "
                    "--auto-truncate)",
                    "max_length",
                )
        return encodings

    def check_size(self, texts: list[str]) -> None:
        limits = self.config.limits
        if not texts:
            raise ApiError(422, "the input holds no texts", "empty_input")
        if len(texts) > limits.max_inputs:
            raise ApiError(
                413,
                f"max_inputs: {len(texts)} inputs in one request; this server accepts at most "
                f"{limits.max_inputs} (--max-inputs)",
                "max_inputs",
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise ApiError(
                    413,
                    f"max_input_chars: input {i} has {len(text)} characters; this server accepts "
                    f"at most {limits.max_input_chars} per input (--max-input-chars)",
                    "max_input_chars",
                )

    async def embed(self, encodings: list[Encoding]) -> np.ndarray:
        """Pooled vectors [n, hidden] (not normalized), through the shared batcher.

        Raises:
            ApiError: 429 with Retry-After when the queue is full, 503 during shutdown.
        """
        _, batcher = self.require_ready()
        try:
            vectors = await batcher.embed(encodings)
        except QueueFull as e:
            raise ApiError(
                429,
                f"max_queue: {e.max_queue} requests are already waiting (--max-queue); "
                f"retry in {e.retry_after_s} s",
                "max_queue",
                {"Retry-After": str(e.retry_after_s)},
            ) from e
        except BatcherClosed as e:
            raise ApiError(503, f"the server is shutting down: {e}", "shutting_down") from e
        self.metrics.tokens.inc(sum(len(e) for e in encodings))
        return vectors

    # -- /info ---------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What /info shows: the bundle by name, never a path of the serving machine."""
        meta = self.bundle.meta
        shown = meta.to_json()
        shown["source"] = PurePath(meta.source).name if is_path(meta.source) else meta.source
        return {
            "model": self.config.model_name,
            "status": self.status,
            "version": __version__,
            "bundle": {
                "name": self.bundle.path.absolute().name,
                "meta": shown,
                "verification": self.bundle.verification,
            },
            "dimensions": meta.dimensions.hidden,
            "max_length": self.encoder.max_length if self.encoder else meta.max_sequence_length,
            "pooling": self.pooling,
            "run_overhead_tokens": self.overhead_tokens,
            "normalize": {"/v1/embeddings": "always", "/embed": "per request (default true)"},
            "auto_truncate": self.config.auto_truncate,
            "providers": self.providers,
            "threads": self.threads,
            "auth": self.config.api_key is not None,
            "limits": self.config.limits.to_json(),
        }
