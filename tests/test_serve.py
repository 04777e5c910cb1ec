"""`fastelectra serve`: a real uvicorn process on a loopback port, serving the tiny bundle.

Every HTTP test talks to `python -m fastelectra.cli serve` started in a subprocess, and checks
vectors against `Encoder.embed` run directly in this process. The batcher is also tested alone,
with a model stand-in that records what it was asked to run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastelectra.runtime import Encoder
from fastelectra.runtime.batching import plan_runs
from fastelectra.runtime.tokenizer import Encoding
from fastelectra.serve import ServeConfig, create_app
from fastelectra.serve.batcher import Batcher, BatcherClosed, QueueFull, RunResult
from fastelectra.serve.overhead import measure_overhead_tokens

API_KEY = "test-key-4f1c"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The main server's limits, small enough to reach in a test.
MAX_INPUTS = 8
MAX_INPUT_CHARS = 4000
MAX_REQUEST_BYTES = 20_000
TEXTS = [
    "the quick brown fox",
    "A man is playing a guitar on stage.",
    "",
    "tokenization of ünïcödé text and CJK 漢字 characters",
    "short",
    "a somewhat longer sentence that has quite a few more word pieces than the others do",
]
# 700 tokens: over the bundle's 512, under MAX_INPUT_CHARS.
LONG_TEXT = "word " * 700
STARTUP_TIMEOUT_S = 60


# -- a real server process -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m fastelectra.cli serve BUNDLE ...` on a free loopback port."""

    def __init__(self, bundle: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "fastelectra.cli", "serve", str(bundle)]
        command += ["--port", str(self.port), "--threads", "1", *args]
        # A file, not a pipe: a pipe nobody reads would block the server once full.
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"server not ready in {STARTUP_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def metrics(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        """Every sample of /metrics, keyed `name{label="value",...}` (labels sorted)."""
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def wait_for_metric(self, name: str, value: float, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + 30
        while self.metrics(headers).get(name) != value:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} never reached {value}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "main.log"
    srv = Server(
        tiny_bundle,
        log,
        "--api-key", API_KEY,
        "--max-inputs", str(MAX_INPUTS),
        "--max-input-chars", str(MAX_INPUT_CHARS),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        # Long enough that concurrent test requests reliably meet in one batch on a busy VM.
        "--max-wait-ms", "100",
    )  # fmt: skip
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    return Encoder.load(tiny_bundle, threads=1)


def post(srv: Server, path: str, body: object, headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=60)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    return body["error"]["code"] if isinstance(body["error"], dict) else body["code"]


def big_request_texts(encoder: Encoder) -> list[str]:
    """512 texts of the model's full length: a few seconds of model time on the tiny bundle."""
    return [f"{i} " + "word " * encoder.max_length for i in range(512)]


# -- endpoints -----------------------------------------------------------------------------------


