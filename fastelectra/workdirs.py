"""Scratch directories beside a destination that a killed build does not leave behind for good.

A build to OUT writes its intermediate files in `.OUT.work-XXXXXXXX`, and the bundle writer
assembles the bundle in `.OUT.staging-XXXXXXXX` (and parks a replaced bundle in
`.OUT.old-XXXXXXXX`), all beside OUT so the final rename stays on one filesystem. Their
`finally` blocks remove them on any exception, and `cleanup_on_signals` turns SIGTERM / SIGHUP
into one; nothing runs on SIGKILL, an OOM kill or a power cut, so the next build to OUT calls
`remove_abandoned`, which removes those whose owner is gone.

Ownership is an exclusive flock(2) on the directory itself, taken right after mkdtemp and held
until the directory is removed or renamed into place. Chosen over a PID file because:

- the kernel drops the lock when the owner dies, however it dies: no PID reuse to tell apart
  (no /proc start times), and it works across PID namespaces (containers sharing a volume),
  where a PID from another namespace would look dead;
- nothing is written inside the directory: the staging directory becomes the bundle by a
  rename, and a file in it would end up in the bundle and in its hashes.

A forked child shares its parent's lock, so a directory stays "owned" while any forked child
of its build lives: conservative. Exec'd subprocesses do not inherit it (the descriptor is
close-on-exec). Where flock is refused (some network filesystems refuse it on
directories, and Windows has no fcntl) directories are made unlocked and never swept.

There is no grace period for unlocked directories: every directory made through this module is
locked before it is used (`_owned_mkdtemp` covers the instant between mkdtemp and flock), so
an unlocked one is abandoned. The one exception is a build by a fastelectra from before this module still running to the same
OUT; two builds to one OUT race for the final rename anyway, and a grace period would keep the
leftover of the build killed a minute ago, the very case this module is for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from fastelectra.destinations import DirectoryKind, check_directory

try:
    import fcntl
except ImportError:  # Windows: no flock, so nothing is ever considered abandoned
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

KINDS = ("work", "staging", "old")
# tempfile.mkdtemp's random part: 8 characters of [a-z0-9_].
_SUFFIX = r"[a-z0-9_]{8}"


class OwnedDirectory:
    """A fresh directory locked by this process until `remove` or `release`."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Drop the lock (the directory is gone, or renamed to where it belongs)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        # Removed while still locked, so no sweep can take it half-way.
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


def owned_directory(out: Path, kind: str) -> OwnedDirectory:
    """Make `.OUT.<kind>-XXXXXXXX` beside `out`, locked as this process's."""
    if kind not in KINDS:
        raise ValueError(f"unknown scratch directory kind {kind!r}")
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    return _owned_mkdtemp(out.parent, f".{out.name}.{kind}-")


@contextlib.contextmanager
def scratch_directory(out: Path, kind: str) -> Iterator[Path]:
    """`owned_directory` for the length of a `with` block, removed however the block ends."""
    owned = owned_directory(out, kind)
    try:
        yield owned.path
    finally:
        owned.remove()


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike[str], kind: DirectoryKind) -> Iterator[Path]:
    """Yield an empty directory beside `out`; on success it atomically becomes `out`.

    The one stage-then-replace of the project: bundles, Triton model folders, the preset
    modules and TF Models releases in the cache all go through it. On any exception the
    staging directory is removed and `out` is untouched, so a failed or interrupted write
    never leaves a half-written directory (nor damages an existing one). The staging (and
    `.old-`) directories are owned (see above), so the next write to `out` removes them if
    this process is killed outright.

    `out` is replaced only if it is of `kind` and holds nothing else (`destinations`): checked
    before staging begins and again right before the swap.
    """
    check_directory(out, kind)
    out = Path(out).absolute()
    staging = owned_directory(out, "staging")
    try:
        yield staging.path
        check_directory(out, kind)
        if out.exists():
            _replace_directory(out, staging.path)
        else:
            os.replace(staging.path, out)
    except BaseException:
        staging.remove()
        raise
    finally:
        staging.release()


