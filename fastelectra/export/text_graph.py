"""The model card's tokenizer (TF Models' `FullTokenizer`) as ONNX nodes: `text` -> token ids.

Built from onnxruntime-extensions' string operators and standard ONNX ones, each step the one
`FullTokenizer` takes, with every character class written out from this Python's `unicodedata`
(the tables `FullTokenizer` itself consults; `fastelectra.convert.tokenizer` builds the
`tokenizer.json` from the same tables)::

    drop U+0000 (StringSplit on NUL + StringJoin: the extensions read strings up to a NUL)
    drop the other removed characters, map whitespace to " "          (StringRegexReplace)
    uncased: Σ -> ς where str.lower()'s Final_Sigma rule says          (StringRegexReplace)
             each character -> NFD(lower(c))              (split into characters, StringMapping)
             drop Mn                                                   (StringRegexReplace)
    CJK ideographs and punctuation become words of their own           (StringRegexReplace)
    words (split on " ") -> WordPiece pieces                             (WordpieceTokenizer)
    pieces -> ids (LabelEncoder); a word with no full split -> one [UNK]
    [CLS] ids[:max_length - 2] [SEP], right-padded with 0, mask, segment ids 0

The extensions' WordpieceTokenizer differs from FullTokenizer in one rule: a word it cannot
split completely gives the pieces found so far and then [UNK], where FullTokenizer gives [UNK]
alone; each word is therefore a row of its own, and rows holding [UNK] are cut to that [UNK].

One rule is refused rather than approximated: NFD reorders combining marks by their combining
class across characters, which a character-by-character map cannot do; after Mn are stripped
that matters only for words holding two marks of non-zero class that are not Mn, which become
[UNK] unless the vocabulary holds such a mark (`unsupported_rules`).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fastelectra.bundle import INPUT_NAMES, Bundle
from fastelectra.convert.tokenizer import (
    CAPITAL_SIGMA,
    CLS,
    FINAL_SIGMA,
    MAX_INPUT_CHARS_PER_WORD,
    SEP,
    UNK,
    CharacterTables,
    char_class,
    character_tables,
)
from fastelectra.errors import DependencyMissing, InputError

TEXT = "text"
EXTENSIONS = "ai.onnx.contrib"  # onnxruntime-extensions' operator domain
# StringSplit (which keeps U+0000, unlike the extensions' operators) is in opset 20.
TEXT_OPSET = 20
ML_OPSET = 2  # LabelEncoder with keys_strings / values_int64
_PREFIX = "fastelectra_tokenizer/"


class TokenizerRuleError(InputError):
    """A rule of the bundle's tokenizer that the extensions' operators cannot express."""


def extensions_library() -> str:
    """The onnxruntime-extensions shared library a session registers to run a text-in file.

    Not in a process that has loaded TensorFlow: TensorFlow's own RE2 symbols take the place
    of the library's, and its regular expressions then silently match nothing (seen with
    TensorFlow 2.20 and onnxruntime-extensions 0.15.2).
    """
    import sys

    if "tensorflow" in sys.modules:
        raise DependencyMissing(
            "onnxruntime-extensions' regular expressions do not work in a process that has "
            "imported TensorFlow (their RE2 symbols clash); run the text-in file, or "
            "`fastelectra export --text-input`, in a process of its own"
        )
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError:
        raise DependencyMissing(
            "text input needs onnxruntime-extensions: pip install 'fastelectra[export]'"
        ) from None
    return get_library_path()


def unsupported_rules(vocab: Iterable[str], do_lower_case: bool) -> list[str]:
    """FullTokenizer rules this graph cannot follow for `vocab`, each with the texts it changes."""
    if not do_lower_case:
        return []
    chars = {c for token in vocab for c in token}
    reordered = sorted(
        c for c in chars if unicodedata.combining(c) and unicodedata.category(c) != "Mn"
    )
    if not reordered:
        return []
    names = ", ".join(f"U+{ord(c):04X}" for c in reordered[:5])
    return [
        "NFD's canonical reordering of combining marks across characters (the graph decomposes "
        f"character by character): words holding two or more of the vocabulary's non-Mn "
        f"combining marks ({names}) would tokenise differently"
    ]


def add_tokenizer(model: onnx.ModelProto, bundle: Bundle) -> None:
    """Put the bundle's tokenizer in front of `model`: its input becomes `text` [batch]."""
    vocab, max_chars = read_wordpiece(bundle)
    graph = tokenizer_graph(
        vocab,
        bundle.meta.do_lower_case,
        bundle.meta.max_sequence_length,
        TensorProto.INT32 if bundle.meta.input_dtype == "int32" else TensorProto.INT64,
        max_chars,
    )
    feeds = [i.name for i in model.graph.input]
    if feeds != list(INPUT_NAMES):
        raise InputError(f"the bundle's model takes {feeds}, not {list(INPUT_NAMES)}")
    encoder_nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([*graph.nodes, *encoder_nodes])
    model.graph.initializer.extend(graph.initializers)
    del model.graph.input[:]
    model.graph.input.append(graph.input)
    set_opsets(model)


