"""A Ray Serve deployment of the encoder, with Serve's request batching (`@serve.batch`).

    >>> from ray import serve
    >>> handle = serve.run(build_app("bundles/minilm", replicas=2))
    >>> handle.embed.remote(["a sentence"]).result().shape   # from Python
    (1, 384)

Over HTTP it answers ``POST /v1/embeddings`` with the OpenAI request and response shape that
`fastelectra serve` uses, so OpenAI clients work unchanged::

    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
        -d '{"input": ["a sentence", "another"]}'

From the command line, `app_builder` takes ``key=value`` arguments::

    serve run fastelectra.scale.ray_serve:app_builder bundle=bundles/minilm replicas=2

Every text of every request is one item in Serve's batch queue: texts from concurrent requests
share model runs, and one large request is spread over several runs of `max_batch_size`.
"""

# No `from __future__ import annotations`: FastAPI reads the route's parameter types at run
# time, and Serve's class-based view cannot resolve them from strings.
import asyncio
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt
from ray import serve

from fastelectra.errors import InputError
from fastelectra.runtime.encoder import POOLINGS
from fastelectra.runtime.tokenizer import check_texts
from fastelectra.serve.schemas import OpenAIEmbeddingRequest, openai_embeddings

if TYPE_CHECKING:
    from ray.serve import Application

api = FastAPI(title="fastelectra on Ray Serve")


