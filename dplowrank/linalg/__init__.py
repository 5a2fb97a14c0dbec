"""Linear algebra kernels: top-k eigenpairs of symmetric / Hermitian matrices.

See :func:`topk_eigh` (dense or randomized block Lanczos) and :class:`EighResult`.
"""

from __future__ import annotations

from ._eigsh import NOISE_ATOL_FRACTION, SOLVERS, EighResult, topk_eigh

__all__ = ["NOISE_ATOL_FRACTION", "SOLVERS", "EighResult", "topk_eigh"]
