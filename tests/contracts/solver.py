"""The contract of a top-k symmetric / Hermitian eigensolver, as a test base class.

A solver's tests subclass :class:`SolverContract` (the subclass's name starts with ``Test``) and
provide ``solve``; ``make_matrix`` has a default. Everything else is inherited::

    class TestMySolver(SolverContract):
        def solve(self, A, k, generator):
            return my_topk(A, k, generator=generator)

The result must look like :class:`dplowrank.linalg.EighResult`: ``eigenvalues`` (Tensor of
shape (k,)), ``eigenvectors`` (Tensor of shape (d, k)), ``converged`` and ``residual``.
The reference is :func:`torch.linalg.eigh` in float64 / complex128. Tolerances depend on the
dtype: each is a multiple of the dtype's unit roundoff ``eps`` (and of ``d`` where rounding
errors add up over a dimension), or the solver's documented stopping tolerance.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ._common import OneThread, dtype_name

__all__ = ["SolverContract", "ALL_DTYPES"]

ALL_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)

_REAL = {torch.float32: torch.float32, torch.float64: torch.float64,
         torch.complex64: torch.float32, torch.complex128: torch.float64}
_WIDE = {torch.float32: torch.float64, torch.float64: torch.float64,
         torch.complex64: torch.complex128, torch.complex128: torch.complex128}


class SolverContract(OneThread):
    """Conformance tests for ``solve(A, k, generator)`` → top-k eigenpairs of a Hermitian A.

    Class attributes a subclass may change:

    ``dtypes``
        The dtypes the solver supports (default: float32, float64, complex64, complex128).
    ``sizes``
        The (d, k) pairs of the main tests (the edge cases k = 1 and k = d run at ``edge_d``).
    ``device``
        Where the test matrices (and the generators of :meth:`make_generator`) live.
    ``residual_tol``
        ``max_j ‖A v_j − λ_j v_j‖ / ‖A‖₂`` allowed, by real dtype: above the solver's stopping
        tolerance (a direct solver should set it near its rounding error, a few √d·eps).
    ``normalises_signs``
        Whether each eigenvector's largest-magnitude entry (first on ties) is real and > 0,
        as :func:`dplowrank.linalg.topk_eigh` documents.
    """

    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    sizes: tuple[tuple[int, int], ...] = ((16, 3), (48, 5))
    edge_d: int = 10
    device: torch.device = torch.device("cpu")
    residual_tol: ClassVar[dict[torch.dtype, float]] = {torch.float32: 1e-5, torch.float64: 1e-9}
    normalises_signs: bool = True

    # ---- factories -------------------------------------------------------------------------

    def solve(self, A: torch.Tensor, k: int, generator: torch.Generator):
        """The solver under test: the top ``k`` eigenpairs of ``A`` (Tensor of shape (d, d))."""
        raise NotImplementedError

    def make_matrix(self, d: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
        """A spiked, indefinite Hermitian matrix of shape (d, d) and ``dtype`` on :attr:`device`.

        Eigenvalues: up to six spikes 20, 17, …, 5 above a bulk spread evenly over [−12, 1], so
        the most negative eigenvalue is larger in magnitude than the smaller spikes (a solver
        must find the algebraically largest, not the largest in magnitude). Eigenvectors: a
        Haar-like random unitary (QR of a Gaussian), drawn from ``generator`` (on the CPU).
        Built in float64 / complex128, made exactly Hermitian, then rounded to ``dtype``
        (entrywise, so it stays exactly Hermitian).
        """
        wide = _WIDE[dtype]
        spikes = torch.arange(20.0, 4.0, -3.0, dtype=torch.float64)[: min(d, 6)]
        bulk = torch.linspace(-12.0, 1.0, d - spikes.numel(), dtype=torch.float64)
        lam = torch.cat([spikes, bulk])
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        if wide.is_complex:
            g = torch.complex(g, torch.randn(d, d, generator=generator, dtype=torch.float64))
        q, _ = torch.linalg.qr(g)  # shape: (d, d)
        a = (q * lam.to(wide)) @ q.mH
        a = (a + a.mH) / 2
        return a.to(dtype).to(self.device)

    def make_generator(self, seed: int) -> torch.Generator:
        """The generator handed to :meth:`solve` (on :attr:`device`)."""
        return torch.Generator(device=self.device).manual_seed(seed)

    # ---- helpers ---------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc) -> None:
        """Parametrise each test over this solver's ``dtypes`` (and ``sizes`` where it takes ``d, k``)."""
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", self.dtypes, ids=[dtype_name(t) for t in self.dtypes])
        if "size" in metafunc.fixturenames:
            metafunc.parametrize("size", self.sizes, ids=[f"d{d}-k{k}" for d, k in self.sizes])

    def _case(self, d: int, k: int, dtype: torch.dtype, seed: int = 0):
        A = self.make_matrix(d, dtype, torch.Generator().manual_seed(1000 + d))
        return A, self.solve(A, k, self.make_generator(seed))

    @staticmethod
    def _eps(dtype: torch.dtype) -> float:
        return torch.finfo(_REAL[dtype]).eps

    @staticmethod
    def _reference(A: torch.Tensor) -> torch.Tensor:
        """All eigenvalues of A, descending, from torch.linalg.eigvalsh in float64 / complex128."""
        return torch.linalg.eigvalsh(A.to(_WIDE[A.dtype])).flip(0)

    def _check_pairs(self, A: torch.Tensor, r, k: int) -> None:
        """The battery every (A, k) runs through: shapes, orthonormality, residual, reference values."""
        d, dtype = A.shape[0], A.dtype
        wide, eps = _WIDE[dtype], self._eps(dtype)
        assert tuple(r.eigenvalues.shape) == (k,) and tuple(r.eigenvectors.shape) == (d, k)
        V = r.eigenvectors.to(wide)  # shape: (d, k)
        lam = r.eigenvalues.to(torch.float64)  # shape: (k,)
        ortho = float((V.mH @ V - torch.eye(k, dtype=wide, device=V.device)).abs().max())
        ortho_tol = 10 * math.sqrt(d) * eps
        assert ortho <= ortho_tol, f"‖VᴴV − I‖_max = {ortho:.2e} > {ortho_tol:.2e} ({dtype})"
        ref = self._reference(A)
        norm = float(ref.abs().max())  # ‖A‖₂
        resid = float((A.to(wide) @ V - V * lam.to(wide)).norm(dim=0).max()) / norm
        tol = self.residual_tol[_REAL[dtype]]
        assert resid <= tol, f"max_j ‖Av_j − λ_j v_j‖/‖A‖₂ = {resid:.2e} > {tol:.1e} ({dtype})"
        assert bool(r.converged), f"converged={r.converged!r} on a well-separated spiked matrix"
        assert math.isfinite(r.residual) and r.residual <= tol
        # Each Ritz value lies within its residual (+ the orthonormality defect) of an eigenvalue,
        # and the top k Ritz values of a top-k subspace are the top k eigenvalues.
        err = float((lam.cpu() - ref[:k].cpu()).abs().max()) / norm
        assert err <= 2 * tol + 2 * ortho, f"eigenvalues off the reference by {err:.2e}·‖A‖₂ ({dtype})"
        assert bool((lam[:-1] >= lam[1:]).all()), f"eigenvalues not descending: {lam.tolist()}"

    # ---- the contract ----------------------------------------------------------------------

    def test_pairs_are_orthonormal_accurate_and_the_top_k(self, dtype, size):
        d, k = size
        A, r = self._case(d, k, dtype)
        self._check_pairs(A, r, k)

    def test_subspace_within_the_davis_kahan_bound(self, dtype, size):
        """sin Θ(V, U_k) ≤ ‖AV − VΛ‖_F / (λ_k(V) − λ_{k+1}(A)) (Davis & Kahan 1970, sin θ theorem)."""
        d, k = size
        A, r = self._case(d, k, dtype)
        wide = _WIDE[dtype]
        w, u = torch.linalg.eigh(A.to(wide))
        U = u[:, -k:]  # shape: (d, k), the exact top-k eigenvectors
        V = r.eigenvectors.to(wide)
        lam = r.eigenvalues.to(torch.float64)
        R = float(torch.linalg.matrix_norm(A.to(wide) @ V - V * lam.to(wide)))
        gap = float(lam[-1]) - float(w[-k - 1])
        assert gap > 0, "the test matrix has no gap after k"
        sin = float(torch.linalg.matrix_norm(V @ V.mH - U @ U.mH, ord=2))
        # the bound holds for orthonormal V; the rest covers V's orthonormality defect
        bound = R / gap + 20 * math.sqrt(d) * self._eps(dtype)
        assert sin <= bound, f"sin Θ = {sin:.2e} > {bound:.2e} ({dtype})"

    def test_dtypes_device_and_shapes(self, dtype, size):
        d, k = size
        A, r = self._case(d, k, dtype)
        assert r.eigenvalues.dtype == _REAL[dtype], (r.eigenvalues.dtype, dtype)
        assert r.eigenvectors.dtype == dtype
        assert r.eigenvalues.device == A.device and r.eigenvectors.device == A.device
        assert isinstance(r.residual, float)

    def test_input_is_untouched(self, dtype, size):
        d, k = size
        A = self.make_matrix(d, dtype, torch.Generator().manual_seed(7))
        before = A.clone()
        self.solve(A, k, self.make_generator(0))
        assert A.dtype == before.dtype and A.shape == before.shape and A.stride() == before.stride()
        # bit for bit (a value written back, or a −0.0 for a 0.0, would show here)
        assert torch.equal(A.view(torch.uint8), before.view(torch.uint8))

    def test_same_generator_state_gives_the_same_result(self, dtype, size):
        d, k = size
        A = self.make_matrix(d, dtype, torch.Generator().manual_seed(11))
        r1 = self.solve(A, k, self.make_generator(123))
        r2 = self.solve(A, k, self.make_generator(123))
        assert torch.equal(r1.eigenvalues, r2.eigenvalues)
        assert torch.equal(r1.eigenvectors, r2.eigenvectors)
        assert r1.residual == r2.residual and r1.converged == r2.converged

    def test_signs_are_normalised(self, dtype, size):
        if not self.normalises_signs:
            return
        d, k = size
        _, r = self._case(d, k, dtype)
        V = r.eigenvectors
        top = V.abs().argmax(dim=0)  # first index of the largest magnitude
        lead = V[top, torch.arange(k, device=V.device)]
        assert bool((lead.real > 0).all()), f"leading entries not positive: {lead.tolist()}"
        if V.is_complex():
            assert bool((lead.imag.abs() <= 4 * self._eps(dtype) * lead.abs()).all()), lead.tolist()

    def test_k_equals_one(self, dtype):
        A, r = self._case(self.edge_d, 1, dtype)
        self._check_pairs(A, r, 1)

    def test_k_equals_d(self, dtype):
        d = self.edge_d
        A, r = self._case(d, d, dtype)
        self._check_pairs(A, r, d)

    def test_one_by_one(self, dtype):
        A = torch.full((1, 1), -2.5, dtype=dtype, device=self.device)
        r = self.solve(A, 1, self.make_generator(0))
        eps = self._eps(dtype)
        assert abs(float(r.eigenvalues[0]) + 2.5) <= 4 * eps * 2.5, r.eigenvalues
        assert abs(float(r.eigenvectors.abs()[0, 0]) - 1.0) <= 4 * eps, r.eigenvectors
