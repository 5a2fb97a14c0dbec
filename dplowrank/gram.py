"""Streaming accumulation of a clipped Gram matrix Σ xxᵀ: the private statistic, computed exactly;
and the checks of a Gram the caller computed (:func:`check_gram`, :func:`check_range`).

The accumulator is the only place raw rows enter the library. Each row is one privacy
unit: it is clipped to the public norm C before it is added, so one row can move the
Gram by at most C² in Frobenius norm (√2·C² when a row is replaced). Nothing here is
private on its own: the Gram, the row count and the clipped count are raw statistics, to
be released only through a mechanism (:func:`dplowrank.release_rank_k`).

Exact sums (DESIGN.md, invariant 6). A floating-point sum of n rows is not the sum: each
addition rounds, the rounding depends on every other row and on the order, and the
Gram of neighbouring datasets can then differ by more than C² (by up to about n²·2⁻⁵³·C² in
float64, unbounded as n grows). So each clipped row is put on a fixed-point grid before it
is added: its entries are rounded to multiples of g = 2^(⌈log₂ C⌉ − p), a power of two
fixed by the public C and the public bound ``max_rows`` (p = ⌊(53 − ⌈log₂ max_rows⌉)/2⌋
bits; 14 for the default 2²⁵ rows), with an exact integer check that the rounded row still
has norm ≤ C (a row that fails is truncated toward zero instead). Every product of two
grid entries is an integer multiple of g² below 2²ᵖ·g², and every partial sum of up to
``max_rows`` rows stays below 2⁵³·g²: all of them are float64 numbers, so the matrix
product computes the Gram *exactly*, on any device, in any order or batching. The
accumulated matrix is therefore exactly Σ qqᵀ over the rounded rows q, a neighbouring
dataset changes it by exactly one qqᵀ (‖qqᵀ‖_F = ‖q‖² ≤ C²), and the sensitivity C² is exact.
The price is the rounding of each row to p bits below the power of two above C (a relative
2⁻¹⁵…2⁻¹⁴ of C with the default), deterministic and per row, and a public cap on the rows:
an accumulator refuses a batch that would take it past ``max_rows`` (a refusal the caller,
who holds the data, sees; see docs/threat_model.md).
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._distributed import agree, collective, group_info, same_everywhere
from ._files import atomic_write_bytes, check_key, seal, verify
from ._memory import check_allocation
from ._parallel import run_blocks
from ._tensor import as_device, as_tensor
from ._validation import check_choice, check_positive
from .mechanisms import NEIGHBOURS, clip_factors, gram_sensitivity

__all__ = ["GramAccumulator", "DEFAULT_MAX_ROWS", "check_gram", "check_range", "fixed_point_grid"]

# Rows whose norm exceeds C are scaled to C·(1 − 2⁻⁴⁰), so that rounding in the scaling
# can never leave a clipped row with norm above C (the grid step then checks it exactly).
_CLIP_MARGIN = 1.0 - 2.0**-40
_CKPT_FORMAT = "dplowrank.GramAccumulator.checkpoint"
_CKPT_VERSION = 2

#: The default public bound on the rows one accumulator holds (2²⁵ ≈ 33.5 M): 14 bits of grid.
DEFAULT_MAX_ROWS = 2**25
#: The largest max_rows: the grid keeps at least one bit.
_MAX_MAX_ROWS = 2**51


def _grid_bits(max_rows: int) -> int:
    """p = ⌊(53 − ⌈log₂ max_rows⌉)/2⌋: max_rows·2²ᵖ ≤ 2⁵³."""
    return (53 - (max_rows - 1).bit_length()) // 2


def fixed_point_grid(row_norm: float, max_rows: int = DEFAULT_MAX_ROWS) -> float:
    """The grid step g of an accumulator with clipping norm C = ``row_norm`` and ``max_rows``.

    g = 2^(t − p) with 2^t the smallest power of two ≥ C and p = ⌊(53 − ⌈log₂ max_rows⌉)/2⌋,
    so that C/g ≤ 2ᵖ and max_rows·(C/g)² ≤ 2⁵³: every partial sum of the Gram of grid rows
    is an integer multiple of g² below 2⁵³·g², a float64 number (see the module docstring).

    Parameters
    ----------
    row_norm : float
        C > 0.
    max_rows : int, default 2**25
        The public bound on the number of rows, in [1, 2⁵¹].

    Returns
    -------
    float
        g, a power of two.
    """
    c = check_positive(row_norm, "row_norm")
    max_rows = _check_max_rows(max_rows)
    m, e = math.frexp(c)  # c = m·2^e, 0.5 ≤ m < 1
    top = e - 1 if m == 0.5 else e  # 2^top ≥ C > 2^(top-1)
    g = math.ldexp(1.0, top - _grid_bits(max_rows))
    # products of grid entries are multiples of g²: g² must be a normal float64, and the
    # largest possible sum, max_rows·4^top, must stay finite
    if g * g < 2.0**-1020 or top > 500 - (max_rows - 1).bit_length() // 2:
        raise ValueError(
            f"row_norm={row_norm!r} is outside the range in which the Gram is computed exactly "
            f"(about 1e-150 to 1e150 for max_rows={max_rows}); rescale the data"
        )
    return g


def _check_max_rows(max_rows: object) -> int:
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or not 1 <= max_rows <= _MAX_MAX_ROWS:
        raise ValueError(f"max_rows must be an integer in [1, 2**51], got {max_rows!r}")
    return int(max_rows)


class GramAccumulator:
    """Accumulate M = Σ q qᵀ over batches of rows, exactly, where q is clip_C(x) on a fixed-point grid.

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
    max_rows : int, default 2**25
        Public bound on the rows this accumulator will hold; it fixes the grid
        (:func:`fixed_point_grid`): a smaller bound gives a finer grid (p bits below the power
        of two above C, p = ⌊(53 − ⌈log₂ max_rows⌉)/2⌋). A batch that would exceed it is
        refused and nothing is added. Never derive it from the data.

    Attributes
    ----------
    gram : Tensor of shape (d, d), float64
        The raw (non-private) clipped Gram, exact: Σ qqᵀ over the rounded rows. Owned by
        the accumulator.
    n_rows : int
        Rows added so far (non-private).
    n_clipped : int
        Rows whose norm exceeded C and were scaled down (non-private).
    sensitivity : float
        Frobenius sensitivity of :attr:`gram`: C² (add/remove) or √2·C² (replace), exact
        because the sums are.
    grid : float
        The grid step g (a power of two).

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
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.row_norm = check_positive(row_norm, "row_norm")
        self.neighbour = check_choice(neighbour, "neighbour", NEIGHBOURS)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.max_rows = _check_max_rows(max_rows)
        self.grid = fixed_point_grid(self.row_norm, self.max_rows)
        # ‖q‖² ≤ (C/g)² for an integer vector q ⟺ Σ qⱼ² ≤ ⌊(C/g)²⌋, computed exactly
        self._norm2_units = float(math.floor(Fraction(self.row_norm / self.grid) ** 2))
        self._device = as_device(device)
        self._gram: torch.Tensor | None = None
        self._dim = dim
        self.n_rows = 0
        self.n_clipped = 0
        self._consumed = False  # see consume
        self._consumed_by: str | None = None  # what took the buffer, when not a release
        if dim is not None and self._device is not None:
            self._allocate(dim, self._device)

    def _allocate(self, dim: int, device: torch.device) -> torch.Tensor:
        check_allocation(8 * dim * dim, device, f"a float64 Gram of dimension d={dim}")
        self._gram = gram = torch.zeros((dim, dim), dtype=torch.float64, device=device)
        self._dim = dim
        self._device = device
        return gram

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
    def entry_bound(self) -> float:
        """A public bound on every |M_ij|: max_rows·C² (|M_ij| ≤ Σ ‖q‖² ≤ n·C²)."""
        return self.max_rows * self.row_norm * self.row_norm

    @property
    def consumed(self) -> bool:
        """Whether a release took the Gram and added its noise in place (see :meth:`consume`)."""
        return self._consumed

    def _check_not_consumed(self) -> None:
        if self._consumed and self._consumed_by:
            raise ValueError(
                f"this GramAccumulator was handed to {self._consumed_by}: it no longer holds this rank's "
                "raw Gram (the reduction overwrote it, or failed part-way); accumulate a new one"
            )
        if self._consumed:
            raise ValueError(
                "this GramAccumulator was consumed by release_rank_k(..., overwrite=True): its "
                "buffer now holds the noisy matrix, not the raw Gram; accumulate a new one"
            )

    def consume(self) -> torch.Tensor:
        """(For :func:`dplowrank.release_rank_k`.) Hand the Gram to a release that adds its noise in place; the accumulator is spent.

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
        """The raw clipped Gram, Tensor of shape (d, d), float64 (non-private).

        With ``dim`` known it exists before any row (zeros), so that releasing an empty
        accumulator behaves like releasing any other: whether rows were added is private.
        Without ``dim`` and without rows there is no matrix (``ValueError``).
        """
        self._check_not_consumed()
        if self._gram is None:
            if self._dim is None:
                raise ValueError("the accumulator has no rows yet and no dim; call update() first or pass dim=")
            return self._allocate(self._dim, self._device or torch.device("cpu"))
        return self._gram

    def _on_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Rows x (shape (n, d), float64, norms ≤ C up to rounding) rounded to the grid, with
        every resulting norm ≤ C checked exactly; returns q·g, shape (n, d)."""
        inv = 1.0 / self.grid  # a power of two: x·inv is exact
        q = torch.round(x * inv)  # integer-valued, |q_j| ≤ 2^p + 1
        limit = self._norm2_units
        over = (q * q).sum(dim=1) > limit  # exact: integers far below 2⁵³
        if bool(over.any()):
            # rounding to nearest pushed these rows past C: truncate toward zero instead
            q = torch.where(over.unsqueeze(1), torch.trunc(x * inv), q)
            sq = (q * q).sum(dim=1)
            still = sq > limit  # only if the float clip left a row a few ulps above C
            if bool(still.any()):
                shrink = torch.sqrt(limit / torch.where(still, sq, torch.ones_like(sq))) * (1.0 - 2.0**-20)
                q = torch.where(still.unsqueeze(1), torch.trunc(q * shrink.unsqueeze(1)), q)
                if bool(((q * q).sum(dim=1) > limit).any()):  # pragma: no cover - impossible
                    raise RuntimeError("internal error: a grid row exceeds the clipping norm")
        return q.mul_(self.grid)

    def update(self, rows: object) -> GramAccumulator:
        """Clip, round to the grid and add a batch of rows (exactly).

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
            On a wrong shape, a NaN/Inf entry, or a batch that would take the accumulator
            past ``max_rows``. Messages never contain row values or positions (they are
            private). A rejected batch leaves the accumulator unchanged.
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
        if self.n_rows + x.shape[0] > self.max_rows:
            raise ValueError(
                f"this batch would take the accumulator past max_rows={self.max_rows}, the public bound "
                "that keeps its sums exact; nothing was added (create it with a larger max_rows)"
            )
        device = self._device if self._device is not None else x.device
        x, over = self._clip(x.to(device=device, dtype=torch.float64))
        gram = self._allocate(x.shape[1], device) if self._gram is None else self._gram
        gram.addmm_(x.T, x)  # exact: every partial sum is a multiple of g² below 2⁵³·g²
        self.n_rows += x.shape[0]
        self.n_clipped += int(over.sum())
        return self

    def clip_rows(self, rows: object) -> torch.Tensor:
        """The rows as :meth:`update` would add them (clipped to C, on the grid), without adding them.

        Each returned row q has ‖q‖ ≤ C exactly, and its entries are multiples of the grid
        step, so a sum of up to ``max_rows`` such rows (e.g. the row sum Σq, whose
        add/remove sensitivity is then exactly C) is exact in float64 in any order.

        Parameters
        ----------
        rows : array or Tensor of shape (n, d)

        Returns
        -------
        Tensor of shape (n, d), float64, on the accumulator's device (or the rows').
        """
        x = as_tensor(rows, "rows")
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"rows must have shape (n, d) with d >= 1, got shape {tuple(x.shape)}")
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"rows must have {self._dim} columns, got shape {tuple(x.shape)}")
        device = self._device if self._device is not None else x.device
        return self._clip(x.to(device=device, dtype=torch.float64))[0]

    def _clip(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid rows of norm ≤ C, which rows were clipped) for float64 rows x of shape (n, d)."""
        if not bool(torch.isfinite(x).all()):
            raise ValueError("rows contains a NaN or Inf entry; the batch was not added")
        # ‖x‖ is taken as m·‖x/m‖ with m = max|x_i|, so that rows whose squared entries
        # overflow (|x_i| ≳ 1e154) are still clipped to norm C rather than to zero.
        top = x.abs().amax(dim=1)
        unit = x / torch.where(top > 0, top, torch.ones_like(top)).unsqueeze(1)  # entries in [-1, 1]
        unit_norms = torch.linalg.vector_norm(unit, dim=1)  # in [1, √d], or 0 for a zero row
        # ‖x‖ > C tested as ‖x/m‖ > C/m, without forming ‖x‖ (C/0 = inf for a zero row);
        # a clipped row is unit·(C·margin/‖unit‖)
        # (a tensor divided by a tensor: torch's scalar / tensor multiplies by a rounded reciprocal)
        limit = torch.full_like(top, self.row_norm) / top
        scale, over = clip_factors(unit_norms, limit, self.row_norm * _CLIP_MARGIN)
        x = torch.where(over.unsqueeze(1), unit * scale.unsqueeze(1), x)
        return self._on_grid(x), over

    # ---- data parallel -----------------------------------------------------------------------
    def reduce(self, dst: int = 0, *, group: Any = None) -> bool:
        """Sum every rank's accumulator into rank ``dst``'s (torch.distributed, collective).

        Each rank accumulates its own shard of the privacy units; one reduction of the
        float64 Grams (d² × 8 bytes per rank) and of the counts gives rank ``dst`` exactly
        the accumulator one process would have built from all the rows, bit for bit: every
        sum is on the fixed-point grid, so the order does not matter. The sensitivity is
        unchanged **provided each privacy unit lives on exactly one rank** (shard by
        example id, not by position in a stream two ranks read).

        Every rank must call it with the same ``dst`` and an accumulator of the same
        ``row_norm``, ``neighbour``, ``max_rows`` and ``dim`` (checked: a mismatch raises
        ``ValueError`` on every rank). ``max_rows`` bounds the rows of *all* ranks together;
        a total above it raises ``ValueError`` on every rank. On the other ranks the
        accumulator is consumed afterwards (the reduction overwrites their buffers); only
        rank ``dst`` holds the raw total, and releases it (see
        :func:`dplowrank.release_rank_k_distributed`). A rank that dies or times out makes
        the others raise :class:`dplowrank.DistributedError`; no partial sum is kept.

        Parameters
        ----------
        dst : int
            The rank (in ``group``) that receives the total.
        group : ProcessGroup, optional
            Default: the whole job. The Gram's device must suit the backend (CPU for gloo,
            CUDA for NCCL).

        Returns
        -------
        bool
            ``True`` on rank ``dst`` (whose accumulator now holds the total).
        """
        import torch.distributed as dist

        rank, world = group_info(group)
        local: Exception | None = None
        try:
            self._check_not_consumed()
            if self._dim is None:
                raise ValueError("reduce() needs the dimension on every rank: create the accumulator with dim=")
            if isinstance(dst, bool) or not isinstance(dst, int) or not 0 <= dst < world:
                raise ValueError(f"dst must be a rank in [0, {world}), got {dst!r}")
        except ValueError as exc:
            local = exc
        agree(local, group, what="GramAccumulator.reduce")
        spec = (self.row_norm, self.neighbour, self.max_rows, self._dim, dst)
        same_everywhere(spec, group, what="GramAccumulator.reduce",
                        refusal="the ranks' accumulators differ in (row_norm, neighbour, max_rows, dim) or dst; every "
                                "rank must build the same accumulator")
        gram = self.gram
        counts = torch.tensor([self.n_rows, self.n_clipped], dtype=torch.int64, device=gram.device)
        with collective("GramAccumulator.reduce"):
            dist.all_reduce(counts, group=group)
        total, clipped = (int(c) for c in counts.tolist())
        if total > self.max_rows:
            raise ValueError(
                f"the ranks together hold more rows than max_rows={self.max_rows}, the public bound that keeps the "
                "sums exact; nothing was reduced (build every rank's accumulator with a larger max_rows)"
            )
        # From here the buffer is the reduction's: on the other ranks it ends as scratch, and on
        # rank dst a failed reduction may leave a partial sum, which must never be released.
        self._gram, self._consumed = None, True
        self._consumed_by = f"GramAccumulator.reduce(dst={dst}) on rank {rank}"
        try:
            with collective("GramAccumulator.reduce"):
                dist.reduce(gram, dst=dst, group=group)
        except BaseException:
            gram.zero_()  # a partial sum, or the transport's leftovers: nothing of it stays
            raise
        if rank != dst:
            gram.zero_()  # gloo leaves partial sums of other ranks here: none stays with this rank
            return False
        self._gram, self._consumed, self._consumed_by = gram, False, None
        self.n_rows, self.n_clipped = total, clipped
        return True

    # ---- crash safety -----------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike, *, cursor: object = None, key: bytes | None = None) -> Path:
        """Write the accumulator's exact state to ``path``, atomically, with an integrity check.

        The file holds the float64 Gram bit for bit, the counts, the configuration and an
        optional JSON-able ``cursor`` (e.g. how many batches of the stream were consumed), so
        that a process killed at any moment resumes, with :meth:`load_checkpoint`, to the
        same Gram as an uninterrupted run. The write goes to a temporary file that is
        renamed over ``path``: a kill during the write leaves the previous checkpoint intact.

        Integrity: a SHA-256 checksum detects corruption, not tampering (anyone who can write
        the file can recompute it, e.g. after lowering ``row_norm`` so that the sensitivity
        shrinks). With ``key`` (secret bytes, at least 16, kept apart from the file) the
        checkpoint also carries HMAC-SHA256 and :meth:`load_checkpoint` then needs the same
        key and refuses any edit. The checkpoint contains raw private statistics: protect it
        like the data (it is written with the process's default permissions).
        """
        self._check_not_consumed()
        key = check_key(key)
        meta = {
            "format": _CKPT_FORMAT, "version": _CKPT_VERSION, "row_norm": self.row_norm,
            "neighbour": self.neighbour, "max_rows": self.max_rows,
            "dim": self._dim, "n_rows": self.n_rows, "n_clipped": self.n_clipped,
            "device": None if self._device is None else str(self._device), "cursor": cursor,
        }
        gram = b"" if self._gram is None else self._gram.detach().cpu().numpy().astype("<f8").tobytes()
        body = json.dumps(meta, sort_keys=True).encode()
        header = json.dumps({"meta": meta, "integrity": seal(body + gram, key)}, sort_keys=True).encode()
        return atomic_write_bytes(path, len(header).to_bytes(8, "little") + header + gram)

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike, *, device: torch.device | str | None = None,
                        key: bytes | None = None) -> tuple[GramAccumulator, object]:
        """Restore an accumulator written by :meth:`save_checkpoint`; returns ``(acc, cursor)``.

        A damaged, truncated or altered file, a directory, or a file whose fields are missing or
        invalid raises ``ValueError`` naming the file (and the field); never a fresh accumulator.
        With ``key``, the file must carry a valid HMAC for it; a file written with a key cannot
        be loaded without it. A missing file raises ``FileNotFoundError``.
        """
        key = check_key(key)
        path = Path(path)
        where = os.fspath(path)
        if path.is_dir():
            raise ValueError(f"the checkpoint path {where!r} is a directory, not a checkpoint file")
        raw = path.read_bytes()  # FileNotFoundError for a missing file
        try:
            n = int.from_bytes(raw[:8], "little")
            doc = json.loads(raw[8:8 + n])
            gram = raw[8 + n:]
            meta, integrity = doc["meta"], doc["integrity"]
            if not isinstance(meta, dict) or not isinstance(integrity, dict):
                raise ValueError("malformed header")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            if isinstance(doc_version := _old_version(raw), int):
                raise ValueError(
                    f"{where!r} is a version-{doc_version} GramAccumulator checkpoint, whose sums were not "
                    "exact; this dplowrank reads version 2: accumulate the data again"
                ) from exc
            raise ValueError(f"{where!r} is not a readable GramAccumulator checkpoint: {exc}") from exc
        verify(json.dumps(meta, sort_keys=True).encode() + gram, integrity, key, f"the checkpoint {where!r}")
        if meta.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{where!r} is not a GramAccumulator checkpoint")
        # A valid checksum proves the file is intact, not that it was written by save_checkpoint:
        # every field is checked before it is used, and any failure names the file and the field.
        field = "version"
        try:
            if meta.get("version") != _CKPT_VERSION:
                raise ValueError(f"unsupported version {meta.get('version')!r}")
            for field in ("row_norm", "neighbour", "max_rows", "dim", "n_rows", "n_clipped", "device", "cursor"):
                if field not in meta:
                    raise ValueError("the field is missing")
            field = "dim"
            d = meta["dim"]
            if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
                raise ValueError(f"must be null or a positive integer, got {d!r}")
            field = "max_rows"
            max_rows = _check_max_rows(meta["max_rows"])
            field = "n_rows"
            n_rows, n_clipped = meta["n_rows"], meta["n_clipped"]
            if isinstance(n_rows, bool) or not isinstance(n_rows, int) or not 0 <= n_rows <= max_rows:
                raise ValueError(f"must be an integer in [0, max_rows={max_rows}]")
            field = "n_clipped"
            if isinstance(n_clipped, bool) or not isinstance(n_clipped, int) or not 0 <= n_clipped <= n_rows:
                raise ValueError("must be an integer in [0, n_rows]")
            field = "device"
            if meta["device"] is not None and not isinstance(meta["device"], str):
                raise ValueError(f"must be null or a str, got {meta['device']!r}")
            dev = as_device(device) or as_device(meta["device"])  # pass device= to load elsewhere
            field = "row_norm"
            row_norm = check_positive(meta["row_norm"], "row_norm")
            field = "neighbour"
            neighbour = check_choice(meta["neighbour"], "neighbour", NEIGHBOURS)
            acc = cls(row_norm=row_norm, dim=d, neighbour=neighbour, max_rows=max_rows)
            field = "gram"
            arr = None
            if gram:
                if d is None or len(gram) != 8 * d * d:
                    raise ValueError(f"{len(gram)} bytes do not hold a float64 Gram of dimension {d!r}")
                arr = np.frombuffer(gram, dtype="<f8").reshape(d, d).copy()
                if not np.isfinite(arr).all():
                    raise ValueError("it has a NaN or Inf entry")
            elif n_rows:
                raise ValueError("it is empty but n_rows is not 0")
        except (ValueError, TypeError) as exc:  # ValueError and TypeError from the checks above
            raise ValueError(f"the checkpoint {where!r} has an invalid field {field!r}: {exc}") from exc
        acc._device = dev
        if arr is not None:
            acc._gram = torch.from_numpy(arr).to(dev or "cpu")
            acc._device = acc._gram.device
        acc.n_rows, acc.n_clipped = n_rows, n_clipped
        return acc, meta["cursor"]

    def __repr__(self) -> str:
        # n_rows is a raw (private) count: a repr ends up in logs, so it is not shown
        return (
            f"GramAccumulator(row_norm={self.row_norm}, dim={self._dim}, neighbour={self.neighbour!r}, "
            f"device={self._device}, max_rows={self.max_rows})"
        )


