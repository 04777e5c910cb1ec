"""Sanity checks for the text corpora shipped in ``fastelectra/data``.

The corpora are used to verify converted models against TensorFlow
(``verify_texts.txt``), to calibrate INT8 quantisation (``calibration.txt``)
and to benchmark realistic embedding traffic (``traffic_mix.txt``).  Format:
one text per line, UTF-8, no empty lines, and a single TAB separating the two
texts of a sentence pair.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1] / "fastelectra" / "data"

# file name -> minimum number of lines
MIN_LINES = {
    "verify_texts.txt": 240,
    "calibration.txt": 400,
    "traffic_mix.txt": 950,
}
MAX_LINES = {
    "calibration.txt": 600,
    "traffic_mix.txt": 1100,
}


def _read_lines(name: str) -> list[str]:
    raw = (DATA_DIR / name).read_bytes()
    text = raw.decode("utf-8")  # raises UnicodeDecodeError if not valid UTF-8
    assert not text.startswith("\ufeff"), f"{name} starts with a byte-order mark"
    assert "\r" not in text, f"{name} contains carriage returns"
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the trailing newline
    return lines


def _n_words(line: str) -> int:
    return len(line.split())


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_file_exists(name: str) -> None:
    assert (DATA_DIR / name).is_file(), f"missing {DATA_DIR / name}"


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_valid_utf8_without_empty_lines(name: str) -> None:
    lines = _read_lines(name)
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    assert not empty, f"{name}: empty lines at {empty[:10]}"
    padded = [i + 1 for i, line in enumerate(lines) if line != line.strip()]
    assert not padded, f"{name}: leading/trailing whitespace at {padded[:10]}"


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_line_counts(name: str) -> None:
    n = len(_read_lines(name))
    assert n >= MIN_LINES[name], f"{name}: {n} lines < {MIN_LINES[name]}"
    if name in MAX_LINES:
        assert n <= MAX_LINES[name], f"{name}: {n} lines > {MAX_LINES[name]}"


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_pairs_have_one_tab_and_two_sides(name: str) -> None:
    for i, line in enumerate(_read_lines(name), start=1):
        if "\t" not in line:
            continue
        parts = line.split("\t")
        assert len(parts) == 2, f"{name}:{i}: {len(parts) - 1} TABs"
        first, second = parts
        assert first.strip() and second.strip(), f"{name}:{i}: empty pair side"


def test_verify_texts_covers_lengths() -> None:
    lines = _read_lines("verify_texts.txt")
    long_lines = [line for line in lines if _n_words(line) >= 450]
    short_lines = [line for line in lines if _n_words(line) <= 3]
    pairs = [line for line in lines if "\t" in line]
    assert len(long_lines) >= 12, f"only {len(long_lines)} lines of >= 450 words"
    assert len(short_lines) >= 20, f"only {len(short_lines)} lines of <= 3 words"
    assert len(pairs) >= 50, f"only {len(pairs)} sentence pairs"
    assert any(not line.isascii() for line in lines), "no non-ASCII text"


def test_calibration_pairs_are_a_minority() -> None:
    lines = _read_lines("calibration.txt")
    pairs = [line for line in lines if "\t" in line]
    assert len(pairs) < 0.1 * len(lines)


def test_traffic_mix_length_profile() -> None:
    lines = _read_lines("traffic_mix.txt")
    n = len(lines)
    queries = sum(_n_words(line) <= 12 for line in lines)
    passages = sum(_n_words(line) >= 100 for line in lines)
    assert 0.6 * n <= queries <= 0.8 * n
    assert 0.05 * n <= passages <= 0.15 * n
    assert len(set(lines)) >= 0.95 * n, "traffic lines should be mostly distinct"


@pytest.mark.parametrize("name", ["verify_texts.txt", "calibration.txt"])
def test_no_duplicate_lines(name: str) -> None:
    lines = _read_lines(name)
    dupes = sorted(line for line, count in Counter(lines).items() if count > 1)
    assert not dupes, f"{name}: duplicated lines {dupes[:5]}"


def test_verify_and_calibration_do_not_overlap() -> None:
    verify = set(_read_lines("verify_texts.txt"))
    calibration = set(_read_lines("calibration.txt"))
    overlap = verify & calibration
    assert not overlap, f"shared lines: {sorted(overlap)[:5]}"
