"""One text file, read one way: every command that takes texts sees the same lines.

`--verify-texts`, `--calibration-texts`, `embed --input` and Ray Data's text input all go
through `fastelectra.runtime.lines`. Each reader is driven through the code its command runs
(not by calling `lines` directly), on a file holding what other readers split or drop:
U+2028, U+0085, a form feed, a lone CR, an empty line, CRLF, a pair, a BOM, no final newline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_runtime import write_synthetic_bundle

from fastelectra.calibration.feeds import read_calibration_texts
from fastelectra.cli import main
from fastelectra.convert.build import build
from fastelectra.errors import FastElectraError
from fastelectra.runtime.lines import Text, TextFileError, is_blank, split_pair
from fastelectra.scale.ray_data import read_text_blocks

LINES = [
    "plain text",
    "line\u2028separator",  # ends in CRLF below
    "",
    "form\x0cfeed",
    "a question\tits paired passage",
    "lone\rreturn",
    "next\x85line",
    "   ",  # blank, not empty
    "last line without a newline",
]
FILE = b"\xef\xbb\xbf" + "\n".join(LINES[:2]).encode() + b"\r\n" + "\n".join(LINES[2:]).encode()
PAIRS: list[Text] = [
    ("plain text", None),
    ("line\u2028separator", None),
    ("form\x0cfeed", None),
    ("a question", "its paired passage"),
    ("lone\rreturn", None),
    ("next\x85line", None),
    ("last line without a newline", None),
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundles") / "synthetic")


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_bytes(FILE)
    return path


class _Read(Exception):
    """Stops `build` once it has the verification texts, before it needs TensorFlow."""


def verify_texts_seen(monkeypatch, tmp_path: Path, path: Path) -> list[Text]:
    import fastelectra.convert.tf_stage as tf_stage

    seen: list[Text] = []

    def recording(_source, _work, texts, **_options):
        seen.extend(texts)
        raise _Read

    monkeypatch.setattr(tf_stage, "run_tensorflow_stage", recording)
    with pytest.raises(_Read):
        build("any-source", tmp_path / "bundle", verify_texts=path, progress=None)
    return seen


def embed_texts_seen(synthetic: Path, path: Path, out: Path) -> list[str]:
    assert main(["embed", str(synthetic), "-i", str(path), "-o", str(out), "--include-text"]) == 0
    return [json.loads(line)["text"] for line in out.read_bytes().decode("utf-8").split("\n")[:-1]]


def ray_texts_seen(path: Path) -> list[str]:
    blocks = read_text_blocks(path, "text", rows_per_block=3)  # several blocks
    return [text for block in blocks for text in block.column("text").to_pylist()]


def test_every_reader_sees_the_same_texts(monkeypatch, synthetic, text_file, tmp_path):
    embedded = embed_texts_seen(synthetic, text_file, tmp_path / "out.jsonl")
    ray = ray_texts_seen(text_file)
    verified = verify_texts_seen(monkeypatch, tmp_path, text_file)
    calibrated = read_calibration_texts(text_file)

    # Row readers keep every line (line i is row i); text readers skip blank lines and split
    # pairs at the TAB. Otherwise they agree on every character.
    assert embedded == ray == LINES
    assert verified == calibrated == PAIRS
    assert [split_pair(t, i, "") for i, t in enumerate(embedded) if not is_blank(t)] == PAIRS


def test_every_reader_names_the_line_that_is_not_utf8(monkeypatch, synthetic, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\r\n\n\xff broken\n")
    where = f"{bad}: line 3 is not valid UTF-8"
    for read in (
        lambda: verify_texts_seen(monkeypatch, tmp_path, bad),
        lambda: read_calibration_texts(bad),
        lambda: ray_texts_seen(bad),
    ):
        with pytest.raises(TextFileError, match=where):
            read()
    assert main(["embed", str(synthetic), "-i", str(bad), "-o", str(tmp_path / "v.npy")]) == 1
    assert where in capsys.readouterr().err


def test_pair_readers_reject_three_texts_on_a_line(tmp_path):
    path = tmp_path / "tabs.txt"
    path.write_text("one\ntwo\tthree\tfour\n")
    with pytest.raises(TextFileError, match="line 2 has 2 tabs") as caught:
        read_calibration_texts(path)
    # A FastElectraError (a one-line CLI message) that `except ValueError` still catches.
    assert isinstance(caught.value, FastElectraError) and isinstance(caught.value, ValueError)


def test_a_file_of_blank_lines_has_no_texts(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \r\n\x0c\n")
    with pytest.raises(TextFileError, match="no texts"):
        read_calibration_texts(path)
