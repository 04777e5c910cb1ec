"""`fastelectra embed`: the command's output is `Encoder.embed` of the input's lines, streamed.

Most tests run the command in-process (`fastelectra.cli.main`) on the synthetic bundle of
test_runtime.py; those that need a real process (stdin/stdout, imports, streaming) start one.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from test_runtime import sentence, write_synthetic_bundle

from fastelectra.bundle import MODEL_FILE
from fastelectra.cli import main
from fastelectra.runtime import Encoder
from fastelectra.runtime.writers import NpyWriter, default_mode
from fastelectra.scale.cli import RAY_MODULE

ROOT = Path(__file__).resolve().parents[1]
# The `fastelectra` console script, run by this interpreter.
CLI = [sys.executable, "-c", "import sys; from fastelectra.cli import main; sys.exit(main())"]
TEXTS = [
    sentence(n, seed) for seed, n in enumerate([1, 3, 9, 2, 15, 5, 40, 7, 1, 12, 4, 30, 6])
] + ["", "café naïve ☕ — ünïcödé", "   ", "a\u2028b (U+2028 is no line break here)"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundles") / "synthetic")


@pytest.fixture(
    scope="module", params=["synthetic", pytest.param("tiny_bundle", marks=pytest.mark.slow)]
)
def bundle(request) -> Path:
    return Path(request.getfixturevalue(request.param))


def write_lines(path: Path, texts: list[str]) -> Path:
    path.write_bytes("".join(t + "\n" for t in texts).encode("utf-8"))
    return path


def expected(bundle: Path, texts: list[str], max_length: int | None = None, **options):
    encoder = Encoder.load(bundle, threads=1, max_length=max_length)
    return encoder.embed(texts, **options)


def embed(*args: str | Path) -> int:
    return main(["embed", *map(str, args), "--threads", "1"])


def read_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".partial")]


# -- output equals the API -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        ([], {}),
        (["--pooling", "cls", "--normalize"], {"pooling": "cls", "normalize": True}),
        (["--pooling", "mean"], {"pooling": "mean"}),
        (["--pooling", "mean", "--normalize"], {"pooling": "mean", "normalize": True}),
    ],
)
def test_npy_output_equals_encoder_embed(bundle, tmp_path, flags, options):
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "vectors.npy"
    assert embed(bundle, "--input", source, "--output", out, *flags) == 0
    vectors = np.load(out)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected(bundle, TEXTS, **options), atol=1e-6, rtol=0)
    assert os.stat(out).st_mode & 0o777 == default_mode()  # not mkstemp's private 0600
    assert leftovers(tmp_path) == []


def test_jsonl_output_with_texts(bundle, tmp_path):
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "vectors.jsonl"
    assert embed(bundle, "-i", source, "-o", out, "--pooling", "mean", "--include-text") == 0
    records = read_jsonl(out.read_bytes())
    assert [r["index"] for r in records] == list(range(len(TEXTS)))
    assert [r["text"] for r in records] == TEXTS
    got = np.array([r["embedding"] for r in records], np.float32)
    np.testing.assert_allclose(got, expected(bundle, TEXTS, pooling="mean"), atol=1e-6, rtol=0)


def test_chunked_long_texts(synthetic, tmp_path):
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "vectors.npy"
    flags = ["--max-length", "8", "--long", "chunk", "--pooling", "mean", "--chunk-lines", "4"]
    assert embed(synthetic, "-i", source, "-o", out, *flags) == 0
    want = expected(synthetic, TEXTS, max_length=8, long="chunk", pooling="mean")
    np.testing.assert_allclose(np.load(out), want, atol=1e-6, rtol=0)


def test_stdin_to_stdout_jsonl(synthetic):
    data = "".join(t + "\n" for t in TEXTS).encode("utf-8")
    done = subprocess.run(
        [*CLI, "embed", str(synthetic), "--threads", "1"],
        input=data,
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    records = read_jsonl(done.stdout)
    assert [r["index"] for r in records] == list(range(len(TEXTS)))
    assert "text" not in records[0]
    got = np.array([r["embedding"] for r in records], np.float32)
    np.testing.assert_allclose(got, expected(synthetic, TEXTS), atol=1e-6, rtol=0)
    assert b"\r" not in done.stderr  # no progress bar when stderr is not a terminal


def test_embed_never_imports_tensorflow(synthetic, tmp_path):
    source = write_lines(tmp_path / "texts.txt", TEXTS[:3])
    wrapper = (
        "import sys; from fastelectra.cli import main; rc = main(sys.argv[1:]); "
        "heavy = [m for m in ('tensorflow', 'tf_keras', 'tensorflow_hub', 'tf2onnx') "
        "if m in sys.modules]; print('heavy:', heavy, file=sys.stderr); sys.exit(rc or len(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, "embed", str(synthetic), "-i", str(source)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stderr
    assert len(done.stdout.splitlines()) == 3


# -- streaming -----------------------------------------------------------------------------


def test_chunks_cross_boundaries(synthetic, tmp_path, monkeypatch):
    sizes = []
    real = Encoder.embed

    @functools.wraps(real)  # the command reads embed()'s defaults from its signature
    def spy(self, texts, *args, **kwargs):
        sizes.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Encoder, "embed", spy)
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    want = expected(synthetic, TEXTS, pooling="mean")
    sizes.clear()
    for name in ("vectors.npy", "vectors.jsonl"):
        out = tmp_path / name
        flags = ["--pooling", "mean", "--chunk-lines", "5"]
        assert embed(synthetic, "-i", source, "-o", out, *flags) == 0
        got = (
            np.load(out)
            if name.endswith(".npy")
            else np.array([r["embedding"] for r in read_jsonl(out.read_bytes())], np.float32)
        )
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    n = len(TEXTS)
    assert sizes == [5] * (n // 5) + [n % 5] + [5] * (n // 5) + [n % 5]


def test_each_chunk_is_written_before_the_next_is_read(synthetic):
    process = subprocess.Popen(
        [*CLI, "embed", str(synthetic), "--chunk-lines", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        bufsize=0,  # unbuffered: select() must see every byte that Python has not yet read
    )
    try:
        process.stdin.write(b"first\nsecond\n")
        process.stdin.flush()
        # stdin stays open: the command can only answer if it writes a chunk before reading on.
        lines = [readline_within(process.stdout, 60) for _ in range(2)]
        assert [json.loads(line)["index"] for line in lines] == [0, 1]
        process.stdin.write(b"third\n")
        process.stdin.close()
        assert json.loads(readline_within(process.stdout, 60))["index"] == 2
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.wait()


def readline_within(stream, seconds: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, f"no output within {seconds} s"
    return stream.readline()


# -- input handling ------------------------------------------------------------------------


def test_line_endings_bom_and_empty_lines(synthetic, tmp_path):
    # CRLF endings, a BOM, an empty line, a form feed inside a text, no final newline.
    source = tmp_path / "texts.txt"
    source.write_bytes(b"\xef\xbb\xbfhello there\r\n\r\nform\x0cfeed\nlast line")
    out = tmp_path / "vectors.npy"
    assert embed(synthetic, "-i", source, "-o", out) == 0
    want = expected(synthetic, ["hello there", "", "form\x0cfeed", "last line"])
    np.testing.assert_allclose(np.load(out), want, atol=1e-6, rtol=0)


def test_empty_input(synthetic, tmp_path):
    source = tmp_path / "empty.txt"
    source.write_bytes(b"")
    assert embed(synthetic, "-i", source, "-o", tmp_path / "v.npy") == 0
    assert np.load(tmp_path / "v.npy").shape == (0, Encoder.load(synthetic).hidden)
    assert embed(synthetic, "-i", source, "-o", tmp_path / "v.jsonl") == 0
    assert (tmp_path / "v.jsonl").read_bytes() == b""


BAD_UTF8 = b"one\ntwo\nthree\nfour\nfi\xffve\nsix\n"


@pytest.mark.parametrize("name", ["vectors.npy", "vectors.jsonl"])
def test_invalid_utf8_leaves_outputs_untouched(synthetic, tmp_path, capsys, name):
    source = tmp_path / "texts.txt"
    source.write_bytes(BAD_UTF8)
    # Line 5 is in the third chunk: two chunks were already written to the temporary file.
    new = tmp_path / name
    assert embed(synthetic, "-i", source, "-o", new, "--chunk-lines", "2") == 1
    err = capsys.readouterr().err
    assert "line 5 is not valid UTF-8" in err and "--errors replace" in err
    assert not new.exists()

    existing = tmp_path / f"existing-{name}"
    assert (
        embed(synthetic, "-i", write_lines(tmp_path / "good.txt", TEXTS[:3]), "-o", existing) == 0
    )
    earlier = existing.read_bytes()
    assert embed(synthetic, "-i", source, "-o", existing, "--chunk-lines", "2") == 1
    assert existing.read_bytes() == earlier
    assert leftovers(tmp_path) == []


def test_invalid_utf8_on_stdin_exits_nonzero(synthetic):
    done = subprocess.run(
        [*CLI, "embed", str(synthetic)],
        input=BAD_UTF8,
        capture_output=True,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert b"<stdin>: line 5 is not valid UTF-8" in done.stderr


def test_errors_replace(synthetic, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_bytes(BAD_UTF8)
    out = tmp_path / "vectors.jsonl"
    assert embed(synthetic, "-i", source, "-o", out, "--errors", "replace", "--include-text") == 0
    records = read_jsonl(out.read_bytes())
    assert records[4]["text"] == "fi\ufffdve"
    texts = BAD_UTF8.decode("utf-8", "replace").splitlines()
    got = np.array([r["embedding"] for r in records], np.float32)
    np.testing.assert_allclose(got, expected(synthetic, texts), atol=1e-6, rtol=0)


def test_truncation_is_summarised_once(synthetic, tmp_path, capsys):
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "vectors.npy"
    assert embed(synthetic, "-i", source, "-o", out, "--max-length", "8", "--chunk-lines", "3") == 0
    with pytest.warns(UserWarning, match="truncated"):
        cut = int(Encoder.load(synthetic, max_length=8).encode(TEXTS).truncated.sum())
    assert cut > 3  # several chunks each had cut texts
    err = capsys.readouterr().err
    assert err.count("were truncated") == 1
    assert f"{cut} of {len(TEXTS)} texts were longer than max_length=8" in err

    assert embed(synthetic, "-i", source, "-o", out, "--max-length", "8", "--long", "error") == 1
    err = capsys.readouterr().err
    assert "lines 1-" in err and "longer than max_length=8" in err


# -- progress ------------------------------------------------------------------------------


def test_progress_bar_only_on_a_terminal(synthetic, tmp_path, capsys, monkeypatch):
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "vectors.npy"
    assert embed(synthetic, "-i", source, "-o", out) == 0
    assert f"{len(TEXTS)}/{len(TEXTS)}" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert embed(synthetic, "-i", source, "-o", out, "--chunk-lines", "4") == 0
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err  # total known from the file
    assert embed(synthetic, "-i", source, "-o", out, "--quiet") == 0
    assert capsys.readouterr().err == ""


# -- bundles and options -------------------------------------------------------------------


def test_missing_and_damaged_bundles(synthetic, tmp_path, capsys):
    source = write_lines(tmp_path / "texts.txt", TEXTS[:2])
    out = tmp_path / "vectors.npy"
    assert embed(tmp_path / "no-such-bundle", "-i", source, "-o", out) == 1
    assert "no such bundle directory" in capsys.readouterr().err

    damaged = shutil.copytree(synthetic, tmp_path / "damaged")
    model = damaged / MODEL_FILE
    model.write_bytes(model.read_bytes()[:1000])
    assert embed(damaged, "-i", source, "-o", out) == 1
    assert "sha256 mismatch" in capsys.readouterr().err

    assert embed(tmp_path, "-i", source, "-o", out) == 1  # a directory but no bundle
    assert "not a fastelectra bundle" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_input_and_output_directory(synthetic, tmp_path, capsys):
    assert embed(synthetic, "-i", tmp_path / "missing.txt") == 1
    assert "missing.txt: cannot read input" in capsys.readouterr().err
    source = write_lines(tmp_path / "texts.txt", TEXTS[:2])
    assert embed(synthetic, "-i", source, "-o", tmp_path / "no-dir" / "v.npy") == 1
    assert "cannot write output" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-o", "v.csv"], "unknown format '.csv'"),
        (["-o", "v"], "unknown format '(no extension)'"),
        (["-o", "v.npy", "--include-text"], "--include-text needs a .jsonl output"),
        (["-o", "v.jsonl", "--replicas", "2"], "--replicas needs --ray"),
        (["--ray", "-o", "v.parquet"], "--ray reads a file"),
        (["--ray", "-i", "texts.txt", "-o", "v.npy"], "--ray writes Parquet"),
        (["--ray", "-i", "texts.txt"], "--ray writes Parquet"),
        (
            ["--ray", "-i", "texts.txt", "-o", "v.parquet", "--threads", "2", "--long", "chunk"],
            "--ray does not support --threads, --long",
        ),
    ],
)
def test_usage_errors(synthetic, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "texts.txt", TEXTS[:2])
    assert main(["embed", str(synthetic), *flags]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]


@pytest.mark.parametrize(
    "flags", [["--pooling", "max"], ["--batch-size", "0"], ["--providers", "rocm"], ["--long", "x"]]
)
def test_bad_option_values(synthetic, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(synthetic), *flags])
    assert exit_info.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_ray_passes_options_to_embed_corpus(synthetic, tmp_path, monkeypatch, capsys):
    calls = []

    def embed_corpus(bundle, input_path, output_path, **options):
        calls.append((bundle, input_path, output_path, options))
        return 17

    fake = types.ModuleType(RAY_MODULE)
    fake.embed_corpus = embed_corpus
    monkeypatch.setitem(sys.modules, RAY_MODULE, fake)
    source = write_lines(tmp_path / "texts.txt", TEXTS[:2])
    out = tmp_path / "v.parquet"
    flags = ["--ray", "--pooling", "mean", "--normalize", "--replicas", "3", "--batch-size", "8"]
    assert main(["embed", str(synthetic), "-i", str(source), "-o", str(out), *flags]) == 0
    options = {"pooling": "mean", "normalize": True, "batch_size": 8, "replicas": 3}
    assert calls == [(str(synthetic), str(source), str(out), options)]
    assert "wrote 17 embeddings" in capsys.readouterr().err

    # Unset options keep the CLI's pooling/normalize and Ray's own throughput defaults.
    calls.clear()
    assert main(["embed", str(synthetic), "-i", str(source), "-o", str(out), "--ray", "-q"]) == 0
    assert calls[0][3] == {"pooling": None, "normalize": False}  # None: the bundle's


def test_ray_without_the_scale_module(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, RAY_MODULE, None)  # makes the import fail
    source = write_lines(tmp_path / "texts.txt", TEXTS[:2])
    out = tmp_path / "v.parquet"
    assert main(["embed", str(synthetic), "-i", str(source), "-o", str(out), "--ray"]) == 1
    assert f"no {RAY_MODULE}" in capsys.readouterr().err


def test_npy_header_keeps_its_size_for_huge_row_counts(tmp_path):
    path = tmp_path / "huge.npy"
    with open(path, "w+b") as stream:
        writer = NpyWriter(stream, hidden=1024)
        writer.rows = 10**15  # the header is all that changes with the row count
        writer.finish()
        stream.seek(0)
        assert np.lib.format.read_magic(stream) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        assert stream.tell() == writer.header_size
    assert (shape, fortran, dtype) == ((10**15, 1024), False, np.dtype("<f4"))


@pytest.mark.slow
def test_ray_end_to_end(synthetic, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    pq = pytest.importorskip("pyarrow.parquet")
    # Ray's text reader (str.splitlines) skips blank lines and splits at U+2028: unlike the
    # local command, row i is line i only for texts without either.
    texts = [t for t in TEXTS if t.strip() and "\u2028" not in t]
    source = write_lines(tmp_path / "texts.txt", texts)
    out = tmp_path / "vectors.parquet"
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from the test
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        flags = ["--ray", "--pooling", "mean", "--normalize", "--batch-size", "4", "-q"]
        assert main(["embed", str(synthetic), "-i", str(source), "-o", str(out), *flags]) == 0
    finally:
        ray.shutdown()
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == texts
    got = np.array(table.column("embedding").to_pylist(), np.float32)
    want = expected(synthetic, texts, pooling="mean", normalize=True)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
