"""`--precision auto`: candidates built, timed here, the fastest that passes kept and explained."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from fastelectra.cli import main
from fastelectra.convert.auto import build_auto, parse_shape
from fastelectra.errors import InputError


@pytest.fixture(scope="module")
def auto_bundle(tiny_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    texts = root / "texts.txt"
    texts.write_text("choose by timing\non this machine\tnot by habit\n", encoding="utf-8")
    out = root / "bundle"
    # Random weights: quantise every node; the tiny model's INT8 gate still passes.
    bundle = build_auto(
        tiny_module, out, ((1, 8), (2, 16)), verify_texts=texts, int8_search=False, progress=None
    )
    return root, bundle


def test_the_fastest_candidate_that_passes_is_kept(auto_bundle):
    root, bundle = auto_bundle
    record = bundle.meta.auto
    assert set(record["candidates"]) == {"fp32", "int8-dynamic"}
    assert record["target_shapes"] == ["1x8", "2x16"]
    timed = {p: f for p, f in record["candidates"].items() if f["passed"]}
    assert timed, record
    for figures in timed.values():
        assert set(figures["p50_ms"]) == {"1x8", "2x16"}
        assert all(ms > 0 for ms in figures["p50_ms"].values())

    def score(p):
        values = list(timed[p]["p50_ms"].values())
        return values[0] * values[1]  # the geometric mean's order

    assert record["chosen"] == min(timed, key=score)
    assert bundle.meta.precision.name == record["chosen"]
    assert "AVX2" in record["cpu"]["isa"] or record["cpu"]["isa"] == []  # names, not flags
    on_disk = json.loads((bundle.path / "fastelectra.json").read_text())
    assert on_disk["auto"] == record
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_a_bundle_chosen_elsewhere_warns_and_info_says_so(auto_bundle, monkeypatch, capsys):
    import fastelectra.cpu as cpu
    from fastelectra.runtime import Encoder

    _, bundle = auto_bundle
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on the CPU it was timed on: no warning
        Encoder.load(bundle.path)
    timed_on = bundle.meta.auto["cpu"]
    monkeypatch.setattr(cpu, "this_cpu", lambda: {"model": "older", "isa": ["AVX2"]})
    missing = sorted(set(timed_on["isa"]) - {"AVX2"})
    if not missing:
        pytest.skip("this CPU has no instruction set beyond AVX2 to lack")
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(missing[0])}.*which this CPU lacks"):
        Encoder.load(bundle.path)
    assert main(["info", str(bundle.path)]) == 0
    out = capsys.readouterr().out
    assert f"chose {bundle.meta.auto['chosen']}" in out and "this CPU lacks" in out


def test_target_shapes_are_checked():
    assert parse_shape("1x128") == (1, 128)
    for bad in ("128", "0x16", "1x1", "axb"):
        with pytest.raises(InputError, match="BATCHxSEQ"):
            parse_shape(bad)


def test_force_is_refused_with_auto(tiny_module, tmp_path):
    with pytest.raises(InputError, match="no --force"):
        build_auto(tiny_module, tmp_path / "out", force=True)
    assert (
        main(["build", str(tiny_module), "-o", str(tmp_path / "b"), "--target-shape", "1x8"]) == 2
    )
