"""Tests for dplowrank._threads: the one place torch's intra-op thread count is changed."""

from __future__ import annotations

import threading

import pytest
import torch

from dplowrank import _parallel, _threads
from dplowrank._parallel import run_blocks
from dplowrank._threads import intra_op_threads, single_threaded


@pytest.fixture
def two_threads():
    """torch on two intra-op threads (the process default too) for the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def _fresh_thread_count() -> int:
    """torch's count as a thread started now sees it (the process default)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_nested_use_restores(two_threads):
    with single_threaded():
        assert torch.get_num_threads() == 1 and intra_op_threads() == 2
        with single_threaded():
            assert torch.get_num_threads() == 1 and intra_op_threads() == 2
        assert torch.get_num_threads() == 1  # still inside the outer one
    assert torch.get_num_threads() == 2 and intra_op_threads() == 2
    assert _fresh_thread_count() == 2


def test_restores_on_error(two_threads):
    with pytest.raises(RuntimeError, match="boom"), single_threaded():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2 and _threads._depth == 0


def _interleaved(order: list[str], b_late: bool) -> dict[str, int]:
    """Threads A and B enter and leave :func:`single_threaded` in the order given (a list
    of "A+", "B+", "A-", "B-"), one event at a time. Returns each thread's count inside,
    as it saw it, under "A in" / "B in", and after leaving under "A out" / "B out".
    ``b_late``: B makes its first torch call only when it enters, so that when A is inside
    already B starts with the count of 1 that A's context set as the default."""
    turns = {step: threading.Event() for step in order}
    done = {step: threading.Event() for step in order}
    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            ctx = single_threaded()
            turns[f"{name}+"].wait(10)
            ctx.__enter__()
            seen[f"{name} in"] = torch.get_num_threads()
            done[f"{name}+"].set()
            turns[f"{name}-"].wait(10)
            seen[f"{name} in, late"] = torch.get_num_threads()
            ctx.__exit__(None, None, None)
            seen[f"{name} out"] = torch.get_num_threads()
            done[f"{name}-"].set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    started = threading.Barrier(3)

    def body(name: str) -> None:
        if not (b_late and name == "B"):
            torch.get_num_threads()  # this thread's count (2) is set up before anyone enters
        started.wait(10)
        run(name)

    workers = [threading.Thread(target=body, args=(n,)) for n in "AB"]
    for t in workers:
        t.start()
    started.wait(10)
    for step in order:  # release one step at a time, in the order asked for
        turns[step].set()
        assert done[step].wait(10), f"step {step} did not finish"
    for t in workers:
        t.join(10)
    assert not errors, errors
    return seen


@pytest.mark.parametrize(
    "order",
    [["A+", "B+", "A-", "B-"], ["A+", "B+", "B-", "A-"]],
    ids=["first-in-first-out", "first-in-last-out"],
)
@pytest.mark.parametrize("b_late", [False, True], ids=["b-early", "b-late"])
def test_two_threads_interleaved_end_with_the_original_count(two_threads, order, b_late):
    seen = _interleaved(order, b_late)
    assert seen["A in"] == seen["B in"] == 1  # inside, whoever entered first
    assert seen["A in, late"] == seen["B in, late"] == 1
    assert seen["A out"] == seen["B out"] == 2  # each thread has the count from outside back
    assert torch.get_num_threads() == 2 and intra_op_threads() == 2 and _threads._depth == 0
    assert _fresh_thread_count() == 2  # and so do threads started afterwards


def test_a_thread_starting_inside_does_not_leave_one_behind(two_threads):
    """The race the shared context fixes: a thread that starts while another is inside
    sees 1; saving and restoring that by hand would leave the process at 1."""
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with single_threaded():
            inside.set()
            release.wait(10)

    seen: list[int] = []

    def late() -> None:
        with single_threaded():
            seen.append(torch.get_num_threads())
            release.set()  # the holder leaves first ...
            holder_thread.join(10)
        seen.append(torch.get_num_threads())  # ... and this one last

    holder_thread = threading.Thread(target=holder)
    holder_thread.start()
    inside.wait(10)
    late_thread = threading.Thread(target=late)
    late_thread.start()
    late_thread.join(10)
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2 and _fresh_thread_count() == 2


def test_run_blocks_sizes_its_pool_from_the_original_count(two_threads, monkeypatch):
    sizes: list[int] = []
    real_pool = _parallel.ThreadPoolExecutor

    def pool(max_workers: int):
        sizes.append(max_workers)
        return real_pool(max_workers=max_workers)

    monkeypatch.setattr(_parallel, "ThreadPoolExecutor", pool)
    cpu = torch.device("cpu")
    blocks = [(i,) for i in range(4)]
    assert run_blocks(lambda i: torch.get_num_threads(), blocks, cpu) == [1, 1, 1, 1]
    with single_threaded():
        assert run_blocks(lambda i: torch.get_num_threads(), blocks, cpu) == [1, 1, 1, 1]
        assert torch.get_num_threads() == 1
    assert sizes == [2, 2]  # from the count outside the context, not the 1 inside it
    assert torch.get_num_threads() == 2 and _fresh_thread_count() == 2
    # one block, or one thread outside: no pool
    assert run_blocks(lambda i: i, [(7,)], cpu) == [7] and sizes == [2, 2]


def test_set_num_threads_is_called_nowhere_else():
    """The package changes torch's thread count in _threads only."""
    import pathlib

    import dplowrank

    root = pathlib.Path(dplowrank.__file__).parent
    callers = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "set_num_threads(" in p.read_text(encoding="utf-8")
    )
    assert callers == ["_threads.py"]
