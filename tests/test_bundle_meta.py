"""fastelectra.json is checked field by field: a wrong type or a path out of the bundle is a
one-line `BundleError` in every command, never a traceback or a file read elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_runtime import write_synthetic_bundle

from fastelectra.bundle import META_FILE, BundleError, load_bundle
from fastelectra.cli import main
from fastelectra.runtime import Encoder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundles") / "synthetic")


def damaged(synthetic: Path, tmp_path: Path, change) -> Path:
    copy = Path(shutil.copytree(synthetic, tmp_path / "damaged"))
    meta = json.loads((copy / META_FILE).read_text())
    change(meta)
    (copy / META_FILE).write_text(json.dumps(meta))
    return copy


def set_path(meta: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for part in parents:
        meta = meta[part]
    meta[last] = value


CHANGES = [
    ("max_sequence_length", "512", "max_sequence_length must be an integer"),
    ("max_sequence_length", True, "max_sequence_length must be an integer"),
    ("max_sequence_length", 1, "max_sequence_length must be an integer of at least 3"),
    ("dimensions", [], "dimensions must be an object"),
    ("dimensions.hidden", "64", "dimensions.hidden must be an integer of at least 1"),
    ("dimensions.layers", -1, "dimensions.layers must be an integer of at least 0"),
    ("precision", "int4", "precision must be one of"),
    ("do_lower_case", "yes", "do_lower_case must be true or false"),
    ("inputs", "input_word_ids", "inputs must be a list"),
    ("outputs", [1, 2], "outputs must be a list of strings"),
    ("fused_ops", [], "fused_ops must be an object"),
    ("files", ["model.onnx"], "files must be an object"),
    ("source", 7, "source must be a string"),
]


@pytest.mark.parametrize(("field", "value", "message"), CHANGES)
def test_wrong_types_are_one_line_errors(synthetic, tmp_path, capsys, field, value, message):
    bundle = damaged(synthetic, tmp_path, lambda meta: set_path(meta, field, value))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)
    texts = tmp_path / "texts.txt"
    texts.write_text("a text\n")
    for command in (["info", str(bundle)], ["embed", str(bundle), "-i", str(texts)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/hostname", "sub/model.onnx", ".."])
def test_files_must_be_plain_names_inside_the_bundle(synthetic, tmp_path, name):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"not the bundle's")

    def add(meta: dict) -> None:
        meta["files"][name] = "0" * 64

    bundle = damaged(synthetic, tmp_path, add)
    with pytest.raises(BundleError, match="files must be plain file names inside the bundle"):
        Encoder.load(bundle)


def test_a_missing_field_names_it(synthetic, tmp_path):
    bundle = damaged(synthetic, tmp_path, lambda meta: meta.pop("dimensions"))
    with pytest.raises(BundleError, match="no 'dimensions'"):
        load_bundle(bundle)
