"""Workers for tests/test_distributed.py: each runs in its own process of a gloo job on localhost.

A worker is ``name(rank, world, out_dir, **kwargs)``; it writes what the test compares to
``out_dir/<name>-<rank>.pt``. :func:`launch` starts ``world`` processes (spawned: nothing of
the parent's state, generators included, is inherited) and returns their exit codes.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import traceback
import uuid
from pathlib import Path

import numpy as np
import torch

TIMEOUT_S = 60


def _entry(target: str, rank: int, world: int, out_dir: str, store: str, kwargs: dict) -> None:
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=kwargs.pop("timeout_s", TIMEOUT_S)))
    try:
        globals()[target](rank, world, Path(out_dir), **kwargs)
    except BaseException as exc:
        Path(out_dir, f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(target: str, world: int, out_dir: Path, timeout: float = 180.0, **kwargs) -> list[int | None]:
    """Run ``target`` on ``world`` spawned processes; their exit codes (``None``: still running, killed)."""
    ctx = mp.get_context("spawn")
    store = str(out_dir / f"store-{uuid.uuid4().hex}")  # a FileStore file serves one job only
    procs = [ctx.Process(target=_entry, args=(target, r, world, str(out_dir), store, dict(kwargs)))
             for r in range(world)]
    for p in procs:
        p.start()
    codes = []
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


def shard_of(x: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rows i with i % world == rank: each example on exactly one rank (sharded by id)."""
    return x[rank::world]


def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data / 16.0  # rows of norm ≤ 8


# ---- workers ---------------------------------------------------------------------------------

def gram(rank, world, out, *, max_rows=4096):
    import dplowrank as dl

    acc = dl.GramAccumulator(row_norm=8.0, dim=64, max_rows=max_rows)
    x = shard_of(digits(), rank, world)
    for i in range(0, len(x), 100):  # batches of the shard, in its own order
        acc.update(x[i:i + 100])
    before = acc.gram  # a reference kept across the reduction
    got = acc.reduce(dst=0)
    torch.save({"is_dst": got, "gram": acc.gram.clone() if got else None, "n": acc.n_rows if got else None,
                "left_behind": float(before.abs().max())}, out / f"gram-{rank}.pt")


def release(rank, world, out, *, seed=7, ledger=None, epsilon=1.0):
    import dplowrank as dl

    acc = dl.GramAccumulator(row_norm=8.0, dim=64)
    acc.update(shard_of(digits(), rank, world))
    budget = dl.PrivacyBudget.load(ledger) if (ledger and rank == 0) else None
    gen = dl.SecureNormalSource.from_seed(seed) if (rank == 0 and seed is not None) else None
    try:
        rel = dl.release_rank_k_distributed(acc, 4, epsilon=epsilon, delta=1e-6, generator=gen, budget=budget)
    except ValueError as exc:
        torch.save({"error": type(exc).__name__, "message": str(exc)}, out / f"release-{rank}.pt")
        return
    torch.save({"values": rel.eigenvalues, "vectors": rel.eigenvectors, "randomness": rel.randomness,
                "sigma": rel.noise_scale}, out / f"release-{rank}.pt")


def noise_once(rank, world, out, *, d=64, repeats=60):
    """Zero rows everywhere: the released spectrum is that of the noise alone, drawn once."""
    import dplowrank as dl

    vals = []
    for r in range(repeats):
        acc = dl.GramAccumulator(row_norm=1.0, dim=d)
        gen = dl.SecureNormalSource.from_seed(1000 + r) if rank == 0 else None
        rel = dl.release_rank_k_distributed(acc, d, noise_scale=1.0, generator=gen, solver="dense")
        vals.append(rel.eigenvalues)
    torch.save(torch.stack(vals), out / f"noise_once-{rank}.pt")


def dies(rank, world, out, *, stage="before"):
    """Rank 1 dies before the release, or in the middle of the Gram reduction itself; rank 0
    must fail loudly and release nothing."""
    import torch.distributed as dist

    import dplowrank as dl

    acc = dl.GramAccumulator(row_norm=8.0, dim=64)
    acc.update(shard_of(digits(), rank, world))
    if rank == 1 and stage == "before":
        os._exit(3)
    if rank == 1 and stage == "reduce":
        dist.reduce = lambda *a, **k: os._exit(3)  # dies as its Gram would be sent
    try:
        dl.release_rank_k_distributed(acc, 2, epsilon=1.0, delta=1e-6)
    except dl.DistributedError as exc:
        torch.save({"error": "DistributedError", "message": str(exc), "consumed": acc.consumed},
                   out / f"dies-{rank}.pt")
        os._exit(0)  # the group cannot be destroyed cleanly without its peer
    torch.save({"error": None}, out / f"dies-{rank}.pt")


