"""Privacy mathematics: events, the GDP / zCDP / RDP curves and the one calibration search.

The bottom layer of the library: pure arithmetic on privacy parameters. It never sees
data, holds no state, and imports nothing of ``dplowrank`` but input validation. The
mechanisms calibrate from it and the accountant composes with it.
"""

from ._calibration import (
    CALIBRATIONS,
    NoiseCalibration,
    analytic_gaussian_sigma,
    calibrate_noise,
    classic_gaussian_sigma,
    gaussian_delta,
    gaussian_epsilon,
)
from ._events import (
    EVENT_NEIGHBOURS,
    EVENT_TYPES,
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    event_from_dict,
    neighbour_of,
)
from ._gdp import (
    DELTA_SAFETY,
    EPS_SLACK,
    count_as_float,
    gdp_delta,
    gdp_delta_many,
    gdp_epsilon,
    gdp_epsilon_many,
    gdp_mu,
    pad_delta,
    sum_mu2,
)
from ._rdp import DEFAULT_ORDERS, gaussian_rdp, rdp_to_delta, rdp_to_epsilon, sampled_gaussian_rdp
from ._search import bisect, nudge
from ._zcdp import zcdp_delta, zcdp_epsilon

__all__ = [
    "CALIBRATIONS",
    "ComposedEvent",
    "DEFAULT_ORDERS",
    "DELTA_SAFETY",
    "pad_delta",
    "EPS_SLACK",
    "EVENT_NEIGHBOURS",
    "EVENT_TYPES",
    "GaussianEvent",
    "NoiseCalibration",
    "PoissonSampledEvent",
    "PrivacyEvent",
    "SelfComposedEvent",
    "analytic_gaussian_sigma",
    "bisect",
    "calibrate_noise",
    "classic_gaussian_sigma",
    "count_as_float",
    "event_from_dict",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_rdp",
    "gdp_delta",
    "gdp_delta_many",
    "gdp_epsilon",
    "gdp_epsilon_many",
    "gdp_mu",
    "neighbour_of",
    "nudge",
    "rdp_to_delta",
    "rdp_to_epsilon",
    "sampled_gaussian_rdp",
    "sum_mu2",
    "zcdp_delta",
    "zcdp_epsilon",
]
