"""Commands write only over what this project wrote: never a user's folder, file or source.

Each case of the data-loss report is run as the user ran it (the CLI), and every byte under
the user's paths is compared before and after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_runtime import write_synthetic_bundle

from fastelectra.bundle import BUNDLE
from fastelectra.cli import main
from fastelectra.destinations import DestinationError, check_directory, check_file
from fastelectra.runtime.writers import JSONL, NPY
from fastelectra.workdirs import staged_directory

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from fastelectra.cli import main; sys.exit(main())"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (itself included) with its content's sha256."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    tree = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        tree[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundles") / "synthetic")


@pytest.fixture
def module_copy(tiny_module, tmp_path) -> Path:
    """A user's SavedModel: their only copy of it."""
    return Path(shutil.copytree(tiny_module, tmp_path / "sm"))


# -- build -o ------------------------------------------------------------------------------


def _refused_build(source: Path, out: Path, watched: Path, capsys, expected: str) -> None:
    before = snapshot(watched)
    started = time.perf_counter()
    assert main(["build", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert expected in err and str(out) in err, err
    assert snapshot(watched) == before
    # Refused before any work: no TensorFlow stage ran (that takes tens of seconds).
    assert time.perf_counter() - started < 5


def test_build_refuses_a_folder_of_user_files(module_copy, tmp_path, capsys):
    user = tmp_path / "u"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    _refused_build(module_copy, user, tmp_path, capsys, "not a fastelectra bundle")
    assert (user / "notes.txt").read_text() == "precious"


def test_build_refuses_the_source_itself(module_copy, tmp_path, capsys):
    _refused_build(module_copy, module_copy, tmp_path, capsys, "is the source")


def test_build_refuses_a_folder_holding_the_source(module_copy, tmp_path, capsys):
    parent = tmp_path / "p"
    (parent / "inner").mkdir(parents=True)
    source = Path(shutil.move(module_copy, parent / "inner" / "sm"))
    (parent / "keep.txt").write_text("keep")
    _refused_build(source, parent, tmp_path, capsys, "holds the source")


def test_build_refuses_a_plain_file(module_copy, tmp_path, capsys):
    file = tmp_path / "f.txt"
    file.write_text("x")
    _refused_build(module_copy, file, tmp_path, capsys, "is a file")


def test_build_refuses_a_symbolic_link(module_copy, tmp_path, capsys):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    _refused_build(module_copy, tmp_path / "link", tmp_path, capsys, "symbolic link")


def test_force_never_removes_foreign_files(module_copy, tmp_path, capsys):
    user = tmp_path / "u"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert main(["build", str(module_copy), "-o", str(user), "--force"]) == 1
    assert "not a fastelectra bundle" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_auto_checks_before_building(module_copy, tmp_path, capsys):
    user = tmp_path / "u"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert main(["build", str(module_copy), "-o", str(user), "--precision", "auto"]) == 1
    assert "not a fastelectra bundle" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


# -- what may be replaced ------------------------------------------------------------------


def test_a_bundle_of_ours_and_an_empty_folder_may_be_replaced(synthetic, tmp_path):
    check_directory(tmp_path / "new", BUNDLE)
    (tmp_path / "empty").mkdir()
    check_directory(tmp_path / "empty", BUNDLE)
    check_directory(synthetic, BUNDLE)
    copy = Path(shutil.copytree(synthetic, tmp_path / "copy"))
    with staged_directory(copy, BUNDLE) as staging:
        (staging / "fresh").write_text("new")
    assert [p.name for p in copy.iterdir()] == ["fresh"]


def test_a_bundle_with_a_users_file_in_it_is_refused(synthetic, tmp_path):
    copy = Path(shutil.copytree(synthetic, tmp_path / "copy"))
    (copy / "my-notes.md").write_text("mine")
    with pytest.raises(DestinationError, match=r"my-notes\.md"):
        check_directory(copy, BUNDLE)
    before = snapshot(copy)
    with pytest.raises(DestinationError), staged_directory(copy, BUNDLE):
        pass
    assert snapshot(copy) == before


def test_files_added_during_a_build_are_not_replaced(synthetic, tmp_path):
    """The check runs again right before the swap: a file the user put there meanwhile stays."""
    copy = Path(shutil.copytree(synthetic, tmp_path / "copy"))
    with (
        pytest.raises(DestinationError, match=r"late\.txt"),
        staged_directory(copy, BUNDLE) as staging,
    ):
        (staging / "fresh").write_text("new")
        (copy / "late.txt").write_text("added while the build ran")
    assert (copy / "late.txt").exists() and not (copy / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_damaged_metadata_file_is_not_ours(synthetic, tmp_path):
    copy = Path(shutil.copytree(synthetic, tmp_path / "copy"))
    (copy / "fastelectra.json").write_text("{ not json")
    with pytest.raises(DestinationError, match="not a fastelectra bundle"):
        check_directory(copy, BUNDLE)


def test_a_missing_parent_is_made_but_a_file_parent_refused(tmp_path):
    check_directory(tmp_path / "a" / "b", BUNDLE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="is a file, not a directory"):
        check_directory(tmp_path / "file" / "b", BUNDLE)


# -- export-triton -------------------------------------------------------------------------


def test_export_triton_refuses_a_foreign_model_folder(synthetic, tmp_path, capsys):
    pytest.importorskip("tritonclient", reason="the triton extra is not installed")
    repo = tmp_path / "repo"
    model = repo / "synthetic"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"the user's own model")
    (model / "config.pbtxt").write_text('name: "synthetic"\n')
    before = snapshot(repo)
    assert main(["export-triton", str(synthetic), str(repo), "--kind", "KIND_CPU"]) == 1
    assert "not a Triton model folder written by fastelectra" in capsys.readouterr().err
    assert snapshot(repo) == before


def test_export_triton_replaces_its_own_folder_but_not_added_files(synthetic, tmp_path, capsys):
    pytest.importorskip("tritonclient", reason="the triton extra is not installed")
    repo = tmp_path / "repo"
    args = ["export-triton", str(synthetic), str(repo), "--kind", "KIND_CPU"]
    assert main(args) == 0
    assert main(args) == 0  # its own folder, untouched since: replaced
    (repo / "synthetic" / "1" / "labels.txt").write_text("the user's")
    before = snapshot(repo)
    assert main(args) == 1
    assert "1/labels.txt" in capsys.readouterr().err
    assert snapshot(repo) == before


# -- embed -o ------------------------------------------------------------------------------


def test_embed_output_checked_before_any_work(synthetic, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    folder = tmp_path / "d.npy"
    folder.mkdir()
    (folder / "inside").write_text("mine")
    foreign = tmp_path / "results.jsonl"
    foreign.write_text("my own notes, not embeddings\n")
    before = snapshot(tmp_path)
    for out, message in ((folder, "is a directory"), (foreign, "is not a JSONL file")):
        assert main(["embed", str(synthetic), "-i", str(texts), "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert message in err and str(out) in err, err
    assert snapshot(tmp_path) == before


def test_embed_replaces_its_own_outputs(synthetic, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    for name in ("v.npy", "v.jsonl"):
        out = tmp_path / name
        assert main(["embed", str(synthetic), "-i", str(texts), "-o", str(out)]) == 0
        texts.write_text("one\ntwo\nthree\n")
        assert main(["embed", str(synthetic), "-i", str(texts), "-o", str(out)]) == 0
        texts.write_text("one\ntwo\n")
    assert np.load(tmp_path / "v.npy").shape[0] == 3


def test_output_kinds(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    check_file(tmp_path / "a.npy", NPY)
    (tmp_path / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(DestinationError):
        check_file(tmp_path / "b.npy", NPY)
    (tmp_path / "c.jsonl").write_text('{"index": 0, "embedding": [0.5]}\n')
    check_file(tmp_path / "c.jsonl", JSONL)
    (tmp_path / "d.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DestinationError):
        check_file(tmp_path / "d.jsonl", JSONL)
    (tmp_path / "e.jsonl").write_bytes(b"")
    check_file(tmp_path / "e.jsonl", JSONL)


def test_parquet_output_kind(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from fastelectra.scale.ray_data import PARQUET

    (tmp_path / "t.parquet").write_text("a CSV, really")
    with pytest.raises(DestinationError, match="not a Parquet file"):
        check_file(tmp_path / "t.parquet", PARQUET)
    (tmp_path / "p.parquet").write_bytes(b"PAR1....PAR1")
    check_file(tmp_path / "p.parquet", PARQUET)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_embed_interrupted_leaves_nothing(synthetic, tmp_path, sig):
    """Killed while reading its input (stdin held open), embed leaves no partial file."""
    out = tmp_path / "x.npy"
    process = subprocess.Popen(
        [*CLI, "embed", str(synthetic), "-o", str(out), "--chunk-lines", "1", "--threads", "1"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        # A shell starts background jobs with SIGINT ignored, and the child would inherit
        # that: give it the default disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdin is not None
    process.stdin.write(b"first line\n")
    process.stdin.flush()
    deadline = time.monotonic() + 60
    # Wait until the partial file exists: the command is past its checks and writing.
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, sig)
    process.wait(30)
    process.stdin.close()
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


SLOW_EXPORT = """
import sys, time
from pathlib import Path
from fastelectra.cli import main
from fastelectra.scale import triton

copy = triton.link_or_copy
def slow(src, dst):
    copy(src, dst)
    Path(sys.argv[3]).write_text("copying")
    time.sleep(60)

triton.link_or_copy = slow
sys.exit(main(["export-triton", sys.argv[1], sys.argv[2], "--kind", "KIND_CPU"]))
"""


def test_export_triton_interrupted_leaves_nothing(synthetic, tmp_path):
    pytest.importorskip("tritonclient", reason="the triton extra is not installed")
    repo, flag = tmp_path / "repo", tmp_path / "copying"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXPORT, str(synthetic), str(repo), str(flag)], cwd=ROOT
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == -signal.SIGTERM
    assert list(repo.iterdir()) == []


def test_a_cache_directory_of_another_kind_is_refused_not_removed(tmp_path):
    """The preset modules and TF Models releases in the cache are replaced only when they are
    what the cache holds there (a SavedModel, an unpacked release), never removed blindly."""
    from fastelectra.convert.cache import MODULE, RELEASE_CODE

    module = tmp_path / "tiny-hub-v1"
    module.mkdir()
    (module / "notes.txt").write_text("mine")
    with (
        pytest.raises(DestinationError, match=r"saved_model\.pb"),
        staged_directory(module, MODULE),
    ):
        pass
    assert [p.name for p in module.iterdir()] == ["notes.txt"]

    (module / "saved_model.pb").write_bytes(b"old")
    with staged_directory(module, MODULE) as staging:
        (staging / "saved_model.pb").write_bytes(b"new")
    assert (module / "saved_model.pb").read_bytes() == b"new"
    assert not (module / "notes.txt").exists()  # the whole old module was replaced

    release = tmp_path / "2.3.0"
    release.mkdir()
    with staged_directory(release, RELEASE_CODE) as staging:  # empty: may be written
        (staging / "official").mkdir()
    assert [p.name for p in release.iterdir()] == ["official"]
    (release / "official").rmdir()
    (release / "x").write_text("")
    with pytest.raises(DestinationError, match="official"), staged_directory(release, RELEASE_CODE):
        pass
