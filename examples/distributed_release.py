"""One private release from rows spread over several processes (torch.distributed).

    torchrun --standalone --nproc-per-node 2 examples/distributed_release.py

Each process reads only its own rows (here: the digits whose index ≡ rank mod world size; in
practice, the files or the example ids assigned to it), accumulates their exact clipped Gram,
and the job releases it once: rank 0 receives the sum, charges the budget, draws the noise and
broadcasts the noisy eigenpairs. Then a larger Gram is released row-sharded: each process holds
only a block of its rows, as for a Gram too large for one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

import dplowrank as dl
from dplowrank.distributed import shard_rows


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets the rank, the world size and the address
    rank, world = dist.get_rank(), dist.get_world_size()
    x = load_digits().data / 16.0  # 1,797 rows of 64 pixels: norm ≤ 8
    mine = x[rank::world]  # each example on exactly one rank

    # 1. data parallel: every rank accumulates, rank 0 releases once
    acc = dl.GramAccumulator(row_norm=8.0, dim=64)
    acc.update(mine)
    budget = dl.PrivacyBudget(epsilon=2.0, delta=1e-6) if rank == 0 else None
    release = dl.release_rank_k_distributed(acc, 8, epsilon=1.0, delta=1e-6, budget=budget)
    if rank == 0:
        print(f"{world} ranks, one release: top eigenvalues {release.eigenvalues[:3].tolist()}, "
              f"ε = {release.epsilon:.2f}, noise {release.randomness}; spent {budget.spent_epsilon():.2f} of 2")

    # 2. row-sharded: rank r holds rows [start, stop) of a (d, d) Gram that no rank holds whole
    # (here a synthetic spiked Gram of d = 512 per rank, each rank computing only its rows)
    d = 512 * world
    start, stop = shard_rows(d, world)[rank]
    g = torch.Generator().manual_seed(0)  # public: the same basis on every rank
    basis, _ = torch.linalg.qr(torch.randn(d, 4, generator=g, dtype=torch.float64))
    rows = (basis[start:stop] * torch.tensor([900.0, 800.0, 700.0, 600.0], dtype=torch.float64)) @ basis.T
    sharded = dl.release_rank_k_sharded(rows, 4, row_start=start, sensitivity=1.0, epsilon=1.0, delta=1e-6,
                                        overwrite=True)
    if rank == 0:
        print(f"sharded over {world} ranks, d = {d}: top eigenvalues {[round(v) for v in sharded.eigenvalues.tolist()]}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
