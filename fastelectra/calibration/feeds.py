"""Calibration feeds: text tokenized exactly as serving traffic is, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from fastelectra.errors import InputError
from fastelectra.runtime.lines import Text, read_texts, split_pair
from fastelectra.runtime.tokenizer import Encoding, WordPieceTokenizer, encode_texts, pad_batch


def default_calibration_texts() -> list[Text]:
    """The calibration set shipped with the package (search-like queries and passages)."""
    data = resources.files("fastelectra") / "data" / "calibration.txt"
    return read_texts(data, "built-in calibration.txt")


def calibration_encodings(
    tokenizer_path: Path, path: str | Path | None, max_length: int
) -> list[Encoding]:
    """The calibration corpus (`read_calibration_texts`) read and tokenized, once."""
    tokenizer = WordPieceTokenizer.from_file(tokenizer_path)
    return encode_texts(tokenizer, read_calibration_texts(path), max_length)


def read_calibration_texts(path: str | Path | None) -> list[Text]:
    """The texts and pairs of `path` (`fastelectra.runtime.lines`), or the built-in set."""
    return default_calibration_texts() if path is None else read_texts(path)


class TextCalibrationReader:
    """An onnxruntime `CalibrationDataReader` over text: one right-padded batch per call.

    Batches keep the file's order and lengths (padded only to their own longest), so the
    ranges seen are those of real traffic rather than of one padded shape. A batch holds at
    most `batch_size` texts and, past its first text, at most `max_tokens` padded tokens:
    calibration memory grows with the tokens of a batch, far faster than one layer's
    activations would (onnxruntime's calibration session, whose graph has every calibrated
    tensor as an output, used ~4 MB per padded token on ELECTRA-large: 8 texts of ~200 tokens
    took 2.5 GB beside the weights).
    """

    def __init__(
        self,
        tokenizer_path: Path,
        texts: Sequence[Text | str],
        batch_size: int = 8,
        max_length: int = 512,
        max_tokens: int | None = None,
    ):
        """`texts`: texts and pairs as `read_calibration_texts` gives them, or lines of a
        calibration file (a TAB in one separates a pair, as when read from the file)."""
        if not texts:
            raise InputError("no calibration texts")
        pairs = [
            split_pair(text, number, "calibration texts") if isinstance(text, str) else text
            for number, text in enumerate(texts, 1)
        ]
        tokenizer = WordPieceTokenizer.from_file(tokenizer_path)
        self._set(encode_texts(tokenizer, pairs, max_length), batch_size, max_tokens)

    @classmethod
    def from_encodings(
        cls, encodings: Sequence[Encoding], batch_size: int = 8, max_tokens: int | None = None
    ) -> TextCalibrationReader:
        """A reader over texts tokenized once already (`convert.precision` tokenizes the
        corpus once for the smoothing, the ranking, the search and the calibration)."""
        if not encodings:
            raise InputError("no calibration texts")
        reader = cls.__new__(cls)
        reader._set(encodings, batch_size, max_tokens)
        return reader

    def _set(self, encodings: Sequence[Encoding], batch_size: int, max_tokens: int | None) -> None:
        self.encodings = list(encodings)
        self.batch_size = batch_size
        self.spans = batch_spans([len(e.ids) for e in self.encodings], batch_size, max_tokens)
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self._range = (0, len(self))

    def __len__(self) -> int:
        return len(self.spans)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start_index, end_index) until the next call.

        `fastelectra.calibration.ranges.calibrate` calls this to calibrate a few batches at a
        time, which bounds memory and keeps each collected set one shape.
        """
        self._range = (start_index, min(end_index, len(self)))
        self._batches = None

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        first, last = self._range
        for start, end in self.spans[first:last]:
            ids, mask, segments = pad_batch(self.encodings[start:end])
            yield {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def batch_spans(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Consecutive [start, end) runs of texts: at most `batch_size` each and, unless a run is a
    single text, at most `max_tokens` once padded to its longest."""
    spans: list[tuple[int, int]] = []
    start, longest = 0, 0
    for i, length in enumerate(lengths):
        grown = max(longest, length)
        size = i - start + 1
        full = size > batch_size or (max_tokens is not None and grown * size > max_tokens)
        if full and i > start:
            spans.append((start, i))
            start, grown = i, length
        longest = grown
    if lengths:
        spans.append((start, len(lengths)))
    return spans