def read_wordpiece(bundle: Bundle) -> tuple[dict[str, int], int]:
    """The vocabulary and word-length limit of the bundle's tokenizer.json."""
    data = json.loads(bundle.tokenizer_path.read_text(encoding="utf-8"))
    wordpiece = data.get("model") or {}
    if wordpiece.get("type") != "WordPiece" or not isinstance(wordpiece.get("vocab"), dict):
        raise TokenizerRuleError(
            f"{bundle.tokenizer_path}: not a WordPiece tokenizer; --text-input builds "
            "FullTokenizer's rules, which need one"
        )
    limit = int(wordpiece.get("max_input_chars_per_word", MAX_INPUT_CHARS_PER_WORD))
    return {str(k): int(v) for k, v in wordpiece["vocab"].items()}, limit


def set_opsets(model: onnx.ModelProto) -> None:
    """The default domain at `TEXT_OPSET` at least, plus the extensions' domain and ai.onnx.ml.

    The encoder's own operators (MatMul, Add, Slice, Squeeze, Tanh, Cast, the quantisers' and
    the com.microsoft fused ones) mean the same in opset 20 as in the bundle's; the export's
    check against `Encoder.embed` proves it for each file.
    """
    wanted = {"": TEXT_OPSET, EXTENSIONS: 1, "ai.onnx.ml": ML_OPSET}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in wanted:
            opset.version = max(opset.version, wanted.pop(domain))
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in wanted.items())


