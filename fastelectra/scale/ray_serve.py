"""A Ray Serve deployment of `fastelectra serve`'s own HTTP service, replicated by Ray.

    >>> from ray import serve
    >>> handle = serve.run(build_app("bundles/minilm", replicas=2))
    >>> handle.embed.remote(["a sentence"]).result().shape   # from Python
    (1, 384)

Each replica runs the very app `fastelectra serve` runs (`serve.app.create_app`): the same
routes (`POST /v1/embeddings`, `POST /embed`, `GET /health`, `/metrics`, `/info`), validation,
limits, status codes and error bodies, and the same cross-request batcher (bounded, fair
steps; see `fastelectra.serve.batcher`). Ray adds replicas and routing; nothing of the API is
written twice. From the command line, `app_builder` takes ``key=value`` arguments::

    serve run fastelectra.scale.ray_serve:app_builder bundle=bundles/minilm replicas=2

The Python handle's `embed(texts)` goes through the same service and batcher; it truncates
over-long texts and normalises as `normalize` says.
"""

# No `from __future__ import annotations`: Serve inspects the deployment class at run time.
import asyncio
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt
from ray import serve

from fastelectra.errors import InputError
from fastelectra.runtime.encoder import l2_normalize
from fastelectra.runtime.tokenizer import check_texts
from fastelectra.serve.app import create_app
from fastelectra.serve.config import Limits, ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

    from fastelectra.serve.service import EmbeddingService

# How often the handle's `embed` looks whether the replica's model has finished loading.
READY_POLL_S = 0.05


@serve.deployment
@serve.ingress()
class EncoderDeployment:
    """One replica: `fastelectra serve`'s app for one bundle, built when the replica starts."""

    def __init__(self, config: ServeConfig, normalize: bool) -> None:
        self._config = config
        self._normalize = normalize
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> "FastAPI":
        # Serve runs the app's lifespan: the model loads and warms up as under `fastelectra serve`.
        self._app = create_app(self._config)
        return self._app

    async def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), hidden], row i for text i (too-long texts are truncated)."""
        texts = check_texts(texts)
        service = await self._ready_service()
        if not texts:
            return np.zeros((0, service.bundle.meta.dimensions.hidden), np.float32)
        vectors = await service.embed(await service.tokenize(texts, truncate=True))
        return l2_normalize(vectors) if self._normalize else vectors

    async def _ready_service(self) -> "EmbeddingService":
        assert self._app is not None, "Serve builds the app before any call"
        service = self._app.state.service
        while service.status == "loading":
            await asyncio.sleep(READY_POLL_S)
        service.require_ready()  # "failed" or "stopping": a clear error, not a hang
        return service


def build_app(
    bundle: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    pooling: str | None = None,
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
        pooling: as `fastelectra serve --pooling` (default: the bundle's). `/v1/embeddings`
            always answers unit vectors, `/embed` when asked; `normalize` is for the handle's
            `embed`.
        auto_truncate: cut texts over the bundle's max_sequence_length instead of answering
            413 (the handle's `embed` always cuts).
        max_batch_size: most texts per model run; batch_wait_timeout_s: how long a request
            waits for company (`fastelectra serve --max-wait-ms`).
        replicas: Serve replicas, each with its own encoder; cpus_per_replica /
            gpus_per_replica: Ray resources per replica (its encoder uses that many threads).
        providers: onnxruntime providers for each replica (see `Encoder.load`).
        max_inputs / max_input_chars: most texts per HTTP request, characters per text
            (more: 413).
    """
    from fastelectra.bundle import load_bundle

    for name, value in (("replicas", replicas),):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive int, got {value!r}")
    if cpus_per_replica <= 0 or gpus_per_replica < 0:
        raise InputError("cpus_per_replica must be > 0 and gpus_per_replica >= 0")
    path = Path(bundle).absolute()
    load_bundle(path, verify_hashes=False)  # fail here, not in a replica that Serve restarts
    # The same checks as `fastelectra serve`'s, made here rather than in every replica.
    config = ServeConfig(
        bundle=path,
        model_name=model_name or path.name,
        pooling=pooling,
        auto_truncate=auto_truncate,
        providers=providers,
        threads=max(1, math.floor(cpus_per_replica)),
        limits=Limits(
            max_inputs=max_inputs,
            max_input_chars=max_input_chars,
            max_batch_size=max_batch_size,
            max_wait_ms=batch_wait_timeout_s * 1000,
        ),
    )
    deployment = EncoderDeployment.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # Serve's default (5 requests in flight per replica) would cap the batcher's batches
        # of one-text requests at 5; twice a batch lets the next one fill while one runs.
        max_ongoing_requests=2 * max_batch_size,
    )
    return deployment.bind(config, normalize)


class AppArgs(BaseModel):
    """`serve run fastelectra.scale.ray_serve:app_builder key=value ...` arguments."""

    bundle: str
    model_name: str | None = None
    pooling: Literal["pooled", "cls", "mean"] | None = None
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
