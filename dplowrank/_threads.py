"""torch's intra-op thread count: the one place the package changes it.

Some work wants torch on one thread: the blocks that :func:`dplowrank._parallel.run_blocks`
spreads over Python threads (torch's own OpenMP teams would multiply with them), the small
projected eigenproblem of the Krylov solver on the CPU (a threaded LAPACK ``syevd``
spin-waits at barriers and stalls when other processes hold the cores), and the dense
solver on the CPU (a threaded ``syevd`` rounds differently for each thread count). All
enter :func:`single_threaded`; nothing else in the package calls
:func:`torch.set_num_threads`.

Why one shared context rather than "save, set 1, restore" at each call: when a second
thread enters while the first is inside, it saves 1, and if it leaves last it restores 1
for good. Here a module lock guards a depth count shared by all threads: the first to enter
saves the process's count, and a thread leaving restores that saved count, never a 1 it
saw because another thread was inside, whatever the order of the threads.

torch's count is partly per thread: :func:`torch.set_num_threads` sets the calling
thread's OpenMP count and the default that threads starting afterwards adopt, while other
running threads keep their own. So every thread that enters sets its own count to 1, and
every thread that leaves its outermost context sets its count back to the saved process
count (which, while others are still inside, is also the default of threads starting
meanwhile; :func:`dplowrank._parallel.run_blocks`' workers enter the context themselves, so
they run on one thread all the same). MKL's count, which :func:`torch.set_num_threads` also
sets, is process-wide: while threads overlap, one leaving gives the others' MKL calls the
saved count back early. That costs speed (oversubscription) and can change a result's
rounding (summation order), but only when two threads use the context at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["intra_op_threads", "single_threaded"]

_lock = threading.Lock()
_depth = 0  # entries into single_threaded() not yet left, over all threads
_outside = 0  # the process's count when the first of them entered; valid while _depth > 0
_local = threading.local()  # .depth: this thread's entries not yet left


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the body with torch on one intra-op thread; re-entrant and thread-safe.

    The first entrant (over all threads) saves :func:`torch.get_num_threads`; every thread
    runs on one thread inside, and gets the saved count back when it leaves its outermost
    context (the last one to leave also restores the default of new threads).
    :func:`intra_op_threads` reports the saved count meanwhile.

    Examples
    --------
    >>> import torch
    >>> from dplowrank._threads import single_threaded
    >>> before = torch.get_num_threads()
    >>> with single_threaded():
    ...     with single_threaded():
    ...         inside = torch.get_num_threads()
    >>> inside, torch.get_num_threads() == before
    (1, True)
    """
    _enter()
    try:
        yield
    finally:
        _leave()


def intra_op_threads() -> int:
    """torch's intra-op thread count outside any :func:`single_threaded` context.

    Inside one (in any thread), the count the process had when the first thread entered;
    otherwise :func:`torch.get_num_threads`.
    """
    with _lock:
        return _outside if _depth > 0 else torch.get_num_threads()


def _enter() -> None:
    global _depth, _outside
    with _lock:
        if _depth == 0:
            _outside = torch.get_num_threads()
        mine = getattr(_local, "depth", 0)
        if mine == 0:
            # torch sets a thread's count from the default on the thread's first call; make
            # that call now, or it would undo the 1 below if another thread left meanwhile
            torch.get_num_threads()
            torch.set_num_threads(1)  # this thread's count, and the default of new threads
        _depth += 1
        _local.depth = mine + 1


def _leave() -> None:
    global _depth
    with _lock:
        _depth -= 1
        _local.depth -= 1
        if _local.depth == 0:
            torch.set_num_threads(_outside)