@dataclass
class Graph:
    """Nodes and constants under construction; each `op` returns its (first) output's name."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    input: onnx.ValueInfoProto = field(
        default_factory=lambda: helper.make_tensor_value_info(TEXT, TensorProto.STRING, ["batch"])
    )

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> str:
        domain = attrs.pop("domain", "")
        base = f"{_PREFIX}{op_type}_{len(self.nodes)}"
        names = [f"{base}:{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=base, domain=domain, **attrs)
        )
        return names[0]

    def ops(self, op_type: str, inputs: list[str], outputs: int, **attrs) -> list[str]:
        first = self.op(op_type, inputs, outputs, **attrs)
        return [first] + [f"{first[:-2]}:{i}" for i in range(1, outputs)]

    def const(self, name: str, value: object, dtype: object = None) -> str:
        full = _PREFIX + name
        if not any(t.name == full for t in self.initializers):
            array = np.array(value, dtype=dtype)
            if array.dtype.kind in "OUS":
                tensor = helper.make_tensor(
                    full, TensorProto.STRING, array.shape, [str(v).encode() for v in array.flat]
                )
            else:
                tensor = numpy_helper.from_array(array, full)
            self.initializers.append(tensor)
        return full

    def regex_replace(self, text: str, pattern: str, rewrite: str, name: str) -> str:
        return self.op(
            "StringRegexReplace",
            [
                text,
                self.const(f"{name}_pattern", pattern, object),
                self.const(f"{name}_rewrite", rewrite, object),
            ],
            domain=EXTENSIONS,
        )


def tokenizer_graph(
    vocab: dict[str, int],
    do_lower_case: bool,
    max_length: int,
    id_type: int = TensorProto.INT32,
    max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
) -> Graph:
    """Nodes from `text` [batch] to `INPUT_NAMES` ([batch, longest], right-padded)."""
    for token in (CLS, SEP, UNK):
        if token not in vocab:
            raise TokenizerRuleError(f"the vocabulary has no {token}")
    refused = unsupported_rules(vocab, do_lower_case)
    if refused:
        raise TokenizerRuleError(
            "--text-input cannot reproduce FullTokenizer for this vocabulary: " + "; ".join(refused)
        )
    if max_length < 2:
        raise InputError(f"max_length must be at least 2, got {max_length}")
    t = character_tables()
    g = Graph()
    text = normalized_text(g, t, do_lower_case)
    ids, words_per_text = wordpiece_ids(g, text, vocab, max_input_chars_per_word)
    assemble(g, ids, words_per_text, vocab, max_length, id_type)
    return g


def normalized_text(g: Graph, t: CharacterTables, do_lower_case: bool) -> str:
    """`text` cleaned, cased as FullTokenizer cases it, words separated by single spaces or
    more, CJK and punctuation spaced apart."""
    # U+0000: a split on it and a join of the pieces (standard StringSplit keeps NULs).
    pieces = g.op("StringSplit", [TEXT], 2, delimiter="\x00")
    text = g.op(
        "StringJoin",
        [pieces, g.const("empty", "", object), g.const("axis1", 1, np.int64)],
        domain=EXTENSIONS,
    )
    text = g.regex_replace(text, char_class(t.removed - {0}), "", "removed")
    text = g.regex_replace(text, char_class(t.to_space | t.split), " ", "spaces")
    if do_lower_case:
        # str.lower()'s Final_Sigma: Σ after (cased, case-ignorable*) and not before
        # (case-ignorable*, cased). RE2 has no lookaround, so the context is matched and put
        # back; the character after it is never cased, so it never hides the next Σ.
        cased, ignorable = char_class(t.sigma_cased), char_class(t.sigma_ignorable)
        other = "[^" + char_class(t.sigma_cased | t.sigma_ignorable)[1:]
        g_final = f"({cased})({ignorable}*){CAPITAL_SIGMA}({ignorable}*)({other}|$)"
        text = g.regex_replace(text, g_final, f"\\1\\2{FINAL_SIGMA}\\3\\4", "final_sigma")
        text = per_character(g, text, lowercase_map(t))
        text = g.regex_replace(text, char_class(t.mn), "", "mn")
    return g.regex_replace(text, "(" + char_class(t.isolated) + ")", " \\1 ", "isolated")


def lowercase_map(t: CharacterTables) -> dict[str, str]:
    """c -> NFD(c.lower()) for every character that changes (Σ included: σ where the
    Final_Sigma rule did not apply)."""
    out = {}
    for c in t.assigned:
        mapped = unicodedata.normalize("NFD", c.lower())
        if mapped != c:
            out[c] = mapped
    return out


def per_character(g: Graph, text: str, mapping: dict[str, str]) -> str:
    """Each character of each text replaced by `mapping`'s value (or kept)."""
    chars, _, _, rows = g.ops(
        "StringRegexSplitWithOffsets",
        [text, g.const("any_char", "((?s).)", object), g.const("keep_char", "(?s).", object)],
        4,
        domain=EXTENSIONS,
    )
    lines = "\n".join(f"{k}\t{v}" for k, v in mapping.items())
    mapped = g.op("StringMapping", [chars], map=lines, domain=EXTENSIONS)
    # Back to one string per text: a [batch, longest] grid of characters, "" past each end.
    grid = ragged_to_dense(g, mapped, rows, g.const("empty_1", [""], object))
    return g.op(
        "StringJoin",
        [grid, g.const("empty", "", object), g.const("axis1", 1, np.int64)],
        domain=EXTENSIONS,
    )