# ---- the checks of a given Gram (one the caller computed) --------------------------------


def _symmetry_tolerance(dtype: torch.dtype) -> float:
    return 64.0 * torch.finfo(dtype).eps


_CHECK_STRIP_GPU = 4096  # rows per strip on a GPU
_CHECK_BLOCK = 256  # tiles of 256² float64 (512 kB) stay in cache: 27 ms at d = 4096 against 36 ms for 512


def check_gram(M: torch.Tensor) -> float:
    """Raise unless M (shape (d, d)) is finite and symmetric to rounding; one blocked pass.

    Returns max |M_ij|, which the release reuses to check that the noisy matrix fits its
    working dtype (:func:`check_range`). Each pair of blocks (I, J), J ≥ I, is read once:
    |M_IJ − M_JIᵀ| gives the asymmetry and max |M_IJ| the scale, whose NaN/Inf also flags
    non-finite entries (located afterwards).
    On the CPU the pairs are 256² tiles (cache-sized) on the thread pool; on a GPU, row
    strips whose figures stay on the device until one synchronisation at the end (a
    synchronisation per tile cost 1 s at d = 32768 on an H100, against ~10 ms for the pass).
    """
    d = M.shape[0]
    if M.device.type != "cpu":
        figures = []
        step = _CHECK_STRIP_GPU
        for i0 in range(0, d, step):
            i1 = min(d, i0 + step)
            upper = M[i0:i1, i0:]
            lo, hi = torch.aminmax(upper)
            asym = (upper - M[i0:, i0:i1].T).abs().max()
            figures.append(torch.stack([torch.maximum(-lo, hi), asym]))
        return _judge(M, torch.stack(figures).to("cpu", torch.float64).tolist())

    def pair(i0: int, j0: int) -> tuple[float, float]:
        i1, j1 = min(d, i0 + _CHECK_BLOCK), min(d, j0 + _CHECK_BLOCK)
        blk = M[i0:i1, j0:j1]
        lo, hi = torch.aminmax(blk)  # NaN and ±Inf propagate into the scale
        top = max(-float(lo), float(hi))
        if not math.isfinite(top):
            return top, 0.0
        dlo, dhi = torch.aminmax(blk - M[j0:j1, i0:i1].T)
        return top, max(-float(dlo), float(dhi))

    starts = range(0, d, _CHECK_BLOCK)
    return _judge(M, run_blocks(pair, [(i0, j0) for i0 in starts for j0 in starts if j0 >= i0], M.device))


