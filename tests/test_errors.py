"""One error root: what fastelectra raises on purpose is a `FastElectraError`, and the command
line gives exactly those (and `OSError`) a one-line message; anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import ast
import builtins
import subprocess
import sys
from pathlib import Path

import pytest

import fastelectra.bundle
from fastelectra.bundle import BundleError
from fastelectra.cli import main
from fastelectra.errors import DependencyMissing, FastElectraError, InputError, ToolError

PACKAGE = Path(fastelectra.bundle.__file__).parent
BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def exception_classes() -> dict[str, tuple[str, list[str]]]:
    """Every class in the package that derives from an exception: name -> (file, base names)."""
    classes: dict[str, tuple[str, list[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                classes[node.name] = (str(path.relative_to(PACKAGE.parent)), bases)
    exceptions: dict[str, tuple[str, list[str]]] = {}
    grew = True
    while grew:  # a class is an exception if a base is one, built in or ours
        grew = False
        for name, (where, bases) in classes.items():
            if name not in exceptions and any(
                b in BUILTIN_EXCEPTIONS or b in exceptions for b in bases
            ):
                exceptions[name] = (where, bases)
                grew = True
    return exceptions


def test_every_project_exception_has_the_root():
    exceptions = exception_classes()
    assert {"BundleError", "SourceError", "FusionError", "RewriteError"} <= set(exceptions)
    assert {"VerificationFailed", "UsageError", "WireError", "ApiError"} <= set(exceptions)

    def rooted(name: str) -> bool:
        if name == "FastElectraError":
            return True
        return name in exceptions and any(rooted(b) for b in exceptions[name][1])

    # Signals, not errors: like KeyboardInterrupt, they derive from BaseException alone so that
    # `except Exception` cannot swallow them (workdirs.Interrupted, raised on SIGTERM).
    signals = {name for name, (_, bases) in exceptions.items() if bases == ["BaseException"]}
    assert signals == {"Interrupted"}
    # Warnings, not errors: issued with warnings.warn, not raised (TruncationWarning).
    warning_kinds = {
        name
        for name, (_, bases) in exceptions.items()
        if any(b in BUILTIN_EXCEPTIONS and issubclass(getattr(builtins, b), Warning) for b in bases)
    }
    assert warning_kinds == {"TruncationWarning"}
    unrooted = [
        f"{where}: {name}"
        for name, (where, _) in exceptions.items()
        if not rooted(name) and name not in signals | warning_kinds
    ]
    assert not unrooted, f"exceptions without FastElectraError: {unrooted}"


def test_errors_keep_their_old_bases():
    from fastelectra.convert.build import VerificationFailed
    from fastelectra.convert.fuse import FusionError
    from fastelectra.convert.rewrite import RewriteError
    from fastelectra.convert.source import SourceError

    for error, old in [
        (BundleError, ValueError),
        (SourceError, ValueError),
        (InputError, ValueError),
        (FusionError, RuntimeError),
        (RewriteError, RuntimeError),
        (VerificationFailed, RuntimeError),
        (DependencyMissing, RuntimeError),
        (ToolError, RuntimeError),
    ]:
        assert issubclass(error, FastElectraError) and issubclass(error, old), error


def test_a_known_failure_is_one_line(monkeypatch, tmp_path, capsys):
    def damaged(*args, **kwargs):
        raise BundleError("the bundle is damaged")

    monkeypatch.setattr(fastelectra.bundle, "load_bundle", damaged)
    assert main(["info", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "fastelectra info: error: the bundle is damaged\n"


@pytest.mark.parametrize("bug", [KeyError("meta"), ValueError("a bug, not a known failure")])
def test_a_bug_in_a_command_keeps_its_traceback(monkeypatch, tmp_path, capsys, bug):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(fastelectra.bundle, "load_bundle", broken)
    with pytest.raises(type(bug)):
        main(["info", str(tmp_path)])
    assert "error:" not in capsys.readouterr().err


def test_a_bug_in_a_subcommand_module_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    # `embed` runs from fastelectra.runtime.cli: main's handling covers it too.
    from fastelectra.runtime.encoder import Encoder

    def broken(*args, **kwargs):
        raise KeyError("providers")

    monkeypatch.setattr(Encoder, "load", broken)
    source = tmp_path / "texts.txt"
    source.write_text("a text\n")
    with pytest.raises(KeyError):
        main(["embed", str(tmp_path), "-i", str(source), "-o", str(tmp_path / "v.npy")])
    assert "error:" not in capsys.readouterr().err


def test_the_console_script_prints_the_traceback_of_a_bug(tmp_path):
    program = (
        "import sys, fastelectra.bundle as b\n"
        "def broken(*a, **k): raise KeyError('meta')\n"
        "b.load_bundle = broken\n"
        "from fastelectra.cli import main\n"
        f"sys.exit(main(['info', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "KeyError: 'meta'" in done.stderr
    assert "fastelectra info: error:" not in done.stderr
