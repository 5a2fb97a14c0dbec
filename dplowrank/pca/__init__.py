"""Private principal component analysis as a scikit-learn estimator (:class:`PrivatePCA`)."""

from ._estimator import DEFAULT_WEIGHTS, PrivatePCA

__all__ = ["DEFAULT_WEIGHTS", "PrivatePCA"]
