"""TF Hub BERT-family modules as each generation of TF Models wrote them, by that code itself.

`google/electra_large/1` was exported in 2020 by tf-models-official 2.3's
`official/nlp/bert/export_tfhub.py` around its `TransformerEncoder`; later BERT-family modules
came from later releases (dict inputs / outputs, `BertEncoder`, Keras' MultiHeadAttention ...).
Their graphs differ, so a module form is supported only once it has been built by its own
release and converted. `build_generation_module` fetches the release's wheel from PyPI
(cached, never copied into the repository), and runs its export code in a child process
(`generation_export.py`) under the project's TensorFlow with tf_keras.

The table lists one release per distinct graph form (docs/generations.md says how the
boundaries were found and what changes at each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fastelectra.convert.cache import MODULE, RELEASE_CODE, cache_dir
from fastelectra.convert.source import SourceError
from fastelectra.workdirs import remove_abandoned, scratch_directory, staged_directory


@dataclass(frozen=True)
class Generation:
    name: str  # the preset suffix, e.g. "2020"
    release: str  # tf-models-official version whose code writes the module
    exporter: str  # which export entry point of that release (generation_export.EXPORTERS)
    features: str  # what distinguishes its graph, for docs and `fastelectra info`


GENERATIONS: dict[str, Generation] = {
    g.name: g
    for g in (
        Generation(
            "2020-05",
            "2.2.0",
            "bert.export_tfhub",
            "TransformerEncoder on keras Network; list IO; einsums spelt 'btnh,bfnh->bnft'; "
            "scale after QK; position Slice -> ExpandDims; mask (1 - ones*m) * -10000",
        ),
        Generation(
            "2020",
            "2.3.0",
            "bert.export_tfhub",
            "the electra_large/1 form: TransformerEncoder; list IO [word_ids, mask, type_ids] "
            "-> [pooled, sequence]; scale after QK; position StridedSlice -> BroadcastTo; "
            "mask (1 - ones*m) * -10000",
        ),
        Generation(
            "2021-01",
            "2.4.0",
            "bert.export_tfhub",
            "BertEncoder; list IO; scale on the query; position StridedSlice -> BroadcastTo; "
            "mask * -1e9",
        ),
        Generation(
            "2021-05",
            "2.5.0",
            "tools.export_tfhub_lib",
            "first dict IO export (official/nlp/tools/export_tfhub_lib); graph as 2.4",
        ),
        Generation(
            "2021-08",
            "2.6.0",
            "tools.export_tfhub_lib",
            "dict IO; position StridedSlice -> Reshape -> BroadcastTo; mask ones*m (2.6-2.9)",
        ),
        Generation(
            "2026-02",
            "2.20.0",
            "tools.export_tfhub_lib",
            "dict IO; mask BroadcastTo instead of ones*m (the form of 2.10-2.20)",
        ),
    )
}


def cache_root() -> Path:
    return cache_dir() / "tf-models"


def release_dir(release: str) -> Path:
    """The unpacked `tf-models-official==release` wheel (fetched from PyPI on first use)."""
    root = cache_root()
    target = root / release
    if (target / "official" / "__init__.py").exists():
        return target
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheels, release)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        cmd += ["--only-binary=:all:", f"tf-models-official=={release}", "-d", str(wheels)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = _find_wheel(wheels, release)
        if done.returncode != 0 or wheel is None:
            raise SourceError(
                f"could not fetch tf-models-official=={release} from PyPI: "
                f"{done.stderr.strip()[-500:]}"
            )
    remove_abandoned(target)  # what a killed unpack left beside it
    with staged_directory(target, RELEASE_CODE) as staging, zipfile.ZipFile(wheel) as z:
        z.extractall(staging)
    return target


def _find_wheel(folder: Path, release: str) -> Path | None:
    found = sorted(folder.glob(f"tf_models_official-{release}-*.whl"))
    return found[0] if found else None


def build_generation_module(
    release: str,
    exporter: str,
    dims: dict[str, int],
    out: Path,
    vocab_file: Path,
    do_lower_case: bool = True,
    seed: int = 0,
) -> Path:
    """Write the module of `release`'s `exporter` with `dims` (random weights) to `out`."""
    code = release_dir(release)
    remove_abandoned(out)  # what a killed export left beside it
    with scratch_directory(out, "work") as work, staged_directory(out, MODULE) as staging:
        spec = dict(dims)
        spec.update(
            exporter=exporter,
            out=str(staging),
            vocab_file=str(vocab_file),
            do_lower_case=do_lower_case,
            seed=seed,
        )
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The release first, then this package's own directory (for the child module only).
        package_root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(
            [str(code), str(package_root), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        cmd = [sys.executable, "-m", "fastelectra.convert.generation_export", str(spec_file)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SourceError(
                f"tf-models-official {release} ({exporter}) failed to export a module:\n"
                + "\n".join(done.stderr.strip().splitlines()[-25:])
            )
        used = json.loads(done.stdout.strip().splitlines()[-1])["official"]
        if Path(used).resolve() != (code / "official").resolve():
            raise SourceError(f"the export ran TF Models from {used}, not release {release}")
    return out
