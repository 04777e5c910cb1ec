"""Which tf-models-official releases change the encoder's graph: the survey behind
`fastelectra/convert/generations.py` (docs/generations.md).

    python benchmarks/generations_survey.py [--releases 2.2.0,2.3.0,...] [--out DIR]

For each release a tiny module (2 layers, hidden 64) is written by the release's own export
code, exported to ONNX (hollow route), and fingerprinted: the sorted multiset of
`op_type(producer op types)` over the graph, which ignores names and constants (so -10000 and
-1e9 mask adders look alike) but catches every structural change. Releases with the same
fingerprint and calling convention are one graph form. Each is then fused with the rewrites
and checked against TensorFlow, so the table also says what converts today.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ALL_RELEASES = [
    "2.2.0",
    "2.3.0",
    "2.4.0",
    "2.5.0",
    "2.6.0",
    "2.7.0",
    "2.8.0",
    "2.9.0",
    "2.10.0",
    "2.11.0",
    "2.12.0",
    "2.13.0",
    "2.14.0",
    "2.15.0",
    "2.16.0",
    "2.17.0",
    "2.18.0",
    "2.19.1",
    "2.20.0",
]
LIST_IO_EXPORTER_UNTIL = (2, 4)  # official/nlp/bert/export_tfhub.py; tools/ from 2.5 on


def exporter_of(release: str) -> str:
    major, minor = (int(x) for x in release.split(".")[:2])
    return (
        "bert.export_tfhub"
        if (major, minor) <= LIST_IO_EXPORTER_UNTIL
        else "tools.export_tfhub_lib"
    )


def fingerprint(model) -> tuple[str, dict[str, int]]:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    shapes = sorted(
        f"{n.op_type}({','.join(producers.get(i, 'x') for i in n.input)})" for n in model.graph.node
    )
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return hashlib.sha1("\n".join(shapes).encode()).hexdigest()[:10], dict(sorted(ops.items()))


def survey(release: str, work: Path) -> dict:
    import onnx
    import onnxruntime as ort

    from fastelectra.convert.fuse import fuse
    from fastelectra.convert.generations import build_generation_module
    from fastelectra.convert.presets import PRESETS, vocab_path
    from fastelectra.convert.source import load_source
    from fastelectra.convert.tf_export import export_onnx

    tiny = PRESETS["tiny"]
    exporter = exporter_of(release)
    row: dict = {"release": release, "exporter": exporter}
    module = work / "modules" / f"{release}-{exporter}"
    started = time.perf_counter()
    if not (module / "saved_model.pb").exists():
        build_generation_module(release, exporter, tiny.dims, module, vocab_path(tiny))
    src = load_source(module)
    row["convention"] = src.convention
    exported = export_onnx(src, work / release / "exported.onnx")
    row["fingerprint"], row["ops"] = fingerprint(
        onnx.load(str(exported.path), load_external_data=False)
    )
    try:
        report = fuse(exported.path, work / release / "fused.onnx", src.dimensions)
    except Exception as e:  # the table records what does not convert, and why
        row["fuse_error"] = str(e)
        return row
    row["fused_ops"], row["rewrites"] = report.counts, report.rewrites
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (3, 24)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    segments = (np.arange(24) >= 12).astype(np.int32)[None].repeat(3, 0)
    session = ort.InferenceSession(str(work / release / "fused.onnx"))
    feed = {"input_word_ids": ids, "input_mask": mask, "segment_ids": segments}
    pooled, sequence = session.run(["pooled_output", "sequence_output"], feed)
    tf_pooled, tf_sequence = (t.numpy() for t in src.call(ids, mask, segments))
    valid = mask.astype(bool)
    row["max_abs_diff"] = float(
        max(np.abs(pooled - tf_pooled).max(), np.abs(sequence[valid] - tf_sequence[valid]).max())
    )
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main(argv: list[str]) -> int:
    from fastelectra.bench.machine import machine_info
    from fastelectra.convert.cache import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", default=",".join(ALL_RELEASES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=cache_dir() / "generations-survey")
    args = parser.parse_args(argv)
    rows = []
    for release in args.releases.split(","):
        try:
            row = survey(release, args.work)
        except Exception as e:
            row = {"release": release, "error": f"{type(e).__name__}: {e}"[-2000:]}
        print(json.dumps({k: v for k, v in row.items() if k != "ops"}), flush=True)
        rows.append(row)
    forms: dict[tuple, list[str]] = {}
    for row in rows:
        if "fingerprint" in row:
            forms.setdefault((row["fingerprint"], row["convention"]), []).append(row["release"])
    result = {
        "machine": machine_info(),
        "releases": rows,
        "forms": [
            {"fingerprint": f, "convention": c, "releases": r} for (f, c), r in forms.items()
        ],
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "generations.json").write_text(json.dumps(result, indent=2) + "\n")
    for form in result["forms"]:
        print(f"{form['fingerprint']} {form['convention']:6s} {', '.join(form['releases'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
