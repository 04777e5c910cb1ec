"""Where a command may write: over nothing, or over what this project wrote itself.

A fine-tuned SavedModel is often the only copy its owner has. So every command that writes to
a path the user names (`build -o`, `export-triton`, `embed -o`, the Ray Parquet writer) asks
here first, before any expensive work, and its writer asks again right before the final
rename (the path may have changed during a long build). A path may be replaced only when it

- does not exist (its parent directory must), or is an empty directory (directory outputs);
- is a directory of the command's own kind that holds nothing else: a bundle (its
  `fastelectra.json` names every other file in it), a Triton model folder this project wrote
  (its marker file names every file in it);
- is a file of the output's own format (`.npy`, `.jsonl`, Parquet), for file outputs.

Anything else (a folder of the user's files, a plain file where a directory goes, a symbolic
link, the source being converted or a directory holding it) is refused with a
`DestinationError` naming the path and what was found. No option overrides it: `--force`
is about accuracy gates, never about removing files.

This module imports nothing heavy: the runtime's writers use it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fastelectra.errors import InputError

# How many foreign entries an error names before "and N more".
SHOWN_ENTRIES = 5


class DestinationError(InputError):
    """An output path holds something this project did not write; nothing was changed."""


@dataclass(frozen=True)
class DirectoryKind:
    """A directory this project writes.

    `foreign_entries(path)` lists the entries of `path` (relative names) that this project did
    not write there, or returns None when `path` is not a directory of this kind at all.
    """

    what: str
    foreign_entries: Callable[[Path], list[str] | None]


@dataclass(frozen=True)
class FileKind:
    """A file format this project writes; `recognise(path)` tells an existing file of it."""

    what: str
    recognise: Callable[[Path], bool]


def check_directory(
    out: str | os.PathLike[str],
    kind: DirectoryKind,
    sources: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Raise `DestinationError` unless a directory of `kind` may be written at `out`.

    `sources`: inputs of the command (a SavedModel, a bundle); `out` may be neither one of
    them nor a directory holding one. Paths that do not exist (a TF Hub handle) are skipped.
    """
    out = Path(out)
    _check_not_a_link(out)
    _check_parent(out)
    _check_apart_from_sources(out, sources)
    if not out.exists():
        return
    if not out.is_dir():
        raise DestinationError(
            f"{out}: is a file, not {kind.what}; refusing to replace it (choose another path, or "
            "move the file away first)"
        )
    entries = sorted(entry.name for entry in os.scandir(out))
    if not entries:
        return
    foreign = kind.foreign_entries(out)
    if foreign is None:
        raise DestinationError(
            f"{out}: is a directory that is not {kind.what} (it holds {_names(entries)}); "
            "refusing to replace it (choose a new or empty directory)"
        )
    if foreign:
        raise DestinationError(
            f"{out}: is {kind.what} that also holds files this project did not write "
            f"({_names(foreign)}); refusing to replace it (move them away first)"
        )


def check_file(out: str | os.PathLike[str], kind: FileKind) -> None:
    """Raise `DestinationError` unless a file of `kind` may be written at `out`."""
    out = Path(out)
    _check_not_a_link(out)
    _check_parent(out)
    if out.is_dir():
        raise DestinationError(f"{out}: is a directory; name a file to write {kind.what} to")
    if out.exists() and not (out.is_file() and kind.recognise(out)):
        raise DestinationError(
            f"{out}: exists and is not {kind.what}; refusing to replace it (choose another "
            "path, or move the file away first)"
        )


def starts_with(path: Path, magic: bytes) -> bool:
    """Whether the file at `path` begins with `magic` (False if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _check_not_a_link(out: Path) -> None:
    if out.is_symlink():
        raise DestinationError(
            f"{out}: is a symbolic link; name the real path to write to (the link is not replaced)"
        )


def _check_parent(out: Path) -> None:
    parent = out.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise DestinationError(f"{out}: {parent} is a file, not a directory")


def _check_apart_from_sources(out: Path, sources: Iterable[str | os.PathLike[str]]) -> None:
    target = _real(out)
    for source in sources:
        source_path = Path(source)
        if not source_path.exists():
            continue  # a TF Hub handle or preset name: nothing on disk to protect here
        real_source = source_path.resolve()
        if target == real_source:
            raise DestinationError(
                f"{out}: is the source {source}; refusing to write over it (choose another path)"
            )
        if target in real_source.parents:
            raise DestinationError(
                f"{out}: holds the source {source}; refusing to replace it (choose another path)"
            )


def _real(path: Path) -> Path:
    """`path` with its existing part resolved (symbolic links, `..`), the rest appended."""
    absolute = Path(os.path.abspath(path))
    return absolute.parent.resolve() / absolute.name


def _names(entries: list[str]) -> str:
    shown = ", ".join(entries[:SHOWN_ENTRIES])
    more = len(entries) - SHOWN_ENTRIES
    return shown + (f" and {more} more" if more > 0 else "")
