"""Progress bars on stderr for long loops (tqdm)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

__all__ = ["progress"]


def progress(items: Iterable[T], *, total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``items``, drawing a tqdm bar on stderr when ``enabled`` (the bar is removed at the end)."""
    if not enabled:
        yield from items
        return
    yield from tqdm(items, total=total or None, desc=desc, file=sys.stderr, leave=False)