def test_openai_embeddings_match_the_encoder(server, encoder):
    response = post(server, "/v1/embeddings", {"input": TEXTS, "model": "anything"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == server_info(server)["model"]
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    want = encoder.embed(TEXTS, pooling="mean", normalize=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    tokens = sum(len(e) for e in encoder.tokenize(TEXTS))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    single = post(server, "/v1/embeddings", {"input": TEXTS[1], "model": "m"}).json()
    assert len(single["data"]) == 1
    np.testing.assert_allclose(single["data"][0]["embedding"], want[1], atol=1e-5)


def test_openai_base64_and_dimensions(server, encoder):
    body = {"input": TEXTS[:3], "encoding_format": "base64"}
    data = post(server, "/v1/embeddings", body).json()["data"]
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    np.testing.assert_allclose(got, encoder.embed(TEXTS[:3], pooling="mean", normalize=True), 1e-5)

    data = post(server, "/v1/embeddings", {"input": TEXTS[:3], "dimensions": 16}).json()["data"]
    got = np.array([d["embedding"] for d in data])
    prefix = encoder.embed(TEXTS[:3], pooling="mean")[:, :16]
    np.testing.assert_allclose(got, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), 1e-5)

    too_many = post(server, "/v1/embeddings", {"input": "x", "dimensions": 65})
    assert too_many.status_code == 422 and error_code(too_many) == "dimensions"


def test_tei_embed(server, encoder):
    response = post(server, "/embed", {"inputs": TEXTS})
    assert response.status_code == 200, response.text
    got = np.array(response.json(), dtype=np.float32)
    np.testing.assert_allclose(got, encoder.embed(TEXTS, pooling="mean", normalize=True), 1e-5)

    raw = np.array(post(server, "/embed", {"inputs": TEXTS, "normalize": False}).json())
    np.testing.assert_allclose(raw, encoder.embed(TEXTS, pooling="mean"), atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)

    single = post(server, "/embed", {"inputs": "short"}).json()
    assert np.array(single).shape == (1, encoder.hidden)


def test_too_long_inputs_are_refused_unless_truncation_is_asked(server, encoder):
    refused = post(server, "/embed", {"inputs": ["ok", LONG_TEXT], "truncate": False})
    assert refused.status_code == 413
    assert refused.json()["error_type"] == "Validation"
    assert error_code(refused) == "max_length" and "index 1" in refused.json()["error"]
    assert post(server, "/embed", {"inputs": [LONG_TEXT]}).status_code == 413  # TEI's default

    cut = post(server, "/embed", {"inputs": ["ok", LONG_TEXT], "truncate": True})
    assert cut.status_code == 200
    with pytest.warns(UserWarning, match="truncated"):
        want = encoder.embed(["ok", LONG_TEXT], pooling="mean", normalize=True)
    np.testing.assert_allclose(np.array(cut.json()), want, atol=1e-5)

    openai = post(server, "/v1/embeddings", {"input": [LONG_TEXT]})
    assert openai.status_code == 413 and error_code(openai) == "max_length"


def server_info(srv: Server) -> dict:
    response = httpx.get(f"{srv.url}/info", headers=AUTH, timeout=10)
    assert response.status_code == 200
    return response.json()


def test_info_reports_bundle_verification_and_limits(server, tiny_bundle):
    info = server_info(server)
    assert info["status"] == "ready"
    assert info["model"] == tiny_bundle.name
    assert info["dimensions"] == 64 and info["max_length"] == 512
    assert info["bundle"]["meta"]["dimensions"]["layers"] == 2
    assert info["bundle"]["meta"]["fused_ops"]["Attention"] == 2
    assert info["bundle"]["verification"]["passed"] is True
    assert info["pooling"] == "mean"
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["threads"] == 1
    assert info["run_overhead_tokens"] >= 0
    limits = info["limits"]
    assert limits["max_inputs"] == MAX_INPUTS
    assert limits["max_input_chars"] == MAX_INPUT_CHARS
    assert limits["max_batch_tokens"] == 4096
    assert limits["max_wait_ms"] == 100


def test_info_shows_no_absolute_path(server, tiny_bundle):
    info = server_info(server)
    assert info["bundle"]["name"] == tiny_bundle.name
    assert (
        info["bundle"]["meta"]["source"]
        == Path(json.loads((tiny_bundle / "fastelectra.json").read_text())["source"]).name
    )

    def strings(value: object) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    assert not [s for s in strings(info) if s.startswith("/") or str(tiny_bundle) in s]


def test_docs_pages_are_off_and_the_schema_is_local(server):
    assert httpx.get(f"{server.url}/docs", headers=AUTH, timeout=10).status_code == 404
    schema = httpx.get(f"{server.url}/openapi.json", headers=AUTH, timeout=10)
    assert schema.status_code == 200 and "/v1/embeddings" in schema.json()["paths"]


def test_health_needs_no_key_and_metrics_are_exposed(server):
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ready"}
    post(server, "/embed", {"inputs": ["metrics please"]})
    samples = server.metrics(AUTH)
    for name in (
        'fastelectra_request_duration_seconds_count{route="/embed"}',
        "fastelectra_queue_duration_seconds_count",
        "fastelectra_tokenization_duration_seconds_count",
        "fastelectra_inference_duration_seconds_count",
        "fastelectra_batch_size_count",
        "fastelectra_batch_tokens_count",
        "fastelectra_batch_requests_count",
    ):
        assert samples.get(name, 0) >= 1, name
    assert "fastelectra_queue_depth" in samples
    assert samples['fastelectra_requests_total{route="/embed",status="200"}'] >= 1


def test_before_warm_up_health_and_embeddings_answer_503(tiny_bundle):
    # In process, without the lifespan that loads the model: the state a probe sees first.
    app = create_app(ServeConfig(bundle=tiny_bundle, model_name="tiny"))

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (
                await client.get("/health"),
                await client.post("/embed", json={"inputs": "x"}),
                await client.get("/info"),
            )

    health, embed, info = asyncio.run(scenario())
    assert health.status_code == 503 and health.json() == {"status": "loading"}
    assert embed.status_code == 503 and error_code(embed) == "not_ready"
    assert info.status_code == 200 and info.json()["status"] == "loading"


# -- auth and limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}],
    ids=["none", "wrong-key", "not-bearer"],
)
def test_auth_is_required(server, headers):
    for path in ("/v1/embeddings", "/embed"):
        response = post(server, path, {"input": "x", "inputs": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_code(response) == "invalid_api_key"
    assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/info", headers=headers).status_code == 401


def test_request_size_limits_answer_413_naming_the_limit(server):
    too_many = post(server, "/v1/embeddings", {"input": ["a"] * (MAX_INPUTS + 1)})
    assert too_many.status_code == 413
    assert error_code(too_many) == "max_inputs"
    assert "max_inputs" in too_many.json()["error"]["message"]

    too_long = post(server, "/embed", {"inputs": ["a", "b" * (MAX_INPUT_CHARS + 1)]})
    assert too_long.status_code == 413
    assert error_code(too_long) == "max_input_chars" and "input 1" in too_long.json()["error"]

    too_big = post(server, "/embed", {"inputs": ["x" * (MAX_INPUT_CHARS - 1)] * MAX_INPUTS})
    assert too_big.status_code == 413 and error_code(too_big) == "max_request_bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"inputs": ["'
        for _ in range(MAX_REQUEST_BYTES // 1000 + 1):
            yield b"y" * 1000
        yield b'"]}'

    chunked = httpx.post(f"{server.url}/embed", content=chunks(), headers=AUTH, timeout=30)
    assert chunked.status_code == 413 and error_code(chunked) == "max_request_bytes"


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/embeddings", b'{"input": [1, 2, 3]}'),  # token ids are not supported
        ("/v1/embeddings", b'{"input": "x", "encoding_format": "hex"}'),
        ("/v1/embeddings", b'{"input": []}'),
        ("/embed", b'{"inputs": "unterminated'),
        ("/embed", b'{"inputs": "x", "truncation_direction": "Left"}'),
        ("/embed", b'{"inputs": ["lone surrogate \\ud800"]}'),
        ("/embed", b"{}"),
    ],
)
def test_malformed_requests_answer_422(server, path, content):
    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=10)
    assert response.status_code == 422, response.text
    assert error_code(response) in ("invalid_request", "empty_input", "invalid_input")


def test_unknown_route_is_a_json_404(server):
    response = httpx.get(f"{server.url}/nope", headers=AUTH)
    assert response.status_code == 404 and error_code(response) == "not_found"


# -- batching across requests --------------------------------------------------------------------


def test_concurrent_requests_share_batches_and_get_their_own_vectors(server, encoder):
    before = server.metrics(AUTH)
    texts = [f"request {i}: " + " ".join(["word"] * (i % 7 + 1)) for i in range(24)]
    bad = [{"inputs": ["x"] * (MAX_INPUTS + 1)}, {"inputs": 42}, {"inputs": [LONG_TEXT]}]

    def call(job: int) -> httpx.Response:
        if job % 8 == 7:  # bad requests among the good must not disturb them
            return post(server, "/embed", bad[job // 8 % len(bad)])
        return post(server, "/embed", {"inputs": [texts[job]]})

    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(call, range(len(texts))))

    want = encoder.embed(texts, pooling="mean", normalize=True)
    for job, response in enumerate(responses):
        if job % 8 == 7:
            assert response.status_code in (413, 422)
            continue
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()[0], want[job], atol=1e-5)

    after = server.metrics(AUTH)
    runs = after["fastelectra_batch_requests_count"] - before["fastelectra_batch_requests_count"]
    lone = (
        after['fastelectra_batch_requests_bucket{le="1.0"}']
        - before['fastelectra_batch_requests_bucket{le="1.0"}']
    )
    assert runs - lone >= 1, "no model run held more than one request"
    assert runs < 21, "21 good requests should have needed fewer than 21 model runs"


# -- overload and shutdown -----------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(tiny_bundle, encoder, tmp_path):
    # The key comes from the environment this time.
    srv = Server(
        tiny_bundle, tmp_path / "queue.log", "--max-queue", "1",
        # Long steps (128 rows of 512 tokens), so that the small requests meet one.
        "--max-batch-tokens", "65536", "--max-batch-size", "128",
        env={"FASTELECTRA_API_KEY": API_KEY},
    )  # fmt: skip
    srv.wait_ready()
    try:
        with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(4) as small_pool:
            big_request = {"inputs": big_request_texts(encoder), "truncate": True}
            big = pool.submit(post, srv, "/embed", big_request)
            srv.wait_for_metric("fastelectra_running_requests", 1, AUTH)
            # Sent together during one long step: one may wait, the others are refused.
            small = [{"inputs": [f"small {i}"]} for i in range(4)]
            answers = list(small_pool.map(lambda body: post(srv, "/embed", body), small))
            refused = [r for r in answers if r.status_code == 429]
            assert refused and all(r.status_code in (200, 429) for r in answers)
            assert int(refused[0].headers["retry-after"]) >= 1
            assert refused[0].json()["error_type"] == "Overloaded"
            assert error_code(refused[0]) == "max_queue"

            assert big.result().status_code == 200
            assert len(big.result().json()) == 512
        assert post(srv, "/embed", {"inputs": ["after"]}, headers={}).status_code == 401
    finally:
        assert srv.stop() == 0, srv.output()


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_bundle, encoder, tmp_path):
    srv = Server(tiny_bundle, tmp_path / "shutdown.log")
    srv.wait_ready()
    texts = big_request_texts(encoder)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, srv, "/embed", {"inputs": texts, "truncate": True}, {})
        srv.wait_for_metric("fastelectra_running_requests", 1, {})
        srv.process.send_signal(signal.SIGTERM)
        response = in_flight.result()
    assert response.status_code == 200
    got = np.array(response.json(), dtype=np.float32)
    with pytest.warns(UserWarning, match="truncated"):
        want = encoder.embed(texts[-3:], pooling="mean", normalize=True)
    np.testing.assert_allclose(got[-3:], want, atol=1e-5)
    assert srv.process.wait(timeout=30) == 0, srv.output()
    assert "Application shutdown complete" in srv.output()


