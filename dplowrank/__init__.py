"""dplowrank: differentially private low-rank linear algebra.

Release rank-k approximations of private Gram (covariance) matrices under (ε, δ)-DP,
with the Gaussian and complex Gaussian mechanisms and a fast top-k eigensolver on CPU or
GPU. See ``docs/`` for a page per capability.
"""

from ._memory import InsufficientMemoryError
from ._secure import SecureNormalSource
from .accounting import (
    BudgetExceededError,
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyAccountant,
    PrivacyBudget,
    SelfComposedEvent,
    calibrate_plan,
    event_from_dict,
)
from .analysis import BoundCheck, check_bounds, gap_repulsion, theory_bounds
from .compress import (
    ActivationStatistics,
    LayerGroup,
    LowRankLinear,
    PrivateStatistics,
    collect_statistics,
    compress_model,
    find_groups,
    load_compressed,
    release_statistics,
    save_compressed,
)
from .diagnostics import GapReport, diagnose, noise_edge, noise_norm_bound
from .distributed import DistributedError, reduce_statistics, release_rank_k_distributed, release_rank_k_sharded
from .gram import GramAccumulator
from .linalg import EighResult, topk_eigh
from .mechanisms import (
    ComplexGaussianMechanism,
    GaussianMechanism,
    NoiseCalibration,
    analytic_gaussian_sigma,
    calibrate_noise,
    classic_gaussian_sigma,
    gaussian_delta,
    gaussian_epsilon,
    gram_sensitivity,
)
from .pca import PrivatePCA
from .release import LowRankRelease, load_release, release_rank_k

__version__ = "0.1.0"

__all__ = [
    # the release
    "release_rank_k",
    "LowRankRelease",
    "load_release",
    "PrivatePCA",
    "InsufficientMemoryError",
    "SecureNormalSource",
    # private statistics
    "GramAccumulator",
    "gram_sensitivity",
    # mechanisms and calibration
    "GaussianMechanism",
    "ComplexGaussianMechanism",
    "NoiseCalibration",
    "calibrate_noise",
    "analytic_gaussian_sigma",
    "classic_gaussian_sigma",
    "gaussian_epsilon",
    "gaussian_delta",
    # accounting
    "PrivacyAccountant",
    "PrivacyBudget",
    "BudgetExceededError",
    "calibrate_plan",
    "GaussianEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "ComposedEvent",
    "event_from_dict",
    # diagnostics (free) and analysis tools (non-private)
    "diagnose",
    "GapReport",
    "noise_edge",
    "noise_norm_bound",
    "theory_bounds",
    "check_bounds",
    "BoundCheck",
    "gap_repulsion",
    # linear algebra
    "topk_eigh",
    "EighResult",
    # model compression (dplowrank.compress has the rest: adapters, factorisations, evaluation)
    "find_groups",
    "LayerGroup",
    "collect_statistics",
    "ActivationStatistics",
    "release_statistics",
    "PrivateStatistics",
    "compress_model",
    "LowRankLinear",
    "save_compressed",
    "load_compressed",
    # torch.distributed (dplowrank.distributed has shard_rows)
    "release_rank_k_distributed",
    "release_rank_k_sharded",
    "reduce_statistics",
    "DistributedError",
]
