"""`Encoder`: texts in, embeddings out, for one bundle.

    >>> encoder = Encoder.load("bundles/electra-large")
    >>> vectors = encoder.embed(["a sentence", "another"], pooling="mean", normalize=True)

Texts are tokenized with the bundle's own tokenizer, sorted by length and cut into batches that
are padded only to their own longest text (`batching`), run through onnxruntime (`session`) and
put back in the caller's order. An `Encoder` holds no mutable state after `load`, so one instance
may be shared by any number of threads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fastelectra.bundle import POOLINGS as POOLINGS  # re-exported: the runtime's choices
from fastelectra.bundle import Bundle, BundleError, BundleMeta, load_bundle
from fastelectra.errors import InputError
from fastelectra.runtime.batching import Batch, check_batch_limits, iter_batches
from fastelectra.runtime.providers import Providers, external_stacklevel, plan_for_bundle
from fastelectra.runtime.session import EncoderSession
from fastelectra.runtime.tokenizer import Encoding, WordPieceTokenizer, check_texts

Pooling = Literal["pooled", "cls", "mean"]
Long = Literal["truncate", "chunk", "error"]
LONG_MODES: tuple[str, ...] = ("truncate", "chunk", "error")

# A max_length the tokenizer never reaches: "do not truncate".
UNLIMITED = 1 << 30
# Texts longer than this many characters per allowed token are cut before tokenizing (see
# `_clip`): a 10 MB text must not become millions of tokens only to be truncated to 512.
CLIP_CHARS_PER_TOKEN = 16
# A cut may split the last word of the prefix, changing that word's wordpieces. A word gives at
# most max_input_chars_per_word (200) pieces, so a prefix with this many tokens beyond the limit
# has the same first max_length tokens as the whole text.
CLIP_MARGIN_TOKENS = 256


class TruncationWarning(UserWarning):
    """Texts were cut to `max_length` tokens; `count` of `texts` were (one warning per call).

    A caller that embeds in parts (`fastelectra embed`, chunk by chunk) adds up the counts
    instead of reading them out of the message.
    """

    def __init__(self, message: str, count: int, texts: int) -> None:
        super().__init__(message)
        self.count = count
        self.texts = texts


@dataclass(frozen=True)
class EncoderOutput:
    """What `Encoder.encode` returns, row i for text i.

    Attributes:
        pooled: float32 [n, hidden], the model's `pooled_output`.
        sequence: n float32 arrays [length_i, hidden], `sequence_output` without padding.
        lengths: int64 [n], tokens per text including [CLS] / [SEP] (after truncation).
        truncated: bool [n], whether text i was cut to `max_length` tokens.
    """

    pooled: np.ndarray
    sequence: list[np.ndarray]
    lengths: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def mask(self) -> np.ndarray:
        """int32 [n, longest]: 1 on real tokens, 0 on the padding `padded()` adds."""
        longest = int(self.lengths.max(initial=0))
        return (np.arange(longest)[None, :] < self.lengths[:, None]).astype(np.int32)

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sequence [n, longest, hidden] zero-padded on the right, mask [n, longest])``."""
        mask = self.mask
        out = np.zeros((len(self), mask.shape[1], self.pooled.shape[1]), np.float32)
        for i, rows in enumerate(self.sequence):
            out[i, : len(rows)] = rows
        return out, mask


