"""Deprecated: the statistical privacy auditor moved to :mod:`dplowrank.analysis`.

``from dplowrank.audit import audit`` still works, with a ``DeprecationWarning``.
"""

import warnings

from .analysis import AuditResult, audit, block_diagonal_sampler, clopper_pearson

__all__ = ["AuditResult", "audit", "block_diagonal_sampler", "clopper_pearson"]

warnings.warn("dplowrank.audit moved to dplowrank.analysis", DeprecationWarning, stacklevel=2)
