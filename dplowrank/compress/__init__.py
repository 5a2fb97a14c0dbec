"""Private compression of neural-network layers from activation statistics.

Pipeline (one direction)::

    groups = BERT.groups(model, "ffn")                         # which linears; shared inputs
    stats = collect_statistics(model, batches, groups)         # per-example clipped Grams (raw)
    private = release_statistics(stats, epsilon=4, delta=1e-6) # the only privacy-relevant step
    result = compress_model(model, groups, ratio=0.6, statistics=private)  # post-processing
    # or: 2 bits per parameter with 8-bit LPLR factors; or LPAF's importance-weighted factors
    # (collect_importance → release_statistics(importance=...) → factorization="importance")
    save_compressed(model, "out/", metadata=result.metadata())

See ``docs/compression.md``.
"""

from ._compress import CompressionResult, compress_model
from ._evaluate import embedding_agreement, output_errors
from ._factor import Unit, allocate_ranks, left_basis, whitened_factors
from ._importance import ImportanceStatistics, collect_importance
from ._lplr import LowPrecisionFactors, dsvd, lplr, lsvd, naive_quantize, rank_for_budget
from ._module import LowRankLinear, QuantizedLinear, count_parameters, load_compressed, replace_linears, save_compressed
from ._private import PrivateImportance, PrivateStatistics, denoise_gram, denoise_importance, release_statistics
from ._quantize import Quantized, pack_codes, quantize, unpack_codes
from ._stats import (
    ActivationStatistics,
    Coordinates,
    GroupStatistic,
    collect_statistics,
    coordinates_for,
    random_token_batches,
)
from ._targets import BERT, LLAMA, Adapter, LayerGroup, find_groups
from ._weighted import MixedRankLinear, mixed_rank_finetune, prune_mask, weighted_error, weighted_factors

__all__ = [
    # targets
    "LayerGroup",
    "Adapter",
    "BERT",
    "LLAMA",
    "find_groups",
    # statistics (non-private until released)
    "collect_statistics",
    "ActivationStatistics",
    "GroupStatistic",
    "Coordinates",
    "coordinates_for",
    "random_token_batches",
    # release and noise-aware estimation
    "release_statistics",
    "PrivateStatistics",
    "denoise_gram",
    # first-order importance (LPAF; non-private until released)
    "collect_importance",
    "ImportanceStatistics",
    "PrivateImportance",
    "denoise_importance",
    # quantisation and low-precision factors (LPLR)
    "Quantized",
    "quantize",
    "pack_codes",
    "unpack_codes",
    "LowPrecisionFactors",
    "lplr",
    "lsvd",
    "dsvd",
    "naive_quantize",
    "rank_for_budget",
    # importance-weighted factors and mixed-rank fine-tuning (LPAF)
    "weighted_factors",
    "weighted_error",
    "prune_mask",
    "MixedRankLinear",
    "mixed_rank_finetune",
    # factorisation
    "compress_model",
    "CompressionResult",
    "whitened_factors",
    "left_basis",
    "allocate_ranks",
    "Unit",
    # modules and files
    "LowRankLinear",
    "QuantizedLinear",
    "replace_linears",
    "save_compressed",
    "load_compressed",
    "count_parameters",
    # evaluation (non-private analysis)
    "output_errors",
    "embedding_agreement",
]
