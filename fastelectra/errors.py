"""The root of every error fastelectra raises on purpose, and its general kinds.

`FastElectraError` marks a failure the project knows how to explain: a bad input, a failed
gate, a damaged bundle, a missing optional package. The command line turns exactly those
(and `OSError`) into a one-line message; anything else is a bug and keeps its traceback.

Each error also keeps the built-in base it had before the root existed (`ValueError` for bad
input, `RuntimeError` for a failure while working), so ``except ValueError`` callers still
catch it. Errors that belong to one module (`BundleError`, `SourceError`, `FusionError`, ...)
live beside their code; this module holds only the root and the kinds shared across packages.

It imports nothing, so any module, runtime or conversion, may depend on it.
"""

from __future__ import annotations


class FastElectraError(Exception):
    """A failure fastelectra recognises and explains in its message."""


class InputError(FastElectraError, ValueError):
    """A text, file, option or argument given by the caller that cannot be used as it is."""


class UsageError(InputError):
    """Command-line options that do not go together; the command line exits with status 2 for
    it, as argparse does for its own usage errors."""


class DependencyMissing(FastElectraError, RuntimeError):
    """A feature needs an optional package that is not installed; the message says which."""


class ToolError(FastElectraError, RuntimeError):
    """A tool fastelectra drives (TensorFlow, tf2onnx, onnxruntime) did not give what it should,
    in a way that is known to happen (an unsupported version, a dropped output)."""
