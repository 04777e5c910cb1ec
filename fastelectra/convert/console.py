"""What a build shows on the terminal: its own steps, not its libraries' chatter.

TensorFlow, tf2onnx and onnxruntime's tools write hundreds of lines during a build, from
Python (logging, print) and from C++ (straight to file descriptors 1 and 2): protobuf dumps of
every node the optimizer could not remove, `ERROR` lines for ops the rewrites then handle, a
CUDA probe on a CPU machine. `captured_output` sends both descriptors to a log file for the
duration of the build, and the build's own lines go to the terminal the process started with.
When a step fails, the end of the log is shown with the error; `--verbose` turns the capture
off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

TAIL_LINES = 25


@contextlib.contextmanager
def captured_output(log: Path, enabled: bool = True) -> Iterator[TextIO]:
    """Descriptors 1 and 2 into `log` while the block runs; yields the original terminal.

    Child processes started inside the block inherit the redirection. On an exception the last
    `TAIL_LINES` lines of the log are written to the terminal before it propagates.
    """
    if not enabled:
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(log, "ab", buffering=0) as sink:
        for fd in (1, 2):
            os.dup2(sink.fileno(), fd)
        try:
            yield terminal
        except BaseException:
            _restore(saved)
            show_tail(log, terminal)
            raise
        finally:
            _restore(saved)
            terminal.close()


def _restore(saved: dict[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, copy in list(saved.items()):
        os.dup2(copy, fd)
        os.close(copy)
        del saved[fd]


def show_tail(log: Path, terminal: TextIO, lines: int = TAIL_LINES) -> None:
    try:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return
    if tail:
        print(f"-- last {len(tail)} lines of library output ({log.name}):", file=terminal)
        for line in tail:
            print(f"   {line}", file=terminal)


def printer(stream: TextIO) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(message, file=stream, flush=True)

    return say
