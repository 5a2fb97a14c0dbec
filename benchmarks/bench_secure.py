"""Cost of secure noise: keystream + Box–Muller + Holohan–Braghin combining vs torch's generator.

Times the in-place noise of a d×d symmetric matrix (``GaussianMechanism.perturb_``: d(d+1)/2
draws, the whole mechanism) with the default secure source and with a plain
``torch.Generator`` on the same device. On the CPU the secure source is AES-256-CTR with the
host's Box–Muller; on a CUDA device (``--device cuda``) it is ChaCha20 and the portable
Box–Muller computed on the device, and the table adds the host engine (keystream and
normals on the CPU, copied over), which is what a CUDA release drew before. The two are interleaved in the same run (alternating which goes first)
and each reports its minimum over the repeats, so a machine shared with other work affects
both alike; the ratio is of the minima. The CPU-time ratio (process time, all threads) is
printed too: it is steadier than wall time on a busy machine, but blind to threads that wait.

Usage: python benchmarks/bench_secure.py [--dims 4096 32768] [--dtypes float32 float64] [--repeats 5]
       [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import machine  # benchmarks/ is on sys.path when run as a script

import dplowrank as dl
from dplowrank._secure import SecureNormalSource


def _time(fn, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, device work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed pairs per size (default 7 for d <= 8192, else 2)")
    ap.add_argument("--max-bytes", type=float, default=9e9, help="skip sizes whose matrix exceeds this")
    ap.add_argument("--device", default="cpu", help="where the matrix lives (cpu or cuda)")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    print(machine())
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    extra = " host engine s | host ratio |" if gpu else ""
    print(f"| d | dtype | torch.Generator s | secure s | ratio | CPU ratio |{extra} repeats |")
    print("|---|---|---|---|---|---|" + ("---|---|" if gpu else "") + "---|")
    for d in args.dims:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            if d * d * torch.finfo(dtype).bits / 8 > args.max_bytes:
                print(f"| {d} | {name} | skipped (memory) | | | | |")
                continue
            m = torch.zeros(d, d, dtype=dtype, device=device)
            mech = dl.GaussianMechanism(1.0, 1.0)
            reps = args.repeats or (7 if d <= 8192 else 2)

            # m and mech bound now: the closures below hold this iteration's matrix, not a name
            def plain(m=m, mech=mech):
                mech.perturb_(m, generator=torch.Generator(device).manual_seed(0))

            def secure(m=m, mech=mech):
                mech.perturb_(m, generator=SecureNormalSource())

            def host(m=m, mech=mech):
                mech.perturb_(m, generator=SecureNormalSource(engine="host"))

            fns = (plain, secure, host) if gpu else (plain, secure)
            for fn in fns:  # warm-up: allocator, thread pool, cipher, kernel compilation
                fn()
            best = {fn: [float("inf")] * 2 for fn in fns}  # (wall, CPU)
            for r in range(reps):
                for fn in fns if r % 2 == 0 else fns[::-1]:
                    best[fn] = [min(a, b) for a, b in zip(best[fn], _time(fn, device))]
            (w_p, c_p), (w_s, c_s) = best[plain], best[secure]
            row = f"| {d} | {name} | {w_p:.3f} | {w_s:.3f} | {w_s / w_p:.2f} | {c_s / c_p:.2f} |"
            if gpu:
                row += f" {best[host][0]:.3f} | {best[host][0] / w_p:.2f} |"
            print(f"{row} {reps} |", flush=True)
            del m, plain, secure, host, best, fns  # free the d × d matrix before the next one


if __name__ == "__main__":
    main()
