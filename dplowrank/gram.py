"""Streaming accumulation of a clipped Gram matrix Σ xxᵀ: the private statistic.

The accumulator is the only place raw rows enter the library. Each row is one privacy
unit: it is clipped to the public norm C before it is added, so one row can move the
Gram by at most C² in Frobenius norm (√2·C² when a row is replaced), and the sums are kept
in float64 whatever the input dtype. Nothing here is private on its own: the Gram, the
row count and the clipped count are raw statistics, to be released only through a
mechanism (:func:`dplowrank.release_rank_k`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write_bytes
from ._memory import check_allocation
from ._tensor import as_device, as_tensor
from ._validation import check_choice, check_positive
from .mechanisms._sensitivity import NEIGHBOURS, gram_sensitivity

__all__ = ["GramAccumulator"]

# Rows whose norm exceeds C are scaled to C·(1 − 2⁻⁴⁰), so that rounding in the scaling
# can never leave a clipped row with norm above C.
_CLIP_MARGIN = 1.0 - 2.0**-40
_CKPT_FORMAT = "dplowrank.GramAccumulator.checkpoint"


class GramAccumulator:
    """Accumulate M = Σ clip_C(x) clip_C(x)ᵀ over batches of rows, in float64.

    Parameters
    ----------
    row_norm : float
        The clipping norm C > 0. Public: it must not be chosen by looking at the data.
    dim : int, optional
        The row dimension d; taken from the first batch when omitted.
    neighbour : {"add_remove", "replace"}, default "add_remove"
        The neighbour relation that :attr:`sensitivity` is computed for.
    device : torch.device or str, optional
        Where the Gram lives; defaults to the device of the first batch.

    Attributes
    ----------
    gram : Tensor of shape (d, d), float64
        The raw (non-private) clipped Gram. Owned by the accumulator.
    n_rows : int
        Rows added so far (non-private).
    n_clipped : int
        Rows whose norm exceeded C and were scaled down (non-private).
    sensitivity : float
        Frobenius sensitivity of :attr:`gram`: C² (add/remove) or √2·C² (replace).

    Examples
    --------
    >>> import numpy as np
    >>> acc = GramAccumulator(row_norm=1.0)
    >>> acc.update(np.eye(3) * 2.0).n_clipped
    3
    >>> acc.gram.diagonal().tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        *,
        row_norm: float,
        dim: int | None = None,
        neighbour: str = "add_remove",
        device: torch.device | str | None = None,
    ) -> None:
        self.row_norm = check_positive(row_norm, "row_norm")
        self.neighbour = check_choice(neighbour, "neighbour", NEIGHBOURS)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._device = as_device(device)
        self._gram: torch.Tensor | None = None
        self._dim = dim
        self.n_rows = 0
        self.n_clipped = 0
        self._consumed = False  # see _consume
        if dim is not None and self._device is not None:
            self._allocate(dim, self._device)

    def _allocate(self, dim: int, device: torch.device) -> None:
        check_allocation(8 * dim * dim, device, f"a float64 Gram of dimension d={dim}")
        self._gram = torch.zeros((dim, dim), dtype=torch.float64, device=device)
        self._dim = dim
        self._device = device

    @property
    def dim(self) -> int | None:
        """The row dimension d (``None`` before the first batch when not given)."""
        return self._dim

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def sensitivity(self) -> float:
        """Frobenius sensitivity of the Gram for :attr:`neighbour` (see ``gram_sensitivity``)."""
        return gram_sensitivity(self.row_norm, self.neighbour)

    @property
    def consumed(self) -> bool:
        """Whether a release took the Gram and added its noise in place (see :meth:`_consume`)."""
        return self._consumed

    def _check_not_consumed(self) -> None:
        if self._consumed:
            raise ValueError(
                "this GramAccumulator was consumed by release_rank_k(..., overwrite=True): its "
                "buffer now holds the noisy matrix, not the raw Gram; accumulate a new one"
            )

    def _consume(self) -> torch.Tensor:
        """Hand the Gram to a release that adds its noise in place; the accumulator is spent.

        Called by ``release_rank_k(acc, ..., overwrite=True)`` before any noise is drawn, so
        that a release at large d needs no second d×d buffer. From then on :attr:`gram`,
        :meth:`update` and :meth:`save_checkpoint` raise ``ValueError``: the buffer holds
        M + E, which must never be released again, added to, or saved as the raw Gram.
        Returns the Gram, Tensor of shape (d, d), float64.
        """
        gram = self.gram
        self._gram = None
        self._consumed = True
        return gram

    @property
    def gram(self) -> torch.Tensor:
        """The raw clipped Gram, Tensor of shape (d, d), float64 (non-private)."""
        self._check_not_consumed()
        if self._gram is None:
            raise ValueError("the accumulator has no rows yet; call update() first")
        return self._gram

    def update(self, rows: object) -> "GramAccumulator":
        """Clip and add a batch of rows.

        Parameters
        ----------
        rows : array or Tensor of shape (n, d) (or (d,) for one row)
            Real rows, any float dtype, on any device; moved to the accumulator's device.

        Returns
        -------
        GramAccumulator
            ``self``, for chaining.

        Raises
        ------
        ValueError
            On a wrong shape or a NaN/Inf entry (the message names the row, counted over
            all rows added so far). A rejected batch leaves the accumulator unchanged.
        """
        self._check_not_consumed()
        x = as_tensor(rows, "rows")
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2:
            raise ValueError(f"rows must have shape (n, d), got shape {tuple(x.shape)}")
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"rows must have {self._dim} columns, got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"rows must have at least one column, got shape {tuple(x.shape)}")
        device = self._device if self._device is not None else x.device
        x = x.to(device=device, dtype=torch.float64)
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0, 0])
            raise ValueError(
                f"row {self.n_rows + bad} (index {bad} of this batch) contains NaN or Inf"
            )
        # ‖x‖ is taken as m·‖x/m‖ with m = max|x_i|, so that rows whose squared entries
        # overflow (|x_i| ≳ 1e154) are still clipped to norm C rather than to zero.
        top = x.abs().amax(dim=1)
        unit = x / torch.where(top > 0, top, torch.ones_like(top)).unsqueeze(1)  # entries in [-1, 1]
        unit_norms = torch.linalg.vector_norm(unit, dim=1)  # in [1, √d], or 0 for a zero row
        over = top > self.row_norm / unit_norms  # ‖x‖ > C without forming ‖x‖; 0-rows: C/0 = inf
        scale = self.row_norm * _CLIP_MARGIN / torch.where(over, unit_norms, torch.ones_like(unit_norms))
        x = torch.where(over.unsqueeze(1), unit * scale.unsqueeze(1), x)
        if self._gram is None:
            self._allocate(x.shape[1], device)
        self._gram.addmm_(x.T, x)
        self.n_rows += x.shape[0]
        self.n_clipped += int(over.sum())
        return self

    # ---- crash safety -----------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike, *, cursor: object = None) -> Path:
        """Write the accumulator's exact state to ``path``, atomically, with a SHA-256 checksum.

        The file holds the float64 Gram bit for bit, the counts, the configuration and an
        optional JSON-able ``cursor`` (e.g. how many batches of the stream were consumed), so
        that a process killed at any moment resumes, with :meth:`load_checkpoint`, to the
        same Gram as an uninterrupted run. The write goes to a temporary file that is
        renamed over ``path``: a kill during the write leaves the previous checkpoint intact.
        The checkpoint contains raw private statistics: protect it like the data.
        """
        self._check_not_consumed()
        meta = {
            "format": _CKPT_FORMAT, "version": 1, "row_norm": self.row_norm, "neighbour": self.neighbour,
            "dim": self._dim, "n_rows": self.n_rows, "n_clipped": self.n_clipped,
            "device": None if self._device is None else str(self._device), "cursor": cursor,
        }
        gram = b"" if self._gram is None else self._gram.detach().cpu().numpy().astype("<f8").tobytes()
        meta["sha256"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode() + gram).hexdigest()
        header = json.dumps(meta, sort_keys=True).encode()
        return atomic_write_bytes(path, len(header).to_bytes(8, "little") + header + gram)

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike, *, device: torch.device | str | None = None
                        ) -> tuple["GramAccumulator", object]:
        """Restore an accumulator written by :meth:`save_checkpoint`; returns ``(acc, cursor)``.

        A damaged, truncated or altered file, a directory, or a file whose fields are missing or
        invalid raises ``ValueError`` naming the file (and the field); never a fresh accumulator.
        A missing file raises ``FileNotFoundError``.
        """
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"the checkpoint path {os.fspath(path)!r} is a directory, not a checkpoint file")
        raw = path.read_bytes()  # FileNotFoundError for a missing file
        try:
            n = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8:8 + n])
            gram = raw[8 + n:]
            digest = meta.pop("sha256")
            ok = hashlib.sha256(json.dumps(meta, sort_keys=True).encode() + gram).hexdigest() == digest
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"{os.fspath(path)!r} is not a readable GramAccumulator checkpoint: {exc}") from exc
        if not ok:
            raise ValueError(f"the checkpoint {os.fspath(path)!r} failed its checksum: it is damaged")
        if meta.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a GramAccumulator checkpoint")
        # A valid checksum proves the file is intact, not that it was written by save_checkpoint:
        # every field is checked before it is used, and any failure names the file and the field.
        field = "version"
        try:
            if meta.get("version") != 1:
                raise ValueError(f"unsupported version {meta.get('version')!r}")
            for field in ("row_norm", "neighbour", "dim", "n_rows", "n_clipped", "device", "cursor"):
                if field not in meta:
                    raise ValueError("the field is missing")
            field = "dim"
            d = meta["dim"]
            if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
                raise ValueError(f"must be null or a positive integer, got {d!r}")
            field = "n_rows"
            n_rows, n_clipped = meta["n_rows"], meta["n_clipped"]
            if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
                raise ValueError(f"must be a non-negative integer, got {n_rows!r}")
            field = "n_clipped"
            if isinstance(n_clipped, bool) or not isinstance(n_clipped, int) or not 0 <= n_clipped <= n_rows:
                raise ValueError(f"must be an integer in [0, n_rows={n_rows}], got {n_clipped!r}")
            field = "device"
            if meta["device"] is not None and not isinstance(meta["device"], str):
                raise ValueError(f"must be null or a str, got {meta['device']!r}")
            dev = as_device(device) or as_device(meta["device"])  # pass device= to load elsewhere
            field = "row_norm"
            row_norm = check_positive(meta["row_norm"], "row_norm")
            field = "neighbour"
            neighbour = check_choice(meta["neighbour"], "neighbour", NEIGHBOURS)
            acc = cls(row_norm=row_norm, dim=d, neighbour=neighbour)
            field = "gram"
            arr = None
            if gram:
                if d is None or len(gram) != 8 * d * d:
                    raise ValueError(f"{len(gram)} bytes do not hold a float64 Gram of dimension {d!r}")
                arr = np.frombuffer(gram, dtype="<f8").reshape(d, d).copy()
                if not np.isfinite(arr).all():
                    raise ValueError("it has a NaN or Inf entry")
            elif n_rows:
                raise ValueError(f"it is empty but n_rows is {n_rows}")
        except (ValueError, TypeError) as exc:  # ValueError and TypeError from the checks above
            raise ValueError(f"the checkpoint {os.fspath(path)!r} has an invalid field {field!r}: {exc}") from exc
        acc._device = dev
        if arr is not None:
            acc._gram = torch.from_numpy(arr).to(dev or "cpu")
            acc._device = acc._gram.device
        acc.n_rows, acc.n_clipped = n_rows, n_clipped
        return acc, meta["cursor"]

    def __repr__(self) -> str:
        return (
            f"GramAccumulator(row_norm={self.row_norm}, dim={self._dim}, neighbour={self.neighbour!r}, "
            f"device={self._device}, n_rows={self.n_rows})"
        )
