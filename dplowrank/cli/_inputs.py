"""Reading the user's files and checking where outputs go, before anything is spent.

The data files are private: every message names the *path* and what is wrong with it, never a
value read from it (numpy's and pyarrow's own messages quote the offending text, so they are
replaced, not passed on).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["InputError", "read_matrix", "read_lines", "check_output", "check_directory"]

#: File suffixes read as rows, and how.
FORMATS = (".csv", ".txt", ".npy", ".parquet")


class InputError(ValueError):
    """A file the user named cannot be read or written as asked (exit code 3)."""


def read_matrix(path: str, *, skip_header: bool = False, what: str = "data") -> np.ndarray:
    """The rows of a CSV / NPY / Parquet file as a float64 array of shape (n, d)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            a = np.loadtxt(p, delimiter="," if suffix == ".csv" else None, skiprows=int(skip_header), ndmin=2)
        elif suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise InputError(f"reading {str(p)!r} needs pyarrow: pip install pyarrow") from None
            table = pq.read_table(p)
            columns = [np.asarray(c.to_numpy(zero_copy_only=False)) for c in table.columns]
            for c in columns:  # checked column by column before one float64 table is made
                _check_exact(c, p, what)
            a = np.column_stack([c.astype(np.float64) for c in columns]) if columns else np.zeros((0, 0))
        else:
            raise InputError(f"{what} file {str(p)!r}: unknown format {suffix or '(none)'!r}; use one of {FORMATS}")
    except InputError:
        raise
    except Exception:  # the libraries' messages quote the file's content: not passed on
        raise InputError(f"cannot read {what} file {str(p)!r} as a table of numbers ({suffix[1:]})") from None
    _check_exact(a, p, what)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"{what} file {str(p)!r} must hold a 2-d table (rows × columns), it has {a.ndim} axes")
    if a.shape[1] == 0:  # the row count is private: not named
        raise InputError(f"{what} file {str(p)!r} has no columns")
    if not np.isfinite(a).all():
        raise InputError(f"{what} file {str(p)!r} has missing or non-finite entries")
    return a


def _check_exact(a: np.ndarray, p: Path, what: str) -> None:
    """Refuse what is not real numbers, or what float64 would round (long double, integers
    beyond 2**53): the library would otherwise release a rounded copy of the user's data."""
    if a.dtype == object or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{what} file {str(p)!r} does not hold real numbers")
    if a.dtype == np.longdouble or (np.issubdtype(a.dtype, np.integer) and a.size
                                    and (int(a.max()) > 2**53 or int(a.min()) < -(2**53))):
        raise InputError(f"{what} file {str(p)!r} holds values float64 cannot represent exactly; convert it first")


def read_lines(path: str, *, what: str = "corpus") -> list[str]:
    """The non-empty lines of a UTF-8 text file (one example per line)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {str(p)!r} does not exist")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError):
        raise InputError(f"cannot read {what} file {str(p)!r} as UTF-8 text") from None
    return [line for line in lines if line]


def check_output(path: str | None, *, force: bool = False, what: str = "output",
                 suffix: str | None = None) -> Path | None:
    """Refuse, before any work, an output file whose directory is missing or not writable, or
    that exists (unless ``force``). ``suffix``: appended when missing (the name written)."""
    if path is None:
        return None
    if suffix is not None and not str(path).endswith(suffix):
        path = f"{path}{suffix}"
    p = _writable_parent(path, what)
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is a directory; give a file path")
    if p.exists() and not force:
        raise InputError(f"{what} {str(p)!r} exists; pass --force to replace it")
    return p


def check_directory(path: str | None, *, force: bool = False, what: str = "output directory") -> Path | None:
    """Like :func:`check_output` for a directory the command will create (or fill, with ``force``)."""
    if path is None:
        return None
    p = _writable_parent(path, what)
    if p.exists() and (not p.is_dir() or (any(p.iterdir()) and not force)):
        raise InputError(f"{what} {str(p)!r} exists and is not empty; pass --force to write into it")
    return p


def _writable_parent(path: str, what: str) -> Path:
    """``path`` as a Path, once its directory is known to exist and be writable."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {what} {str(p)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {what} {str(p)!r}: directory {str(parent)!r} is not writable")
    return p
