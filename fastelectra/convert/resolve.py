"""What the command line takes as a source: a path or TF Hub handle, or a preset's name.

Apart from `fastelectra.convert.source` because presets are built from generations, which
report their failures as `SourceError`: kept there, this lookup made source -> presets ->
generations -> source an import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_source(source: str | os.PathLike[str]) -> str:
    """A preset name (`tiny`, `electra-large-2020`, ...) stands for its cached module, built on
    first use; anything else is returned as it is."""
    text = str(source)
    if not Path(text).exists():
        from fastelectra.convert.presets import PRESETS, preset_module

        if text in PRESETS:
            return str(preset_module(text))
    return text
