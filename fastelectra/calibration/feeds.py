"""Calibration feeds: text tokenized exactly as serving traffic is, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from fastelectra.errors import InputError
from fastelectra.runtime.tokenizer import WordPieceTokenizer, pad_batch


def default_calibration_texts() -> list[str]:
    """The calibration set shipped with the package (search-like queries and passages)."""
    data = resources.files("fastelectra") / "data" / "calibration.txt"
    return [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_calibration_texts(path: str | Path | None) -> list[str]:
    if path is None:
        return default_calibration_texts()
    from fastelectra.convert.verify import read_texts

    # A pair line calibrates as its first text joined with the second, as a pair would run.
    return [a if b is None else f"{a}\t{b}" for a, b in read_texts(path)]


def split_pair(text: str) -> tuple[str, str | None]:
    """A calibration line as `(text, pair)`: a TAB separates the two texts of a pair."""
    first, tab, second = text.partition("\t")
    return first, second if tab else None


class TextCalibrationReader:
    """An onnxruntime `CalibrationDataReader` over text: one right-padded batch per call.

    Batches keep the file's order and lengths (padded only to their own longest), so the
    ranges seen are those of real traffic rather than of one padded shape.
    """

    def __init__(
        self,
        tokenizer_path: Path,
        texts: list[str],
        batch_size: int = 8,
        max_length: int = 512,
    ):
        if not texts:
            raise InputError("no calibration texts")
        self.tokenizer = WordPieceTokenizer.from_file(tokenizer_path)
        self.texts = texts
        self.batch_size = batch_size
        self.max_length = max_length
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self._range = (0, len(self))

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start_index, end_index) until the next call.

        onnxruntime's `CalibStridedMinMax` option calls this to calibrate a few batches at a
        time, which bounds memory and keeps each collected set one shape.
        """
        self._range = (start_index, min(end_index, len(self)))
        self._batches = None

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        first, last = self._range
        for batch in range(first, last):
            start = batch * self.batch_size
            chunk = self.texts[start : start + self.batch_size]
            encodings = []
            for first, second in map(split_pair, chunk):
                pairs = None if second is None else [second]
                encodings += self.tokenizer.encode([first], pairs=pairs, max_length=self.max_length)
            ids, mask, segments = pad_batch(encodings)
            yield {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None
