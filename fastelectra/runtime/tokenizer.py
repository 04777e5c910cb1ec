"""Text -> BERT inputs with a bundle's `tokenizer.json` (HF `tokenizers`, Rust).

Only numpy and `tokenizers`: the serving path never imports TensorFlow or onnx.  The whole batch
goes to Rust in one `encode_batch_fast` call, which releases the GIL and runs in parallel.
[CLS]/[SEP] and truncation are applied here rather than by the tokenizer's own
post-processor / truncation settings because (a) HF's pair truncation materialises every
combination of overflowing pieces, quadratic in the lengths of two long texts, and (b) the
tokenizer object stays immutable, so one instance serves concurrent callers with different
`max_length`s.  `from_file` checks that the file's own template gives the same layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from fastelectra.errors import InputError

if TYPE_CHECKING:
    from fastelectra.runtime.lines import Text

CLS, SEP, PAD = "[CLS]", "[SEP]", "[PAD]"


@dataclass
class Encoding:
    """One text or text pair, unpadded: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""

    ids: np.ndarray  # int32 [n]
    type_ids: np.ndarray  # int32 [n]: 0 for [CLS] A [SEP], 1 for B [SEP]
    truncated: bool  # whether any token of A or B was cut to fit max_length

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def check_texts(texts: Iterable[str | bytes], name: str = "texts") -> list[str]:
    """Validate a batch of texts; returns them as a list of `str`.

    `bytes` items are decoded as strict UTF-8.  Empty and whitespace-only strings are valid
    (they encode to `[CLS] [SEP]`).

    Raises:
        TypeError: `texts` is a single string or not iterable, or an item is not str / bytes.
        ValueError: an item is invalid UTF-8 (bytes) or holds a lone surrogate (str).
    """
    if isinstance(texts, (str, bytes, bytearray)):
        raise TypeError(
            f"{name} must be a list of strings, not a single {type(texts).__name__}: "
            f"pass [{name[:-1] if name.endswith('s') else name}]"
        )
    if texts is None:
        raise TypeError(f"{name} must be a list of strings, got None")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}") from None
    out: list[str] = []
    for i, text in enumerate(items):
        if isinstance(text, str):
            # Lone surrogates cannot cross into Rust; isascii() is O(1), so ASCII is free.
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise InputError(f"{name}[{i}] is not encodable as UTF-8: {e.reason}") from None
        elif isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{name}[{i}] is not valid UTF-8: {e}") from None
        else:
            raise TypeError(f"{name}[{i}] must be str or bytes, got {type(text).__name__}")
        out.append(text)
    return out


def _longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """How many tokens of A and B to keep; the same split as HF's LongestFirst strategy.

    Nothing is cut when both fit; else the shorter keeps its length if the longer can still
    have at least as much, else both get half (the longer one the odd token).
    """
    if n1 + n2 <= budget:
        return n1, n2
    short, long_ = sorted((n1, n2))
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    return (long_, short) if n1 > n2 else (short, long_)