def test_shutdown_past_its_timeout_answers_json_503_and_exits_in_time(
    tiny_bundle, encoder, tmp_path
):
    srv = Server(tiny_bundle, tmp_path / "timeout.log", "--shutdown-timeout", "0.5")
    srv.wait_ready()
    texts = big_request_texts(encoder)  # several seconds of model time: past the timeout
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, srv, "/embed", {"inputs": texts, "truncate": True}, {})
        srv.wait_for_metric("fastelectra_running_requests", 1, {})
        signalled = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        response = in_flight.result()
        assert srv.process.wait(timeout=30) == 0, srv.output()
        exited_after = time.monotonic() - signalled
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert error_code(response) == "shutting_down"
    # The timeout, the one model run it cannot cut, and the interpreter's exit.
    assert exited_after < 0.5 + 5, (exited_after, srv.output())
    assert "Traceback" not in srv.output()


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--api-key", ""], {}, "--api-key gives an empty API key"),
        (["--api-key", "   "], {}, "--api-key gives an empty API key"),
        ([], {"FASTELECTRA_API_KEY": ""}, "$FASTELECTRA_API_KEY gives an empty API key"),
        (["--api-key-file", "EMPTY"], {}, "gives an empty API key"),
        (["--port", "99999"], {}, "a port is a number from 0 to 65535"),
        (["--port", "-1"], {}, "a port is a number from 0 to 65535"),
    ],
)
def test_serve_refuses_to_start_with_an_empty_key_or_a_bad_port(
    tiny_bundle, tmp_path, flags, env, message
):
    (tmp_path / "EMPTY").write_text("\n")
    flags = [str(tmp_path / f) if f == "EMPTY" else f for f in flags]
    done = subprocess.run(
        [sys.executable, "-m", "fastelectra.cli", "serve", str(tiny_bundle), *flags],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_the_api_key_can_come_from_a_file(tiny_bundle, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"{API_KEY}\n")
    srv = Server(tiny_bundle, tmp_path / "keyfile.log", "--api-key-file", str(key_file))
    srv.wait_ready()
    try:
        assert post(srv, "/embed", {"inputs": ["x"]}, headers={}).status_code == 401
        assert post(srv, "/embed", {"inputs": ["x"]}).status_code == 200
        assert API_KEY not in " ".join(srv.process.args)  # not in the process list
    finally:
        assert srv.stop() == 0, srv.output()


def test_a_damaged_bundle_fails_at_load_and_exits_1(tiny_bundle, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, damaged)
    with open(damaged / "model.onnx", "r+b") as f:  # same size, other bytes: only sha256 sees it
        f.seek(100)
        f.write(b"\x00" * 16)
    srv = Server(damaged, tmp_path / "damaged.log")
    assert srv.process.wait(timeout=STARTUP_TIMEOUT_S) == 1
    assert "sha256 mismatch" in srv.output()


# -- the batcher alone ---------------------------------------------------------------------------


def encoding(*ids: int) -> Encoding:
    array = np.array(ids, dtype=np.int32)
    return Encoding(array, np.zeros_like(array), truncated=False)


class RecordingModel:
    """Stands in for the encoder: a row's vector is [sum of ids, length]; records each run."""

    def __init__(self, poison: int | None = None, delay_s: float = 0.0) -> None:
        self.runs: list[list[tuple[int, ...]]] = []
        self.poison = poison
        self.delay_s = delay_s

    def __call__(self, encodings: Sequence[Encoding]) -> Iterator[RunResult]:
        rows = [tuple(int(i) for i in e.ids) for e in encodings]
        self.runs.append(rows)
        time.sleep(self.delay_s)
        if self.poison is not None and any(self.poison in row for row in rows):
            raise RuntimeError("poisoned batch")
        vectors = np.array([[sum(row), len(row)] for row in rows], dtype=np.float32)
        yield np.arange(len(rows)), vectors, len(rows) * max(map(len, rows))


def expected(*encodings: Encoding) -> np.ndarray:
    return np.array([[e.ids.sum(), len(e)] for e in encodings], dtype=np.float32)


def make_batcher(model: RecordingModel, **limits: Any) -> Batcher:
    settings = {"max_batch_size": 8, "max_batch_tokens": 64, "max_wait_s": 0.05, "max_queue": 16}
    return Batcher(model, **{**settings, **limits})  # type: ignore[arg-type]


def test_batcher_merges_concurrent_requests_and_splits_results_back():
    model = RecordingModel()
    requests = [[encoding(i + 10 * j, j) for j in range(1 + i % 3)] for i in range(4)]

    async def scenario() -> list[np.ndarray]:
        batcher = make_batcher(model)
        batcher.start()
        results = await asyncio.gather(*(batcher.embed(r) for r in requests))
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert len(model.runs) == 1  # 7 rows of 2 tokens: one batch within every cap
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, expected(*request))


