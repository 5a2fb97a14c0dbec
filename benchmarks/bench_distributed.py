"""torch.distributed on this machine: a row-sharded release, data-parallel statistics, bytes sent.

    python benchmarks/bench_distributed.py                 # d = 16384 sharded over 2 processes
    python benchmarks/bench_distributed.py --d 8192 --world 2 4

Three tables, each measured in this run on localhost gloo (one CPU thread per process):

1. Sharded release (``release_rank_k_sharded``) against the single-process ``release_rank_k``
   on the same matrix and seeded source: wall time, peak RSS per process (``ru_maxrss``),
   the largest eigenvalue and eigenvector differences.
2. Statistics throughput: ``GramAccumulator.update`` rows/s with 1 and 2 processes (the
   reduction included), the single process at the same total thread count.
3. Communication: bytes through the loopback interface (``/proc/net/dev``) during the Gram
   reduction and during the sharded solve, against the model of docs/distributed.md:
   reduce ≈ (P − 1)·d²·8; each Krylov product broadcasts X (d·w·8 to each other rank) and
   gathers the other ranks' rows (their b·w·8); the upper blocks are exchanged once
   (Σ_{r<s} b_r·b_s·8).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

K = 32


def _lo_bytes() -> int:
    """Bytes received on the loopback interface so far (0 where /proc/net/dev is missing)."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    except OSError:
        pass
    return 0


