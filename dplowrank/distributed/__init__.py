"""Scale out with torch.distributed: data-parallel statistics and releases, row-sharded releases.

* :meth:`dplowrank.GramAccumulator.reduce`: every rank's exact Gram summed into one rank.
* :func:`release_rank_k_distributed`: reduce, add the noise once on one rank, broadcast the release.
* :func:`release_rank_k_sharded`: a Gram held as row blocks on the ranks, noised and solved
  without any rank holding the whole matrix.
* :func:`reduce_statistics`: the activation statistics of :func:`dplowrank.compress.collect_statistics`,
  summed over the ranks for one private compression.

Launch with ``torchrun`` (or ``torch.distributed.init_process_group``); the recipes, the trust
model and the communication volumes are in docs/distributed.md.
"""

from .._distributed import DistributedError
from ._release import release_rank_k_distributed
from ._sharded import release_rank_k_sharded, shard_rows
from ._stats import reduce_statistics

__all__ = ["DistributedError", "reduce_statistics", "release_rank_k_distributed", "release_rank_k_sharded",
           "shard_rows"]
