"""A build shows its own steps; its libraries' output is kept aside unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("ERROR", "Failed to remove", "op_type:", "cuInit")


def _build(tiny_module: Path, out: Path, texts: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fastelectra.cli", "build", str(tiny_module), "-o", str(out)]
    command += ["--verify-texts", str(texts), *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # let TensorFlow say all it would
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("a quiet build\nshows its own steps\tand nothing else\n", encoding="utf-8")
    return path


def test_a_build_prints_only_its_own_lines(tiny_module, tmp_path, texts):
    done = _build(tiny_module, tmp_path / "bundle", texts)
    assert done.returncode == 0, done.stderr
    for noise in NOISE:
        assert noise not in done.stderr, noise
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert any(line.startswith("  fuse took ") for line in lines)
    assert lines[-1].startswith(f"wrote {tmp_path / 'bundle'} (fp32)")
    assert len(lines) < 30


def test_verbose_shows_the_libraries_output(tiny_module, tmp_path, texts):
    done = _build(tiny_module, tmp_path / "bundle", texts, "--verbose")
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Failed to remove" in output and "op_type:" in output


def test_a_failing_step_shows_the_end_of_the_library_output(tmp_path):
    from fastelectra.convert.console import captured_output

    log = tmp_path / "build.log"
    terminal_copy = tmp_path / "terminal.txt"
    saved = os.dup(2)
    with open(terminal_copy, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with pytest.raises(RuntimeError), captured_output(log) as terminal:
                os.write(1, b"library chatter on stdout\n")
                os.write(2, b"C++ noise on fd 2\n")
                terminal.write("the build's own line\n")
                raise RuntimeError("step failed")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    shown = terminal_copy.read_text()
    assert "the build's own line" in shown
    assert "last 2 lines of library output" in shown and "C++ noise on fd 2" in shown
    assert "library chatter on stdout" in log.read_text()
