"""One progress bar over texts, for every command that shows one (`embed`, `build`'s verify).

A bar is for a person watching a terminal: on anything else (a log file, a pipe, None) it is
a no-op, and so it is without tqdm, which is optional at run time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TextIO


@contextlib.contextmanager
def text_bar(
    total: int | None, stream: TextIO | None, what: str | None = None, leave: bool = True
) -> Iterator[Callable[[int], object]]:
    """Yields `advance(n)`: n more texts done, on a tqdm bar on `stream` if it is a terminal."""
    if stream is None or not stream.isatty():
        yield lambda _n: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield lambda _n: None
        return
    desc = f"  {what}" if what else None
    with tqdm(
        total=total, desc=desc, unit="text", file=stream, leave=leave, dynamic_ncols=True
    ) as bar:
        yield bar.update
