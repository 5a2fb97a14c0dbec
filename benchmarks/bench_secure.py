"""Cost of secure noise: ChaCha20 + Box–Muller + Holohan–Braghin combining vs torch's generator.

Times the in-place noise of a d×d symmetric matrix (d(d+1)/2 draws, the whole mechanism)
with the default secure source and with a plain torch.Generator, in the same run.

Usage: python benchmarks/bench_secure.py [--dims 4096 16384 32768] [--dtypes float32 float64]
"""

from __future__ import annotations

import argparse
import time

import torch

import dplowrank as dl
from dplowrank._secure import SecureNormalSource


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[4096, 16384, 32768])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--max-bytes", type=float, default=9e9, help="skip sizes whose matrix exceeds this")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'d':>6} {'dtype':>8} {'torch gen s':>11} {'secure s':>9} {'ratio':>6}")
    for d in args.dims:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            if d * d * torch.finfo(dtype).bits / 8 > args.max_bytes:
                print(f"{d:>6} {name:>8} {'skipped (memory)':>28}")
                continue
            m = torch.zeros(d, d, dtype=dtype)
            mech = dl.GaussianMechanism(1.0, 1.0)
            reps = 3 if d <= 8192 else 1
            t_plain = best_of(lambda: mech.perturb_(m, generator=torch.Generator().manual_seed(0)), reps)
            t_secure = best_of(lambda: mech.perturb_(m, generator=SecureNormalSource()), reps)
            print(f"{d:>6} {name:>8} {t_plain:>11.3f} {t_secure:>9.3f} {t_secure / t_plain:>6.2f}")
            del m


if __name__ == "__main__":
    main()
