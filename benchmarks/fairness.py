"""Does one large request starve the others? `fastelectra serve` under a large request.

    python benchmarks/fairness.py .cache/demo-bundle --threads 2 \\
        --baseline-src /tmp/fastelectra-f5aefa6

For each source tree (this checkout, and `--baseline-src`, another checkout of fastelectra
such as a `git worktree` of the commit before fair scheduling), a fresh `fastelectra serve
BUNDLE --threads N` on a loopback port, and:

1. `alone`: one request of `--large-texts` texts of ~`--large-tokens` tokens; 1 s after it is
   sent, one client sends one-text requests back to back until it is answered. Recorded: the
   large request's seconds, the one-text latencies meanwhile (p50 / max), and the server's RSS
   idle before, at its peak (VmHWM) and 3 s after the large request.
2. `load`: `--clients` clients of the traffic mix (one text per request) for `--duration` s,
   without and then with `--large-clients` clients sending large requests back to back.
   Recorded: the one-text requests' p50 / p99 and throughput, and the large requests' seconds.

Writes benchmarks/results/<date>-<cpu>/fairness-<bundle>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC_MIX = ROOT / "fastelectra" / "data" / "traffic_mix.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2, help="the server's onnxruntime threads")
    parser.add_argument("--large-texts", type=int, default=128)
    parser.add_argument("--large-tokens", type=int, default=500)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--large-clients", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    texts = [t for t in TRAFFIC_MIX.read_text(encoding="utf-8").splitlines() if t.strip()]
    large = large_texts(args.bundle, texts, args.large_texts, args.large_tokens)
    sources = {"now": ROOT}
    if args.baseline_src:
        sources["baseline"] = args.baseline_src.resolve()
    results: dict[str, dict[str, object]] = {}
    for name, src in sources.items():
        with Served(args.bundle, src, ["--threads", str(args.threads), *args.server_arg]) as srv:
            results[name] = {
                "alone": asyncio.run(alone(srv, large)),
                "load": asyncio.run(load(srv, texts, large, args)),
            }
        print(name, json.dumps(results[name]), flush=True)

    from fastelectra.bench.machine import git_commit, library_versions, machine_info, results_dir

    report = {
        "what": "one-text requests while large requests are in flight (fastelectra serve)",
        "bundle": args.bundle.resolve().name,
        "large_request": {"texts": len(large), "tokens_each": args.large_tokens},
        "settings": {
            "threads": args.threads,
            "clients": args.clients,
            "large_clients": args.large_clients,
            "duration_s": args.duration,
            "server_args": args.server_arg,
        },
        "sources": {name: str(src) for name, src in sources.items()},
        "results": results,
        "machine": machine_info() | {"note": "client and server share these cores"},
        "versions": library_versions(("fastelectra", "onnxruntime", "uvicorn", "fastapi")),
        "commit": git_commit(ROOT),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    out = args.out or (
        results_dir(ROOT / "benchmarks" / "results") / f"fairness-{args.bundle.resolve().name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def large_texts(bundle: Path, texts: list[str], count: int, tokens: int) -> list[str]:
    """`count` texts of about `tokens` tokens each, made of the traffic mix's own words."""
    from fastelectra.runtime.tokenizer import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.from_file(bundle / "tokenizer.json")
    words = " ".join(texts).split()
    out = []
    for i in range(count):
        start = (i * 97) % len(words)
        size = tokens // 2
        while True:
            text = " ".join((words * 2)[start : start + size])
            if tokenizer.token_count([text])[0] >= tokens - 2 or size > 4 * tokens:
                break
            size += 2  # small steps: a text past the model's max length would be refused (413)
        out.append(text)
    return out


class Served:
    """`fastelectra serve` from `src` on a free loopback port, with its pid for RSS figures."""

    def __init__(self, bundle: Path, src: Path, extra: list[str]) -> None:
        self.bundle, self.src, self.extra = bundle, src, extra

    def __enter__(self) -> Served:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="fastelectra-fairness-", suffix=".log")
        command = [sys.executable, "-m", "fastelectra.cli", "serve", str(self.bundle.resolve())]
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        self.process = subprocess.Popen(
            [*command, "--port", str(port), *self.extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.src,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text())
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server not ready")

    def memory_mib(self, field: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError(f"no {field}")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def one_text(http: httpx.AsyncClient, text: str) -> float:
    started = time.perf_counter()
    response = await http.post(
        "/v1/embeddings", json={"input": [text], "encoding_format": "base64"}
    )
    response.raise_for_status()
    return time.perf_counter() - started


async def large_request(http: httpx.AsyncClient, texts: list[str]) -> float:
    started = time.perf_counter()
    body = {"input": texts, "encoding_format": "base64"}
    (await http.post("/v1/embeddings", json=body, timeout=600)).raise_for_status()
    return time.perf_counter() - started


async def alone(srv: Served, large: list[str]) -> dict[str, object]:
    idle = srv.memory_mib("VmRSS")
    async with httpx.AsyncClient(base_url=srv.url, timeout=600) as http:
        big = asyncio.ensure_future(large_request(http, large))
        await asyncio.sleep(1.0)
        waits = []
        while not big.done():
            waits.append(await one_text(http, "a short question about the weather"))
        big_seconds = await big
    await asyncio.sleep(3.0)
    ms = np.array(waits) * 1000
    return {
        "large_request_s": round(big_seconds, 2),
        "one_text_requests": len(waits),
        "one_text_ms": {"p50": round(float(np.median(ms)), 1), "max": round(float(ms.max()), 1)},
        "server_rss_mib": {
            "idle_before": idle,
            "peak": srv.memory_mib("VmHWM"),
            "after_3s": srv.memory_mib("VmRSS"),
        },
    }


async def load(
    srv: Served, texts: list[str], large: list[str], args: argparse.Namespace
) -> dict[str, object]:
    limits = httpx.Limits(max_connections=args.clients + args.large_clients)
    async with httpx.AsyncClient(base_url=srv.url, timeout=600, limits=limits) as http:
        return {
            "without_large": await load_round(http, texts, large, args, large_clients=0),
            "with_large": await load_round(http, texts, large, args, args.large_clients),
        }


async def load_round(
    http: httpx.AsyncClient,
    texts: list[str],
    large: list[str],
    args: argparse.Namespace,
    large_clients: int,
) -> dict[str, object]:
    stop_at = time.perf_counter() + args.duration
    small: list[float] = []
    big: list[float] = []

    async def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.perf_counter() < stop_at:
            small.append(await one_text(http, texts[rng.integers(len(texts))]))

    async def large_client() -> None:
        while time.perf_counter() < stop_at:
            big.append(await large_request(http, large))

    jobs = [client(seed) for seed in range(args.clients)]
    jobs += [large_client() for _ in range(large_clients)]
    await asyncio.gather(*jobs)
    ms = np.array(small) * 1000
    return {
        "one_text_requests": len(small),
        "one_text_per_s": round(len(small) / args.duration, 1),
        "one_text_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
        },
        "large_requests": len(big),
        "large_request_s": [round(s, 2) for s in big],
    }


if __name__ == "__main__":
    sys.exit(main())
