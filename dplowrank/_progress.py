"""A minimal progress bar on stderr (tqdm's is used when it is installed)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress"]


def progress(items: Iterable[T], *, total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``items``, drawing a progress bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False)
        return
    start = time.perf_counter()
    width = 30
    for i, item in enumerate(items, 1):
        yield item
        done = int(width * i / max(total, 1))
        rate = i / max(time.perf_counter() - start, 1e-9)
        sys.stderr.write(f"\r{desc}: [{'#' * done}{'.' * (width - done)}] {i}/{total} ({rate:.1f}/s)")
        sys.stderr.flush()
    sys.stderr.write("\r" + " " * (width + len(desc) + 40) + "\r")
    sys.stderr.flush()
