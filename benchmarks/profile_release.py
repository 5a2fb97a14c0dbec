"""Where a release's time goes on this CPU: the phases of ``release_rank_k``, one by one.

    python benchmarks/profile_release.py                  # d = 4096, k = 32, float32 and float64
    python benchmarks/profile_release.py --d 8192 --dtypes float32

(d = 32768 holds two d×d matrices here; its in-place breakdown is ``bench_scale.py --only-big``.)

For each dtype it times, on the benchmark's spiked Gram (bench_release.spiked_gram):

* ``first call``: the first ``release_rank_k`` of the process (imports done, nothing warm);
* ``check``: the finiteness/symmetry pass over the given Gram;
* ``noise``: the mechanism (a fresh noisy matrix);
* ``warm start``: the half-precision subspace steps (``warm_start=None`` decides from the
  CPU's ISA flags; ``off`` forces none), with its products;
* ``krylov``: the block Lanczos solve after it, with its iterations and products;
* one product ``A @ X`` with the solver's block width, in the dtype in the layout the solver uses
  on this CPU (``linalg/_capability.py``) and in the other one, and in bfloat16;
* ``steady call``: a second ``release_rank_k`` of the same matrix.

The table names the CPU and its ISA features (benchmarks/_machine.py).
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import machine  # benchmarks/ is on sys.path when run as a script
from bench_release import spiked_gram

import dplowrank as dl
from dplowrank.gram import check_gram
from dplowrank.linalg import NOISE_ATOL_FRACTION, topk_eigh
from dplowrank.linalg._capability import transposed_product
from dplowrank.linalg._pairs import _product


def _t(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    a = ap.parse_args()
    d, k = a.d, a.k
    sigma = dl.calibrate_noise(1.0, epsilon=1.0, delta=1e-6).noise_scale
    print(f"# {machine()}")
    print(f"# d = {d}, k = {k}, spiked Gram (spikes 3–8× the noise edge), ε = 1, δ = 1e-6, seeded generators\n")
    print("| dtype | first call s | steady call s | check s | noise s | warm start | warm s | warm products "
          "| krylov s | iterations | products (columns) | A@X ms (used / other layout / bf16), w = b |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    b = min(k + max(8, k // 4), d)
    for name in a.dtypes:
        dt = getattr(torch, name)
        M = spiked_gram(d, k, sigma, 0).to(dt)

        def release():
            return dl.release_rank_k(M, k, sensitivity=1.0, epsilon=1.0, delta=1e-6,
                                     generator=torch.Generator().manual_seed(1))

        first, _ = _t(release)
        steady, _ = _t(release)
        check, _ = _t(lambda: check_gram(M))
        noise, A = _t(lambda: dl.GaussianMechanism(sigma, 1.0).perturb(M, generator=torch.Generator().manual_seed(1)))
        atol = NOISE_ATOL_FRACTION * sigma
        solve, res = _t(lambda: topk_eigh(A, k, generator=torch.Generator().manual_seed(2), check=False, atol=atol))
        cold, res0 = _t(lambda: topk_eigh(A, k, generator=torch.Generator().manual_seed(2), check=False, atol=atol,
                                          warm_start=False))
        X = torch.randn(d, b, dtype=dt)
        used, _ = _t(lambda: [_product(A, X) for _ in range(3)])
        swapped = (lambda: A @ X) if transposed_product(A.device, A.dtype, b) else (lambda: (X.mT @ A).mT)
        other, _ = _t(lambda: [swapped() for _ in range(3)])
        Ab, Xb = A.to(torch.bfloat16), X.to(torch.bfloat16)
        prod_b, _ = _t(lambda: [Ab @ Xb for _ in range(3)])
        warm = res.warm_start or "none"
        # the warm start's share: the solve with it minus a product-count estimate of its Krylov part
        krylov_products = res.iterations
        print(f"| {name} | {first:.3f} | {steady:.3f} | {check:.3f} | {noise:.3f} | {warm} | "
              f"{max(solve - cold * (krylov_products / max(res0.iterations, 1)), 0.0):.3f} | "
              f"{res.matvecs - res.iterations * b if res.warm_start else 0} | {solve:.3f} (cold {cold:.3f}) | "
              f"{res.iterations} (cold {res0.iterations}) | {res.matvecs} (cold {res0.matvecs}) | "
              f"{used / 3 * 1e3:.1f} / {other / 3 * 1e3:.1f} / {prod_b / 3 * 1e3:.1f} |")


if __name__ == "__main__":
    main()
