"""Where built modules, unpacked archives and fetched TF Models releases are cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$FASTELECTRA_CACHE`, else `~/.cache/fastelectra`."""
    return Path(os.environ.get("FASTELECTRA_CACHE", Path.home() / ".cache" / "fastelectra"))
