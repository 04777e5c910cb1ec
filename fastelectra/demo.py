"""`make demo`: build, verify and use a bundle end to end.

On the embedded default (all-MiniLM-L6-v2's real weights in the TF Hub format of
`google/electra_large/1`, built on first use) or any module: `make demo SOURCE=path-or-handle`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fastelectra.precisions import FP32, PRECISIONS, as_precision

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The new tax rules take effect next April.",
    "Legislators approved changes to income taxation starting in spring.",
    "How do I reset my router password?",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", default="minilm", help="preset name, SavedModel, .tar.gz or handle"
    )
    parser.add_argument("--out", default=".cache/demo-bundle")
    parser.add_argument("--precision", default=FP32.name, choices=PRECISIONS)
    args = parser.parse_args(argv)

    from fastelectra.convert.build import build
    from fastelectra.convert.resolve import resolve_source
    from fastelectra.runtime import Encoder

    source = resolve_source(args.source)
    out = Path(args.out)
    precision = as_precision(args.precision)
    print(f"== building a {precision.name} bundle from {source}", flush=True)
    result = build(source, out, precision=precision)

    verdict = "passed" if result.verification["passed"] else "FAILED"
    print(f"\n== verification against TensorFlow: {verdict} (figures: {out / 'verification.json'})")

    print("\n== embedding with the bundle alone (no TensorFlow in the runtime)")
    encoder = Encoder.load(out)
    embeddings = encoder.embed(SENTENCES, pooling="mean", normalize=True)
    similarity = embeddings @ embeddings.T
    print(f"{len(SENTENCES)} sentences -> {embeddings.shape} embeddings; cosine similarity matrix:")
    for i, sentence in enumerate(SENTENCES):
        row = " ".join(f"{v:5.2f}" for v in similarity[i])
        print(f"  [{i}] {row}   {sentence}")
    best = np.argsort(-similarity, axis=1)[:, 1]
    for i, j in enumerate(best):
        print(f"  nearest to [{i}] is [{j}]")
    print(f"\nfused ops: {result.meta.fused_ops}")
    print(f"timings (s): { {k: round(v, 1) for k, v in result.timings.items()} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
