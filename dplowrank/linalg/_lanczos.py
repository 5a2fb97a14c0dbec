"""Randomized block Lanczos with full reorthogonalisation and thick restarts.

Each step costs one product ``A @ X`` with X of shape (d, b), b = k + oversample, plus
O(d·m·b) work on a basis of m ≤ ``max_basis`` columns; no d×d temporary is formed.

The Krylov space ``span{X, AX, A²X, ...}`` of a Gaussian starting block is the randomized
block Krylov method of Musco & Musco (2015, "Randomized Block Krylov Methods for Stronger
and Faster Approximate Singular Value Decomposition", arXiv:1504.05477), whose Gaussian
start is the range finder of Halko, Martinsson & Tropp (2011, arXiv:0909.4061). It is built
one block at a time as in the block Lanczos method (Cullum & Donath 1974; Golub &
Underwood 1977), but every new block is orthogonalised against the *whole* basis, twice
(classical Gram–Schmidt twice, "twice is enough": Giraud, Langou & Rozložník 2005), then
within itself by CholeskyQR2 with float64 Gram matrices (Fukaya et al. 2014; Yamazaki,
Tomov & Dongarra 2015); this keeps a float32 basis orthonormal to working precision. The
projected matrix ``T = Qᴴ A Q`` is assembled from those same inner products and solved in
float64 (complex128), and the k algebraically *largest* Ritz values are kept. That is what
makes the method right for indefinite matrices: plain subspace iteration converges to the
largest magnitudes instead. When the basis is full it is compressed to its best Ritz
vectors and the recursion continues from the pending block, the thick restart of Wu &
Simon (2000, SIAM J. Matrix Anal. Appl. 22(2):602–616) in block form.

The iteration is a :class:`_KrylovState` driven by :func:`_block_lanczos`, one named stage
per step: ``expand`` (one new block and its product), ``rayleigh_ritz`` (the projected
eigenproblem), ``check`` (the stopping rule below), then either ``restart_fresh`` or the
next block and, when the basis is full, ``restart_thick``.

Stopping rule
-------------
``scale`` is the largest |Ritz value| seen, a lower bound on ‖A‖₂ (so residuals divided by
it err on the large side). The iteration stops when each of the k returned pairs has
``‖A v − λ v‖ ≤ tol · scale``, judged in three stages: a free estimate from the block
Lanczos relation (the residual of a Ritz vector lies in the span of the next block) says
when to look; the residual from the stored products ``A Q`` (which also sees rounding
inside the basis) says whether to spend a product; and a fresh product ``A @ V`` of the
very vectors returned decides. ``converged=True`` is therefore never claimed on an
estimate. Stored products drift from fresh ones by rounding over many restarts; when
the checks show it, the iteration restarts from its best b Ritz vectors with fresh
products, and gives up (``converged=False``) when even that cannot reach ``tol``.
Until the first thick restart the stored products are themselves fresh products of the
basis, so that last check costs no product. With ``atol`` the bound is
``max(atol, tol · scale)`` (see :mod:`dplowrank.linalg.topk` for why ``atol = 0.01·σ``
suffices for a noisy matrix).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._memory import empty
from .._threads import single_threaded
from ._basis import _cholqr, _extend_basis, _householder, _project_out
from ._checks import DEFAULT_TOL, _all_finite, _real_dtype, _resolve_tol, _rr_dtype
from ._pairs import _fix_phases, _product, _residuals
from ._result import EighResult

#: At most this many Rayleigh–Ritz solves in a row are skipped on a predicted slow step.
_MAX_SKIP = 4


def _ritz(Tm: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the projected matrix, largest first: θ of shape (m,) on the CPU, Y of
    shape (m, m) on ``dev``. ``Tm``: float64 / complex128 Tensor of shape (m, m) on the CPU.

    On CUDA the solve runs there (faster than the host's cores at the sizes used here, see
    ``docs/eigensolver.md``), falling back to the CPU if cuSOLVER fails. On the CPU it runs
    on one thread: a threaded ``syevd`` spin-waits at barriers and stalls by orders of
    magnitude when other processes hold the cores, while one thread costs at most ~1.5×
    when they are idle.
    """
    if dev.type == "cuda":
        try:
            theta, Y = torch.linalg.eigh(Tm.to(dev))
            if _all_finite(theta) and _all_finite(Y):
                return theta.flip(0).cpu(), Y.flip(1)
        except RuntimeError:
            pass
    with single_threaded():
        theta, Y = torch.linalg.eigh(Tm)
    return theta.flip(0), Y.flip(1)