def _judge(M: torch.Tensor, figures) -> float:
    """Raise the input error for M (shape (d, d)) from per-block figures ``(max |entry|,
    max asymmetry)``, naming the check but no value or position. Returns the largest |entry|."""
    # The messages name the check, never a value or a position of the (private) matrix.
    if not all(math.isfinite(top) and math.isfinite(asym) for top, asym in figures):
        raise ValueError("the Gram matrix has a NaN or Inf entry")
    scale = max(top for top, _ in figures)
    worst = max(asym for _, asym in figures)
    if worst > _symmetry_tolerance(M.dtype) * max(scale, 1e-300):
        raise ValueError(
            f"the Gram matrix must be symmetric (|M_ij - M_ji| within {_symmetry_tolerance(M.dtype):.3g} "
            "of its largest entry); it is not"
        )
    return scale


def check_range(scale: float, sigma: float, d: int, dtype: torch.dtype) -> None:
    """Refuse a release whose noisy matrix would not be representable in ``dtype``.

    Called before the budget is charged. ``scale`` is max |M_ij| of the (finite) Gram. The
    noisy entries are M_ij + E_ij with E_ij ~ N(0, σ²) (σ²/2 off the diagonal), and the
    noise's eigenvalues reach 2σ√d, so max |M| + 8σ√d must stay below the largest finite
    number of ``dtype``: otherwise the noise or the solver would overflow (a float32 Gram of
    1e300 used to raise LinAlgError, a σ of 1e300 a RuntimeError, both after the charge).
    σ must also be a normal number of ``dtype``: a σ that flushes to zero or to a subnormal
    would leave the matrix without its noise.
    """
    info = torch.finfo(dtype)
    name = str(dtype).replace("torch.", "")
    if not math.isfinite(scale) or scale > info.max:
        raise ValueError(
            f"the Gram matrix's entries (or their public bound max_rows·row_norm²) do not fit {name} "
            f"(largest finite {info.max:.3g}); rescale the data or use dtype='float64'"
        )
    if not info.tiny <= sigma <= info.max:
        raise ValueError(
            f"the noise scale sigma={sigma:.3g} is not a normal {name} number (range "
            f"[{info.tiny:.3g}, {info.max:.3g}]); rescale the data (sensitivity) or use dtype='float64'"
        )
    reach = scale + 8.0 * sigma * math.sqrt(d)
    if not (math.isfinite(reach) and reach <= info.max):
        raise ValueError(
            f"the noisy matrix would overflow {name}: its entries plus noise of scale "
            f"sigma={sigma:.3g} at d={d} can exceed the largest finite {info.max:.3g}; "
            "rescale the data (sensitivity) or use dtype='float64'"
        )


def _old_version(raw: bytes) -> int | None:
    """The version of a checkpoint in the version-1 layout (header = meta with ``sha256``), else None."""
    try:
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + n])
        if isinstance(meta, dict) and meta.get("format") == _CKPT_FORMAT and "meta" not in meta:
            v = meta.get("version")
            return v if isinstance(v, int) else None
    except (ValueError, TypeError, RecursionError):
        return None
    return None
