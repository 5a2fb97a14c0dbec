"""Release speed: dplowrank.release_rank_k (noise + top-k solve) vs dense eigensolvers.

For d in {1024, 2048, 4096} and k = 32, a spiked Gram (k planted directions, well above the
noise edge √(2d)·σ) is released at ε = 1, δ = 1e-6 (Δ = 1). The noisy matrix is rebuilt from
the same generator seed and handed to scipy.linalg.eigh(subset_by_index=...) and
numpy.linalg.eigh (in the release's dtype), and scipy's subset eigh in float64 (``sp64``,
numpy's default precision), timed in the same run.

Columns: ``call`` is the whole ``release_rank_k`` call, which also validates the input (one
pass that checks the Gram is finite and symmetric: ``check``); ``noise`` is the mechanism
(a fresh noisy matrix from the Gram, as in the call) and ``solve`` the top-k solve with the
call's settings; ``release`` = noise + solve, the issue's "release time". ``x scipy`` is
scipy's same-dtype subset eigh over ``release``, ``x call`` over ``call``. Eigenvector errors
are against the float64 dense solution of the same noisy matrix: ``vec err`` is the largest
‖v̂ᵢ − vᵢ‖ after sign alignment, ``subspace`` is ‖V̂V̂ᵀ − VVᵀ‖₂. Times are the best of 3
(scipy and numpy: 1).

Usage: python benchmarks/bench_release.py [--dims 1024 2048 4096] [--k 32] [--no-numpy]
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.linalg as sla
import torch
from _machine import best_time, machine  # benchmarks/ is on sys.path when run as a script

import dplowrank as dl
from dplowrank.gram import check_gram
from dplowrank.linalg import NOISE_ATOL_FRACTION


def spiked_gram(d: int, k: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    edge = (2 * d) ** 0.5 * sigma
    s = edge * torch.linspace(8.0, 3.0, k, dtype=torch.float64)
    m = (u * s) @ u.T
    return 0.5 * (m + m.T)


def timed(fn, repeats: int = 1):
    """Minimum wall time over ``repeats`` calls, no warm-up (the first call is part of the figure)."""
    return best_time(fn, repeats, warm_up=False)


def vector_errors(v_hat: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    signs = np.sign(np.sum(v_hat * v, axis=0))
    signs[signs == 0] = 1.0
    per_vec = np.linalg.norm(v_hat * signs - v, axis=0).max()
    sub = np.linalg.norm(v_hat @ v_hat.T - v @ v.T, 2)
    return float(per_vec), float(sub)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--no-numpy", action="store_true", help="skip numpy.linalg.eigh (slowest)")
    args = ap.parse_args()
    k, eps, delta = args.k, 1.0, 1e-6
    sigma = dl.analytic_gaussian_sigma(eps, delta)
    print(machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; k={k}, eps={eps}, delta={delta}, "
          f"sigma={sigma:.4f} (sensitivity 1)")
    hdr = (f"{'d':>5} {'dtype':>7} {'call s':>7} {'check s':>7} {'noise s':>7} {'solve s':>7} "
           f"{'release':>7} {'scipy s':>7} {'x scipy':>7} {'x call':>6} {'numpy s':>7} {'x numpy':>7} "
           f"{'sp64 s':>7} {'x sp64':>6} {'vec err':>8} {'subspace':>8}")
    print(hdr)
    print("-" * len(hdr))
    for d in args.dims:
        m = spiked_gram(d, k, sigma, seed=d)
        for dtype in (torch.float32, torch.float64):
            md = m.to(dtype)
            seed = 1000 + d
            t_call, rel = timed(lambda: dl.release_rank_k(
                md, k, epsilon=eps, delta=delta, sensitivity=1.0, dtype=dtype,
                generator=torch.Generator().manual_seed(seed)), repeats=3)
            mech = dl.GaussianMechanism(rel.noise_scale, 1.0)
            t_check, _ = timed(lambda: check_gram(md), repeats=3)
            # the same noisy matrix, from the same seed, built as the call builds it
            t_noise, noisy = timed(lambda: mech.perturb(
                md, generator=torch.Generator().manual_seed(seed)), repeats=3)
            t_solve, res = timed(lambda: dl.topk_eigh(
                noisy, k, generator=torch.Generator().manual_seed(seed), check=False,
                atol=NOISE_ATOL_FRACTION * rel.noise_scale), repeats=3)
            t_release = t_noise + t_solve
            a = noisy.numpy()
            t_sp, _ = timed(lambda: sla.eigh(a, subset_by_index=[d - k, d - 1]))
            t_np = float("nan")
            if not args.no_numpy:
                t_np, _ = timed(lambda: np.linalg.eigh(a))
            a64 = a.astype(np.float64)
            # the float64 subset solve: the reference for the errors, and what a user would
            # run on the noisy matrix in numpy's default precision (timed: sp64)
            t_sp64, (_, v_ref) = timed(lambda: sla.eigh(a64, subset_by_index=[d - k, d - 1]))
            v_ref = v_ref[:, ::-1]
            vec_err, sub_err = vector_errors(rel.eigenvectors.double().numpy(), v_ref)
            vec_err2, _ = vector_errors(res.eigenvectors.double().numpy(), v_ref)
            print(f"{d:>5} {str(dtype)[6:]:>7} {t_call:>7.3f} {t_check:>7.3f} {t_noise:>7.3f} "
                  f"{t_solve:>7.3f} {t_release:>7.3f} {t_sp:>7.3f} {t_sp / t_release:>7.1f} "
                  f"{t_sp / t_call:>6.1f} {t_np:>7.3f} {t_np / t_release:>7.1f} {t_sp64:>7.3f} "
                  f"{t_sp64 / t_release:>6.1f} {max(vec_err, vec_err2):>8.1e} {sub_err:>8.1e}")
    print("release = noise + solve; x scipy, x numpy: same dtype, over release; x call: scipy over the "
          "whole call (check included); sp64: scipy's subset eigh of the same noisy matrix in float64 "
          "(also the reference for vec err and subspace).")


if __name__ == "__main__":
    main()