def test_a_lone_client_does_not_pay_the_wait():
    """Requests further apart than max_wait run at once instead of waiting for company.

    A manual clock spaces the requests 1.5 waits apart without sleeping; a batcher that waited
    for company would hold each lone request for the whole minute of `max_wait_s`, far past
    the bound each request is given here.
    """
    model = RecordingModel()
    wait_s = 60.0
    now = [0.0]

    async def scenario() -> None:
        batcher = make_batcher(model, max_wait_s=wait_s, clock=lambda: now[0])
        batcher.start()
        for i in range(3):  # one client, a request every 1.5 waits: nobody to wait for
            await asyncio.wait_for(batcher.embed([encoding(i)]), timeout=wait_s / 6)
            now[0] += 1.5 * wait_s
        # Requests close together still share a run.
        await asyncio.gather(*(batcher.embed([encoding(j)]) for j in range(8)))
        await batcher.close()

    asyncio.run(scenario())
    assert [len(run) for run in model.runs] == [1, 1, 1, 8]


def test_batcher_steps_are_capped_by_rows_and_padded_tokens():
    model = RecordingModel()
    long_request = [encoding(*range(60))]  # 60 padded tokens: alone within the cap of 64
    small = [[encoding(1)] for _ in range(12)]
    too_big = [encoding(i) for i in range(10)]  # 10 rows > 8: cut into two runs

    async def scenario() -> list[np.ndarray]:
        batcher = make_batcher(model)
        batcher.start()
        jobs = [long_request, *small, too_big]
        results = await asyncio.gather(*(batcher.embed(r) for r in jobs))
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    for run in model.runs:
        assert len(run) <= 8 and (len(run) == 1 or len(run) * max(map(len, run)) <= 64)
    assert model.runs[0] == [tuple(range(60))]
    assert sum(map(len, model.runs)) == 1 + 12 + 10
    np.testing.assert_array_equal(results[-1], expected(*too_big))