def bad_argument(rank, world, out):
    """One rank's bad argument refuses on every rank, before anything is spent: a bad src on
    rank 1, a different (valid) ε on rank 1, and k > d everywhere, one after the other."""
    import dplowrank as dl

    results = {}
    for mode in ("src", "epsilon", "k"):
        acc = dl.GramAccumulator(row_norm=8.0, dim=64)
        acc.update(shard_of(digits(), rank, world))
        kwargs = {"epsilon": 1.0, "delta": 1e-6, "k": 2}
        if mode == "src":
            kwargs["src"] = 0 if rank == 0 else 5
        elif mode == "epsilon":
            kwargs["epsilon"] = 1.0 if rank == 0 else 2.0
        else:
            kwargs["k"] = 65
        try:
            dl.release_rank_k_distributed(acc, **kwargs)
            results[mode] = {"error": None}
        except ValueError as exc:
            results[mode] = {"error": type(exc).__name__, "message": str(exc), "consumed": acc.consumed}
    torch.save(results, out / f"bad_argument-{rank}.pt")


def sharded(rank, world, out, *, d=1100, k=6, seed=11, dtype="float64", secure=False, asym=False,
            pretend_cuda=None, keep_rows=False):
    import dplowrank as dl
    from dplowrank.distributed import shard_rows

    if rank == pretend_cuda:  # this rank's rows stand for a CUDA device's: "auto" picks the portable algorithm
        import dplowrank._secure as sec
        import dplowrank.distributed._sharded as sh

        sec.auto_algorithm = sh.auto_algorithm = lambda device: "portable"

    M = spiked(d, k)
    if asym:  # an entry below the diagonal that differs from its mirror, on rank 1's rows
        M[1050, 10] += 1e6
    start, stop = shard_rows(d, world)[rank]
    rows = M[start:stop].clone().to(getattr(torch, dtype))
    gen = None if (secure or rank != 0) else dl.SecureNormalSource.from_seed(seed)
    rel = dl.release_rank_k_sharded(rows, k, row_start=start, sensitivity=1.0, epsilon=1.0, delta=1e-6,
                                    generator=gen, overwrite=True)
    torch.save({"values": rel.eigenvalues, "vectors": rel.eigenvectors, "randomness": rel.randomness,
                "rows": rows if keep_rows or not secure else None}, out / f"sharded-{rank}.pt")


def spiked(d: int, k: int) -> torch.Tensor:
    """A symmetric float64 matrix with k spikes well above the noise of the tests' release."""
    g = torch.Generator().manual_seed(d)
    U, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    s = torch.linspace(3000.0, 1500.0, k, dtype=torch.float64)
    M = (U * s) @ U.T
    return (M + M.T) / 2


def toy_model():
    from torch import nn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8)).double()


def toy_rows() -> torch.Tensor:
    return torch.randn(60, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def toy_stats(x: torch.Tensor):
    from dplowrank.compress import collect_statistics, find_groups

    model = toy_model()
    batches = [{"x": x[i:i + 7]} for i in range(0, len(x), 7)]
    return collect_statistics(model, batches, find_groups(model, ["0", "2"]), clip=1.0, prior=None, mask_key=None,
                              forward=lambda m, b: m(b["x"]))


def statistics(rank, world, out):
    import dplowrank as dl

    x = toy_rows()
    stats = toy_stats(x[rank::world])
    got = dl.reduce_statistics(stats, dst=0)
    torch.save({"is_dst": got, "grams": {n: s.gram for n, s in stats.groups.items()},
                "n": {n: s.n_examples for n, s in stats.groups.items()}}, out / f"statistics-{rank}.pt")


def sharded_budget(rank, world, out, *, ledger):
    import dplowrank as dl
    from dplowrank.distributed import shard_rows

    M = spiked(1100, 4)
    start, stop = shard_rows(1100, world)[rank]
    rows = M[start:stop].clone()
    budget = dl.PrivacyBudget.load(ledger) if rank == 0 else None
    try:
        dl.release_rank_k_sharded(rows, 4, row_start=start, sensitivity=1.0, epsilon=1.0, delta=1e-6, budget=budget,
                                  overwrite=True)
    except dl.BudgetExceededError as exc:
        torch.save({"error": type(exc).__name__, "untouched": torch.equal(rows, M[start:stop])},
                   out / f"sharded_budget-{rank}.pt")


def source_sharing(rank, world, out):
    """The noise source handed out by rank 0: secure when the library keys it, seeded when a
    seeded one is given, and a caller's secure source refused (its copies would repeat noise)."""
    from dplowrank import SecureNormalSource
    from dplowrank._secure import broadcast_source

    refused = None
    if rank == 0:
        try:
            broadcast_source(SecureNormalSource(), 0)
        except TypeError as exc:
            refused = str(exc)
    fresh = broadcast_source(None, 0)
    seeded = broadcast_source(SecureNormalSource.from_seed(3) if rank == 0 else None, 0)
    torch.save({"refused": refused, "fresh_secure": fresh.secure, "fresh": fresh.normals(8, stream=5),
                "seeded_secure": seeded.secure, "seeded": seeded.normals(8, stream=5)}, out / f"source_sharing-{rank}.pt")
