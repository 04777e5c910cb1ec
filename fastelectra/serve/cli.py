"""`fastelectra serve BUNDLE`: one uvicorn process serving a bundle's embeddings over HTTP.

Imported by `fastelectra.cli` for every command, so only argparse work happens at import time;
FastAPI, uvicorn and onnxruntime load when `serve` runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from fastelectra.errors import UsageError

API_KEY_ENV = "FASTELECTRA_API_KEY"
log = logging.getLogger("fastelectra.serve")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from fastelectra.bundle import POOLINGS
    from fastelectra.serve.config import Limits

    defaults = Limits()
    p.add_argument("bundle", help="bundle directory (from `fastelectra build`)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=port_number, default=8080, help="0-65535 (0: any free port)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
        f"${API_KEY_ENV} if set; an argument shows in the process list, so prefer the variable "
        "or --api-key-file)",
    )
    keys.add_argument(
        "--api-key-file", metavar="FILE", help="read the API key from the first line of FILE"
    )
    p.add_argument("--model-name", help="the model name in responses (default: bundle dir name)")
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        help="mean, cls, or pooled (the model's pooled_output); default: the bundle's, mean "
        "unless built otherwise (as embed and the API); /v1/embeddings then L2-normalizes, "
        "/embed when asked",
    )
    p.add_argument(
        "--auto-truncate",
        action="store_true",
        help="cut inputs over the model's max length instead of answering 413",
    )
    limits = p.add_argument_group("batching and limits")
    for flag, kind, help_text in (
        ("--max-batch-tokens", int, "padded tokens per model run"),
        ("--max-batch-size", int, "texts per model run (1: one text per run, no batching)"),
        ("--max-wait-ms", float, "how long a lone request waits for others to batch with"),
        ("--max-queue", int, "requests waiting for the model before 429 + Retry-After"),
        ("--max-inputs", int, "texts per request (413 above)"),
        ("--max-input-chars", int, "characters per text (413 above)"),
        ("--max-request-bytes", int, "request body size (413 above)"),
        ("--shutdown-timeout", float, "seconds SIGTERM waits for in-flight requests"),
    ):
        field = flag[2:].replace("-", "_")
        default = getattr(defaults, "shutdown_timeout_s" if field == "shutdown_timeout" else field)
        limits.add_argument(flag, type=kind, default=default, help=f"{help_text} ({default})")
    limits.add_argument(
        "--run-overhead-tokens",
        type=float,
        help="a model run's fixed cost in padded tokens, for grouping texts by length into "
        "runs (default: measured at start-up)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads per run (default: all cores but one, which is left to HTTP)",
    )
    p.add_argument(
        "--providers", help="cpu (default), cuda, tensorrt, cuda:1, or a comma-separated list"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--access-log", action="store_true", help="log every request (slows serving)")


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fastelectra.bundle import load_bundle
    from fastelectra.serve.app import create_app
    from fastelectra.serve.config import Limits, ServeConfig
    from fastelectra.serve.server import DRAIN_MARGIN_S, DrainingServer

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    bundle = Path(args.bundle)
    load_bundle(bundle, verify_hashes=False)  # a wrong path fails here, before the port opens
    api_key = resolve_api_key(args.api_key, args.api_key_file, os.environ.get(API_KEY_ENV))
    if api_key is None and not is_loopback(args.host):
        log.warning(
            "serving on %s without an API key: anyone who can reach it may use it", args.host
        )
    providers: str | list[str] | None = args.providers
    if providers and "," in providers:
        providers = providers.split(",")
    config = ServeConfig(
        bundle=bundle,
        model_name=args.model_name or bundle.resolve().name,
        pooling=args.pooling,
        auto_truncate=args.auto_truncate,
        run_overhead_tokens=args.run_overhead_tokens,
        api_key=api_key,
        providers=providers,
        threads=args.threads,
        limits=Limits(
            max_inputs=args.max_inputs,
            max_input_chars=args.max_input_chars,
            max_request_bytes=args.max_request_bytes,
            max_batch_tokens=args.max_batch_tokens,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            shutdown_timeout_s=args.shutdown_timeout,
        ),
    )

    failure: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_fatal=on_fatal)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            # A backstop only: the service answers every request within its own timeout
            # (`DrainingServer`), plus the one model run that cannot be cut.
            timeout_graceful_shutdown=config.limits.shutdown_timeout_s + DRAIN_MARGIN_S,
        ),
        app.state.service,
    )
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal to whatever
    # handler was installed before it; with Python's defaults the process would then die of
    # the signal (exit -15) after a clean drain. Handlers that do nothing make it exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_graceful_shutdown)
    server.run()
    if failure:
        print(f"fastelectra serve: error: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return port


def resolve_api_key(given: str | None, key_file: str | None, environment: str | None) -> str | None:
    """The API key from --api-key, --api-key-file or the environment, in that order; None for
    none given. An empty or blank key is refused: serving openly must never be an accident
    (`--api-key "$KEY"` with KEY unset)."""
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--api-key-file {key_file}: cannot read it ({e})") from e
        given, origin = (lines[0] if lines else ""), f"--api-key-file {key_file}"
    elif given is not None:
        origin = "--api-key"
    elif environment is not None:
        given, origin = environment, f"${API_KEY_ENV}"
    else:
        return None
    if not given.strip():
        raise UsageError(
            f"{origin} gives an empty API key; give a key, or none at all to serve without one"
        )
    return given


def _after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by %s", signal.Signals(signum).name)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
