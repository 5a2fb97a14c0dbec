"""Integrity of the files the library writes: a corruption check always, authentication with a key.

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

import hashlib
import hmac

__all__ = ["check_key", "seal", "verify"]

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
    if mac is not None and not isinstance(mac, str) or digest is not None and not isinstance(digest, str):
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
