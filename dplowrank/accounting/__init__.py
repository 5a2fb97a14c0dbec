"""Privacy events, composition (exact GDP, zCDP, RDP), budgets and noise plans.

The bridges to dp_accounting and opacus live in :mod:`dplowrank.accounting.bridges` and
import those libraries only when called.
"""

from ..privacy import (
    DEFAULT_ORDERS,
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    event_from_dict,
)
from ._accountant import METHODS, PrivacyAccountant, as_event
from ._budget import BudgetExceededError, PrivacyBudget
from ._plan import calibrate_plan

__all__ = [
    "BudgetExceededError",
    "ComposedEvent",
    "DEFAULT_ORDERS",
    "GaussianEvent",
    "METHODS",
    "PoissonSampledEvent",
    "PrivacyAccountant",
    "PrivacyBudget",
    "PrivacyEvent",
    "SelfComposedEvent",
    "as_event",
    "calibrate_plan",
    "event_from_dict",
]
