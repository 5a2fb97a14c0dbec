"""Data-parallel compression statistics: every rank's activation Grams summed into one rank."""

from __future__ import annotations

from typing import Any

import torch

from .._distributed import agree, collective, group_info, same_everywhere
from ..compress import ActivationStatistics

__all__ = ["reduce_statistics"]


def reduce_statistics(stats: ActivationStatistics, dst: int = 0, *, group: Any = None) -> bool:
    """Sum every rank's :func:`~dplowrank.compress.collect_statistics` into rank ``dst``'s (collective).

    Each rank collects the statistics of its own shard of the corpus (the same model,
    targets, ``clip`` and neighbour relation everywhere; each example on exactly one rank,
    e.g. sharded by example id). The clipped sums are on a fixed-point grid, so the total on
    rank ``dst`` is bit-identical to one process's pass over the whole corpus in any order,
    and its sensitivity is unchanged. Rank ``dst`` then compresses once
    (:func:`dplowrank.compress.compress_model` with its budget: one release per group, noise
    drawn once) and shares the result (``save_compressed`` / ``load_compressed``; see
    docs/distributed.md). The other ranks' statistics are left as they were.

    The reduction is all or nothing: the sums go to buffers that replace rank ``dst``'s
    Grams only when every group has arrived, so a rank that dies part-way leaves no
    partial total (and raises :class:`dplowrank.DistributedError` on the ranks that notice).

    Parameters
    ----------
    stats : ActivationStatistics
        This rank's statistics (clipped: ``clip=C`` or "normalize").
    dst : int
        The rank that receives the totals.
    group : ProcessGroup, optional

    Returns
    -------
    bool
        ``True`` on rank ``dst``.

    Raises
    ------
    ValueError, TypeError
        On every rank, before anything is sent, when any rank's statistics differ in groups,
        dimensions, clip, grid or neighbour relation, or are unclipped; or when the ranks
        together hold more examples than a group's grid keeps exact.
    """
    import torch.distributed as dist

    rank, world = group_info(group)
    local: Exception | None = None
    try:
        if not isinstance(stats, ActivationStatistics):
            raise TypeError(f"stats must be ActivationStatistics, got {type(stats).__name__}")
        if isinstance(dst, bool) or not isinstance(dst, int) or not 0 <= dst < world:
            raise ValueError(f"dst must be a rank in [0, {world}), got {dst!r}")
        if any(st.clip is None or st.grid is None for st in stats):
            raise ValueError("only clipped statistics (clip=C or 'normalize') can be summed for a private release")
        if any(st.max_examples is None for st in stats):
            raise ValueError("these statistics do not record how many examples their grid keeps exact "
                             "(collected by an older version); collect them again")
    except (TypeError, ValueError) as exc:
        local = exc
    agree(local, group, what="reduce_statistics")
    names = sorted(stats.groups)
    spec = (names, [(stats[n].group.dim, stats[n].clip, stats[n].grid, stats[n].max_examples,
                     _fingerprint(stats[n].coordinates)) for n in names],
            str(stats.clip), stats.neighbour, dst)
    same_everywhere(spec, group, what="reduce_statistics",
                    refusal="the ranks' statistics differ in groups, dimensions, clip, grid, coordinates, neighbour "
                            "or dst; every rank must collect with the same model, targets and clip")
    first = stats[names[0]].gram
    counts = torch.tensor([[stats[n].n_examples, stats[n].n_clipped] for n in names], dtype=torch.int64,
                          device=first.device)
    with collective("reduce_statistics"):
        dist.all_reduce(counts, group=group)
    for n, (total, _) in zip(names, counts.tolist()):
        bound = stats[n].max_examples
        if bound is None or total > bound:
            raise ValueError(f"the ranks together hold more examples than group {n!r}'s grid keeps exact "
                             f"({bound}); nothing was reduced (split the corpus over several releases)")
    sums = {n: stats[n].gram.clone() for n in names}
    for n in names:
        with collective("reduce_statistics"):
            dist.reduce(sums[n], dst=dst, group=group)
    public: list = [None] * world
    with collective("reduce_statistics"):
        dist.all_gather_object(public, bool(stats.public), group=group)
    if rank != dst:
        return False
    for n, (total, clipped) in zip(names, counts.tolist()):
        st = stats[n]
        st.gram, st.n_examples, st.n_clipped = sums[n], int(total), int(clipped)
    stats.public = all(public)  # the total is public only if every shard was
    return True


def _fingerprint(coords) -> tuple:
    """The coordinates a group's statistic lives in (public: from the weights and the prior), as
    SHA-256 digests: statistics summed over ranks must share them."""
    import hashlib

    def digest(t):
        return None if t is None else hashlib.sha256(t.detach().to("cpu", torch.float64).numpy().tobytes()).hexdigest()

    return (coords.route, digest(coords.basis), digest(coords.preconditioner), digest(coords.reader))
