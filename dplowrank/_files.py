"""The library's files, in one place: atomic writes, and integrity (checksum / authentication).

All four kinds of file the library writes (releases, Gram checkpoints, budget ledgers,
compressed models) are written with :func:`atomic_write_bytes` / :func:`atomic_write_files`
and carry the integrity fields of :func:`seal`, checked on reading by :func:`verify`.

Atomic writes: write a temporary file beside the target, fsync, rename. A process killed
during a write can leave its temporary file behind (``.NAME.XXXXXXXX.tmp`` beside ``NAME``). Such a file is never read by the library and is safe to delete; it is not
removed automatically, because it could belong to a writer that is still running.

Permissions: a written file gets the mode a plain ``open(path, "w")`` would give it: an
existing target keeps its mode, a new one gets 0o666 less the process umask (and the
directory's default ACL, which the kernel applies). The temporary file is created *with*
that mode, so that the kernel computes it, and is then narrowed to owner-only (0o600 or
less) before its first byte is written; it is widened back to the final mode only when it is
complete and synced, just before the rename. So the content is never readable under a wider
mode than the final file's, and the target name never shows an intermediate mode. (Between
the creation and the narrowing, an empty file exists under exactly the final mode.)

Errors name the user's path, never the temporary file: ``cannot write /missing/x.npz:
directory does not exist``; the ``OSError`` subclass and ``errno`` are kept.

Integrity. A corruption check always, authentication with a key.

A SHA-256 digest stored next to the content detects accidental damage (a truncated copy, a
flipped bit), but it is *not* tamper evidence: whoever can edit the file can recompute it.
With a secret ``key`` (bytes the user keeps, e.g. from ``secrets.token_bytes(32)`` stored
apart from the files), the library also stores HMAC-SHA256(key, content) (RFC 2104), which
nobody without the key can forge: an edited ledger or checkpoint is then refused.

What a key does not detect: replacing a file by an *older* authentic version of itself
(a rollback), or deleting it. Keep ledgers where only the accountant can write, and back
them up.

Rules:
* written with a key  → carries ``sha256`` and ``hmac_sha256``; loading it requires the key;
* written without one → carries ``sha256`` only; loading it with a key is refused (it was
  never authenticated), loading it without one checks for corruption only.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_files", "check_directory", "check_key", "seal", "verify"]


def _target_mode(path: Path) -> int | None:
    """The permission bits of an existing ``path`` (what ``open(path, "w")`` keeps), else ``None``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else None


def _create_temp(path: Path, directory: Path, mode: int) -> tuple[int, str]:
    """A new, exclusively created file ``.NAME.XXXXXXXX.tmp`` in ``directory`` (``mode`` before the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name")  # pragma: no cover


def _chmod(fd: int, tmp: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # pragma: no cover - Windows: only the read-only bit exists
        os.chmod(tmp, mode)


def _cannot_write(path: Path, exc: OSError) -> OSError:
    """``exc`` re-worded to name the user's ``path`` (same class and errno), never a temporary file."""
    directory = path.parent if str(path.parent) else Path(".")
    if exc.errno == errno.ENOENT and not directory.is_dir():
        reason = "directory does not exist"
    elif exc.errno == errno.ENOTDIR:
        reason = "a component of the directory is not a directory"
    else:
        reason = exc.strerror or str(exc)
    new = type(exc)(f"cannot write {os.fspath(path)}: {reason}")
    new.errno = exc.errno
    return new


def check_directory(path: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` (``cannot write PATH: directory does not exist``) unless the
    directory that would hold ``path`` exists: for callers that create something beside
    ``path`` (a lock file) before writing it, and must neither create the directory nor fail
    later under another name."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        exc = FileNotFoundError(f"cannot write {os.fspath(path)}: directory does not exist")
        exc.errno = errno.ENOENT
        raise exc


def _write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` to a fresh temporary file beside ``path`` with ``path``'s final mode, fsync
    it, and return its name (see the module's note on permissions)."""
    directory = path.parent if str(path.parent) else Path(".")
    final = _target_mode(path)
    # A new target: let the kernel apply the umask (and any default ACL) to 0o666, as
    # open(path, "w") would, and read the result back; an existing one keeps its mode.
    fd, tmp = _create_temp(path, directory, 0o666 if final is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            if final is None:
                final = stat.S_IMODE(os.fstat(fd).st_mode) & 0o777
            _chmod(fd, tmp, final & 0o700)  # owner-only while the content is incomplete
            fh.write(data)
            fh.flush()
            _chmod(fd, tmp, final)
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
            try:
                temps.append(_write_temp(path, data))
            except OSError as exc:
                raise _cannot_write(path, exc) from None
        for (path, _), tmp in zip(items, temps):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _cannot_write(path, exc) from None
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise
    for directory in dict.fromkeys(p.parent if str(p.parent) else Path(".") for p, _ in items):
        _sync_directory(directory)
    return [p for p, _ in items]


# ---- integrity -----------------------------------------------------------------------------



_MIN_KEY = 16


def check_key(key: object) -> bytes | None:
    """``key`` as bytes (``None`` passes through); at least 16 bytes."""
    if key is None:
        return None
    if isinstance(key, str) or not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes (e.g. secrets.token_bytes(32)), got {type(key).__name__}")
    key = bytes(key)
    if len(key) < _MIN_KEY:
        raise ValueError(f"key must have at least {_MIN_KEY} bytes, got {len(key)}")
    return key


def seal(content: bytes, key: bytes | None) -> dict:
    """The integrity fields for ``content``: ``sha256``, and ``hmac_sha256`` with a key."""
    out = {"sha256": hashlib.sha256(content).hexdigest()}
    if key is not None:
        out["hmac_sha256"] = hmac.new(key, content, hashlib.sha256).hexdigest()
    return out


def verify(content: bytes, fields: dict, key: bytes | None, what: str) -> None:
    """Raise ``ValueError`` (naming ``what``) unless ``fields`` vouch for ``content`` as the rules say."""
    mac = fields.get("hmac_sha256")
    digest = fields.get("sha256")
    if (mac is not None and not isinstance(mac, str)) or (digest is not None and not isinstance(digest, str)):
        raise ValueError(f"{what} has malformed integrity fields")
    if key is not None:
        if mac is None:
            raise ValueError(
                f"{what} carries no HMAC: it was written without a key (or its HMAC was removed); "
                "refusing to trust it with key="
            )
        if not hmac.compare_digest(mac, hmac.new(key, content, hashlib.sha256).hexdigest()):
            raise ValueError(f"{what} failed its HMAC check: it was altered, or the key is wrong")
        return
    if mac is not None:
        raise ValueError(f"{what} is authenticated with a key (HMAC-SHA256); pass key= to load it")
    if digest is None or not hmac.compare_digest(digest, hashlib.sha256(content).hexdigest()):
        raise ValueError(f"{what} failed its checksum: it is damaged (a checksum detects corruption, not tampering)")
