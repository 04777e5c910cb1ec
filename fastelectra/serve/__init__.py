"""HTTP serving of one bundle: `fastelectra serve BUNDLE`, or `create_app` for any ASGI server.

FastAPI + uvicorn, OpenAI- and TEI-compatible embedding routes, dynamic batching across
requests (`batcher`), limits, bearer-token auth and Prometheus metrics. Needs the `serve` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Limits", "ServeConfig", "create_app"]

if TYPE_CHECKING:
    from fastelectra.serve.app import create_app
    from fastelectra.serve.config import Limits, ServeConfig


def __getattr__(name: str) -> Any:
    # Lazy: `fastelectra.cli` imports fastelectra.serve.cli for every command, and that must
    # not pull in FastAPI.
    if name == "create_app":
        from fastelectra.serve.app import create_app

        return create_app
    if name in ("Limits", "ServeConfig"):
        from fastelectra.serve import config

        return getattr(config, name)
    raise AttributeError(f"module 'fastelectra.serve' has no attribute {name!r}")