class _Best(NamedTuple):
    """The best checked top-k Ritz pairs so far (residual from a fresh product)."""

    eigenvalues: torch.Tensor  # shape: (k,), real dtype, on A's device
    eigenvectors: torch.Tensor  # shape: (d, k), A's dtype and device
    residual: float  # max_j ‖A v_j − λ_j v_j‖ / scale
    scale: float
    tol: float
    next_eigenvalue: float | None
    next_residual: float | None


class _KrylovState:
    """The basis of a thick-restarted block Lanczos iteration and what it knows.

    Holds the orthonormal basis ``Q`` (first ``m`` columns of a (d, max_basis) buffer), the
    stored products ``A Q``, the projected matrix ``T = Qᴴ A Q`` (float64 / complex128, on
    the CPU), the candidates for the next block, the latest Ritz pairs, the counters, the
    tolerance in force and the bookkeeping of the stopping rule (module docstring).
    """

    def __init__(
        self,
        A: torch.Tensor,
        k: int,
        *,
        block: int,
        gen: torch.Generator,
        tol: float | None,
        atol: float | None,
        max_basis: int,
        keep: int,
        trace: list | None,
    ) -> None:
        d = A.shape[0]
        self.A, self.k, self.block, self.gen = A, k, block, gen
        self.tol, self.atol, self.max_basis, self.keep, self.trace = tol, atol, max_basis, keep, trace
        self.dtype, self.dev = A.dtype, A.device
        self.rr = _rr_dtype(A.dtype)
        self.real = _real_dtype(A.dtype)
        self.eps = torch.finfo(self.real).eps
        self.Qbuf = empty((d, max_basis), dtype=A.dtype, device=A.device)
        self.AQbuf = empty((d, max_basis), dtype=A.dtype, device=A.device)
        self.T = torch.zeros((max_basis, max_basis), dtype=self.rr)  # Qᴴ A Q, on the CPU
        self.m = 0  # basis size
        self.w = 0  # width of the newest block
        self.iters = 0
        self.matvecs = 0
        self.scale = 0.0  # largest |Ritz value| so far: a lower bound on ‖A‖₂
        self.fro = 0.0  # estimate of ‖A‖_F from the first (random, orthonormal) block
        self.tol_now = tol if tol is not None else DEFAULT_TOL[self.real]  # resolved at each solve
        # A residual computed in A's dtype may be off by the rounding of A @ V, about
        # eps·‖A‖_F (see _default_tol); claims of convergence keep that much in reserve.
        self.goal = self.tol_now
        self.target = math.inf  # the cheap estimate must reach min(target, goal) before a closer look
        self.best: _Best | None = None
        self.skip_left = 0  # Rayleigh–Ritz solves still to skip
        self.history: tuple[int, float] | None = None  # (iteration, estimate) of the last solve
        self.est_hist: list[float] = []  # estimates since the last closer look
        # Stored products A Q drift from fresh ones by rounding at every thick restart; when
        # a check exposes it, the iteration restarts from its best Ritz vectors with fresh ones.
        self.refresh = False
        self.fresh_basis = False  # restarted with fresh products since the last closer look
        self.refreshes_failed = 0
        # Until the first thick restart every column of A Q is a product of A with the very
        # column of Q it belongs to, so (A Q) y is A (Q y) up to the rounding a fresh
        # product would have too: the residual from the stored products is then as good as
        # a fresh one.
        self.exact_products = True
        self.Tm = self.T[:0, :0]  # shape: (m, m), the symmetrised projected matrix
        self.W = self.Qbuf[:, :0]  # shape: (d, w), candidates for the next block
        self.theta: torch.Tensor | None = None  # shape: (m,), Ritz values of this step
        self.Y: torch.Tensor | None = None  # shape: (m, m), their vectors in the basis

    @property
    def Q(self) -> torch.Tensor:
        """The orthonormal basis, a view of shape (d, m)."""
        return self.Qbuf[:, : self.m]

    def rel(self, x: float) -> float:
        """An absolute residual ``x`` relative to ``scale`` (0 while ``scale`` is 0)."""
        return x / self.scale if self.scale > 0 else 0.0

    # ---- stages

    def expand(self, new: torch.Tensor) -> None:
        """Append the orthonormal block ``new`` (shape (d, w)) and its product with A.

        The only product with A of a step. Updates ``T`` with the new block column and
        forms the candidates for the next block: A·(new block) minus its projection on the
        basis (CGS2, the first pass reusing that block column).
        """
        m, w = self.m, new.shape[1]
        self.Qbuf[:, m : m + w] = new
        AQ_new = _product(self.A, new)  # shape: (d, w)
        self.AQbuf[:, m : m + w] = AQ_new
        self.matvecs += w
        self.iters += 1
        if self.iters == 1:
            # E‖A Q₀‖_F² = (w/d)‖A‖_F² for a Haar-random orthonormal Q₀ of width w.
            self.fro = float(torch.linalg.matrix_norm(AQ_new)) * math.sqrt(self.A.shape[0] / w)
        m += w
        self.m, self.w = m, w
        Q = self.Q
        C = Q.mH @ AQ_new  # shape: (m, w), the new block column of T
        Cc = C.to("cpu", self.rr)
        T = self.T
        T[:m, m - w : m] = Cc
        T[m - w : m, : m - w] = Cc[: m - w].mH
        Tm = T[:m, :m]
        Tm = 0.5 * (Tm + Tm.mH)
        T[:m, :m] = Tm
        self.Tm = Tm
        self.W = _project_out(AQ_new - Q @ C, Q)
        self.theta = self.Y = None

    def solve_due(self, last_chance: bool) -> bool:
        """Whether this step solves the projected problem (else one skipped solve is spent).

        A step that may end the iteration or precedes a thick restart always solves.
        """
        restart_due = self.m + self.block > self.max_basis
        if self.skip_left > 0 and not (last_chance or restart_due):
            self.skip_left -= 1
            return False
        return True

    def rayleigh_ritz(self) -> float:
        """Solve the projected problem; update ``scale`` and the tolerance in force.

        Returns the nearly free residual estimate of the top-k Ritz pairs, relative to
        ``scale``: by the block Lanczos relation the residual of the Ritz vector Q y is
        (A Q_new − Q C) y_new, the candidates times the newest block's rows of y.
        """
        m, w, k = self.m, self.w, self.k
        # Rayleigh–Ritz in float64 / complex128, largest Ritz values first
        self.theta, self.Y = _ritz(self.Tm, self.dev)
        self.scale = max(self.scale, float(self.theta.abs().max()))
        fro_ratio = self.fro / self.scale if self.scale > 0 else 1.0
        self.tol_now = _resolve_tol(self.real, fro_ratio, self.scale, self.tol, self.atol)
        self.goal = self.tol_now - self.eps * fro_ratio
        est = torch.linalg.vector_norm(self.W @ self.Y[m - w : m, :k].to(self.dev, self.dtype), dim=0)
        est_rel = self.rel(float(est.max()))
        if self.trace is not None:
            self.trace.append((self.iters, m, est_rel, self.scale))
        return est_rel

    def look_due(self, est_rel: float, last_chance: bool) -> bool:
        """Whether the estimate earns a closer look (:meth:`check`).

        It does when it reaches ``min(target, goal)``, on the last chance, or when it has
        stalled (not halved over three solves): that may be rounding drift that only fresh
        products can cure.
        """
        self.est_hist.append(est_rel)
        stalled = len(self.est_hist) >= 4 and est_rel > 0.5 * self.est_hist[-4]
        return est_rel <= min(self.target, self.goal) or last_chance or stalled

    def check(self, est_rel: float, last_chance: bool) -> bool | None:
        """The closer look: ``True`` converged, ``False`` give up, ``None`` go on.

        While the stored products are fresh ones, one look from them decides. Otherwise
        the residual from the stored products A Q (which, unlike the estimate, sees
        rounding inside span(Q)) says whether to spend the decisive fresh product. A
        disagreement between the stages is rounding drift and schedules
        :meth:`restart_fresh`; drift right after fresh products means ``tol`` is below what
        this dtype can reach here, and the second time the iteration gives up.
        """
        self.est_hist.clear()
        if self.exact_products:
            est2 = self.verify()
            if est2 <= self.goal:
                return True
            drift = est2 > 4.0 * est_rel  # rounding, not the Krylov space
        else:
            est2 = self.stored_residual()
            if est2 <= self.goal or last_chance:
                if self.verify() <= self.goal:
                    return True
                drift = est2 <= self.goal  # stored and fresh products disagree
            else:
                drift = est2 > 4.0 * est_rel  # rounding, not the Krylov space
        if drift:
            self.refreshes_failed += int(self.fresh_basis)
            self.refresh = True
        self.fresh_basis = False
        if last_chance or self.refreshes_failed >= 2:
            if self.best is None:
                self.verify()
            return False
        if self.refresh:
            self.target = self.goal
        elif est_rel <= self.target:
            # The estimate was optimistic: ask more of it before looking again.
            self.target = est_rel * 0.25
        return None

    def stored_residual(self) -> float:
        """Relative residual of the top-k Ritz pairs from the stored products A Q."""
        assert self.theta is not None and self.Y is not None
        k, Q = self.k, self.Q
        Yk = self.Y[:, :k].to(self.dev, self.dtype)  # shape: (m, k)
        R = self.AQbuf[:, : self.m] @ Yk
        R -= (Q @ Yk) * self.theta[:k].to(self.dev, self.dtype)
        return self.rel(float(torch.linalg.vector_norm(R, dim=0).max()))

    def verify(self) -> float:
        """Form the top-k Ritz pairs, check them with a fresh product; keep the best.

        Returns their relative residual. While ``exact_products`` holds, the stored
        products A Q stand in for the fresh product (they are fresh products of the basis)
        and no product is spent. One more pair is formed when there is one: λ_{k+1} for the
        callers' gap checks.
        """
        assert self.theta is not None and self.Y is not None
        k, theta, dev, dtype = self.k, self.theta, self.dev, self.dtype
        kk = min(k + 1, theta.shape[0])
        lam_all = theta[:kk].to(dev, self.real)
        Ykk = self.Y[:, :kk].to(dev, dtype)  # shape: (m, kk)
        V_all = self.Q @ Ykk
        if self.exact_products:
            R = self.AQbuf[:, : self.m] @ Ykk
            R -= V_all * lam_all.to(dtype)
            res_all = torch.linalg.vector_norm(R, dim=0).to("cpu", torch.float64)
            V_all = _fix_phases(V_all)
        else:
            V_all = _fix_phases(V_all)
            res_all = _residuals(self.A, V_all, lam_all)
            self.matvecs += kk
        res_rel = self.rel(float(res_all[:k].max()))
        if self.best is None or res_rel < self.best.residual:
            nxt = (float(theta[k]), float(res_all[k])) if kk > k else (None, None)
            self.best = _Best(lam_all[:k], V_all[:, :k], res_rel, self.scale, self.tol_now, *nxt)
        return res_rel

    def schedule(self, est_rel: float) -> None:
        """Skip the next few solves when the observed convergence rate says they cannot
        reach the target (saves the O(m³) eigh on slowly converging problems)."""
        aim = min(self.target, self.goal)
        self.skip_left = 0
        if self.history is not None and est_rel > aim > 0:
            it0, e0 = self.history
            if 0 < est_rel < e0:
                rate = (est_rel / e0) ** (1.0 / (self.iters - it0))
                need = math.log(aim / est_rel) / math.log(rate)
                self.skip_left = int(min(max(math.floor(need) - 1, 0), _MAX_SKIP))
            else:
                self.skip_left = 1
        self.history = (self.iters, est_rel)

    def next_block(self) -> torch.Tensor:
        """The candidates orthonormalised (dependent ones replaced by random vectors)."""
        return _extend_basis(self.W, self.Q, self.gen, ref=self.scale if self.scale > 0 else 1.0)

    def finish_invariant(self) -> bool:
        """Nothing left to add (in exact arithmetic only once m = d): the basis is
        invariant. Checks the Ritz pairs (solving first if this step skipped) and returns
        whether they converged."""
        if self.theta is None or self.Y is None:
            self.theta, self.Y = _ritz(self.Tm, self.dev)
            self.scale = max(self.scale, float(self.theta.abs().max()))
        return self.verify() <= self.goal

    def restart_fresh(self) -> torch.Tensor:
        """Explicit restart from the best b Ritz vectors, with fresh products.

        Empties the basis and returns the orthonormalised block to expand with.
        """
        assert self.Y is not None  # a refresh is only scheduled by check(), after a solve
        Vb = self.Q @ self.Y[:, : min(self.block, self.m)].to(self.dev, self.dtype)
        out = _cholqr(Vb)
        new = out[0] if out is not None else _householder(Vb)[0]
        self.T.zero_()
        self.m = 0
        self.refresh = False
        self.fresh_basis = True
        self.exact_products = True
        self.skip_left = 0
        self.history = None
        self.est_hist.clear()
        return new

    def restart_thick(self, width: int) -> None:
        """Thick restart: compress the basis to its best ``keep`` Ritz vectors, leaving
        room for a pending block of ``width`` columns (orthogonal to the old basis, hence
        to what is kept). The stored products become combinations of products: no longer
        fresh."""
        assert self.theta is not None and self.Y is not None  # solve_due forced a solve
        m = self.m
        kp = min(self.keep, m, self.max_basis - width)
        Yk = self.Y[:, :kp].to(self.dev, self.dtype)  # shape: (m, kp)
        Vk = self.Q @ Yk
        AVk = self.AQbuf[:, :m] @ Yk
        self.T.zero_()
        self.T[:kp, :kp] = torch.diag(self.theta[:kp].to(self.rr))
        self.Qbuf[:, :kp] = Vk
        self.AQbuf[:, :kp] = AVk
        self.m = kp
        self.exact_products = False

    def result(self, converged: bool) -> EighResult:
        """The best checked pairs as an :class:`EighResult`."""
        best = self.best
        if best is None:  # pragma: no cover - needs k > d, excluded by validation
            raise RuntimeError("block Lanczos produced fewer than k Ritz pairs")
        return EighResult(
            eigenvalues=best.eigenvalues,
            eigenvectors=best.eigenvectors,
            solver="lanczos",
            iterations=self.iters,
            matvecs=self.matvecs,
            converged=converged,
            residual=best.residual,
            tol=best.tol,
            scale=best.scale,
            next_eigenvalue=best.next_eigenvalue,
            next_residual=best.next_residual,
            atol=self.atol,
        )


