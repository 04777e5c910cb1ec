"""Write a HF `tokenizers` file that gives exactly the ids of TF Models' `FullTokenizer`.

The TF Hub model cards of the BERT family (ELECTRA-large included) name
`official/nlp/bert/tokenization.py`'s `FullTokenizer` (`max_input_chars_per_word=200`).  Its
pipeline, per text::

    _clean_text -> _tokenize_chinese_chars -> str.split() -> per word: lower(), NFD, drop Mn
    (only when do_lower_case) -> split off punctuation -> WordPiece

`build_tokenizer` recomposes it from `tokenizers` built-ins only (Replace with regexes,
Lowercase, NFD, Split, WordPiece, TemplateProcessing), so that the saved `tokenizer.json` alone
reproduces it for any consumer of HF tokenizer files (Python, Rust, text-embeddings-inference).

Every character class is written out as explicit code point ranges taken from the building
Python's `unicodedata` (the tables FullTokenizer itself consults), never as `\\p{..}` or a
built-in such as `Punctuation` / `BertPreTokenizer` / `StripAccents`, whose Unicode tables are
those of the Rust crates and differ.  The ids are exact for FullTokenizer running on a Python
with the same Unicode version (`unicodedata.unidata_version`, 14.0.0 on Python 3.11).
"""

from __future__ import annotations

import functools
import unicodedata
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from fastelectra.errors import InputError

MAX_INPUT_CHARS_PER_WORD = 200  # official/nlp/bert/tokenization.py; the newer tools/ copy has 400
UNK, CLS, SEP, PAD = "[UNK]", "[CLS]", "[SEP]", "[PAD]"
REQUIRED_TOKENS = (CLS, SEP, UNK, PAD)

# BasicTokenizer._is_chinese_char, verbatim (inclusive ranges).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

