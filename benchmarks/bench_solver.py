"""Benchmark: top-k eigenpairs of a noisy spiked matrix, dplowrank vs. the usual tools.

For d in {1024, 2048, 4096}, k = 32, float32 and float64, times

* ``dplowrank.linalg.topk_eigh`` (solver "lanczos" and "auto"),
* ``scipy.linalg.eigh(A, subset_by_index=[d-k, d-1])`` (LAPACK ?syevr, top k only),
* ``numpy.linalg.eigh`` (all pairs),
* ``torch.linalg.eigh`` (all pairs),
* ``torch.lobpcg(A, k, largest=True)``,

and reports the eigenvector error of each against float64 ``torch.linalg.eigh`` of the same
matrix: the largest per-column distance ‖v̂ − v‖ after sign alignment, and the subspace
distance ‖V̂V̂ᵀ − VVᵀ‖₂. The matrix is M = U diag(s) Uᵀ + σ(G + Gᵀ)/2 with U random
orthonormal d×k, s = linspace(2, 1, k)·L, L = 6·√(2d) (six to twelve times the noise
edge √(2d)·σ) and σ = 1.

Usage::

    python benchmarks/bench_solver.py            # full table (~2 min on 2 cores)
    python benchmarks/bench_solver.py --quick    # d = 1024 and 2048, no numpy
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _machine import best_time, machine

from dplowrank.linalg import topk_eigh


def spiked(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """The noisy spiked test matrix, float64, exactly symmetric. Shape (d, d)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    s = torch.linspace(2.0, 1.0, k, dtype=torch.float64) * 6.0 * math.sqrt(2 * d)
    noise = torch.randn(d, d, generator=g, dtype=torch.float64)
    return (u * s) @ u.T + (noise + noise.T) / 2


def vec_errors(V: torch.Tensor, Vref: torch.Tensor) -> tuple[float, float]:
    """(max_j ‖±v_j − vref_j‖, ‖V Vᵀ − Vref Vrefᵀ‖₂). Shapes (d, k), (d, k)."""
    V = V.to(torch.float64)
    sign = torch.sign((V * Vref).sum(0))
    sign[sign == 0] = 1.0
    col = float((V * sign - Vref).norm(dim=0).max())
    # ‖P − P_ref‖₂ = sin of the largest principal angle = ‖(I − Vref Vrefᵀ) V‖₂ for
    # orthonormal V (computed this way, not as √(1 − cos²), to keep small angles exact).
    sub = float(torch.linalg.matrix_norm(V - Vref @ (Vref.T @ V), ord=2))
    return col, sub


def fmt_t(t: float | None) -> str:
    return "-" if t is None else f"{t:8.3f}"


def fmt_e(e: float | None) -> str:
    return "-" if e is None else f"{e:8.1e}"


def run(dims: list[int], k: int, repeats: int, with_numpy: bool, numpy_max_d: int) -> None:
    print(machine())
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
        f"{np.__version__}, scipy {scipy.__version__}; k = {k}; times in seconds "
        f"(min of {repeats} for topk_eigh, torch.linalg.eigh and lobpcg; one run for "
        "scipy and numpy)"
    )
    head = (
        f"{'d':>5} {'dtype':>7} | {'ours':>8} {'it':>3} {'matvec':>6} {'auto':>8} | "
        f"{'scipy':>8} {'numpy':>8} {'t.eigh':>8} {'lobpcg':>8} | {'sci/ours':>8} | "
        f"{'ours col':>8} {'ours sub':>8} {'scipy col':>9} {'lobpcg sub':>10}"
    )
    print(head)
    print("-" * len(head))
    for d in dims:
        A64 = spiked(d, k)
        for dtype in (torch.float32, torch.float64):
            A = A64.to(dtype)
            An = A.numpy()
            # Reference: float64 dense eigh of this very (possibly rounded) matrix.
            _w, V = torch.linalg.eigh(A.to(torch.float64))
            Vref = V[:, -k:].flip(1)

            def ours(solver: str):
                return lambda: topk_eigh(
                    A, k, solver=solver, generator=torch.Generator().manual_seed(0)
                )

            t_ours, r = best_time(ours("lanczos"), repeats)
            t_auto, _ = best_time(ours("auto"), repeats)
            col, sub = vec_errors(r.eigenvectors, Vref)

            t_sci, (_, Vs) = best_time(
                lambda: scipy.linalg.eigh(An, subset_by_index=[d - k, d - 1]), 1
            )
            sci_col, _ = vec_errors(torch.from_numpy(np.ascontiguousarray(Vs[:, ::-1])), Vref)

            t_np = None
            if with_numpy and d <= numpy_max_d:
                t_np, _ = best_time(lambda: np.linalg.eigh(An), 1)

            t_teigh, _ = best_time(lambda: torch.linalg.eigh(A), max(1, repeats // 2))

            def lobpcg() -> torch.Tensor:
                X0 = torch.randn(d, k, generator=torch.Generator().manual_seed(0), dtype=dtype)
                return torch.lobpcg(A, k=k, X=X0, largest=True, niter=200)[1]

            try:
                t_lob, Vl = best_time(lobpcg, repeats)
                lob_sub = vec_errors(Vl, Vref)[1]
            except Exception as exc:  # report, do not abort the table
                t_lob, lob_sub = None, None
                print(f"  (lobpcg failed at d={d}, {dtype}: {type(exc).__name__}: {exc})")

            name = str(dtype).replace("torch.", "")
            print(
                f"{d:>5} {name:>7} | {fmt_t(t_ours)} {r.iterations:>3} {r.matvecs:>6} "
                f"{fmt_t(t_auto)} | {fmt_t(t_sci)} {fmt_t(t_np)} {fmt_t(t_teigh)} "
                f"{fmt_t(t_lob)} | {t_sci / t_ours:8.1f} | {fmt_e(col)} {fmt_e(sub)} "
                f"{fmt_e(sci_col):>9} {fmt_e(lob_sub):>10}",
                flush=True,
            )
    print(
        "ours = topk_eigh(solver='lanczos'); auto = topk_eigh(solver='auto'); it = block "
        "steps; matvec = columns multiplied by A; col = max per-column eigenvector error "
        "after sign alignment; sub = ‖V̂V̂ᵀ − VVᵀ‖₂; both against float64 dense eigh."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="d = 1024, 2048 only; no numpy")
    p.add_argument("--no-numpy", action="store_true", help="skip numpy.linalg.eigh")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5, quick 3)")
    args = p.parse_args(argv)
    dims = [1024, 2048] if args.quick else [1024, 2048, 4096]
    repeats = args.repeats or (3 if args.quick else 5)
    with torch.no_grad():
        run(dims, 32, repeats, with_numpy=not (args.quick or args.no_numpy), numpy_max_d=4096)


if __name__ == "__main__":
    main()
