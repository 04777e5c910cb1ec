"""Shared fixtures: preset modules (cached across runs) and bundles (built once per session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Reference modules are cached between runs (the Makefile points here too); bundles are not.
os.environ.setdefault("FASTELECTRA_CACHE", str(ROOT / ".cache" / "modules"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_module() -> Path:
    from fastelectra.convert.presets import preset_module

    return preset_module("tiny")


@pytest.fixture(scope="session")
def minilm_module() -> Path:
    from fastelectra.convert.presets import preset_module

    return preset_module("minilm")


@pytest.fixture(scope="session")
def tiny_source(tiny_module):
    from fastelectra.convert.source import load_source

    return load_source(tiny_module)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_module, tmp_path_factory) -> Path:
    """Built by the CLI in a process of its own, as a user builds it: its recorded memory
    figures are the command's, not those of a test process that has imported everything."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-fp32"
    command = [sys.executable, "-m", "fastelectra.cli", "build", str(tiny_module), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def minilm_bundle(minilm_module, tmp_path_factory) -> Path:
    from fastelectra.convert.build import build

    out = tmp_path_factory.mktemp("bundles") / "minilm-fp32"
    build(minilm_module, out, progress=None)
    return out
