"""Deprecated: the MiniLM demo helpers moved to :mod:`dplowrank.demo.minilm`.

``from dplowrank.compress.minilm import run_demo`` still works, with a ``DeprecationWarning``.
"""

import warnings

from ..demo.minilm import *  # noqa: F403  deprecation shim: an allowed upward import (tools/structure.py)

__all__ = ["load_minilm", "encoder", "token_batches", "synthetic_batches", "encode", "run_demo", "format_table"]

warnings.warn("dplowrank.compress.minilm moved to dplowrank.demo.minilm", DeprecationWarning, stacklevel=2)
