"""The HTTP API: OpenAI's `/v1/embeddings`, TEI's `/embed`, `/health`, `/metrics`, `/info`.

    app = create_app(ServeConfig(bundle=Path("bundle"), model_name="bundle"))

The model loads and warms up in the background after start-up, so the port answers at once:
`/health` is 503 until the first requests can be served fast, then 200 (a readiness probe).
On shutdown uvicorn stops accepting connections and waits for in-flight requests; the lifespan
then drains the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastelectra.runtime.encoder import l2_normalize
from fastelectra.serve.config import ServeConfig
from fastelectra.serve.errors import ApiError, error_body
from fastelectra.serve.metrics import ServerMetrics
from fastelectra.serve.middleware import BearerAuth, BodyLimit, RequestMetrics
from fastelectra.serve.schemas import OpenAIEmbeddingRequest, TEIEmbedRequest, openai_embeddings
from fastelectra.serve.service import EmbeddingService
from fastelectra.version import __version__

log = logging.getLogger("fastelectra.serve")

ROUTES = ("/v1/embeddings", "/embed", "/health", "/metrics", "/info")
# Probes from a load balancer carry no key; everything else (metrics and /info included) does.
OPEN_PATHS = ("/health",)
# Responses with more floats than this are serialized in a worker thread: json.dumps takes
# ~0.45 us a float here, so this is ~7 ms of event loop that other clients would wait through.
INLINE_SERIALIZE_FLOATS = 16384


def create_app(config: ServeConfig, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The ASGI app for one bundle. `on_fatal(message)` is called if the model cannot load."""
    metrics = ServerMetrics()
    service = EmbeddingService(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(service.start(on_fatal))
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await service.stop()

    # No /docs or /redoc: their pages load scripts from a public CDN, blank offline. The schema
    # stays at /openapi.json for any local viewer.
    app = FastAPI(
        title="fastelectra",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.metrics = metrics
    _install_error_handlers(app)
    # Starlette runs the last-added middleware first: metrics see every answer, and auth
    # answers before the body is read.
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_request_bytes)
    if config.api_key is not None:
        app.add_middleware(BearerAuth, api_key=config.api_key, open_paths=OPEN_PATHS)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=ROUTES)

    @app.post("/v1/embeddings")
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Response:
        hidden = service.bundle.meta.dimensions.hidden
        if body.dimensions is not None and body.dimensions > hidden:
            raise ApiError(
                422, f"dimensions: this model's vectors have {hidden} dimensions", "dimensions"
            )
        encodings = await service.tokenize(body.texts(), truncate=config.auto_truncate)
        vectors = await service.embed(encodings)
        tokens = sum(len(e) for e in encodings)
        return await _json_response(
            vectors.size,
            openai_payload,
            vectors,
            body.encoding_format,
            body.dimensions,
            config.model_name,
            tokens,
        )

    @app.post("/embed")
    async def tei_embed(body: TEIEmbedRequest) -> Response:
        truncate = config.auto_truncate if body.truncate is None else body.truncate
        encodings = await service.tokenize(body.texts(), truncate=truncate)
        vectors = await service.embed(encodings)
        return await _json_response(vectors.size, tei_payload, vectors, body.normalize)

    @app.get("/health")
    async def health() -> Response:
        body: dict[str, Any] = {"status": service.status}
        if service.error:
            body["error"] = service.error
        return _json(200 if service.status == "ready" else 503, body)

    @app.get("/info")
    async def info() -> Response:
        return _json(200, service.info())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        content, content_type = metrics.render()
        return Response(content, media_type=content_type)

    return app


# -- response bodies ----------------------------------------------------------------------------


def openai_payload(
    vectors: np.ndarray,
    encoding_format: str,
    dimensions: int | None,
    model: str,
    tokens: int,
) -> bytes:
    """OpenAI's embeddings response: unit vectors, as float lists or base64 little-endian f32."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    embeddings = openai_embeddings(l2_normalize(vectors), encoding_format)
    data = [
        {"object": "embedding", "index": i, "embedding": embedding}
        for i, embedding in enumerate(embeddings)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    body = {"object": "list", "data": data, "model": model, "usage": usage}
    return json.dumps(body, allow_nan=False).encode()


def tei_payload(vectors: np.ndarray, normalize: bool) -> bytes:
    """TEI's /embed response: one list of floats per input."""
    if normalize:
        vectors = l2_normalize(vectors)
    return json.dumps(vectors.tolist(), allow_nan=False).encode()


async def _json_response(floats: int, build: Callable[..., bytes], *args: Any) -> Response:
    if floats > INLINE_SERIALIZE_FLOATS:
        content = await asyncio.to_thread(build, *args)
    else:
        content = build(*args)
    return Response(content, media_type="application/json")


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")


# -- errors -------------------------------------------------------------------------------------


def _error(request: Request, status: int, message: str, code: str, **headers: str) -> Response:
    body = error_body(request.url.path, status, message, code)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(request, exc.status, exc.message, exc.code, **exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        return _error(request, 422, f"invalid request: {problems}", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, str(exc.detail), code, **(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return _error(request, 500, message, "internal_error")
