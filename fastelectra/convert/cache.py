"""Where built modules, unpacked archives and fetched TF Models releases are cached, and the
kinds of directory the cache holds (what `workdirs.staged_directory` may replace there)."""

from __future__ import annotations

import os
from pathlib import Path

from fastelectra.destinations import DirectoryKind


def cache_dir() -> Path:
    """`$FASTELECTRA_CACHE`, else `~/.cache/fastelectra`."""
    return Path(os.environ.get("FASTELECTRA_CACHE", Path.home() / ".cache" / "fastelectra"))


def _holding(marker: str) -> DirectoryKind:
    """A cache directory recognised by one entry it always holds; all of it is ours, since
    only this project writes under the cache (an unrecognised one is still refused)."""

    def foreign_entries(path: Path) -> list[str] | None:
        return [] if (path / marker).exists() else None

    return DirectoryKind(f"a cached directory holding {marker}", foreign_entries)


# A SavedModel a preset or a TF Models release wrote (`presets.build_module`).
MODULE = _holding("saved_model.pb")
# An unpacked tf-models-official wheel (`generations.release_dir`).
RELEASE_CODE = _holding("official")