def row_bounds(g: Graph, row_splits: str) -> tuple[str, str]:
    """Each row's first and one-past-last index, from `row_splits` [batch + 1]."""
    starts = g.op(
        "Slice", [row_splits, g.const("i0", [0], np.int64), g.const("i_1", [-1], np.int64)]
    )
    ends = g.op(
        "Slice", [row_splits, g.const("i1", [1], np.int64), g.const("imax", [2**62], np.int64)]
    )
    return starts, ends


def ragged_to_dense(g: Graph, values: str, row_splits: str, filler: str) -> str:
    """[batch, longest] from flat `values` cut at `row_splits` [batch + 1]; `filler` (a
    one-element tensor) past each row's end."""
    starts, ends = row_bounds(g, row_splits)
    counts = g.op("Sub", [ends, starts])
    width = g.op("Add", [g.op("ReduceMax", [counts], keepdims=0), g.const("one", 1, np.int64)])
    columns = g.op("Range", [g.const("zero", 0, np.int64), width, g.const("one", 1, np.int64)])
    column = g.op("Unsqueeze", [columns, g.const("i0", [0], np.int64)])
    index = g.op("Add", [g.op("Unsqueeze", [starts, g.const("i1", [1], np.int64)]), column])
    inside = g.op("Less", [column, g.op("Unsqueeze", [counts, g.const("i1", [1], np.int64)])])
    padded = g.op("Concat", [values, filler], axis=0)
    past_end = g.op("Shape", [values])  # the filler's index
    safe = g.op("Where", [inside, index, g.op("Squeeze", [past_end])])
    return g.op("Gather", [padded, safe], axis=0)


def wordpiece_ids(g: Graph, text: str, vocab: dict[str, int], max_chars: int) -> tuple[str, str]:
    """Flat token ids of every text in order, and the row splits [batch + 1] over them."""
    words, _, _, word_rows = g.ops(
        "StringRegexSplitWithOffsets",
        [text, g.const("space", "( )", object), g.const("no_keep", "", object)],
        4,
        domain=EXTENSIONS,
    )
    no_rows = g.const("no_rows", np.zeros(0, np.int64))
    pieces, _, begins, limits = g.ops(
        "WordpieceTokenizer",
        [words, no_rows],
        4,
        vocab=json.dumps(vocab, ensure_ascii=False),
        suffix_indicator="##",
        unknown_token=UNK,
        max_input_chars_per_word=max_chars,
        domain=EXTENSIONS,
    )
    keys = list(vocab)
    ids = g.op(
        "LabelEncoder",
        [pieces],
        keys_strings=keys,
        values_int64s=[vocab[k] for k in keys],
        default_int64=vocab[UNK],
        domain="ai.onnx.ml",
    )
    # FullTokenizer: a word with [UNK] among its pieces is [UNK] alone. The extensions' op
    # puts that [UNK] last in the word's row, after the pieces it found.
    unk = g.const("unk", vocab[UNK], np.int64)
    is_unk = g.op("Cast", [g.op("Equal", [ids, unk])], to=TensorProto.INT64)
    zero1 = g.const("zero_1", [0], np.int64)
    unk_before = g.op(
        "Concat", [zero1, g.op("CumSum", [is_unk, g.const("zero", 0, np.int64)])], axis=0
    )
    unks_in_word = g.op(
        "Sub", [g.op("Gather", [unk_before, limits]), g.op("Gather", [unk_before, begins])]
    )
    one = g.const("one", 1, np.int64)
    word_starts = g.op(
        "ScatterElements",
        [
            g.op("Mul", [ids, g.const("zero", 0, np.int64)]),
            begins,
            g.op("Add", [g.op("Mul", [begins, g.const("zero", 0, np.int64)]), one]),
        ],
        axis=0,
    )
    word_of_piece = g.op("Sub", [g.op("CumSum", [word_starts, g.const("zero", 0, np.int64)]), one])
    last_of_word = g.op("Sub", [g.op("Gather", [limits, word_of_piece]), one])
    position = g.op(
        "Range", [g.const("zero", 0, np.int64), g.op("Squeeze", [g.op("Shape", [ids])]), one]
    )
    clean_word = g.op(
        "Equal", [g.op("Gather", [unks_in_word, word_of_piece]), g.const("zero", 0, np.int64)]
    )
    keep = g.op("Or", [clean_word, g.op("Equal", [position, last_of_word])])
    kept = g.op("Compress", [ids, keep], axis=0)
    # Ids kept per word (all of a clean word's pieces, else its one [UNK]) -> splits per text.
    pieces_in_word = g.op("Sub", [limits, begins])
    kept_in_word = g.op(
        "Where", [g.op("Equal", [unks_in_word, g.const("zero", 0, np.int64)]), pieces_in_word, one]
    )
    kept_before = g.op(
        "Concat", [zero1, g.op("CumSum", [kept_in_word, g.const("zero", 0, np.int64)])], axis=0
    )
    return kept, g.op("Gather", [kept_before, word_rows])


