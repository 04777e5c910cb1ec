"""Text sets for the peer and traffic runs: reading them, and comparing their embeddings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np

from fastelectra.errors import InputError
from fastelectra.runtime.lines import read_single_texts


def default_traffic_file() -> Path:
    return Path(str(resources.files("fastelectra") / "data" / "traffic_mix.txt"))


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """One text per non-blank line (`fastelectra.runtime.lines`); with `limit`, that many
    spread evenly over the file.

    Evenly spaced rather than the first N: a file's length mix need not be uniform along it
    (the packaged traffic mix holds more long passages towards its end).
    """
    texts = read_single_texts(path)
    if limit is None or limit >= len(texts):
        return texts
    if limit < 1:
        raise InputError(f"--traffic-limit must be >= 1, got {limit}")
    return [texts[i] for i in np.linspace(0, len(texts) - 1, limit).round().astype(int)]


@contextmanager
def truncation_expected() -> Iterator[None]:
    """Silence `Encoder`'s truncation warning: cutting long texts is part of the comparison
    here, and the results count the texts that were cut."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* were truncated", category=UserWarning)
        yield


def cosine_to(expected: np.ndarray, vectors: np.ndarray) -> dict[str, float]:
    """Per-text cosine of two sets of unit vectors (mean and worst)."""
    cos = np.sum(expected.astype(np.float64) * vectors.astype(np.float64), axis=1)
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6)}
