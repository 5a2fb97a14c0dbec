"""Deprecated: the offline text helpers moved to :mod:`dplowrank.demo.datasets`.

``from dplowrank.datasets import stdlib_sentences`` still works, with a ``DeprecationWarning``.
"""

import warnings

from .demo.datasets import *  # noqa: F403

__all__ = ["stdlib_sentences"]

warnings.warn("dplowrank.datasets moved to dplowrank.demo.datasets", DeprecationWarning, stacklevel=2)
