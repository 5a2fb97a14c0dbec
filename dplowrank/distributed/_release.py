"""Data-parallel release: every rank accumulates its shard, one rank adds the noise once."""

from __future__ import annotations

from typing import Any

from .._distributed import DistributedError, agree, collective, group_info, same_everywhere
from .._validation import check_k
from ..accounting import BudgetExceededError
from ..gram import GramAccumulator
from ..privacy import calibrate_noise
from ..release import LowRankRelease, release_rank_k

__all__ = ["release_rank_k_distributed", "share_outcome"]

#: The options of release_rank_k that make up the privacy specification (checked before the reduction).
_PRIVACY = ("epsilon", "delta", "calibration", "noise_scale", "rho", "mu")


def share_outcome(outcome, src: int, group: Any, what: str):
    """Broadcast rank ``src``'s ``("ok", value)`` or ``("error", name, message, mro)`` and
    return the value on every rank, or raise the error's kind on every rank."""
    import torch.distributed as dist

    own = outcome[4] if isinstance(outcome, tuple) and len(outcome) == 5 else None
    box = [outcome[:4] if own is not None else outcome]  # the exception object itself stays here
    with collective(what):
        dist.broadcast_object_list(box, src=src, group=group)
    got = box[0]
    if got[0] == "ok":
        return got[1]
    _, name, message, mro = got
    if own is not None:
        raise own  # rank src's own exception, with its traceback
    for kind in (BudgetExceededError, ValueError, TypeError):
        if kind.__name__ == name or (kind is not BudgetExceededError and kind.__name__ in mro):
            raise kind(f"rank {src}: {message}")
    raise DistributedError(f"rank {src} failed ({name}): {message}")


def failure(exc: BaseException) -> tuple:
    """The outcome tuple of an exception (the exception itself kept for its own rank)."""
    return ("error", type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__], exc)


def release_rank_k_distributed(
    acc: GramAccumulator,
    k: int,
    *,
    src: int = 0,
    group: Any = None,
    budget=None,
    generator=None,
    **options,
) -> LowRankRelease:
    """Release the Gram of every rank's rows: reduce to rank ``src``, add the noise once there,
    give every rank the release (collective; torch.distributed).

    Each rank accumulates its own privacy units in a :class:`~dplowrank.GramAccumulator`
    (built with the same ``row_norm``, ``neighbour``, ``max_rows`` and ``dim`` everywhere)
    and calls this with the same arguments. :meth:`GramAccumulator.reduce` sums the Grams
    exactly into rank ``src``; rank ``src`` alone holds the raw total, charges ``budget``
    and draws the noise (:func:`dplowrank.release_rank_k` with ``overwrite=True``), and the
    release (noisy eigenpairs only) is broadcast. The cost is that of one release: each
    privacy unit lives on one rank, and the noise is drawn once.

    Parameters
    ----------
    acc : GramAccumulator
        This rank's shard; consumed on every rank.
    k : int
        Rank of the release.
    src : int, default 0
        The rank that reduces, charges, draws and solves.
    group : ProcessGroup, optional
        Default: the whole job.
    budget : PrivacyBudget, optional
        Charged once, on rank ``src`` only (the other ranks must pass ``None``).
    generator : torch.Generator or SecureNormalSource, optional
        Rank ``src``'s noise source (the other ranks must pass ``None``); default: secure.
    **options
        Passed on to :func:`dplowrank.release_rank_k` (``epsilon``, ``delta``, ``dtype``,
        ``noise_shape``, ...); the same on every rank.

    Returns
    -------
    LowRankRelease
        The same release on every rank.

    Raises
    ------
    ValueError, TypeError, BudgetExceededError
        On every rank when any rank's arguments are bad, or when rank ``src`` refuses
        (over budget: nothing is charged or drawn).
    DistributedError
        When a rank dies or times out; nothing is released.
    """
    rank, world = group_info(group)
    local: Exception | None = None
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        local = ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    elif not isinstance(acc, GramAccumulator):
        local = TypeError(f"acc must be a GramAccumulator, got {type(acc).__name__}")
    elif rank != src and (budget is not None or generator is not None):
        local = ValueError(
            f"budget= and generator= belong to rank src={src} only (the budget is charged once, the noise drawn once)"
        )
    elif "overwrite" in options or "row_norm" in options or "sensitivity" in options:
        local = ValueError("overwrite, row_norm and sensitivity are set by the distributed release")
    else:
        try:  # what can be checked before anything is sent: k against d, the privacy specification
            if acc.dim is not None:
                check_k(k, acc.dim)
            spec = {key: options[key] for key in _PRIVACY if key in options}
            calibrate_noise(1.0, **spec)
        except (ValueError, TypeError) as exc:
            local = exc
    agree(local, group, what="release_rank_k_distributed", kinds=(BudgetExceededError,))
    # every rank must ask for the same release (only rank src's arguments are used)
    same_everywhere(repr((k, src, sorted((key, repr(v)) for key, v in options.items()))), group,
                    what="release_rank_k_distributed",
                    refusal="the ranks asked for different releases (k, src or options differ); every rank must pass "
                            "the same arguments")
    acc.reduce(dst=src, group=group)
    outcome = None
    if rank == src:
        try:
            outcome = ("ok", release_rank_k(acc, k, budget=budget, generator=generator, overwrite=True, **options))
        except BaseException as exc:  # every rank must hear of it, whatever it is
            outcome = failure(exc)
    return share_outcome(outcome, src, group, "release_rank_k_distributed")