def _block_lanczos(
    A: torch.Tensor,
    k: int,
    *,
    block: int,
    gen: torch.Generator,
    tol: float | None,
    max_iters: int,
    max_basis: int,
    keep: int,
    atol: float | None = None,
    trace: list | None = None,
    start: torch.Tensor | None = None,
) -> EighResult:
    """Thick-restarted block Lanczos with full reorthogonalisation (see module docstring).

    Parameters
    ----------
    A : Tensor of shape (d, d)
    k : int
        Number of Ritz pairs returned.
    block : int
        Block width b, ``k <= b <= d``.
    gen : torch.Generator
        On A's device.
    tol : float or None
        As in :func:`~dplowrank.linalg.topk_eigh`; ``None`` for the dtype's default (see
        :func:`._checks._default_tol`).
    max_iters : int
        As in :func:`~dplowrank.linalg.topk_eigh`.
    max_basis : int
        Basis capacity: ``keep + b <= max_basis <= d``, or ``max_basis == d``.
    keep : int
        Ritz vectors kept at a thick restart, ``k <= keep``.
    atol : float or None
        Absolute residual target, as in :func:`~dplowrank.linalg.topk_eigh`.
    trace : list or None
        If given, receives ``(iteration, basis size, estimated residual, scale)`` for each
        step that solved the projected problem.
    start : Tensor of shape (d, block) or None
        The first block (e.g. from the warm start); ``None`` for a random one.

    Returns
    -------
    EighResult
        The top-k Ritz pairs of the final basis (the best checked ones if not converged).
    """
    d = A.shape[0]
    kry = _KrylovState(
        A, k, block=block, gen=gen, tol=tol, atol=atol, max_basis=max_basis, keep=keep, trace=trace
    )
    X = torch.randn((d, block), generator=gen, dtype=A.dtype, device=A.device) if start is None else start
    new = _extend_basis(X, kry.Q, gen, ref=float(torch.linalg.vector_norm(X, dim=0).max()))
    while True:
        kry.expand(new)
        last_chance = kry.m >= d or kry.iters >= max_iters
        if kry.solve_due(last_chance):
            est_rel = kry.rayleigh_ritz()
            if kry.look_due(est_rel, last_chance):
                done = kry.check(est_rel, last_chance)
                if done is not None:
                    return kry.result(converged=done)
            kry.schedule(est_rel)
        if kry.refresh:
            new = kry.restart_fresh()
            continue
        new = kry.next_block()
        if new.shape[1] == 0:
            return kry.result(converged=kry.finish_invariant())
        if kry.m + new.shape[1] > max_basis:
            kry.restart_thick(new.shape[1])