class Encoder:
    """A bundle's encoder: tokenizer + onnxruntime session. Build it with `Encoder.load`."""

    def __init__(
        self,
        bundle: Bundle,
        session: EncoderSession,
        tokenizer: WordPieceTokenizer,
        max_length: int | None = None,
    ) -> None:
        self.bundle = bundle
        self._session = session
        self._tokenizer = tokenizer
        self._max_length = check_max_length(max_length, bundle.meta.max_sequence_length)

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | Bundle,
        providers: Providers = None,
        threads: int | None = None,
        max_length: int | None = None,
    ) -> Encoder:
        """Load a bundle directory, checking its format version and every file's sha256.

        Args:
            bundle: the bundle directory (or an already loaded `Bundle`).
            providers: ``None``/``"cpu"``, ``"cuda"``, ``"tensorrt"`` (``"cuda:1"`` picks a
                GPU), or a list of names / ``(name, options)`` pairs; missing ones fall back
                tensorrt → cuda → cpu with a `RuntimeWarning`.
            threads: CPU threads per run; default: the cores this process may use.
            max_length: tokens per text, [CLS]/[SEP] included; default and upper bound: the
                bundle's `max_sequence_length`.

        Raises:
            BundleError: missing, damaged, modified or foreign bundle files.
        """
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        meta = bundle.meta
        warn_if_chosen_on_another_cpu(bundle)
        max_length = check_max_length(max_length, meta.max_sequence_length)
        plan = plan_for_bundle(bundle, providers, threads, max_length=max_length)
        session = EncoderSession(
            bundle.model_path,
            plan,
            inputs=meta.inputs,
            outputs=meta.outputs,
            input_dtype=meta.input_dtype,
        )
        try:
            tokenizer = WordPieceTokenizer.from_file(bundle.tokenizer_path)
        except Exception as e:  # tokenizers raises its own Exception subclasses
            raise BundleError(f"{bundle.tokenizer_path}: cannot load tokenizer: {e}") from e
        return cls(bundle, session, tokenizer, max_length)

    @property
    def meta(self) -> BundleMeta:
        return self.bundle.meta

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def hidden(self) -> int:
        return self.meta.dimensions.hidden

    @property
    def providers(self) -> tuple[str, ...]:
        """The onnxruntime providers actually in use, in priority order."""
        return self._session.providers

    @property
    def path(self) -> Path:
        return self.bundle.path

    @property
    def session(self) -> EncoderSession:
        """The onnxruntime session it runs: its execution plan, providers and device."""
        return self._session

    @property
    def tokenizer(self) -> WordPieceTokenizer:
        """The bundle's tokenizer, without this encoder's truncation (see `tokenize`)."""
        return self._tokenizer

    def __repr__(self) -> str:
        return (
            f"Encoder({str(self.path)!r}, precision={self.meta.precision.name!r}, "
            f"max_length={self.max_length}, providers={list(self.providers)!r})"
        )

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = 16384,
        long: Literal["truncate", "error"] = "truncate",
    ) -> EncoderOutput:
        """Run the model on `texts` (or text pairs) and return both of its outputs per text.

        Args:
            texts: the texts; ``bytes`` items are decoded as strict UTF-8.
            pairs: optional second segments, one per text (``[CLS] a [SEP] b [SEP]``).
            batch_size: most texts per model run.
            max_batch_tokens: most padded tokens (rows × longest row) per model run.
            long: texts over `max_length` tokens are cut with one warning per call
                (``"truncate"``) or rejected (``"error"``). ``"chunk"`` is for `embed`.

        Raises:
            TypeError / ValueError: bad texts, pairs of another length, bad options.
        """
        check_choice("long", long, ("truncate", "error"), hint="long='chunk' is for embed()")
        check_batch_limits(batch_size, max_batch_tokens)
        texts = check_texts(texts)
        if pairs is not None:
            pairs = check_texts(pairs, "pairs")
            if len(pairs) != len(texts):
                raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs")
        encodings = self._tokenize(texts, pairs, long)

        n = len(encodings)
        pooled = np.zeros((n, self.hidden), np.float32)
        sequence: list[np.ndarray] = [np.zeros((0, self.hidden), np.float32)] * n
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        for batch, batch_pooled, batch_sequence in self._run(
            encodings, batch_size, max_batch_tokens
        ):
            pooled[batch.indices] = batch_pooled
            for row, i in enumerate(batch.indices):
                # A copy, not a view: a view would keep the whole padded batch alive.
                sequence[i] = batch_sequence[row, : lengths[i]].copy()
        truncated = np.array([e.truncated for e in encodings], dtype=bool)
        return EncoderOutput(pooled, sequence, lengths, truncated)

    def embed(
        self,
        texts: Sequence[str],
        pooling: Pooling | None = None,
        normalize: bool = False,
        batch_size: int = 32,
        long: Long = "truncate",
        max_batch_tokens: int | None = 16384,
    ) -> np.ndarray:
        """One float32 vector per text, [n, hidden].

        Args:
            pooling: ``"pooled"`` (the model's pooled_output), ``"cls"`` (sequence_output at
                [CLS]) or ``"mean"`` (mean of sequence_output over the text's tokens, [CLS] and
                [SEP] included, as sentence-transformers computes it); None: the bundle's
                `pooling` (``"mean"`` unless it was built otherwise), the default of every
                entry point.
            normalize: scale each vector to unit L2 norm.
            long: texts over `max_length` tokens are cut with one warning per call
                (``"truncate"``), rejected (``"error"``), or embedded as overlapping windows
                whose vectors are averaged, weighted by window length (``"chunk"``).
        """
        pooling = self.meta.pooling if pooling is None else pooling
        check_choice("pooling", pooling, POOLINGS)
        check_choice("long", long, LONG_MODES)
        check_batch_limits(batch_size, max_batch_tokens)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, not {type(normalize).__name__}")
        texts = check_texts(texts)
        if long == "chunk":
            encodings, owners, weights = self._windows(texts)
        else:
            encodings = self._tokenize(texts, None, long)
            owners = np.arange(len(encodings))
            weights = None

        vectors = np.zeros((len(encodings), self.hidden), np.float32)
        for batch, batch_pooled, batch_sequence in self._run(
            encodings, batch_size, max_batch_tokens
        ):
            vectors[batch.indices] = pool(pooling, batch_pooled, batch_sequence, batch.input_mask)
        if weights is not None:
            # Windows of one text -> their mean, weighted by tokens per window: for "mean"
            # pooling that is exactly the mean over every token of every window.
            sums = np.zeros((len(texts), self.hidden), np.float64)
            np.add.at(sums, owners, vectors * weights[:, None])
            totals = np.bincount(owners, weights=weights, minlength=len(texts))
            vectors = (sums / totals[:, None]).astype(np.float32)
        if normalize:
            vectors = l2_normalize(vectors)
        return vectors

    # -- for callers that schedule model runs themselves (fastelectra.serve) ------------------

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text's model input, cut to `max_length` tokens without a warning.

        `Encoding.truncated` says which texts were cut, so the caller decides whether that is
        an error; `len(encoding)` is the exact token count. Plan runs of them with
        `batching.plan_runs`, make each a `batching.batch_of` and give it to `run_batch`.
        """
        return self._encode(check_texts(texts), None)

    @property
    def max_run_rows(self) -> int | None:
        """The most rows one model run admits; None: no limit.

        An explicit TensorRT profile admits no batch larger than the one it was built for.
        """
        return self._session.plan.max_batch

    def run_batch(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on one planned batch of at most `max_run_rows` rows.

        Returns ``(pooled [rows, hidden], sequence [rows, longest, hidden])``, float32, row r
        for ``batch.indices[r]``. Pool with `pool`.
        """
        limit = self.max_run_rows
        if limit is not None and len(batch.indices) > limit:
            raise InputError(
                f"a batch of {len(batch.indices)} rows, but this session runs at most {limit} "
                "(its TensorRT profile's largest batch)"
            )
        pooled, sequence = self._session.run(
            batch.input_word_ids, batch.input_mask, batch.segment_ids
        )
        return np.asarray(pooled, np.float32), np.asarray(sequence, np.float32)

    def _run(
        self, encodings: Sequence[Encoding], batch_size: int, max_batch_tokens: int | None
    ) -> Iterator[tuple[Batch, np.ndarray, np.ndarray]]:
        if self.max_run_rows is not None:
            batch_size = min(batch_size, self.max_run_rows)
        for batch in iter_batches(encodings, batch_size, max_batch_tokens):
            yield batch, *self.run_batch(batch)

    def _tokenize(self, texts: list[str], pairs: list[str] | None, long: str) -> list[Encoding]:
        encodings = self._encode(texts, pairs)
        cut = [i for i, e in enumerate(encodings) if e.truncated]
        if cut and long == "error":
            shown = ", ".join(map(str, cut[:10])) + (", ..." if len(cut) > 10 else "")
            raise InputError(
                f"{len(cut)} of {len(texts)} texts are longer than max_length="
                f"{self.max_length} tokens (indices {shown}); pass long='truncate' to cut them"
                " or, with embed(), long='chunk' to embed them in windows"
            )
        if cut:
            message = (
                f"{len(cut)} of {len(texts)} texts were longer than max_length="
                f"{self.max_length} tokens and were truncated; embed(..., long='chunk') "
                "embeds them whole in overlapping windows"
            )
            warnings.warn(
                TruncationWarning(message, count=len(cut), texts=len(texts)),
                stacklevel=external_stacklevel(),
            )
        return encodings

    def _encode(self, texts: list[str], pairs: list[str] | None) -> list[Encoding]:
        if not texts:
            return []
        clipped = [self._clip(t) for t in texts]
        clipped_pairs = None if pairs is None else [self._clip(t) for t in pairs]
        return self._tokenizer.encode(clipped, clipped_pairs, max_length=self.max_length)

    def _clip(self, text: str) -> str:
        """A prefix of `text` that tokenizes to the same first `max_length` tokens.

        Only very long texts are touched; the prefix grows until it holds `max_length` plus a
        margin of tokens (a text of whitespace or dropped control characters holds few).
        """
        size = self.max_length * CLIP_CHARS_PER_TOKEN
        while size < len(text):
            prefix = text[:size]
            if self._tokenizer.token_count([prefix])[0] >= self.max_length + CLIP_MARGIN_TOKENS:
                return prefix
            size *= 4
        return text

    def _windows(self, texts: list[str]) -> tuple[list[Encoding], np.ndarray, np.ndarray]:
        """Each text whole, or as overlapping windows if longer than `max_length` tokens.

        Returns the model inputs, the text each came from and its weight (its token count).
        """
        encodings = self._tokenizer.encode(texts, max_length=UNLIMITED) if texts else []
        span = self.max_length - 2  # content tokens per window: each gets its own [CLS]/[SEP]
        stride = max(1, span // 2)
        windows: list[Encoding] = []
        owners: list[int] = []
        for i, encoding in enumerate(encodings):
            if len(encoding.ids) <= self.max_length:
                windows.append(encoding)
                owners.append(i)
                continue
            for ids in chunk_ids(encoding.ids, span, stride):
                windows.append(Encoding(ids=ids, type_ids=np.zeros_like(ids), truncated=False))
                owners.append(i)
        weights = np.array([len(w.ids) for w in windows], dtype=np.float64)
        return windows, np.array(owners, dtype=np.int64), weights


def chunk_ids(ids: np.ndarray, span: int, stride: int) -> list[np.ndarray]:
    """Split ``[CLS] content [SEP]`` into windows ``[CLS] content[s:s+span] [SEP]``, s = 0,
    stride, 2·stride, ... until the content's end is covered."""
    cls_id, content, sep_id = ids[:1], ids[1:-1], ids[-1:]
    windows = []
    start = 0
    while True:
        windows.append(np.concatenate([cls_id, content[start : start + span], sep_id]))
        if start + span >= len(content):
            return windows
        start += stride


def pool(pooling: str, pooled: np.ndarray, sequence: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[batch, hidden] vectors from one batch's outputs; padded positions never contribute."""
    if pooling == "pooled":
        return pooled
    if pooling == "cls":
        return sequence[:, 0]
    keep = mask.astype(bool)[:, :, None]
    # where(), not multiply: 0 × a non-finite padded value would still be NaN.
    total = np.where(keep, sequence, 0.0).sum(axis=1, dtype=np.float64)
    return (total / keep.sum(axis=1)).astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def check_max_length(max_length: int | None, limit: int) -> int:
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, not {type(max_length).__name__}")
    if not 3 <= max_length <= limit:
        raise InputError(
            f"max_length must be between 3 and the bundle's max_sequence_length {limit}, "
            f"got {max_length}"
        )
    return max_length


def check_choice(name: str, value: object, allowed: Sequence[str], hint: str = "") -> None:
    if not isinstance(value, str) or value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise InputError(
            f"{name} must be one of {options}, got {value!r}" + (f"; {hint}" if hint else "")
        )


def warn_if_chosen_on_another_cpu(bundle: Bundle) -> None:
    """A `--precision auto` bundle running on a CPU without an instruction set its choice was
    timed with: say so (once per bundle, as warnings go)."""
    from fastelectra.cpu import isa_missing_here

    missing = isa_missing_here(bundle.meta.auto.get("cpu"))
    if missing:
        warnings.warn(
            f"{bundle.path}: its precision ({bundle.meta.auto.get('chosen')}) was chosen by "
            f"timing on a CPU with {', '.join(missing)}, which this CPU lacks; it may not be "
            "the fastest here (rebuild with --precision auto on this machine)",
            RuntimeWarning,
            stacklevel=3,
        )
