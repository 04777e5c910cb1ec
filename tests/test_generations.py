"""The matrix: every TF Models generation's tiny module, written by that release's own export
code, builds at fp32 and int8-dynamic, fuses completely, and matches TensorFlow.

The first run fetches each release's wheel from PyPI (cached under $FASTELECTRA_CACHE).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastelectra.convert.build import build
from fastelectra.convert.fuse import count_of, expected_counts
from fastelectra.convert.generations import GENERATIONS
from fastelectra.convert.presets import preset_module

pytestmark = pytest.mark.slow

# Enough to show agreement, few enough that 2 x 7 builds stay quick: a pair, a long text.
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "ELECTRA: pre-training text encoders as discriminators rather than generators",
    "Thanks!",
    "naïve café, résumé — and a ☃ snowman",
    "how far is the moon?\tabout 384,400 km on average",
    " ".join(["a long passage about many things"] * 30),
]


@pytest.fixture(scope="module", params=sorted(GENERATIONS), ids=lambda g: f"tiny-{g}")
def generation(request, tmp_path_factory):
    """(module path, fp32 bundle, int8-dynamic bundle) for one generation."""
    gen = request.param
    module = preset_module(f"tiny-{gen}")
    root = tmp_path_factory.mktemp(f"gen-{gen}")
    texts = root / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    fp32 = build(module, root / "fp32", verify_texts=texts, progress=None)
    # Random weights: quantise every node (no search) and judge the figures here.
    int8 = build(
        module,
        root / "int8",
        precision="int8-dynamic",
        verify_texts=texts,
        int8_search=False,
        force=True,
        progress=None,
    )
    return gen, module, fp32, int8


def test_the_table_names_a_release_and_exporter(generation):
    gen = GENERATIONS[generation[0]]
    assert gen.release.count(".") == 2 and gen.exporter in {
        "bert.export_tfhub",
        "tools.export_tfhub_lib",
    }


def test_fused_counts_are_exact_and_every_rewrite_reached_its_count(generation):
    _, _, fp32, int8 = generation
    for result in (fp32, int8):
        meta = json.loads((result.out / "fastelectra.json").read_text())
        dims = result.meta.dimensions
        for key, n in expected_counts(dims).items():
            assert count_of(meta["fused_ops"], key) == n, (key, meta["fused_ops"])
        assert meta["rewrites"], "rewrite counts are recorded beside the fused-op counts"
        for name, figures in meta["rewrites"].items():
            assert figures["count"] == figures["required"], name
        assert meta["rewrites"]["einsum_output_projection_to_matmul"]["required"] == dims.layers


def test_fp32_matches_tensorflow(generation):
    _, _, fp32, _ = generation
    report = fp32.verification
    assert report["passed"], report["failures"]
    for name in ("pooled_output", "sequence_output"):
        assert report["outputs"][name]["max_abs_diff"] <= 1e-4
    assert report["texts"] == len(TEXTS) and report["truncated_texts"] == 0


def test_int8_dynamic_is_close_to_tensorflow(generation):
    _, _, _, int8 = generation
    report = int8.verification
    assert report["outputs"]["pooled_output"]["min_cosine"] >= 0.99
    assert report["mean_pooled_sequence"]["min_cosine"] >= 0.99


def test_encoder_embed_agrees_with_tensorflow(generation):
    from fastelectra.convert.source import load_source
    from fastelectra.runtime import Encoder

    _, module, fp32, _ = generation
    encoder = Encoder.load(fp32.out)
    texts = [t for t in TEXTS if "\t" not in t]
    got = encoder.embed(texts, pooling="pooled")
    src = load_source(module)
    for text, vector in zip(texts, got, strict=True):
        ids = np.array([encoder.tokenize([text])[0].ids], np.int32)
        pooled, _ = src.call(ids, np.ones_like(ids), np.zeros_like(ids))
        np.testing.assert_allclose(vector, pooled.numpy()[0], atol=1e-4)
