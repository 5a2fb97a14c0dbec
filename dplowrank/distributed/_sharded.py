"""Row-sharded release: a Gram too large for one process, each rank holding a block of rows.

Rank r holds rows ``[row_start, row_start + b)`` of the symmetric (d, d) matrix M. It adds its
rows of one symmetric noise matrix E (the noise blocks are numbered keystreams of one source
that every rank holds: :func:`dplowrank.mechanisms.noisy_symmetric_rows`), so E is never
materialised and never sent. The block Lanczos solver then runs on rank ``src`` against an
operator whose product ``A @ X`` broadcasts X (shape (d, w)) and gathers every rank's
``A[rows] @ X``: per step d·w·8 bytes out and d·w·8 bytes back (float64). The other ranks serve
products until told to stop; they see only X and the noisy matrix. The release is broadcast.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._distributed import DistributedError, agree, broadcast_tensor, collective, group_info
from .._random import SECURE, SEEDED, resolve_generator
from .._secure import SecureNormalSource, auto_algorithm, broadcast_source
from ..accounting import PrivacyBudget
from ..gram import check_range
from ..linalg import NOISE_ATOL_FRACTION, topk_eigh_operator
from ..mechanisms import GaussianMechanism, noisy_symmetric_rows, shared_noise_source
from ..privacy import CALIBRATIONS, EVENT_NEIGHBOURS, GaussianEvent, calibrate_noise
from ..release import LowRankRelease, package_release
from ._release import failure, share_outcome

__all__ = ["release_rank_k_sharded"]

#: Rows of a shard are whole noise blocks (the last shard may end at d).
ROW_ALIGN = 512
_STOP, _PRODUCT = 0, 1


class _ShardedMatrix:
    """The noisy matrix as an operator on rank ``src``: ``A @ X`` over all ranks' rows."""

    def __init__(self, rows: torch.Tensor, d: int, counts: list[int], src: int, group: Any) -> None:
        self.rows, self.d, self.counts, self.src, self.group = rows, d, counts, src, group
        self.shape = (d, d)
        self.dtype = rows.dtype
        self.device = rows.device
        self.products = 0

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        w = X.shape[1]
        broadcast_tensor(torch.tensor([_PRODUCT, w], dtype=torch.int64), self.src, self.group, "a sharded product")
        X = broadcast_tensor(X.contiguous(), self.src, self.group, "a sharded product")
        parts = _padded_parts(self.counts, w, X.dtype, X.device)
        mine = _local_product(self.rows, X, max(self.counts))
        with collective("a sharded product"):
            dist.gather(mine, parts, dst=self.src, group=self.group)
        self.products += 1
        return torch.cat([p[:n] for p, n in zip(parts, self.counts)], dim=0)

    def stop(self) -> None:
        broadcast_tensor(torch.tensor([_STOP, 0], dtype=torch.int64), self.src, self.group, "the sharded solve")


