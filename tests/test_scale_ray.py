"""Ray Data (`embed_corpus`) and Ray Serve (`build_app`) on a local Ray started by this module.

Both must give exactly what `Encoder.embed` gives, row for row and in input order. Ray gets
2 CPUs and a small object store (the test machine is shared); the Ray Data tests run before
the Serve test, whose replica holds a CPU until the test shuts Serve down.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from pydantic import ValidationError
from ray import serve

from fastelectra.runtime import Encoder
from fastelectra.scale import ray_data
from fastelectra.scale.ray_data import embed_corpus
from fastelectra.scale.ray_serve import AppArgs, app_builder, build_app

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "wizards", "hex")
TIMEOUT_S = 120


def corpus(n: int, seed: int = 0) -> list[str]:
    """Texts of 1 to 60 words, so that length-sorted batching reorders them."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 60)))) for _ in range(n)]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from the test
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def encoder(tiny_bundle) -> Encoder:
    return Encoder.load(tiny_bundle)


def read_embeddings(path: Path) -> tuple[pa.Table, np.ndarray]:
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    return table, np.array(table.column("embedding").to_pylist(), dtype=np.float32)


def test_text_file_in_input_order_over_two_replicas(local_ray, tiny_bundle, encoder, tmp_path):
    # Slow blocks first, then many fast ones, so that one actor's fast blocks can overtake
    # the other's slow ones: Ray Data reorders them unless told to preserve order (it did in
    # about 1 run in 3 of this shape; the next test checks the setting itself).
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, 700)) for _ in range(24)] + corpus(300)
    texts[30] = "naïve café – 東京"  # non-ASCII survives the round trip
    texts[31] = ""  # an empty line is an empty text: line i stays row i
    texts[32] = "one text\u2028despite a line separator\x0cand a form feed"
    lines = [text.encode() for text in texts]
    lines[33] += b"\r"  # a CRLF line ending is not part of the text
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # with a byte-order mark

    rows = embed_corpus(
        str(tiny_bundle),
        str(source),
        str(tmp_path / "out.parquet"),
        batch_size=6,
        replicas=2,
        cpus_per_replica=0.5,  # leaves a CPU for the driver's and Ray Data's own tasks
    )

    assert rows == len(texts)
    table, got = read_embeddings(tmp_path / "out.parquet")
    assert table.column_names == ["text", "embedding"]
    assert table.column("text").to_pylist() == texts
    with pytest.warns(UserWarning, match="24 of 324 texts .* truncated"):
        expected = encoder.embed(texts, pooling="mean", normalize=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_order_is_preserved_while_the_output_streams(local_ray, tiny_bundle, tmp_path, monkeypatch):
    """Ray Data yields blocks as they finish unless `preserve_order` is on while the output
    is consumed; it is switched back afterwards (other Ray Data users keep their setting)."""
    options = ray.data.DataContext.get_current().execution_options
    seen: list[bool] = []
    write = ray_data.write_parquet

    def recording_write(*args, **kwargs):
        seen.append(options.preserve_order)
        return write(*args, **kwargs)

    monkeypatch.setattr(ray_data, "write_parquet", recording_write)
    before = options.preserve_order
    (tmp_path / "in.txt").write_text("one\ntwo\n", encoding="utf-8")

    embed_corpus(str(tiny_bundle), str(tmp_path / "in.txt"), str(tmp_path / "out.parquet"))

    assert seen == [True]
    assert options.preserve_order == before


def test_parquet_column_and_options(local_ray, tiny_bundle, encoder, tmp_path):
    texts = corpus(20, seed=1)
    ids = list(range(100, 120))
    pq.write_table(pa.table({"id": ids, "body": texts}), tmp_path / "in.parquet")

    rows = embed_corpus(
        str(tiny_bundle),
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out" / "vectors.parquet"),
        pooling="cls",
        normalize=False,
        batch_size=8,
        text_column="body",
    )

    assert rows == len(texts)
    table, got = read_embeddings(tmp_path / "out" / "vectors.parquet")
    assert table.column("id").to_pylist() == ids  # other columns come along, in order
    assert table.column("body").to_pylist() == texts
    np.testing.assert_allclose(got, encoder.embed(texts, pooling="cls"), atol=1e-5)


def test_empty_corpus_writes_an_empty_table(local_ray, tiny_bundle, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")

    rows = embed_corpus(str(tiny_bundle), str(tmp_path / "empty.txt"), str(tmp_path / "e.parquet"))

    assert rows == 0
    table, _ = read_embeddings(tmp_path / "e.parquet")
    assert table.num_rows == 0 and table.column_names == ["text", "embedding"]


def test_bad_arguments_fail_before_any_work(local_ray, tiny_bundle, tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="no column 'text'"):
        embed_corpus(str(tiny_bundle), str(tmp_path / "in.parquet"), str(out))
    with pytest.raises(FileNotFoundError):
        embed_corpus(str(tiny_bundle), str(tmp_path / "missing.txt"), str(out))
    with pytest.raises(ValueError, match="pooling"):
        embed_corpus(str(tiny_bundle), str(tmp_path / "in.parquet"), str(out), pooling="max")
    with pytest.raises(ValueError, match="replicas"):
        embed_corpus(str(tiny_bundle), str(tmp_path / "in.parquet"), str(out), replicas=0)
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        embed_corpus(str(tiny_bundle), str(tmp_path / "latin1.txt"), str(out))
    assert not out.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The same requests to `fastelectra serve` and to the Ray Serve deployment: (path, body).
SAME_TABLE: list[tuple[str, object]] = [
    ("/v1/embeddings", {"input": corpus(10, seed=2), "model": "any"}),
    ("/v1/embeddings", {"input": "one text", "encoding_format": "base64"}),
    ("/v1/embeddings", {"input": ["truncated to eight"], "dimensions": 8}),
    ("/v1/embeddings", {"input": []}),
    ("/v1/embeddings", {"input": ["a"] * 13}),
    ("/v1/embeddings", {"input": ["fox " * 600]}),
    ("/v1/embeddings", {"input": ["a" * 5001]}),
    ("/v1/embeddings", {"input": 3}),
    ("/v1/embeddings", {"input": ["x"], "dimensions": 100000}),
    ("/embed", {"inputs": ["a b c", "d"]}),
    ("/embed", {"inputs": ["fox " * 600], "truncate": True, "normalize": False}),
    ("/embed", {"inputs": []}),
    ("/embed", {"inputs": "x", "truncation_direction": "Left"}),
]
LIMIT_FLAGS = ["--max-inputs", "12", "--max-input-chars", "5000"]


def answers(base_url: str) -> list[tuple[int, object]]:
    with httpx.Client(timeout=TIMEOUT_S) as client:
        return [
            (r.status_code, r.json())
            for r in (client.post(base_url + path, json=body) for path, body in SAME_TABLE)
        ]


def assert_same(served: object, ray_served: object) -> None:
    """Equal JSON, floats within 1e-5 (two processes, the same model and code)."""
    if isinstance(served, float):
        assert ray_served == pytest.approx(served, abs=1e-5)
    elif isinstance(served, dict):
        assert isinstance(ray_served, dict) and served.keys() == ray_served.keys()
        for key in served:
            assert_same(served[key], ray_served[key])
    elif isinstance(served, list):
        assert isinstance(ray_served, list) and len(served) == len(ray_served)
        for a, b in zip(served, ray_served, strict=True):
            assert_same(a, b)
    else:
        assert served == ray_served


def test_ray_serve_answers_as_fastelectra_serve(local_ray, tiny_bundle, encoder, tmp_path):
    """One table of requests through both: the same statuses, bodies and error codes."""
    from test_serve import Server

    served = Server(tiny_bundle, tmp_path / "serve.log", *LIMIT_FLAGS)
    served.wait_ready()
    try:
        expected = answers(served.url)
    finally:
        assert served.stop() == 0, served.output()
    assert [status for status, _ in expected] == [
        200, 200, 200, 422, 413, 413, 413, 422, 422, 200, 200, 422, 422,
    ]  # fmt: skip

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        handle = serve.run(
            build_app(tiny_bundle, max_inputs=12, max_input_chars=5000),
            name="fastelectra-test",
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT_S
        while httpx.get(f"{url}/health", timeout=TIMEOUT_S).status_code != 200:
            assert time.monotonic() < deadline, "the replica never became ready"
            time.sleep(0.1)
        got = answers(url)
        for (path, body), want, have in zip(SAME_TABLE, expected, got, strict=True):
            assert have[0] == want[0], (path, body, want, have)
            assert_same(want[1], have[1])

        texts = corpus(10, seed=2)
        direct = encoder.embed(texts, pooling="mean", normalize=True)
        vectors = handle.embed.remote(texts).result(timeout_s=TIMEOUT_S)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, direct, atol=1e-5)
        # Ten one-text calls in flight at once: each gets its own vector from shared runs.
        responses = [handle.embed.remote([text]) for text in texts]
        for text_expected, response in zip(direct, responses, strict=True):
            np.testing.assert_allclose(
                response.result(timeout_s=TIMEOUT_S)[0], text_expected, atol=1e-5
            )
    finally:
        serve.shutdown()


def test_serve_run_arguments_are_validated(tiny_bundle):
    """`serve run fastelectra.scale.ray_serve:app_builder key=value ...` hands over strings."""
    args = AppArgs.model_validate(
        {"bundle": str(tiny_bundle), "replicas": "2", "normalize": "false", "pooling": "cls"}
    )
    assert (args.replicas, args.normalize, args.pooling) == (2, False, "cls")
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"bundle": str(tiny_bundle), "pooling": "max"})
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"bundle": str(tiny_bundle), "replicas": "0"})
    assert isinstance(app_builder({"bundle": str(tiny_bundle)}), serve.Application)
    with pytest.raises(ValueError, match="pooling"):
        build_app(tiny_bundle, pooling="max")
