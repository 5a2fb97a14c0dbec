"""Cost of secure noise: AES-256-CTR + Box–Muller + Holohan–Braghin combining vs torch's generator.

Times the in-place noise of a d×d symmetric matrix (``GaussianMechanism.perturb_``: d(d+1)/2
draws, the whole mechanism) with the default secure source and with a plain
``torch.Generator``. The two are interleaved in the same run (alternating which goes first)
and each reports its minimum over the repeats, so a machine shared with other work affects
both alike; the ratio is of the minima. The CPU-time ratio (process time, all threads) is
printed too: it is steadier than wall time on a busy machine, but blind to threads that wait.

Usage: python benchmarks/bench_secure.py [--dims 4096 32768] [--dtypes float32 float64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import machine  # benchmarks/ is on sys.path when run as a script

import dplowrank as dl
from dplowrank._secure import SecureNormalSource


def _time(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed pairs per size (default 7 for d <= 8192, else 2)")
    ap.add_argument("--max-bytes", type=float, default=9e9, help="skip sizes whose matrix exceeds this")
    args = ap.parse_args()
    print(machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| d | dtype | torch.Generator s | secure s | ratio | CPU ratio | repeats |")
    print("|---|---|---|---|---|---|---|")
    for d in args.dims:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            if d * d * torch.finfo(dtype).bits / 8 > args.max_bytes:
                print(f"| {d} | {name} | skipped (memory) | | | | |")
                continue
            m = torch.zeros(d, d, dtype=dtype)
            mech = dl.GaussianMechanism(1.0, 1.0)
            reps = args.repeats or (7 if d <= 8192 else 2)

            # m and mech bound now: the closures below hold this iteration's matrix, not a name
            def plain(m=m, mech=mech):
                mech.perturb_(m, generator=torch.Generator().manual_seed(0))

            def secure(m=m, mech=mech):
                mech.perturb_(m, generator=SecureNormalSource())

            plain(), secure()  # warm-up: allocator, thread pool, cipher
            best = {plain: [float("inf")] * 2, secure: [float("inf")] * 2}  # (wall, CPU)
            for r in range(reps):
                for fn in (plain, secure) if r % 2 == 0 else (secure, plain):
                    best[fn] = [min(a, b) for a, b in zip(best[fn], _time(fn))]
            (w_p, c_p), (w_s, c_s) = best[plain], best[secure]
            print(f"| {d} | {name} | {w_p:.3f} | {w_s:.3f} | {w_s / w_p:.2f} | {c_s / c_p:.2f} | {reps} |", flush=True)
            del m, plain, secure, best  # free the d × d matrix before the next one is allocated


if __name__ == "__main__":
    main()
