"""The release file: a ``.npz`` archive of arrays plus JSON metadata, no pickling.

Version 2 adds integrity fields (:func:`dplowrank._files.seal`: SHA-256 always, HMAC-SHA256
with a key) over a canonical serialisation of the metadata and every array. Version 1
files (no integrity fields) are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_write_bytes, seal, verify
from .._random import SECURE, SEEDED
from .._validation import check_positive

__all__ = ["ARRAY_FIELDS", "MECHANISMS", "read_release", "write_release"]

MECHANISMS = ("gaussian", "complex")
#: The release's tensor fields, in the order their bytes enter the integrity digest.
ARRAY_FIELDS = ("eigenvalues", "eigenvectors", "spectrum", "hermitian_eigenvalues", "hermitian_eigenvectors")
_FORMAT = "dplowrank.LowRankRelease"
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _content(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """What the integrity fields vouch for: the metadata and each array's dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in ARRAY_FIELDS:
        a = arrays.get(name)
        if a is not None:
            h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


def write_release(path: str | os.PathLike, fields: dict, tensors: dict, *, key: bytes | None) -> Path:
    """Write a release's fields (JSON-able) and tensors (``None`` where absent) to ``path``."""
    path = Path(path)
    meta = {"format": _FORMAT, "version": _FORMAT_VERSION, **fields}
    arrays = {k: t.detach().cpu().numpy() for k, t in tensors.items() if t is not None}
    doc = {"meta": meta, "integrity": seal(_content(meta, arrays), key)}
    buf = io.BytesIO()
    np.savez(buf, metadata=np.array(json.dumps(doc, sort_keys=True)), **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_release(path: str | os.PathLike, *, key: bytes | None) -> tuple[dict, dict]:
    """(fields, tensors) of a release file, every field and array checked; see :func:`load_release`."""
    name = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no release file at {name!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        doc = json.loads(str(data.pop("metadata")))
    except Exception as exc:  # any failure to parse (bad zip, truncation, objects) is one error
        raise ValueError(f"{name!r} is not a readable dplowrank release: {exc}") from exc
    meta = doc.get("meta", doc) if isinstance(doc, dict) else doc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{name!r} is not a dplowrank release file")
    version = meta.get("version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(f"unsupported release format version {version!r} in {name!r}")
    if version >= 2:
        integrity = doc.get("integrity")
        if not isinstance(integrity, dict):
            raise ValueError(f"{name!r} is a damaged dplowrank release: no integrity fields")
        verify(_content(meta, data), integrity, key, f"the release {name!r}")
    elif key is not None:
        raise ValueError(f"the release {name!r} predates authenticated files (format 1); load it without key=")
    try:
        return _release_fields(meta), _release_arrays(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{name!r} is a damaged dplowrank release: {exc}") from exc


_STR_FIELDS = {
    "mechanism": MECHANISMS, "noise_shape": ("isotropic", "upper_triangular", "hermitian"),
    "randomness": (SECURE, SEEDED), "dtype": tuple(DTYPES),
    "neighbour": None, "calibration": None, "solver": None, "device": None,
}


def _release_fields(meta: dict) -> dict:
    """The metadata of a saved release, each field checked (``KeyError``/``ValueError``/``TypeError`` name it)."""
    out: dict[str, Any] = {}  # the fields of a LowRankRelease: str, float, bool or None each
    for key, choices in _STR_FIELDS.items():
        v = meta[key]
        if not isinstance(v, str) or (choices is not None and v not in choices):
            raise ValueError(f"field {key!r} must be " + (f"one of {choices}" if choices else "a str") + f", got {v!r}")
        out[key] = v
    for key in ("sensitivity", "noise_scale"):
        out[key] = check_positive(meta[key], f"field {key!r}")
    for key in ("epsilon", "delta"):  # ε = 0 is possible (a tiny μ at a large δ)
        v = meta[key]
        out[key] = None if v is None else check_positive(v, f"field {key!r}", allow_zero=key == "epsilon")
    if out["delta"] is not None and not out["delta"] < 1.0:
        raise ValueError(f"field 'delta' must be < 1, got {out['delta']!r}")
    for key in ("psd", "converged"):
        if not isinstance(meta[key], bool):
            raise ValueError(f"field {key!r} must be a bool, got {meta[key]!r}")
        out[key] = meta[key]
    # "extra" (format 1) was never filled and is ignored
    warm = meta.get("warm_start")
    if warm not in (None, "float16", "bfloat16"):
        raise ValueError(f"field 'warm_start' must be null, 'float16' or 'bfloat16', got {warm!r}")
    out["warm_start"] = warm
    out["spectrum_slack"] = check_positive(meta.get("spectrum_slack", 0.0), "field 'spectrum_slack'", allow_zero=True)
    return out


def _release_arrays(data: dict) -> dict:
    """The arrays of a saved release as tensors, with their kinds and shapes checked."""

    def real(key, ndim):
        a = data[key]
        if a.dtype.kind != "f" or a.ndim != ndim:
            raise ValueError(f"array {key!r} must be a real float array with {ndim} dimensions, "
                             f"got dtype {a.dtype} and shape {a.shape}")
        return torch.from_numpy(a)

    vals, vecs = real("eigenvalues", 1), real("eigenvectors", 2)
    if vecs.shape[1] != vals.shape[0]:
        raise ValueError(f"inconsistent shapes {tuple(vals.shape)} and {tuple(vecs.shape)}")
    out = {"eigenvalues": vals, "eigenvectors": vecs, "hermitian_eigenvalues": None,
           "hermitian_eigenvectors": None, "spectrum": real("spectrum", 1) if "spectrum" in data else None}
    if "hermitian_eigenvectors" in data or "hermitian_eigenvalues" in data:
        h_vals, h_vecs = real("hermitian_eigenvalues", 1), data["hermitian_eigenvectors"]
        if h_vecs.dtype.kind != "c" or tuple(h_vecs.shape) != tuple(vecs.shape) or h_vals.shape != vals.shape:
            raise ValueError(f"array 'hermitian_eigenvectors' must be complex of shape {tuple(vecs.shape)} "
                             f"(with {vals.shape[0]} eigenvalues), got dtype {h_vecs.dtype} and shape {h_vecs.shape}")
        out["hermitian_eigenvalues"], out["hermitian_eigenvectors"] = h_vals, torch.from_numpy(h_vecs)
    return out