# Serve pickles the class when it is decorated: whatever its methods use must be defined
# above this line.
@serve.deployment
@serve.ingress(api)
class EncoderDeployment:
    """One replica: an `Encoder` loaded once, behind a batch queue shared by all requests."""

    def __init__(
        self,
        bundle: str,
        *,
        model_name: str,
        pooling: str,
        normalize: bool,
        auto_truncate: bool,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_inputs: int,
        max_input_chars: int,
        threads: int | None,
        providers: str | None,
    ) -> None:
        from fastelectra.runtime import Encoder
        from fastelectra.runtime.tokenizer import WordPieceTokenizer

        self._encoder = Encoder.load(bundle, providers=providers, threads=threads)
        # For `usage` and the max_length check: counts tokens without running the model.
        self._tokenizer = WordPieceTokenizer.from_file(self._encoder.bundle.tokenizer_path)
        self._model_name = model_name
        self._pooling = pooling
        self._normalize = normalize
        self._auto_truncate = auto_truncate
        self._max_inputs = max_inputs
        self._max_input_chars = max_input_chars
        self._embed_batch.set_max_batch_size(max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batches = 0
        self._batched_texts = 0
        self._largest_batch = 0

    @serve.batch
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        self._batches += 1
        self._batched_texts += len(texts)
        self._largest_batch = max(self._largest_batch, len(texts))
        # In a thread: the replica's event loop keeps accepting requests (and so filling the
        # next batch) while the model runs.
        vectors = await asyncio.to_thread(
            self._encoder.embed,
            texts,
            pooling=self._pooling,
            normalize=self._normalize,
            batch_size=len(texts),
        )
        return list(vectors)

    async def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), hidden], row i for text i (too-long texts are truncated)."""
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self._encoder.hidden), np.float32)
        rows = await asyncio.gather(*(self._embed_batch(text) for text in texts))
        return np.stack(rows).astype(np.float32, copy=False)

    def batching_stats(self) -> dict[str, int]:
        """Model runs and texts this replica has batched, and the largest batch so far."""
        return {
            "batches": self._batches,
            "texts": self._batched_texts,
            "largest_batch": self._largest_batch,
        }

    @api.post("/v1/embeddings")
    async def embeddings(self, request: OpenAIEmbeddingRequest) -> dict[str, Any]:
        texts = request.texts()
        if not texts:
            raise HTTPException(400, "input must not be empty")
        if len(texts) > self._max_inputs:
            raise HTTPException(413, f"{len(texts)} inputs; at most {self._max_inputs} allowed")
        # Checked before tokenizing: counting the tokens of a huge text is itself costly.
        huge = [i for i, text in enumerate(texts) if len(text) > self._max_input_chars]
        if huge:
            raise HTTPException(
                413, f"inputs {huge[:10]} exceed {self._max_input_chars} characters"
            )
        if request.dimensions is not None and request.dimensions != self._encoder.hidden:
            raise HTTPException(
                400, f"this model gives {self._encoder.hidden} dimensions, not {request.dimensions}"
            )
        try:
            counts = self._tokenizer.token_count(texts)
        except ValueError as e:  # e.g. a lone surrogate
            raise HTTPException(400, str(e)) from None
        limit = self._encoder.max_length
        too_long = np.flatnonzero(counts > limit)
        if too_long.size and not self._auto_truncate:
            shown = ", ".join(map(str, too_long[:10]))
            raise HTTPException(413, f"inputs {shown} are longer than the model's {limit} tokens")
        vectors = await self.embed(texts)
        tokens = int(np.minimum(counts, limit).sum())
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding}
                for i, embedding in enumerate(openai_embeddings(vectors, request.encoding_format))
            ],
            "model": self._model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def build_app(
    bundle: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    pooling: str = "mean",
    normalize: bool = True,
    auto_truncate: bool = False,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.005,
    replicas: int = 1,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    providers: str | None = None,
    max_inputs: int = 512,
    max_input_chars: int = 65536,
) -> "Application":
    """A Serve application for `bundle`; deploy it with `serve.run` (or `serve run`).

    Args:
        model_name: the `model` in responses; default: the bundle directory's name.
        pooling / normalize: as `Encoder.embed` (default: mean pooling, unit length).
        auto_truncate: cut texts over the bundle's max_sequence_length instead of answering
            413 (the handle's `embed` always cuts).
        max_batch_size: most texts per model run; batch_wait_timeout_s: how long the first
            text of a batch waits for others.
        replicas: Serve replicas, each with its own encoder; cpus_per_replica /
            gpus_per_replica: Ray resources per replica (its encoder uses that many threads).
        providers: onnxruntime providers for each replica (see `Encoder.load`).
        max_inputs / max_input_chars: most texts per HTTP request, characters per text
            (more: 413).
    """
    from fastelectra.bundle import load_bundle

    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    for name, value in (
        ("max_batch_size", max_batch_size),
        ("replicas", replicas),
        ("max_inputs", max_inputs),
        ("max_input_chars", max_input_chars),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive int, got {value!r}")
    if batch_wait_timeout_s < 0 or cpus_per_replica <= 0 or gpus_per_replica < 0:
        raise InputError("batch_wait_timeout_s and gpus_per_replica must be >= 0, cpus > 0")
    path = Path(bundle).absolute()
    load_bundle(path, verify_hashes=False)  # fail here, not in a replica that Serve restarts

    deployment = EncoderDeployment.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # Serve's default (5 requests in flight per replica) would cap batches of one-text
        # requests at 5; twice a batch lets the next batch fill while one runs.
        max_ongoing_requests=2 * max_batch_size,
    )
    return deployment.bind(
        str(path),
        model_name=model_name or path.name,
        pooling=pooling,
        normalize=normalize,
        auto_truncate=auto_truncate,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_inputs=max_inputs,
        max_input_chars=max_input_chars,
        threads=max(1, math.floor(cpus_per_replica)),
        providers=providers,
    )


class AppArgs(BaseModel):
    """`serve run fastelectra.scale.ray_serve:app_builder key=value ...` arguments."""

    bundle: str
    model_name: str | None = None
    pooling: Literal["pooled", "cls", "mean"] = "mean"
    normalize: bool = True
    auto_truncate: bool = False
    max_batch_size: PositiveInt = 32
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    replicas: PositiveInt = 1
    cpus_per_replica: PositiveFloat = 1.0
    gpus_per_replica: float = Field(0.0, ge=0)
    providers: str | None = None
    max_inputs: PositiveInt = 512
    max_input_chars: PositiveInt = 65536


def app_builder(args: dict[str, str]) -> "Application":
    """Serve's application-builder hook: the ``key=value`` strings of `serve run`, validated."""
    options = AppArgs.model_validate(args)
    return build_app(**options.model_dump())
