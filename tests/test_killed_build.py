"""A killed build leaves nothing behind for good: owned scratch directories and their sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastelectra.bundle import load_bundle
from fastelectra.workdirs import owned_directory, remove_abandoned, scratch_directory

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **kwargs) -> subprocess.Popen:
    # cwd=ROOT: this checkout's fastelectra, whatever is installed.
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, **kwargs)


def _leftover(path: Path, files: tuple[str, ...] = ("file",)) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("x")
    return path


def test_a_directory_owned_by_a_live_process_is_kept(tmp_path):
    out = tmp_path / "out"
    mine = owned_directory(out, "work")  # owned by this very process
    with scratch_directory(out, "staging") as staging:
        assert remove_abandoned(out) == []
        assert mine.path.is_dir() and staging.is_dir()
    assert not staging.exists()
    mine.remove()
    assert list(tmp_path.iterdir()) == []


def test_only_unowned_directories_of_this_destination_are_removed(tmp_path):
    out = _leftover(tmp_path / "out", ("model.onnx",))
    dead = [
        _leftover(tmp_path / ".out.work-abcd_123"),
        _leftover(tmp_path / ".out.staging-zz99zz99"),
        _leftover(tmp_path / ".out.old-00000000", ()),
    ]
    kept = [
        _leftover(tmp_path / ".other.work-abcd_123"),  # another destination's
        _leftover(tmp_path / ".out.work-short"),  # not a mkdtemp name
        _leftover(tmp_path / ".out.cache-abcd_123"),  # not a kind we make
        _leftover(tmp_path / ".out.work-abcd_123.x"),
    ]
    (tmp_path / ".out.work-aaaaaaaa").write_text("a file, not a directory")
    kept.append(tmp_path / ".out.work-aaaaaaaa")

    assert sorted(remove_abandoned(out)) == sorted(dead)
    assert sorted(tmp_path.iterdir()) == sorted([out, *kept])
    assert (out / "model.onnx").exists()


def test_a_bundle_parked_by_a_killed_swap_is_put_back(tmp_path):
    out = tmp_path / "out"
    old = tmp_path / ".out.old-abcdefgh"
    old.mkdir()
    _leftover(old / "out", ("model.onnx",))  # killed between the two renames: no OUT
    remove_abandoned(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "model.onnx").exists()


def test_an_interrupt_between_the_swaps_renames_keeps_the_old_bundle(tmp_path, monkeypatch):
    import fastelectra.workdirs as workdirs
    from fastelectra.bundle import BUNDLE

    out = _leftover(tmp_path / "out", ("old.onnx",))
    # A bundle: the only kind of directory `staged_directory(out, BUNDLE)` replaces.
    meta = {"format": "fastelectra-bundle", "files": {"old.onnx": "sha256"}}
    (out / "fastelectra.json").write_text(json.dumps(meta))
    renames = []

    def interrupted_second(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:  # OUT is parked, the new one not yet in place
            raise KeyboardInterrupt
        os.rename(src, dst)

    monkeypatch.setattr(workdirs.os, "replace", interrupted_second)
    with pytest.raises(KeyboardInterrupt), workdirs.staged_directory(out, BUNDLE) as staging:
        (staging / "new.onnx").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["fastelectra.json", "old.onnx"]


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "out"
    owner = _python(
        f"""
        import time
        from fastelectra.workdirs import owned_directory
        print(owned_directory({str(out)!r}, "work").path, flush=True)
        time.sleep(120)
        """,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        path = Path(owner.stdout.readline().strip())
        assert path.is_dir()
        assert remove_abandoned(out) == []  # its owner is alive
        owner.kill()
        owner.wait(timeout=30)
        assert remove_abandoned(out) == [path]
        assert not path.exists()
    finally:
        owner.kill()
        owner.stdout.close()


def test_sigterm_runs_cleanup_then_still_kills():
    child = _python(
        """
        import os, signal, time
        from fastelectra.workdirs import cleanup_on_signals
        with cleanup_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            finally:
                print("cleaned up", flush=True)
        print("not reached", flush=True)
        """,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout, _ = child.communicate(timeout=60)
    assert stdout == "cleaned up\n"
    assert child.returncode == -signal.SIGTERM  # delivered again once the cleanup ran


def _start_build(source: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastelectra.cli", "build", str(source), "-o", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_export(build: subprocess.Popen, out: Path, timeout_s: float = 300) -> Path:
    """The build's work directory, once the export wrote a file into it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for work in out.parent.glob(f".{out.name}.work-*"):
            # Not build.log, there from the start: a file the exporter (the child) wrote.
            if any(work.glob("exported.onnx*")):
                return work
        if build.poll() is not None:
            pytest.fail(f"the build ended (exit {build.returncode}) before its export")
        time.sleep(0.05)
    build.kill()
    pytest.fail(f"no export file in a work directory within {timeout_s} s")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_build_leaves_nothing_after_the_next_one(tiny_module, tmp_path):
    from fastelectra.convert.build import build

    out = tmp_path / "out"
    process = _start_build(tiny_module, out)
    try:
        work = _wait_for_export(process, out)
        children = _children(process.pid)  # the TensorFlow stage, exporting
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert work.is_dir()  # what SIGKILL leaves: no cleanup ran
    assert children, "the export runs in a child process"
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in children if _running(pid)]
    assert not alive, f"the TensorFlow stage outlived its killed build: {alive}"

    messages: list[str] = []
    build(tiny_module, out, progress=messages.append)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    load_bundle(out)
    assert f"removed {work.name}, left beside {out} by a killed build" in messages
    assert any(m.startswith("  export took ") and m.endswith(" MB") for m in messages)


def test_a_terminated_build_cleans_up_at_once(tiny_module, tmp_path):
    out = tmp_path / "out"
    process = _start_build(tiny_module, out)
    try:
        _wait_for_export(process, out)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == -signal.SIGTERM
    finally:
        process.kill()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_keeps_its_parents_directory_owned(tmp_path):
    out = tmp_path / "out"
    owned = owned_directory(out, "work")
    pid = os.fork()
    if pid == 0:  # the child shares the lock; it holds it on after the parent lets go
        time.sleep(5)
        os._exit(0)
    try:
        owned.release()
        assert remove_abandoned(out) == []
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert remove_abandoned(out) == [owned.path]