def _padded_parts(counts: list[int], w: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    top = max(counts)
    return [torch.empty((top, w), dtype=dtype, device=device) for _ in counts]


def _local_product(rows: torch.Tensor, X: torch.Tensor, top: int) -> torch.Tensor:
    """This rank's rows times X, padded to ``top`` rows (gather wants equal shapes)."""
    out = torch.zeros((top, X.shape[1]), dtype=X.dtype, device=X.device)
    torch.mm(rows, X, out=out[: rows.shape[0]])
    return out


def _serve(rows: torch.Tensor, d: int, counts: list[int], src: int, group: Any) -> None:
    """A rank other than ``src``: answer products until ``src`` says stop."""
    import torch.distributed as dist

    while True:
        head = broadcast_tensor(torch.empty(2, dtype=torch.int64), src, group, "the sharded solve")
        if int(head[0]) == _STOP:
            return
        X = broadcast_tensor(torch.empty((d, int(head[1])), dtype=rows.dtype, device=rows.device), src, group,
                             "a sharded product")
        with collective("a sharded product"):
            dist.gather(_local_product(rows, X, max(counts)), None, dst=src, group=group)


def release_rank_k_sharded(
    rows: torch.Tensor,
    k: int,
    *,
    row_start: int,
    sensitivity: float,
    epsilon: float | None = None,
    delta: float | None = None,
    noise_shape: str = "isotropic",
    neighbour: str | None = None,
    calibration: str = "analytic",
    noise_scale: float | None = None,
    rho: float | None = None,
    mu: float | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    generator=None,
    budget: PrivacyBudget | None = None,
    src: int = 0,
    group: Any = None,
) -> LowRankRelease:
    """A private rank-k release of a symmetric matrix whose rows are spread over the ranks (collective).

    Rank r passes rows ``[row_start, row_start + b)`` of the (d, d) matrix M (a Gram with
    Frobenius ``sensitivity``); the ranks' blocks must tile [0, d) in rank order, each
    starting at a multiple of 512 and holding a multiple of 512 rows (the last may end at d).
    Every rank adds its rows of one symmetric noise matrix E, drawn from a keystream that
    all ranks hold; no rank ever holds the whole matrix (memory per rank: its rows, twice
    without ``overwrite``, plus the solver's (d, ~10·(k + p)) basis on rank ``src``). Rank
    ``src`` charges the budget, runs the block Lanczos solver of
    :func:`dplowrank.topk_eigh` on the sharded matrix, and broadcasts the release.

    For the same source the noise is bit-identical to :func:`dplowrank.release_rank_k` on the
    whole matrix (same streams, same arithmetic), and the eigenpairs agree to the solver's
    tolerance (the products are summed in a different order).

    Parameters
    ----------
    rows : Tensor of shape (b, d)
        This rank's rows of M (real, float32 or float64, finite). M must be symmetric:
        entries left of ``row_start`` are taken from these rows (the single-process release
        takes the upper triangle; the two agree for an exactly symmetric M such as an
        accumulator's Gram).
    k : int
        1 ≤ k ≤ d.
    row_start : int
        This rank's first row.
    sensitivity : float
        Frobenius sensitivity Δ of M (public).
    epsilon, delta, noise_shape, neighbour, calibration, noise_scale, rho, mu
        As in :func:`dplowrank.release_rank_k` (real Gaussian mechanism).
    dtype : torch.dtype, optional
        Precision of the noisy rows and the solve (default: the rows').
    overwrite : bool
        Add the noise into ``rows`` in place (it then holds the noisy rows) when the dtype
        matches.
    generator : None, SecureNormalSource or CPU torch.Generator
        Rank ``src`` only (the other ranks pass ``None``). ``None``: a secure source whose
        OS-drawn key rank ``src`` sends to the other ranks over the process group. A seeded
        source or generator is sent likewise (the release is then "seeded").
    budget : PrivacyBudget, optional
        Rank ``src`` only; charged once before any noise is drawn.
    src : int
        The rank that charges, solves and broadcasts.
    group : ProcessGroup, optional

    Returns
    -------
    LowRankRelease
        The same on every rank.

    Raises
    ------
    ValueError, TypeError, BudgetExceededError
        On every rank, before any noise is drawn, when any rank's arguments are bad or the
        budget refuses.
    DistributedError
        When a rank dies or times out.
    """
    rank, world = group_info(group)
    local: Exception | None = None
    try:
        d, b, work, cal, nb = _check_local(rows, k, row_start, sensitivity, dtype, noise_shape, neighbour,
                                           calibration, src, world, rank, generator, budget,
                                           epsilon, delta, noise_scale, rho, mu)
    except (ValueError, TypeError) as exc:
        local = exc
    agree(local, group, what="release_rank_k_sharded")
    # every rank's layout, dimension and choices must fit together
    mine = (row_start, b, d, str(work), noise_shape, nb, float(sensitivity), cal.noise_scale, k, src, overwrite,
            auto_algorithm(rows.device))
    layout: list = [None] * world
    with collective("release_rank_k_sharded"):
        import torch.distributed as dist

        dist.all_gather_object(layout, mine, group=group)
    _check_layout(layout, d)
    counts = [entry[1] for entry in layout]
    lo, hi = torch.aminmax(rows)
    scale = torch.tensor([max(-float(lo), float(hi))], dtype=torch.float64)
    with collective("release_rank_k_sharded"):
        dist.all_reduce(scale, op=dist.ReduceOp.MAX, group=group)
    local = None
    try:
        check_range(float(scale), cal.noise_scale, d, work)
    except ValueError as exc:
        local = exc
    agree(local, group, what="release_rank_k_sharded")

    # rank src charges the budget (before any noise), then hands out the noise source
    outcome: tuple | None = None
    given: SecureNormalSource | None = None
    solver_gen: torch.Generator | None = None
    if rank == src:
        try:
            if budget is not None:
                budget.spend(GaussianEvent(cal.noise_multiplier, nb if nb in EVENT_NEIGHBOURS else None))
            if generator is not None:
                given = shared_noise_source(generator)  # a torch generator: the source it keys
            outcome = ("ok", None)
        except BaseException as exc:
            outcome = failure(exc)
    share_outcome(outcome, src, group, "release_rank_k_sharded")
    source = broadcast_source(given, src, group)
    label = SECURE if source.secure else SEEDED
    # engine "auto" picks by device kind: ranks on different kinds would draw the two copies of
    # an entry with different algorithms (independent noise on E_ij and E_ji). They all draw
    # with the host algorithm instead (every rank knows the layout and the engine).
    mixed = len({entry[-1] for entry in layout}) > 1
    algorithm = "host" if mixed and source.engine == "auto" else None
    if rank == src:
        solver_gen = (resolve_generator(None, rows.device)[0] if generator is None
                      else _solver_generator(generator, source, rows.device))
    # every rank: its rows of sym(M) + E. sym(M) takes the upper triangle, as the single-process
    # release does: the entries left of a rank's rows come from the ranks above it
    sym = rows if overwrite else rows.clone()
    _take_upper(sym, layout, rank, group)
    mech = GaussianMechanism(cal.noise_scale, float(sensitivity), noise_shape)
    diag, off = mech.noise_stds()
    out = sym if sym.dtype == work else torch.empty(rows.shape, dtype=work, device=rows.device)
    noisy_symmetric_rows(sym, out, row_start, diag_std=diag, off_std=off, generator=source, algorithm=algorithm)
    del sym

    # rank src solves against the sharded operator; the others serve products
    if rank != src:
        _serve(out, d, counts, src, group)
        return share_outcome(None, src, group, "release_rank_k_sharded")
    op = _ShardedMatrix(out, d, counts, src, group)
    if solver_gen is None:  # pragma: no cover - set with the source on rank src
        raise DistributedError("rank src has no solver generator")
    try:
        res = topk_eigh_operator(op, k, generator=solver_gen, atol=NOISE_ATOL_FRACTION * cal.noise_scale)
        rel = package_release(res, k, "gaussian", noise_shape, nb, float(sensitivity), cal, False, work,
                              rows.device, label)
        outcome = ("ok", rel)
    except DistributedError:
        raise
    except BaseException as exc:
        outcome = failure(exc)
    op.stop()
    return share_outcome(outcome, src, group, "release_rank_k_sharded")


def _take_upper(sym: torch.Tensor, layout: list, rank: int, group: Any) -> None:
    """Replace this rank's entries left of its first row by the transposed upper blocks of the
    ranks above (point to point, strips of 512 rows): every rank then holds its rows of the
    matrix that the upper triangle defines, so an M that is not exactly symmetric (rows
    computed by separate products) is noised as the single-process release would noise it,
    and no antisymmetric part can reach the solver without noise."""
    import torch.distributed as dist

    def peer(r: int) -> int:
        return r if group is None else dist.get_global_rank(group, r)

    world = len(layout)
    for r in range(world):
        r0, rb = layout[r][0], layout[r][1]
        for s in range(r + 1, world):
            if rank not in (r, s):
                continue
            s0, sb = layout[s][0], layout[s][1]
            for i in range(r0, r0 + rb, ROW_ALIGN):
                i1 = min(i + ROW_ALIGN, r0 + rb)
                with collective("exchanging the upper blocks"):
                    if rank == r:
                        dist.send(sym[i - r0 : i1 - r0, s0 : s0 + sb].contiguous(), dst=peer(s), group=group)
                    else:
                        strip = torch.empty((i1 - i, sb), dtype=sym.dtype, device=sym.device)
                        dist.recv(strip, src=peer(r), group=group)
                        sym[:, i:i1].copy_(strip.T)


def _solver_generator(generator, source: SecureNormalSource, device: torch.device) -> torch.Generator:
    """The solver's start as :func:`dplowrank.release_rank_k` takes it: the caller's torch
    generator, or one seeded from a seeded source's key."""
    if isinstance(generator, torch.Generator):
        return generator
    gen = torch.Generator(device=device)
    gen.manual_seed(source.solver_seed())
    return gen


def _check_local(rows, k, row_start, sensitivity, dtype, noise_shape, neighbour, calibration, src, world, rank,
                 generator, budget, epsilon, delta, noise_scale, rho, mu):
    """This rank's arguments: (d, b, working dtype, calibration, neighbour label)."""
    from .._validation import check_choice, check_k, check_positive
    from ..mechanisms import NEIGHBOURS, NOISE_SHAPES

    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    if rank != src and (budget is not None or generator is not None):
        raise ValueError(f"budget= and generator= belong to rank src={src} only")
    if budget is not None and not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    if not isinstance(rows, torch.Tensor) or rows.ndim != 2 or rows.is_complex() or not rows.is_floating_point():
        raise TypeError("rows must be a real floating Tensor of shape (b, d)")
    b, d = rows.shape
    if isinstance(row_start, bool) or not isinstance(row_start, int):
        raise TypeError(f"row_start must be an int, got {row_start!r}")
    if b == 0 or row_start < 0 or row_start + b > d:
        raise ValueError(f"rows [{row_start}, {row_start + b}) do not fit a matrix of dimension d={d}")
    lo, hi = torch.aminmax(rows)  # one pass, no temporary of the rows' size; NaN and ±inf show here
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError("rows must be finite")
    k = check_k(k, d)
    check_positive(sensitivity, "sensitivity")
    check_choice(noise_shape, "noise_shape", NOISE_SHAPES)
    check_choice(calibration, "calibration", CALIBRATIONS)
    nb = "declared" if neighbour is None else check_choice(neighbour, "neighbour", NEIGHBOURS)
    work = rows.dtype if dtype is None else dtype
    if work not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {work!r}")
    cal = calibrate_noise(float(sensitivity), epsilon=epsilon, delta=delta, calibration=calibration,
                          noise_scale=noise_scale, rho=rho, mu=mu)
    if rank == src and generator is not None:
        shared_noise_source_check(generator)
    return d, b, work, cal, nb


def shared_noise_source_check(generator) -> None:
    """``TypeError`` for a generator the ranks cannot share (checked before any draw)."""
    if isinstance(generator, SecureNormalSource):
        if generator.secure:
            raise TypeError(
                "pass generator=None for secure noise in a sharded release (the library keys it from the OS "
                "and shares the key); a secure source given here cannot be copied to the other ranks"
            )
        return
    if not (isinstance(generator, torch.Generator) and generator.device.type == "cpu"):
        raise TypeError("generator must be None, a seeded SecureNormalSource or a CPU torch.Generator")


def _check_layout(layout: list, d: int) -> None:
    """The ranks' rows tile [0, d) in rank order on 512-row boundaries, with one set of choices."""
    first = layout[0]
    if any(entry[2:-1] != first[2:-1] for entry in layout):
        raise ValueError(
            "the ranks disagree on (d, dtype, noise_shape, neighbour, sensitivity, noise scale, k, src, overwrite); "
            "every rank must pass the same arguments"
        )
    pos = 0
    for r, (start, b, *_rest) in enumerate(layout):
        if start != pos:
            raise ValueError(f"rank {r}'s rows start at {start}, expected {pos}: the ranks' rows must tile [0, {d}) "
                             "in rank order")
        if start % ROW_ALIGN or (b % ROW_ALIGN and start + b != d):
            raise ValueError(f"rank {r}'s rows [{start}, {start + b}) are not whole blocks of {ROW_ALIGN} rows")
        pos += b
    if pos != d:
        raise ValueError(f"the ranks' rows end at {pos}, not at d={d}")


def shard_rows(d: int, world: int) -> list[tuple[int, int]]:
    """A balanced split of [0, d) into ``world`` (start, stop) blocks of whole 512-row noise blocks."""
    blocks = math.ceil(d / ROW_ALIGN)
    if world > blocks:
        raise ValueError(f"d={d} has {blocks} blocks of {ROW_ALIGN} rows: at most {blocks} ranks can hold rows")
    out, start = [], 0
    for r in range(world):
        nb = blocks // world + (1 if r < blocks % world else 0)
        stop = min(d, start + nb * ROW_ALIGN)
        out.append((start, stop))
        start = stop
    return out

