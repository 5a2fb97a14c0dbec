"""Release speed: dplowrank.release_rank_k (noise + top-k solve) vs dense eigensolvers.

For d in {1024, 2048, 4096} and k = 32, a spiked Gram (k planted directions, well above the
noise edge √(2d)·σ) is released at ε = 1, δ = 1e-6 (Δ = 1). The noisy matrix is rebuilt from
the same generator seed and handed to scipy.linalg.eigh(subset_by_index=...) and
numpy.linalg.eigh (in the release's dtype), and scipy's subset eigh in float64 (``sp64``,
numpy's default precision), timed in the same run. Eigenvector errors are against the float64 dense
solution of the same noisy matrix: `vec err` is the largest ‖v̂ᵢ − vᵢ‖ after sign alignment,
`subspace` is ‖V̂V̂ᵀ − VVᵀ‖₂.

Usage: python benchmarks/bench_release.py [--dims 1024 2048 4096] [--k 32] [--no-numpy]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg as sla
import torch

import dplowrank as dl


def spiked_gram(d: int, k: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    edge = (2 * d) ** 0.5 * sigma
    s = edge * torch.linspace(8.0, 3.0, k, dtype=torch.float64)
    m = (u * s) @ u.T
    return 0.5 * (m + m.T)


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; k={k}, eps={eps}, delta={delta}, "
          f"sigma={sigma:.4f} (sensitivity 1)")
    hdr = (f"{'d':>5} {'dtype':>7} {'release s':>9} {'noise s':>8} {'solve s':>8} {'solver':>8} "
           f"{'scipy s':>8} {'numpy s':>8} {'x scipy':>8} {'x numpy':>8} {'sp64 s':>8} {'x sp64':>7} "
           f"{'vec err':>9} {'subspace':>9}")
    print(hdr)
    print("-" * len(hdr))
    for d in args.dims:
        m = spiked_gram(d, k, sigma, seed=d)
        for dtype in (torch.float32, torch.float64):
            md = m.to(dtype)
            seed = 1000 + d
            t_rel, rel = timed(lambda: dl.release_rank_k(
                md, k, epsilon=eps, delta=delta, sensitivity=1.0, dtype=dtype,
                generator=torch.Generator().manual_seed(seed)), repeats=3)
            # the same noisy matrix, from the same seed
            noisy = md.clone()
            t_noise, _ = timed(lambda: dl.GaussianMechanism(rel.noise_scale, 1.0).perturb_(
                md.clone(), generator=torch.Generator().manual_seed(seed)), repeats=3)
            dl.GaussianMechanism(rel.noise_scale, 1.0).perturb_(noisy, generator=torch.Generator().manual_seed(seed))
            a = noisy.numpy()
            t_sp, (w_sp, v_sp) = timed(lambda: sla.eigh(a, subset_by_index=[d - k, d - 1]))
            t_np = float("nan")
            if not args.no_numpy:
                t_np, _ = timed(lambda: np.linalg.eigh(a))
            a64 = a.astype(np.float64)
            # the float64 subset solve: the reference for the errors, and what a user would
            # run on the noisy matrix in numpy's default precision (timed: sp64)
            t_sp64, (_, v_ref) = timed(lambda: sla.eigh(a64, subset_by_index=[d - k, d - 1]))
            v_ref = v_ref[:, ::-1]
            vec_err, sub_err = vector_errors(rel.eigenvectors.double().numpy(), v_ref)
            print(f"{d:>5} {str(dtype)[6:]:>7} {t_rel:>9.3f} {t_noise:>8.3f} {t_rel - t_noise:>8.3f} "
                  f"{rel.solver:>8} {t_sp:>8.3f} {t_np:>8.3f} {t_sp / t_rel:>8.1f} {t_np / t_rel:>8.1f} "
                  f"{t_sp64:>8.3f} {t_sp64 / t_rel:>7.1f} {vec_err:>9.2e} {sub_err:>9.2e}")
    print("x scipy, x numpy: same dtype as the release; sp64: scipy's subset eigh of the same noisy "
          "matrix in float64 (also the reference for vec err and subspace).")


if __name__ == "__main__":
    main()