def _replace_directory(out: Path, new: Path) -> None:
    """Swap `new` in for the existing `out`, never ending with neither in place."""
    old = owned_directory(out, "old")
    parked = old.path / out.name
    try:
        os.replace(out, parked)
        os.replace(new, out)
    except BaseException:
        if parked.exists() and not out.exists():
            os.replace(parked, out)  # interrupted between the renames: put the old one back
        raise
    finally:
        # While `out` is missing the parked copy is all there is: keep it (if this process
        # dies now, the next build's `remove_abandoned` moves it back).
        if out.exists():
            old.remove()
        else:
            old.release()


def remove_abandoned(out: Path) -> list[Path]:
    """Remove the `.OUT.work-*`, `.OUT.staging-*`, `.OUT.old-*` left beside `out` by dead builds.

    A directory is removed only if this process can take its lock, i.e. no live process holds
    it; one still in use by a running build (or whose lock cannot be tested) is left alone. A
    bundle parked in a `.old-` directory while OUT is missing is moved back to OUT first.
    """
    out = Path(out).absolute()
    name = re.compile(rf"\.{re.escape(out.name)}\.(?:{'|'.join(KINDS)})-{_SUFFIX}")
    try:
        entries = [e for e in os.scandir(out.parent) if name.fullmatch(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing beside it yet (making OUT will report a bad parent)
    removed = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _remove_if_abandoned(Path(entry.path), out):
            log.info("removed %s, left by a build that is no longer running", entry.path)
            removed.append(Path(entry.path))
    return removed


def _owned_mkdtemp(parent: Path, prefix: str) -> OwnedDirectory:
    # Between mkdtemp and flock a concurrent sweep could find the directory unlocked and take
    # it; then it is gone (or locked by the sweep) by the time we look, and we make another.
    for _ in range(10):
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = _open_directory(path)
        locked = _try_lock(fd)
        if locked is None:
            os.close(fd)
            return OwnedDirectory(path, None)
        if locked and _is_open_as(fd, path):
            return OwnedDirectory(path, fd)
        os.close(fd)
    raise RuntimeError(f"could not make a scratch directory in {parent}: each one was taken")


def _remove_if_abandoned(path: Path, out: Path) -> bool:
    try:
        fd = _open_directory(path)
    except OSError:
        return False  # already gone, or not ours to read
    try:
        # The identity check: between the scan and the lock its owner may have renamed it
        # into place (staging -> OUT) and released it; then the path no longer names it.
        if not _try_lock(fd) or not _is_open_as(fd, path):
            return False
        if path.name.startswith(f".{out.name}.old-"):
            _restore_parked(path / out.name, out)
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _restore_parked(parked: Path, out: Path) -> None:
    # A build killed between parking the bundle it replaced and renaming the new one into
    # place left OUT missing and the old bundle here: put it back rather than delete it.
    if parked.is_dir() and not out.exists():
        with contextlib.suppress(OSError):  # lost a race to a build renaming its own into place
            os.replace(parked, out)
            log.warning("restored %s from %s, left by a killed build", out, parked.parent)


def _open_directory(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem cannot lock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        log.debug("flock unsupported here (%s); scratch directories stay unlocked", e)
        return None
    return True


def _is_open_as(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


class Interrupted(BaseException):
    """A terminating signal arrived; a BaseException so `except Exception` cannot swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


# Signals whose default action kills the process without running any `finally`. SIGINT is not
# here: Python's own handler already raises KeyboardInterrupt, which runs them.
_FATAL_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM / SIGHUP raise `Interrupted` so cleanup code runs at once.

    Afterwards the previous handlers are back and the signal is delivered again, so the
    process still ends the way it would have (killed by SIGTERM), only after its cleanup.
    Signals with a handler of their own (or ignored) are left alone, and so is everything
    outside the main thread, where Python cannot install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _FATAL_SIGNALS}
    for sig, handler in previous.items():
        if handler == signal.SIG_DFL:
            signal.signal(sig, _raise_interrupted)
    try:
        yield
    except Interrupted as e:
        _restore(previous)
        signal.raise_signal(e.signum)
        raise  # the previous handler did not end the process
    finally:
        _restore(previous)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _restore(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        if handler == signal.SIG_DFL:
            signal.signal(sig, handler)  # type: ignore[arg-type]