def assemble(
    g: Graph, ids: str, splits: str, vocab: dict[str, int], max_length: int, id_type: int
) -> None:
    """`[CLS] ids[:max_length - 2] [SEP]` per text, right-padded with 0 to the longest."""
    starts, ends = row_bounds(g, splits)
    counts = g.op("Min", [g.op("Sub", [ends, starts]), g.const("most", max_length - 2, np.int64)])
    one = g.const("one", 1, np.int64)
    longest = g.op("Add", [g.op("ReduceMax", [counts], keepdims=0), g.const("two", 2, np.int64)])
    columns = g.op(
        "Unsqueeze",
        [g.op("Range", [g.const("zero", 0, np.int64), longest, one]), g.const("i0", [0], np.int64)],
    )
    count = g.op("Unsqueeze", [counts, g.const("i1", [1], np.int64)])
    position = g.op("Sub", [columns, one])  # the id at column j is ids[start + j - 1]
    inside = g.op(
        "And",
        [
            g.op("Greater", [columns, g.const("zero", 0, np.int64)]),
            g.op("LessOrEqual", [columns, count]),
        ],
    )
    index = g.op("Add", [g.op("Unsqueeze", [starts, g.const("i1", [1], np.int64)]), position])
    padded = g.op("Concat", [ids, g.const("pad_1", [0], np.int64)], axis=0)
    safe = g.op("Where", [inside, index, g.op("Squeeze", [g.op("Shape", [ids])])])
    body = g.op("Gather", [padded, safe], axis=0)  # 0 (padding) outside the text
    is_cls = g.op("Equal", [columns, g.const("zero", 0, np.int64)])
    sep_at = g.op("Add", [count, one])
    is_sep = g.op("Equal", [columns, sep_at])
    with_sep = g.op("Where", [is_sep, g.const("sep", vocab[SEP], np.int64), body])
    word_ids = g.op("Where", [is_cls, g.const("cls", vocab[CLS], np.int64), with_sep])
    mask = g.op("LessOrEqual", [columns, sep_at])
    ids_name, mask_name, segments_name = INPUT_NAMES
    g.op("Cast", [word_ids], [ids_name], to=id_type)
    g.op("Cast", [mask], [mask_name], to=id_type)
    g.op(
        "Cast", [g.op("Mul", [word_ids, g.const("zero", 0, np.int64)])], [segments_name], to=id_type
    )