def test_a_short_request_waits_for_one_run_not_for_a_large_request():
    """Least-served first: a request arriving while a large one runs joins the next step."""
    model = RecordingModel(delay_s=0.05)
    large = [encoding(*range(100 + i, 108 + i)) for i in range(40)]  # 40 rows: 5+ steps of 8
    other_large = [encoding(*range(200 + i, 208 + i)) for i in range(40)]
    short = [encoding(7, 7)]

    async def scenario() -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        batcher = make_batcher(model, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.embed(large))
        second = asyncio.ensure_future(batcher.embed(other_large))
        while not model.runs:
            await asyncio.sleep(0.001)
        runs_before = len(model.runs)
        quick = await batcher.embed(short)
        runs_until_answered = len(model.runs) - runs_before
        results = await asyncio.gather(first, second)
        await batcher.close()
        return *results, quick, runs_before, runs_until_answered

    first, second, quick, runs_before, runs_until_answered = asyncio.run(scenario())
    assert runs_until_answered <= 2, (runs_before, runs_until_answered)
    np.testing.assert_array_equal(quick, expected(*short))
    np.testing.assert_array_equal(first, expected(*large))
    np.testing.assert_array_equal(second, expected(*other_large))
    # The two large requests took turns rather than one waiting for the other to finish.
    owners = [{row[0] // 100 for row in run if len(row) == 8} for run in model.runs]
    big = [o.pop() for o in owners if len(o) == 1]
    assert big[:4] == [1, 2, 1, 2] and abs(big.count(1) - big.count(2)) <= 1


def test_shutdown_answers_unfinished_requests_within_its_timeout():
    model = RecordingModel(delay_s=0.1)
    large = [encoding(i, i) for i in range(200)]  # 25 runs of 0.1 s: longer than the timeout

    async def scenario() -> tuple[BaseException | None, float]:
        batcher = make_batcher(model, max_wait_s=0)
        batcher.start()
        pending = asyncio.ensure_future(batcher.embed(large))
        while not model.runs:
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        await batcher.close(timeout_s=0.5)
        took = time.perf_counter() - started
        return pending.exception(), took

    error, took = asyncio.run(scenario())
    assert isinstance(error, BatcherClosed)
    assert took < 0.5 + 0.1 + 0.2  # the timeout, at most one run, and slack


def test_a_failing_batch_fails_only_the_request_that_fails_alone():
    model = RecordingModel(poison=666)
    good = [[encoding(1, 2)], [encoding(3)], [encoding(4, 5, 6)]]

    async def scenario() -> list[object]:
        batcher = make_batcher(model)
        batcher.start()
        jobs = [
            batcher.embed(good[0]),
            batcher.embed([encoding(666)]),
            *map(batcher.embed, good[1:]),
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[1], RuntimeError)
    for request, result in zip(good, [results[0], *results[2:]], strict=True):
        np.testing.assert_array_equal(result, expected(*request))
    assert len(model.runs) == 1 + 4  # the shared step, then each request alone


def test_batcher_queue_limit_and_close():
    model = RecordingModel(delay_s=0.2)

    async def scenario() -> None:
        batcher = make_batcher(model, max_queue=2, max_batch_size=1)
        batcher.start()
        running = asyncio.ensure_future(batcher.embed([encoding(1)]))
        while not model.runs:  # the first request is in the model
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.embed([encoding(i)])) for i in (2, 3)]
        await asyncio.sleep(0)  # let both reach the queue
        with pytest.raises(QueueFull) as full:
            await batcher.embed([encoding(4)])
        assert full.value.retry_after_s >= 1
        await batcher.close()  # drains: everything queued before close completes
        assert [float(r.result()[0][0]) for r in (running, *queued)] == [1.0, 2.0, 3.0]
        with pytest.raises(BatcherClosed):
            await batcher.embed([encoding(5)])

    asyncio.run(scenario())