def spiked_rows(d: int, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of M = U diag(s) Uᵀ + 50·I (d, d), never building M: U from a fixed seed."""
    g = torch.Generator().manual_seed(1234)
    U = torch.randn(d, K, generator=g, dtype=torch.float64)
    U, _ = torch.linalg.qr(U)
    s = torch.linspace(40000.0, 20000.0, K, dtype=torch.float64)
    rows = (U[start:stop] * s) @ U.T
    rows[:, start:stop].diagonal().add_(50.0)
    return rows


def _worker(task: str, rank: int, world: int, store: str, out: str, args: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=1800))
    import dplowrank as dl
    from dplowrank.distributed import shard_rows

    result: dict = {}
    if task == "sharded":
        d = args["d"]
        start, stop = shard_rows(d, world)[rank]
        rows = spiked_rows(d, start, stop)
        gen = dl.SecureNormalSource.from_seed(5) if rank == 0 else None
        columns = [0]
        if rank == 0:  # instrumentation: the columns of every product the solver asks for
            from dplowrank.distributed import _sharded

            product = _sharded._ShardedMatrix.__matmul__

            def counted(self, X):
                columns[0] += X.shape[1]
                return product(self, X)

            _sharded._ShardedMatrix.__matmul__ = counted
        dist.barrier()
        b0, t0 = _lo_bytes(), time.perf_counter()
        rel = dl.release_rank_k_sharded(rows, K, row_start=start, sensitivity=1.0, epsilon=1.0, delta=1e-6,
                                        generator=gen, overwrite=True)
        dist.barrier()
        result = {"seconds": time.perf_counter() - t0, "bytes": _lo_bytes() - b0, "values": rel.eigenvalues,
                  "vectors": rel.eigenvectors, "columns": columns[0], "rows0": stop - start}
    else:  # statistics
        d, n = args["d"], args["n"]
        acc = dl.GramAccumulator(row_norm=1.0, dim=d)
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(n // world, d, generator=g, dtype=torch.float64) / (d**0.5)
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(0, len(x), 4096):
            acc.update(x[i:i + 4096])
        t1 = time.perf_counter()
        b0 = _lo_bytes()
        acc.reduce(dst=0)
        dist.barrier()
        result = {"seconds": time.perf_counter() - t0, "update_s": t1 - t0, "bytes": _lo_bytes() - b0}
    result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.save(result, Path(out) / f"{task}-{rank}.pt")
    dist.destroy_process_group()


def launch(task: str, world: int, **args) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        store = str(Path(out) / f"store-{uuid.uuid4().hex}")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(task, r, world, store, out, args)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit(f"{task} with {world} processes failed: exit codes {[p.exitcode for p in procs]}")
        return [torch.load(Path(out) / f"{task}-{r}.pt") for r in range(world)]


def single_release(d: int) -> dict:
    """The same release in one process (in a child, for a clean peak RSS), one thread."""
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.get_context("spawn")
        p = ctx.Process(target=_single, args=(d, out))
        p.start()
        p.join()
        return torch.load(Path(out) / "single.pt")


def _single(d: int, out: str) -> None:
    torch.set_num_threads(1)
    import dplowrank as dl

    M = spiked_rows(d, 0, d)
    t0 = time.perf_counter()
    rel = dl.release_rank_k(M, K, sensitivity=1.0, epsilon=1.0, delta=1e-6, generator=dl.SecureNormalSource.from_seed(5),
                            overwrite=True)
    torch.save({"seconds": time.perf_counter() - t0, "values": rel.eigenvalues, "vectors": rel.eigenvectors,
                "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}, Path(out) / "single.pt")


def _single_stats(d: int, n: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    import dplowrank as dl

    acc = dl.GramAccumulator(row_norm=1.0, dim=d)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / (d**0.5)
    t0 = time.perf_counter()
    for i in range(0, len(x), 4096):
        acc.update(x[i:i + 4096])
    torch.save({"seconds": time.perf_counter() - t0}, Path(out) / "single_stats.pt")


def single_stats(d: int, n: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        p = mp.get_context("spawn").Process(target=_single_stats, args=(d, n, threads, out))
        p.start()
        p.join()
        return torch.load(Path(out) / "single_stats.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=16384)
    ap.add_argument("--world", type=int, nargs="+", default=[2])
    ap.add_argument("--stats-d", type=int, default=512)
    ap.add_argument("--stats-n", type=int, default=400_000)
    a = ap.parse_args()
    print(f"# {machine()}")
    print(f"# localhost gloo, one CPU thread per process; d = {a.d}, k = {K}, float64, seeded source, overwrite")
    one = single_release(a.d)
    matrix_gb = a.d * a.d * 8 / 2**30
    print(f"\n## 1. Sharded release (the matrix: {matrix_gb:.2f} GiB)\n")
    print("| processes | wall s | peak RSS per process, GiB | matrix share, GiB | max |Δλ| / λ₁ | max |Δv| "
          "| product columns | bytes on lo, MB | model, MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| 1 (release_rank_k) | {one['seconds']:.1f} | {one['rss_gb']:.2f} | {matrix_gb:.2f} | — | — | — | — | — |")
    for world in a.world:
        res = launch("sharded", world, d=a.d)
        dl_ = (res[0]["values"] - one["values"]).abs().max() / one["values"][0]
        dv = (res[0]["vectors"] - one["vectors"]).abs().max()
        rss = " / ".join(f"{r['rss_gb']:.2f}" for r in res)
        cols = res[0]["columns"]
        from dplowrank.distributed import shard_rows

        blocks = [stop - start for start, stop in shard_rows(a.d, world)]
        upper = sum(blocks[r] * blocks[s] for r in range(world) for s in range(r + 1, world))  # the symmetrisation
        # X out to each rank, their rows back, and the upper blocks exchanged once
        model = cols * 8 * (a.d * (world - 1) + (a.d - res[0]["rows0"])) + 8 * upper
        print(f"| {world} | {max(r['seconds'] for r in res):.1f} | {rss} | {matrix_gb / world:.2f} | {float(dl_):.1e} "
              f"| {float(dv):.1e} | {cols} | {res[0]['bytes'] / 1e6:.1f} | {model / 1e6:.1f} |")
    d, n = a.stats_d, a.stats_n
    print(f"\n## 2. Statistics: GramAccumulator.update, {n} rows of d = {d}, then the reduction\n")
    print("| setup | wall s | rows/s | reduce bytes on lo, MB | model (P − 1)·d²·8, MB |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        s = single_stats(d, n, threads)
        print(f"| 1 process, {threads} thread(s) | {s['seconds']:.2f} | {n / s['seconds']:,.0f} | — | — |")
    res = launch("statistics", 2, d=d, n=n)
    wall = max(r["seconds"] for r in res)
    print(f"| 2 processes × 1 thread | {wall:.2f} | {n / wall:,.0f} | {res[0]['bytes'] / 1e6:.1f} | "
          f"{d * d * 8 / 1e6:.1f} |")


if __name__ == "__main__":
    main()