CAPITAL_SIGMA, FINAL_SIGMA = "\u03a3", "\u03c2"
_PRIVATE_USE = range(0xE000, 0xF900)
_PROBE_SEP = (
    "\x00"  # left alone by Lowercase and NFD, and a starter, so NFD never reorders across it
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def _is_ascii_punct(cp: int) -> bool:
    # BasicTokenizer's _is_punctuation treats all non-alphanumeric printable ASCII as punctuation.
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126


def _ranges(cps: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted code points -> inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for cp in sorted(cps):
        if out and cp == out[-1][1] + 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def char_class(cps: Iterable[int]) -> str:
    """An Oniguruma character class of exactly these code points, as escapes."""
    parts = [
        f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in _ranges(cps)
    ]
    if not parts:
        raise ValueError("empty character class")
    return "[" + "".join(parts) + "]"


@dataclass(frozen=True)
class CharacterTables:
    """Code point sets, as FullTokenizer sees them through this Python's `unicodedata`."""

    removed: frozenset[int]  # _clean_text drops: NUL, U+FFFD, Cc/Cf except \t \n \r
    to_space: frozenset[int]  # _clean_text maps to " ": \t \n \r and Zs
    split: frozenset[int]  # what str.split() still splits on after cleaning: " ", U+2028, U+2029
    isolated: frozenset[int]  # CJK ideographs and punctuation become one-character words
    mn: frozenset[int]  # _run_strip_accents drops only Mn (not Mc / Me)
    unassigned: frozenset[int]  # Cn outside the CJK ranges
    assigned: tuple[str, ...]  # every character that is not Cn / Co / Cs
    sigma_cased: frozenset[int]  # str.lower()'s Final_Sigma context: cased and not case-ignorable
    sigma_ignorable: frozenset[int]  # ... case-ignorable


@functools.cache
def character_tables() -> CharacterTables:
    removed, to_space, split, isolated, mn, unassigned = (set() for _ in range(6))
    assigned: list[str] = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # lone surrogates cannot reach a tokenizer (not valid UTF-8)
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if ch in "\t\n\r" or cat == "Zs":
            to_space.add(cp)
        elif cp in (0, 0xFFFD) or cat in ("Cc", "Cf"):
            removed.add(cp)
        elif ch.isspace():
            split.add(cp)
        if _is_cjk(cp) or _is_ascii_punct(cp) or cat.startswith("P"):
            isolated.add(cp)
        if cat == "Mn":
            mn.add(cp)
        if cat == "Cn":
            if not _is_cjk(cp):
                unassigned.add(cp)
        elif cat != "Co":
            assigned.append(ch)
    split.add(ord(" "))
    to_space.discard(ord(" "))

    # Python exposes neither Cased nor Case_Ignorable; read them off str.lower() itself, whose
    # Final_Sigma rule is: Σ preceded by (cased, case-ignorable*) and not followed by
    # (case-ignorable*, cased).  "cased and not ignorable" is what the scan back from Σ stops at.
    cased = {ord(c) for c in assigned if (c + CAPITAL_SIGMA).lower()[-1] == FINAL_SIGMA}
    ignorable = {
        ord(c)
        for c in assigned
        if ("\u0391" + c + CAPITAL_SIGMA).lower()[-1] == FINAL_SIGMA and ord(c) not in cased
    }
    return CharacterTables(
        removed=frozenset(removed),
        to_space=frozenset(to_space),
        split=frozenset(split),
        isolated=frozenset(isolated),
        mn=frozenset(mn),
        unassigned=frozenset(unassigned),
        assigned=tuple(assigned),
        sigma_cased=frozenset(cased),
        sigma_ignorable=frozenset(ignorable),
    )


def load_vocab(vocab_file: str | Path) -> dict[str, int]:
    """Read a vocab the way FullTokenizer's `load_vocab` does: one token a line, stripped,
    numbered by line; a repeated token keeps its last line number."""
    path = Path(vocab_file)
    if not path.is_file():
        raise InputError(f"vocab file not found: {path}")
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as reader:
        for index, line in enumerate(reader):
            vocab[line.strip()] = index
    if not vocab:
        raise InputError(f"vocab file is empty: {path}")
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise InputError(f"vocab file {path} lacks the special token(s) {', '.join(missing)}")
    return vocab


def _mismatches(
    norm: normalizers.Normalizer, chars: Iterable[str], expected: Callable[[str], str]
) -> list[tuple[str, str, str]]:
    """(char, what Python gives, what this `tokenizers` build gives) where they differ."""
    chars = [c for c in chars if c != _PROBE_SEP]
    got = norm.normalize_str(_PROBE_SEP.join(chars)).split(_PROBE_SEP)
    if len(got) != len(chars):  # pragma: no cover - the separator itself was altered
        raise RuntimeError("normalizer probe lost its separators")
    return [(c, expected(c), g) for c, g in zip(chars, got, strict=True) if expected(c) != g]


def _patches(
    norm: normalizers.Normalizer, chars: Iterable[str], expected: Callable[[str], str]
) -> list[normalizers.Normalizer]:
    """Replace steps that make `norm` agree with Python on every single character.

    The Rust crates behind Lowercase / NFD carry their own Unicode versions (tokenizers 0.23:
    Lowercase is newer than Python 3.11's 14.0, NFD older; e.g. U+11938 DIVES AKURU VOWEL SIGN
    O has a decomposition in 14.0 that its NFD lacks).  Where Python changes a character, we
    apply Python's result before `norm` runs; where only Rust would change it, no Replace can
    stop it, so we warn.
    """
    fixes, unfixable = [], []
    for ch, want, _ in _mismatches(norm, chars, expected):
        if want == ch or _mismatches(norm, [want], lambda s: s):
            unfixable.append(f"U+{ord(ch):04X}")
        else:
            fixes.append(normalizers.Replace(ch, want))
    if unfixable:
        warnings.warn(
            f"{type(norm).__name__} of this tokenizers build differs from Python's "
            f"unicodedata {unicodedata.unidata_version} on {', '.join(unfixable)}; ids of "
            "words holding these characters may differ from FullTokenizer's",
            stacklevel=3,
        )
    return fixes


def _normalizer(vocab: dict[str, int], do_lower_case: bool) -> normalizers.Normalizer:
    t = character_tables()
    steps: list[normalizers.Normalizer] = [
        # _clean_text: drop NUL, U+FFFD and every Cc / Cf except \t \n \r.  \x0b \x0c \x1c \x85
        # are Cc, so "a\x0bb" is the one word "ab" (str.split / Rust would split there).
        normalizers.Replace(Regex(char_class(t.removed)), ""),
        # _clean_text: \t \n \r and every Zs (NBSP, U+3000, ...) become a plain space.
        normalizers.Replace(Regex(char_class(t.to_space)), " "),
    ]
    if not do_lower_case:
        # Cased: FullTokenizer neither lowercases nor strips accents; Mn / Mc stay in words.
        return normalizers.Sequence(steps)

    # Unassigned characters (Cn in this Python) are plain word characters to FullTokenizer: any
    # word holding one misses the vocab and becomes [UNK].  Newer Unicode in the Rust crates
    # would lowercase / decompose some of them (U+A7CB -> ɤ), so map them all to one private-use
    # character that no Unicode version cases or decomposes and that no vocab entry holds: the
    # same [UNK] for every consumer.  Characters a vocab entry does hold are left alone.
    vocab_chars = {ch for token in vocab for ch in token}
    placeholder = next((chr(cp) for cp in _PRIVATE_USE if chr(cp) not in vocab_chars), None)
    held = {ord(c) for c in vocab_chars} & t.unassigned
    unassigned = t.unassigned - held
    if placeholder is not None and unassigned:
        steps.append(normalizers.Replace(Regex(char_class(unassigned)), placeholder))

    # str.lower() (per whitespace-separated word) applies the Final_Sigma rule; Lowercase maps
    # per character (always σ).  Words are delimited by spaces, neither cased nor
    # case-ignorable, and CJK characters (also neither) end the context just as the spaces
    # FullTokenizer puts around them do, so matching over the whole text is the same test.
    # `\K` keeps the context out of the replaced span; a variable-length lookbehind would do
    # the same but Oniguruma evaluates it in time quadratic in the text length.  Cased and
    # ignorable are disjoint, so the possessive `*+` never has to give anything back.
    cased, ignorable = char_class(t.sigma_cased), char_class(t.sigma_ignorable)
    final_sigma = f"{cased}{ignorable}*+\\K\\x{{3A3}}(?!{ignorable}*+{cased})"
    steps.append(normalizers.Replace(Regex(final_sigma), FINAL_SIGMA))

    # token.lower(), with Python's mappings where this build's Lowercase disagrees.
    lowercase = normalizers.Lowercase()
    probe = [c for c in t.assigned if c != CAPITAL_SIGMA] + [chr(cp) for cp in sorted(held)]
    steps += _patches(lowercase, probe, str.lower)
    steps.append(lowercase)

    # _run_strip_accents: unicodedata.normalize("NFD"), then drop Mn only.  StripAccents would
    # also drop Mc / Me (Devanagari vowel signs are Mc), so Mn is an explicit class.
    nfd = normalizers.NFD()
    steps += _patches(nfd, probe, lambda s: unicodedata.normalize("NFD", s))
    steps.append(nfd)
    steps.append(normalizers.Replace(Regex(char_class(t.mn)), ""))
    return normalizers.Sequence(steps)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    t = character_tables()
    return pre_tokenizers.Sequence(
        [
            # whitespace_tokenize is str.split(): after cleaning that is " ", U+2028 and U+2029
            # (WhitespaceSplit would use Rust's White_Space, a different set before cleaning).
            pre_tokenizers.Split(Regex(char_class(t.split) + "+"), behavior="removed"),
            # _tokenize_chinese_chars and _run_split_on_punc: each CJK ideograph (including
            # 0x2B820-0x2CEAF) and each punctuation character (ASCII non-alphanumerics, Unicode
            # P*) is a word of its own.  FullTokenizer isolates CJK before lower()/NFD and we
            # after, which is the same: NFD maps CJK compatibility ideographs into the ranges.
            pre_tokenizers.Split(Regex(char_class(t.isolated)), behavior="isolated"),
        ]
    )


def build_tokenizer(
    vocab_file: str | Path,
    do_lower_case: bool,
    max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
) -> Tokenizer:
    """A `tokenizers.Tokenizer` that gives FullTokenizer's ids wrapped in [CLS] ... [SEP].

    Single texts encode as `[CLS] A [SEP]` (type ids 0), pairs as `[CLS] A [SEP] B [SEP]` (type
    ids 0 then 1).  No truncation or padding is configured: callers choose.

    Raises:
        ValueError: the vocab file is missing, empty or lacks [CLS] / [SEP] / [UNK] / [PAD].
    """
    vocab = load_vocab(vocab_file)
    tok = Tokenizer(
        WordPiece(
            vocab,
            unk_token=UNK,
            continuing_subword_prefix="##",
            # Words longer than this (in characters, as len() counts them) become [UNK].
            max_input_chars_per_word=max_input_chars_per_word,
        )
    )
    tok.normalizer = _normalizer(vocab, do_lower_case)
    tok.pre_tokenizer = _pre_tokenizer()
    # The specials are given to the template by id and deliberately NOT registered as added
    # tokens: FullTokenizer reads "[CLS]" in a text as "[", "cls", "]", never as the special.
    cls_id, sep_id = vocab[CLS], vocab[SEP]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write `tok` as a single `tokenizer.json` file; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path), pretty=True)
    return path
