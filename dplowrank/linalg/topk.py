"""Top-k eigenpairs of a real symmetric or complex Hermitian matrix: :func:`topk_eigh`.

Two solvers sit behind it: ``"dense"`` (:func:`torch.linalg.eigh`, guarded, in
:mod:`._dense`) and ``"lanczos"`` (randomized block Lanczos with thick restarts, in
:mod:`._lanczos`, optionally started from a half-precision warm start, :mod:`._warm_start`).
This module chooses between them and holds the noise-aware stopping rule's constant.

Noise-aware stopping (``atol``)
-------------------------------
A private release solves A = M + E with E Gaussian noise of scale σ, and only needs A's
eigenvectors as accurately as the noise lets them mean anything. With ``atol`` the test
becomes ``‖A v − λ v‖ ≤ max(atol, tol · scale)``, ``tol`` defaulting to the rounding floor
(see :func:`._checks._resolve_tol`); :func:`dplowrank.release_rank_k` passes
``atol = NOISE_ATOL_FRACTION · σ = 0.01·σ``. Why that suffices:

* Solver error. A Ritz pair (θ, v) with residual r has sin∠(v, u) ≤ r/δ, u the
  eigenvector of A nearest θ and δ the distance from θ to the rest of A's spectrum; for
  the top-k subspace, sin Θ ≤ ‖R‖_F / (θ_k − λ_{k+1}) (Davis & Kahan 1970, "The rotation
  of eigenvectors by a perturbation. III", SIAM J. Numer. Anal. 7(1):1-46, the sin θ
  theorem; Parlett, "The Symmetric Eigenvalue Problem", 1998, Thm 11.7.1).
* Noise error. To first order E moves M's eigenvector u_j by Σ_{i≠j} (u_iᵀ E u_j)/(λ_j − λ_i)
  u_i (Stewart & Sun 1990, "Matrix Perturbation Theory", §V.2). For the isotropic shape
  u_iᵀ E u_j ~ N(0, σ²/2) for every orthonormal pair (the GOE is rotation invariant), so
  the single term of the nearest neighbour already has typical size σ/(√2·δ) (no smaller
  for the upper-triangular shape, whose off-diagonal variance is twice as large; the same
  for each of the real and imaginary parts of the complex, GUE-shaped, noise).

So r ≤ 0.01·σ keeps the solver's displacement below √2·1% of one term of the displacement
the noise has already made; the whole noise displacement, summed over the ~d bulk
directions, is larger still by ~√d. Measured on the benchmark's spiked matrices (spikes
3-8× the noise edge, ``benchmarks/bench_scale.py``) the solver's eigenvector error is
≈ r/(λ_k − λ_{k+1}), the residual living in the bulk: ~1e-5 at d = 4096 (r ≤ 0.01·σ),
below the 1e-4 the benchmark asks for. Each Krylov step divides the residual by ~6.5 there
(Chebyshev growth T_q(λ_k/edge) with λ_k ≈ 3.3·edge), so 0.01·σ instead of the float64
default (1e-10 relative, ~4e-8·σ) saves ~6 of 15 steps; in float32 (default 2e-6 relative,
~1e-3·σ) about one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import cast

import torch

from .._random import resolve_generator
from ._checks import SOLVERS, _largest_entry, _validate
from ._dense import _dense
from ._lanczos import _block_lanczos
from ._pairs import _product
from ._result import EighResult
from ._warm_start import _WARM_TARGET, _warm_start_block, _warm_start_dtype

__all__ = ["NOISE_ATOL_FRACTION", "SOLVERS", "EighResult", "topk_eigh", "topk_eigh_operator"]

#: ``"auto"`` uses the dense solver up to this dimension: below it a full
#: :func:`torch.linalg.eigh` costs no more than a Krylov solve on a spiked matrix, and far
#: less than one on a flat spectrum (timings in ``docs/eigensolver.md``).
AUTO_DENSE_MAX_D = 512

#: ``"auto"`` uses the dense solver when the block width b = k + oversample exceeds this
#: fraction of d: the Krylov basis would be a large part of the space (and its buffers
#: would approach d×d).
AUTO_DENSE_MAX_BLOCK_FRACTION = 0.125

#: The noise-aware stopping rule: :func:`dplowrank.release_rank_k` asks the solver for
#: ``atol = NOISE_ATOL_FRACTION · σ`` (σ the mechanism's noise scale). A returned pair with
#: residual r is within r/δ of an exact eigenvector (δ its eigenvalue's distance to the
#: rest of the spectrum), while the noise alone displaces that eigenvector by a
#: first-order term per neighbouring eigenvector of typical size ≥ σ/(√2 δ); with
#: r ≤ 0.01·σ the solver adds at most ~1.4% of one such term (the module docstring and
#: ``docs/eigensolver.md`` give the derivation and the measurements).
NOISE_ATOL_FRACTION = 1e-2


def topk_eigh(
    A: torch.Tensor,
    k: int,
    *,
    solver: str = "auto",
    generator: torch.Generator | None = None,
    tol: float | None = None,
    atol: float | None = None,
    max_iters: int | None = None,
    oversample: int | None = None,
    check: bool = True,
    warm_start: bool | None = None,
) -> EighResult:
    """The ``k`` algebraically largest eigenpairs of a symmetric / Hermitian matrix.

    Parameters
    ----------
    A : Tensor of shape (d, d)
        Real symmetric or complex Hermitian; float32, float64, complex64 or complex128;
        any device. Only ``A @ X`` products are used by the iterative solver (symmetry is
        the caller's responsibility and is not checked). ``A`` is never modified.
    k : int
        Number of eigenpairs, ``1 <= k <= d``.
    solver : {"auto", "dense", "lanczos"}
        ``"dense"``: :func:`torch.linalg.eigh`. ``"lanczos"``: randomized block Lanczos
        with full reorthogonalisation and thick restarts (Golub & Underwood 1977; Musco &
        Musco 2015, arXiv:1504.05477; Wu & Simon 2000). ``"auto"``: dense when
        ``d <= 512`` or the block width ``k + oversample`` exceeds ``d / 8``, otherwise
        Lanczos, falling back to dense (``solver="dense"`` in the result, with the
        Lanczos steps counted in ``iterations`` and ``matvecs``) when Lanczos does not
        converge.
    generator : torch.Generator or None
        Source of the random starting block (and of refills after a breakdown). A given
        generator state gives a deterministic result on a given device. ``None``: a fresh
        generator on A's device seeded from :func:`secrets.randbits` (see
        :mod:`dplowrank._random`).
    tol : float or None
        Stop when ``‖A v − λ v‖ ≤ tol · scale`` for all k pairs, where ``scale`` is the
        largest |Ritz value| (≈ ‖A‖₂). Default: 2e-6 for float32/complex64, 1e-10 for
        float64/complex128, raised to ``eps · ‖A‖_F / ‖A‖₂`` (estimated) for matrices
        with a flat spectrum, where rounding allows no better. Values below the rounding
        floor (~2e-7 … 2e-6 in float32, ~1e-15 in float64) end with ``converged=False``
        (``"auto"`` then falls back to dense).
    atol : float or None
        Absolute residual target: stop when ``‖A v − λ v‖ ≤ max(atol, tol · scale)`` for
        all k pairs, where ``tol`` now defaults to the rounding floor
        ``2 · eps · ‖A‖_F / ‖A‖₂`` (estimated) rather than to the defaults above, so that
        ``atol`` alone sets the accuracy as far as the dtype allows. Meant for a matrix
        known only to within noise: :func:`dplowrank.release_rank_k` passes
        ``NOISE_ATOL_FRACTION · σ`` (see :data:`NOISE_ATOL_FRACTION` and
        ``docs/eigensolver.md``). The result's ``tol`` is the relative tolerance this
        resolved to, ``max(atol / scale, tol)``.
    max_iters : int or None
        Maximum number of block steps (each one product with a (d, b) block). Default
        ``max(20, ceil(2 d / b))``: about two d-column passes over A.
    oversample : int or None
        Extra block columns p, so that b = min(k + p, d). Default ``max(8, k // 4)``: on
        noisy spiked matrices a wider block rarely saves a step, and each step costs d²·b
        (measurements in ``docs/eigensolver.md``).
    check : bool
        Check that A is finite (one pass over A). ``False`` skips it.
    warm_start : bool or None
        Iterative solver, real A only: start the Krylov solve from a few subspace steps
        with a float16 or bfloat16 copy of A (it never changes the accuracy, which the
        stopping rule checks in A's dtype). ``True``: always; ``False``: never; ``None``
        (default): for ``d >= 2048`` on a device whose half-precision products are fast,
        decided from its capabilities, never from a timing: CUDA with compute capability
        ≥ 7.0 (float16); a CPU with AMX-FP16 (float16) or AMX-BF16 (bfloat16), read from
        its ISA flags. With ``True`` elsewhere the type is float16 on CUDA and on CPUs with
        AVX512-FP16, else bfloat16. The copy (2 bytes per entry) lives only during the warm
        start, and is skipped when it does not fit in memory. Its products count in
        ``matvecs``, not in ``iterations``; the type that ran is the result's
        ``warm_start``.

    Returns
    -------
    EighResult
        ``eigenvalues`` (Tensor of shape (k,), descending), ``eigenvectors`` (Tensor of
        shape (d, k), orthonormal, largest-magnitude entry of each column real positive)
        and diagnostics; see :class:`EighResult`.

    Raises
    ------
    TypeError
        A not a dense tensor (sparse layouts), or of an unsupported dtype (float16,
        bfloat16, integer); k, max_iters or oversample not an int; warm_start not a bool
        or None.
    ValueError
        A not square or on the meta device, k outside [1, d], A not finite (when
        ``check``), unknown solver, tol or atol not positive, max_iters < 1,
        oversample < 0; generator on another device.
    torch.linalg.LinAlgError
        The dense solver failed even in double precision.

    Notes
    -----
    The iterative solver works in A's dtype on A's device; the projected eigenproblem is
    solved in float64 (complex128), on one CPU thread, or on the GPU for CUDA input. The
    dense solver, too, runs on one thread on the CPU, so that a given generator state gives
    the same bytes whatever torch's thread count. Its
    memory is two blocks of shape (d, max_basis) with ``max_basis = min(d, max(2 b,
    min(max(10 b, 128), max(d // 4, 128))))`` (400 columns for k = 32 and d ≥ 1600; 800
    for k = 64 and d ≥ 3200, 0.42 GB in float64 at d = 32768), plus a (max_basis,
    max_basis) float64 matrix. Ten blocks hold the ~9-10 steps a noisy spiked matrix needs
    at the noise-aware tolerance, so such a solve needs no restart and no extra product
    for its final check. At a thick restart ``max(3 b, 3 max_basis / 8)`` Ritz vectors are
    kept. ``docs/eigensolver.md`` has the algorithm, the stopping rule and timings
    (``benchmarks/bench_release.py``, ``benchmarks/bench_solver.py``).

    Examples
    --------
    >>> import torch
    >>> from dplowrank.linalg import topk_eigh
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.diag(torch.tensor([3.0, -5.0, 1.0, 2.0]))
    >>> r = topk_eigh(A, 2, generator=g)
    >>> r.eigenvalues
    tensor([3., 2.])
    >>> r.eigenvectors
    tensor([[1., 0.],
            [0., 0.],
            [0., 0.],
            [0., 1.]])
    """
    # ---- validate
    A, k, solver, tol_f, atol_f, iters, over = _validate(
        A, k, solver, tol, atol, max_iters, oversample, check
    )
    if warm_start is not None and not isinstance(warm_start, bool):
        raise TypeError(f"warm_start must be a bool or None, got {warm_start!r}")
    # The generator is checked (type, device) whichever solver runs; it is created only
    # when the iterative solver needs it.
    gen = resolve_generator(generator, A.device)[0] if generator is not None else None
    # ---- choose the solver
    d = A.shape[0]
    b = min(k + (max(8, k // 4) if over is None else over), d)  # block width
    use_dense = solver == "dense" or (
        solver == "auto" and (d <= AUTO_DENSE_MAX_D or b > AUTO_DENSE_MAX_BLOCK_FRACTION * d)
    )
    with torch.no_grad():
        if use_dense:
            return _dense(A, k, tol_f, atol_f)
        if gen is None:
            gen = resolve_generator(None, A.device)[0]
        # ---- warm start: a starting block from a half-precision copy (or a random one)
        half = _warm_start_dtype(A, warm_start)
        start, warm_products = None, 0
        if half is not None:
            target = None if atol_f is None else _WARM_TARGET * atol_f
            start, warm_products = _warm_start_block(A, b, gen, k, target, dtype=half)
        # ---- the Krylov solve
        res = _krylov(A, k, b, gen, tol_f, atol_f, iters, start)
        if start is not None:
            res = dataclasses.replace(
                res, matvecs=res.matvecs + warm_products, warm_start=str(half).removeprefix("torch.")
            )
        # ---- "auto": fall back to dense when the Krylov solve did not converge
        if solver == "auto" and not res.converged:
            dense = _dense(A, k, tol_f, atol_f)
            return dataclasses.replace(
                dense, iterations=res.iterations, matvecs=res.matvecs + dense.matvecs,
                warm_start=res.warm_start,
            )
    return res


#: The Krylov solve runs on 2^e·A when A's largest entry (estimated) lies outside this range,
#: by dtype: beyond it the squares in its norms and Gram matrices under- or overflow (a
#: float64 matrix of scale 1e-160 reported residual 0 and converged with wrong eigenvalues).
_SAFE_SCALE = {torch.float32: (2.0**-50, 2.0**50), torch.float64: (2.0**-400, 2.0**400)}


class _Scaled:
    """The operator 2^e·A for a Tensor A of shape (d, d): its products are A's, multiplied by
    a power of two (exact, short of overflow or underflow, which the range above avoids)."""

    def __init__(self, A: torch.Tensor, e: int) -> None:
        self.A, self.factor = A, math.ldexp(1.0, e)
        self.shape, self.dtype, self.device = A.shape, A.dtype, A.device

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        return _product(self.A, X).mul_(self.factor)


def _pow2_exponent(A: object) -> int:
    """e such that 2^e·A has its largest entry (estimated from the diagonal and every 64th
    row) near 1, or 0 when A (a real Tensor) is already in :data:`_SAFE_SCALE`'s range, is
    zero or not finite, or is an operator."""
    if not isinstance(A, torch.Tensor) or A.dtype not in _SAFE_SCALE:
        return 0
    top = _largest_entry(A)
    lo, hi = _SAFE_SCALE[A.dtype]
    if not math.isfinite(top) or top == 0.0 or lo <= top <= hi:
        return 0
    return -math.ceil(math.log2(top))


def _krylov(A, k: int, b: int, gen: torch.Generator, tol: float | None, atol: float | None,
            iters: int | None, start: torch.Tensor | None) -> EighResult:
    """The block Lanczos solve with topk_eigh's basis size, restart width and step limit;
    on 2^e·A (eigenvalues and absolute figures scaled back) when A's scale is extreme."""
    d = A.shape[0]
    max_basis = min(d, max(2 * b, min(max(10 * b, 128), max(d // 4, 128))))
    keep = max(k, min(max_basis - b, max(3 * b, (3 * max_basis) // 8)))
    e = _pow2_exponent(A)
    # an operator with a Tensor's shape, dtype, device and products, as topk_eigh_operator's
    op = cast(torch.Tensor, _Scaled(A, e)) if e else A
    res = _block_lanczos(
        op, k, block=b, gen=gen, tol=tol, atol=None if atol is None else math.ldexp(atol, e),
        max_iters=max(20, math.ceil(2 * d / b)) if iters is None else iters,
        max_basis=max_basis, keep=keep, start=start,
    )
    if not e:
        return res
    back = math.ldexp(1.0, -e)
    return dataclasses.replace(
        res, eigenvalues=res.eigenvalues * back, scale=res.scale * back, atol=atol,
        next_eigenvalue=None if res.next_eigenvalue is None else res.next_eigenvalue * back,
        next_residual=None if res.next_residual is None else res.next_residual * back,
    )


def topk_eigh_operator(
    A: object,
    k: int,
    *,
    generator: torch.Generator,
    atol: float | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    oversample: int | None = None,
) -> EighResult:
    """The ``k`` largest eigenpairs of a symmetric operator known only by its products.

    The block Lanczos solver of :func:`topk_eigh` (same block width, basis, restarts and
    stopping rule; no warm start, no dense fallback) on any object with ``shape`` ``(d, d)``,
    a real ``dtype`` (float32 or float64), a ``device``, and ``A @ X`` for X of shape
    (d, w) returning a Tensor of shape (d, w) of that dtype. Used by the row-sharded release
    (:func:`dplowrank.release_rank_k_sharded`), whose products gather every rank's rows.

    Parameters
    ----------
    A : operator
        Symmetric (the caller's responsibility), of shape (d, d).
    k : int
        1 ≤ k ≤ d.
    generator : torch.Generator
        The random starting block's source, on ``A.device``.
    atol, tol, max_iters, oversample
        As in :func:`topk_eigh`.

    Returns
    -------
    EighResult
        ``converged`` says whether the stopping rule was met within ``max_iters``.
    """
    shape = tuple(getattr(A, "shape", ()))
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"A must have a square shape (d, d), got {shape!r}")
    dtype = getattr(A, "dtype", None)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"A's dtype must be torch.float32 or torch.float64, got {dtype!r}")
    d = int(shape[0])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"k must be an integer in [1, {d}], got {k!r}")
    for name, value in (("atol", atol), ("tol", tol)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite float or None, got {value!r}")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1):
        raise ValueError(f"max_iters must be a positive integer or None, got {max_iters!r}")
    if oversample is not None and (isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 0):
        raise ValueError(f"oversample must be a non-negative integer or None, got {oversample!r}")
    gen = resolve_generator(generator, torch.device(getattr(A, "device", "cpu")))[0]
    b = min(k + (max(8, k // 4) if oversample is None else oversample), d)
    with torch.no_grad():
        return _krylov(A, k, b, gen, tol, atol, max_iters, None)