class WordPieceTokenizer:
    """Encodes batches of texts (or pairs) to BERT `input_word_ids` / `segment_ids`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        """Wrap `tokenizer` (its truncation and padding settings are switched off)."""
        ids = {t: tokenizer.token_to_id(t) for t in (CLS, SEP, PAD)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise InputError(f"tokenizer vocab lacks {', '.join(missing)}")
        self.cls_id, self.sep_id, self.pad_id = ids[CLS], ids[SEP], ids[PAD]
        self._tok = tokenizer
        # Truncation / padding baked into a file would change what we slice; ours decide.
        self._tok.no_truncation()
        self._tok.no_padding()
        self._check_template()

    @classmethod
    def from_file(cls, path: str | Path) -> WordPieceTokenizer:
        """Load a `tokenizer.json` written by `fastelectra.convert.tokenizer.save_tokenizer`.

        Raises:
            ValueError: the file is missing, not a tokenizers file, or not a BERT layout.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON / schema
            raise InputError(f"cannot load tokenizer file {path}: {e}") from e
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (do not change its settings)."""
        return self._tok

    def _check_template(self) -> None:
        """The file's own post-processor must give the layout `encode` builds by hand."""
        a, b = self._tok.encode_batch_fast(["a", "b"], add_special_tokens=False)
        pair = self._tok.encode("a", "b")
        want = [self.cls_id, *a.ids, self.sep_id, *b.ids, self.sep_id]
        want_types = [0] * (len(a.ids) + 2) + [1] * (len(b.ids) + 1)
        if pair.ids != want or pair.type_ids != want_types:
            raise InputError(
                "tokenizer post-processor is not [CLS] A [SEP] B [SEP] with type ids 0/1"
            )

    def _pieces(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def encode(
        self,
        texts: Sequence[str | bytes],
        pairs: Sequence[str | bytes] | None = None,
        max_length: int = 512,
    ) -> list[Encoding]:
        """Tokenize a batch; each result holds at most `max_length` tokens, specials included.

        Pairs are truncated longest-first.  `Encoding.truncated` is exact: it compares with the
        untruncated token count.

        Raises:
            TypeError / ValueError: see `check_texts`; pairs of another length than texts;
                `max_length` too small for the special tokens.
        """
        texts = check_texts(texts)
        second = None if pairs is None else check_texts(pairs, "pairs")
        if second is not None and len(second) != len(texts):
            raise InputError(f"pairs has {len(second)} items, texts {len(texts)}: must match")
        n_special = 2 if second is None else 3
        if int(max_length) < n_special:
            raise InputError(f"max_length={max_length} leaves no room for {n_special} specials")
        budget = int(max_length) - n_special
        if not texts:
            return []
        pieces = self._pieces(texts if second is None else texts + second)
        cls = np.array([self.cls_id], dtype=np.int32)
        sep = np.array([self.sep_id], dtype=np.int32)
        out: list[Encoding] = []
        if second is None:
            for a in pieces:
                ids = np.concatenate((cls, a[:budget], sep))
                out.append(Encoding(ids, np.zeros_like(ids), a.shape[0] > budget))
            return out
        n = len(texts)
        for a, b in zip(pieces[:n], pieces[n:], strict=True):
            k1, k2 = _longest_first(a.shape[0], b.shape[0], budget)
            ids = np.concatenate((cls, a[:k1], sep, b[:k2], sep))
            type_ids = np.zeros_like(ids)
            type_ids[k1 + 2 :] = 1
            out.append(Encoding(ids, type_ids, k1 + k2 < a.shape[0] + b.shape[0]))
        return out

    def token_count(
        self, texts: Sequence[str | bytes], pairs: Sequence[str | bytes] | None = None
    ) -> np.ndarray:
        """Untruncated length of each encoding, specials included (int64 [b])."""
        texts = check_texts(texts)
        second = None if pairs is None else check_texts(pairs, "pairs")
        if second is not None and len(second) != len(texts):
            raise InputError(f"pairs has {len(second)} items, texts {len(texts)}: must match")
        if not texts:
            return np.zeros(0, dtype=np.int64)
        batch = texts if second is None else texts + second
        lengths = np.array(
            [len(e) for e in self._tok.encode_batch_fast(batch, add_special_tokens=False)],
            dtype=np.int64,
        )
        if second is None:
            return lengths + 2
        n = len(texts)
        return lengths[:n] + lengths[n:] + 3


def pad_batch(
    encodings: Sequence[Encoding], pad_to: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack encodings into `(input_word_ids, input_mask, segment_ids)`, int32 [b, L].

    Always right-padded with 0 (fused attention reads the mask as right-padding lengths).
    L is the longest encoding, or `pad_to` (which must not be shorter).
    """
    lengths = np.fromiter((e.ids.shape[0] for e in encodings), dtype=np.int64, count=len(encodings))
    longest = int(lengths.max(initial=0))
    width = longest if pad_to is None else int(pad_to)
    if width < longest:
        raise InputError(f"pad_to={pad_to} is shorter than the longest encoding ({longest})")
    mask = np.arange(width) < lengths[:, None]  # [b, L], True on real tokens
    ids = np.zeros((len(encodings), width), dtype=np.int32)
    segments = np.zeros((len(encodings), width), dtype=np.int32)
    if encodings:
        # Boolean assignment fills row-major, i.e. each row's first `length` slots.
        ids[mask] = np.concatenate([e.ids for e in encodings])
        segments[mask] = np.concatenate([e.type_ids for e in encodings])
    return ids, mask.astype(np.int32), segments


def encode_texts(
    tokenizer: WordPieceTokenizer, texts: Sequence[Text], max_length: int
) -> list[Encoding]:
    """Encode singles and pairs, mixed in one list (as a text file holds them), in its order.

    Singles go to the tokenizer in one batch and pairs in another, not one call per text.
    """
    singles = [i for i, (_, pair) in enumerate(texts) if pair is None]
    pairs = [i for i, (_, pair) in enumerate(texts) if pair is not None]
    encodings: list[Encoding | None] = [None] * len(texts)
    if singles:
        encoded = tokenizer.encode([texts[i][0] for i in singles], max_length=max_length)
        for i, encoding in zip(singles, encoded, strict=True):
            encodings[i] = encoding
    if pairs:
        encoded = tokenizer.encode(
            [texts[i][0] for i in pairs],
            pairs=[texts[i][1] or "" for i in pairs],
            max_length=max_length,
        )
        for i, encoding in zip(pairs, encoded, strict=True):
            encodings[i] = encoding
    return [e for e in encodings if e is not None]  # all are; this tells the type checker
