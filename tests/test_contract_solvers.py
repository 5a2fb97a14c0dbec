"""Every solver behind :func:`dplowrank.linalg.topk_eigh` against the solver contract
(``tests/contracts/solver.py``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from dplowrank.linalg import topk_eigh

from .conftest import requires_cuda
from .contracts import SolverContract


class TestDenseSolver(SolverContract):
    # backward stable: the residual is rounding error (measured ≤ 1.2e-6 in float32, 2.2e-15 in float64)
    residual_tol: ClassVar[dict[torch.dtype, float]] = {torch.float32: 5e-6, torch.float64: 1e-13}

    def solve(self, A, k, generator):
        r = topk_eigh(A, k, solver="dense", generator=generator)
        assert r.solver == "dense"
        return r


class TestLanczosSolver(SolverContract):
    def solve(self, A, k, generator):
        r = topk_eigh(A, k, solver="lanczos", generator=generator)
        assert r.solver == "lanczos"
        return r


class TestAutoSolver(SolverContract):
    def solve(self, A, k, generator):
        return topk_eigh(A, k, solver="auto", generator=generator)

    def test_auto_runs_lanczos_on_a_large_matrix_and_keeps_the_contract(self, dtype):
        # d = 520 > 512 with a block k + 8 ≤ d/8: "auto" runs the Krylov solver (dense below)
        A, r = self._case(520, 3, dtype)
        assert r.solver == "lanczos"
        self._check_pairs(A, r, 3)
        assert self.solve(A[:64, :64].clone(), 3, self.make_generator(0)).solver == "dense"


@requires_cuda
class TestLanczosSolverCuda(TestLanczosSolver):
    device = torch.device("cuda")