def test_batcher_result_rows_are_float32_and_in_request_order():
    # The split must follow each request's own order even when the runner reorders rows
    # (the encoder sorts a unit's rows by length).
    def reversing_model(encodings: Sequence[Encoding]) -> Iterator[RunResult]:
        order = np.arange(len(encodings))[::-1]
        vectors = np.array([[encodings[i].ids.sum(), len(encodings[i])] for i in order], np.float32)
        yield order, vectors, 0

    request = [encoding(1), encoding(2, 3), encoding(4, 5, 6)]

    async def scenario() -> np.ndarray:
        batcher = Batcher(
            reversing_model, max_batch_size=8, max_batch_tokens=64, max_wait_s=0, max_queue=4
        )
        batcher.start()
        result = await batcher.embed(request)
        await batcher.close()
        return result

    result = asyncio.run(scenario())
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected(*request))
    assert json.dumps(result.tolist())  # plain floats, serializable


# -- the run planner -----------------------------------------------------------------------------


def brute_force_cost(lengths: list[int], max_rows: int, max_tokens: int, overhead: float) -> float:
    """The least cost over every way to cut the length-sorted rows into contiguous runs."""
    ordered = sorted(lengths, reverse=True)
    best = float("inf")
    n = len(ordered)
    for mask in range(1 << (n - 1)):  # bit i set: a cut after row i
        cost, start = 0.0, 0
        for end in [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]:
            rows, longest = end - start, ordered[start]
            if rows > 1 and (rows > max_rows or rows * longest > max_tokens):
                break
            cost += overhead + rows * longest
            start = end
        else:
            best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_runs_is_optimal_and_respects_the_caps(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 60, 9)
    overhead = float(rng.choice([0, 5, 30, 500]))
    runs = plan_runs(lengths, max_rows=4, max_tokens=120, overhead_tokens=overhead)
    assert sorted(np.concatenate(runs).tolist()) == list(range(len(lengths)))
    for run in runs:
        assert len(run) == 1 or (len(run) <= 4 and len(run) * lengths[run].max() <= 120)
    cost = sum(overhead + len(run) * lengths[run].max() for run in runs)
    assert cost == pytest.approx(brute_force_cost(lengths.tolist(), 4, 120, overhead))


def test_plan_runs_trades_padding_against_the_run_overhead():
    lengths = np.array([8, 8, 9, 9, 10, 300])
    # Free runs: no padding at all, equal lengths share a run.
    free = plan_runs(lengths, 64, 16384, overhead_tokens=0)
    assert sorted(sorted(lengths[r].tolist()) for r in free) == [[8, 8], [9, 9], [10], [300]]
    # Costly runs: everything short together, the long text alone (padding 5 rows to 300
    # would cost far more than one more run).
    costly = plan_runs(lengths, 64, 16384, overhead_tokens=100)
    assert sorted(sorted(lengths[r].tolist()) for r in costly) == [[8, 8, 9, 9, 10], [300]]


def test_measured_run_overhead_is_within_bounds(encoder):
    overhead = measure_overhead_tokens(encoder, max_tokens=4096)
    assert 0 <= overhead <= 4096
