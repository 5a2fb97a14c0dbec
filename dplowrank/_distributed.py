"""The few torch.distributed helpers every data-parallel path shares.

* :func:`group_info`: rank and world size of an initialised process group (or a clear error).
* :class:`DistributedError` and :func:`collective`: a collective that fails (a rank died, timed
  out or left the job) becomes one error on this rank, raised before anything is released.
* :func:`agree`: every rank states its local verdict (``None`` or an exception) and all of
  them raise when any one of them refuses, so that a bad argument on one rank cannot leave
  the others waiting in a collective, and nothing is spent or drawn.

Messages carry the ranks' error messages, which the library writes without private values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["DistributedError", "agree", "broadcast_tensor", "collective", "group_info", "same_everywhere"]


class DistributedError(RuntimeError):
    """A collective failed or the ranks disagree; nothing was released on this rank."""


def group_info(group: Any = None) -> tuple[int, int]:
    """(rank, world size) in ``group`` (default: the whole job)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "this needs an initialised torch.distributed process group: launch with torchrun, or call "
            "torch.distributed.init_process_group first"
        )
    return dist.get_rank(group), dist.get_world_size(group)


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failure inside torch.distributed into :class:`DistributedError` naming ``what``."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, ConnectionError, TimeoutError, OSError) as exc:  # gloo/NCCL: DistBackendError ⊂ RuntimeError
        raise DistributedError(
            f"{what} failed on this rank ({type(exc).__name__}): a rank died, timed out or left the job; "
            "nothing was released"
        ) from exc


#: Exceptions a rank's verdict may carry to the others, by name (anything else: DistributedError).
_KINDS: dict[str, type[Exception]] = {"ValueError": ValueError, "TypeError": TypeError}


def agree(local: BaseException | None, group: Any = None, *, what: str = "the ranks' arguments",
          kinds: tuple[type[Exception], ...] = ()) -> None:
    """Raise on every rank if any rank's ``local`` verdict is an exception.

    The rank that refused re-raises its own exception; the others raise the same type
    (one of ``kinds`` by name, e.g. ``BudgetExceededError``, else ``ValueError`` or
    ``TypeError`` when it derives from them, else :class:`DistributedError`) naming the rank
    and its message.
    """
    import torch.distributed as dist

    mine = None if local is None else (type(local).__name__, str(local), [c.__name__ for c in type(local).__mro__])
    verdicts: list = [None] * group_info(group)[1]
    with collective(what):
        dist.all_gather_object(verdicts, mine, group=group)
    if local is not None:
        raise local
    for rank, v in enumerate(verdicts):
        if v is not None:
            name, message, mro = v
            kind = _kind(name, mro, kinds)
            raise kind(f"rank {rank} refused: {message}")


def _kind(name: str, mro: list[str], kinds: tuple[type[Exception], ...]) -> type[Exception]:
    for k in kinds:
        if k.__name__ == name:
            return k
    for base in mro:
        if base in _KINDS:
            return _KINDS[base]
    return DistributedError


def same_everywhere(value: object, group: Any, *, what: str, refusal: str) -> None:
    """Raise ``ValueError(refusal)`` on every rank unless every rank passes an equal ``value``
    (a picklable description of its public arguments; collective)."""
    import torch.distributed as dist

    values: list = [None] * group_info(group)[1]
    with collective(what):
        dist.all_gather_object(values, value, group=group)
    if any(v != value for v in values):
        raise ValueError(refusal)


def broadcast_tensor(t: torch.Tensor, src: int, group: Any, what: str) -> torch.Tensor:
    """``dist.broadcast`` of ``t`` (in place) under :func:`collective`."""
    import torch.distributed as dist

    with collective(what):
        dist.broadcast(t, src=src, group=group)
    return t
