"""Atomic file writes, in one place: write a temporary file beside the target, fsync, rename.

A process killed during a write can leave its temporary file behind (``.NAME.XXXXXXXX.tmp``
beside ``NAME``). Such a file is never read by the library and is safe to delete; it is not
removed automatically, because it could belong to a writer that is still running.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_files"]


def _write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` to a fresh temporary file beside ``path``, fsync it, and return its name."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _sync_directory(directory: Path) -> None:
    """fsync ``directory`` so that the renames in it survive a crash."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file
    is renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows); the directory
    is then synced so the rename itself survives a crash. On any error the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    return atomic_write_files({path: data})[0]


def atomic_write_files(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files, each atomically, with every temporary file on disk before any rename.

    All contents are written and fsynced to temporary files first; only then are they renamed
    into place, in the order given, and the directories synced. An error while writing (a
    full disk, a bad path) leaves every target as it was. A crash *between* the renames can
    leave some targets new and others old, so a reader of the set must check that the files
    belong together (e.g. :func:`dplowrank.compress.save_compressed` records the weights'
    SHA-256 in its config, renamed last). Returns the paths.
    """
    items = [(Path(p), data) for p, data in files.items()]
    temps: list[str] = []
    try:
        for path, data in items:
            temps.append(_write_temp(path, data))
        for (path, _), tmp in zip(items, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise
    for directory in dict.fromkeys(p.parent if str(p.parent) else Path(".") for p, _ in items):
        _sync_directory(directory)
    return [p for p, _ in items]
