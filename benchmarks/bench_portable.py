"""Release speed on this CPU against scipy and the strongest iterative eigensolvers.

For d = 4096 (``--d``), k = 32 and three spectra of the private Gram M (edge = √(2d)·σ, the
scale of the noise's spectrum):

* ``spiked``: k directions at edge·linspace(8, 3, k), nothing else (bench_release.py);
* ``decay``: the same top k, then a decaying tail λ_{k+j} = 2.5·edge·e^{−j/50} on the other
  d − k directions (~45 of them above the noise);
* ``cluster``: a top k whose own gaps are small, edge·linspace(4.0, 3.8, k) (neighbours
  0.6·σ apart at d = 4096: the single eigenvectors are noise, the subspace is not);

in float32 and float64, ε = 1, δ = 1e-6, Δ = 1, it times

* ``release``: ``release_rank_k``'s noise plus its solve (best of 3, seeded), with the
  solve's iterations and products, and the half-precision warm start that ran;
* ``scipy``: ``scipy.linalg.eigh(subset_by_index=top k)`` of the same noisy matrix in the same
  dtype, and ``x scipy`` = scipy / release;
* the iterative solvers on the same noisy matrix, each at *equal accuracy*: its accuracy knob
  is tightened step by step (PRIMME and ``torch.lobpcg``: the residual tolerance relative to
  ‖A‖, from 1e-2 down by 10× per step; ``randomized_svd``: ``n_iter`` 2, 4, 8, 16, 32) until its
  subspace error is at most the release's (or 1e-4 when that is smaller), and the first time
  that reaches it is reported (``-`` when no step does).

Errors are against LAPACK's float64 solution of the same noisy matrix: ``vec`` is the
largest ‖±v̂ᵢ − vᵢ‖ (meaningful where the top k are well separated: ``spiked``), ``sub`` is
‖V̂V̂ᵀ − VVᵀ‖₂, the sine of the largest principal angle.

A last table gives the first ``release_rank_k`` of a fresh process against its second
(imports done; float32 and float64, spiked; five subprocesses each, the median and range).

PRIMME (``primme.eigsh``, blocks of 16 and of 32 columns, the faster reported) is optional; without it its column reads ``n/a``. Its wheel builds
against a system BLAS/LAPACK; where MKL's runtime library was linked, this script asks it for
the GNU threading layer (``MKL_THREADING_LAYER=GNU``), the one torch's OpenMP uses.

Usage: python benchmarks/bench_portable.py [--d 4096] [--k 32] [--spectra spiked decay cluster]
"""

from __future__ import annotations

import os

os.environ.setdefault("MKL_THREADING_LAYER", "GNU")

import argparse
import json
import math
import subprocess
import sys
import time

import numpy as np
import scipy.linalg as sla
import torch
from _machine import best_time, machine  # benchmarks/ is on sys.path when run as a script

import dplowrank as dl
from dplowrank.linalg import NOISE_ATOL_FRACTION
from dplowrank.linalg._capability import cpu_info, transposed_product
from dplowrank.linalg._warm_start import _half_capability

EPS, DELTA = 1.0, 1e-6


def gram(kind: str, d: int, k: int, sigma: float, seed: int) -> torch.Tensor:
    """The private Gram M of shape (d, d), float64, exactly symmetric (see the docstring)."""
    g = torch.Generator().manual_seed(seed)
    edge = math.sqrt(2 * d) * sigma
    if kind == "cluster":
        top = torch.linspace(4.0, 3.8, k, dtype=torch.float64)
    else:
        top = torch.linspace(8.0, 3.0, k, dtype=torch.float64)
    if kind == "decay":
        tail = 2.5 * torch.exp(-torch.arange(d - k, dtype=torch.float64) / 50.0)
        s = edge * torch.cat([top, tail])
        u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    else:
        s = edge * top
        u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    m = (u * s) @ u.T
    return 0.5 * (m + m.T)


def errors(v_hat: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(largest per-column distance after sign alignment, ‖V̂V̂ᵀ − VVᵀ‖₂); shapes (d, k)."""
    v_hat = v_hat.astype(np.float64)
    signs = np.sign(np.sum(v_hat * v, axis=0))
    signs[signs == 0] = 1.0
    vec = float(np.linalg.norm(v_hat * signs - v, axis=0).max())
    # ‖P̂ − P‖₂ = sin θ_max = ‖(I − VVᵀ)V̂‖₂ for equal ranks (orthonormal V̂), formed without
    # the cancellation of √(1 − cos²), which floors at ~3e-4 for a float32 V̂
    sub = float(np.linalg.norm(v_hat - v @ (v.T @ v_hat), 2))
    return vec, sub


def once(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peer_primme(a: np.ndarray, k: int, tol: float, block: int):
    import primme

    # Blocks of 16 (32) columns: the default block of one vector runs one memory-bound
    # matrix-vector product at a time (2.9 s against 0.6 s at d = 4096, tol 1e-5, here).
    _, v = primme.eigsh(a, k, which="LA", tol=tol, maxiter=100000, maxBlockSize=block,
                        method="PRIMME_DEFAULT_MIN_MATVECS")
    return v


def peer_lobpcg(a: torch.Tensor, k: int, tol: float, x0: torch.Tensor):
    _, v = torch.lobpcg(a, k=k, X=x0, largest=True, niter=2000, tol=tol)
    return v.numpy()


def peer_rsvd(a: np.ndarray, k: int, n_iter: int):
    from sklearn.utils.extmath import randomized_svd

    u, _, _ = randomized_svd(a, k, n_iter=n_iter, random_state=0)
    return u


def sweep(name: str, run, knobs, v_ref: np.ndarray, target: float):
    """The first knob whose subspace error is at most ``target``: (time, sub error, knob)."""
    last = None
    for knob in knobs:
        try:
            t, v = once(lambda knob=knob: run(knob))
        except Exception as exc:  # a peer that fails at some setting: report and go on
            print(f"  ({name} failed at {knob}: {type(exc).__name__}: {str(exc)[:80]})", flush=True)
            continue
        if v.shape[1] < v_ref.shape[1]:
            print(f"  ({name} returned {v.shape[1]} vectors at {knob})", flush=True)
            continue
        sub = errors(v[:, :v_ref.shape[1]], v_ref)[1]
        last = (t, sub, knob)
        if sub <= target:
            return last
    return None if last is None else (math.nan, last[1], last[2])


def first_call(dtype: str, d: int, k: int) -> tuple[float, float]:
    """(first, second) release time in a fresh process, imports and matrix built first."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from bench_portable import gram
import dplowrank as dl
sigma = dl.analytic_gaussian_sigma({EPS}, {DELTA})
m = gram("spiked", {d}, {k}, sigma, {d}).to(torch.{dtype})
out = []
for i in range(2):
    t0 = time.perf_counter()
    dl.release_rank_k(m, {k}, epsilon={EPS}, delta={DELTA}, sensitivity=1.0,
                      generator=torch.Generator().manual_seed(i))
    out.append(time.perf_counter() - t0)
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = json.loads(res.stdout.strip().splitlines()[-1])
    return first, second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--spectra", nargs="+", default=["spiked", "decay", "cluster"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--no-first-call", action="store_true")
    args = ap.parse_args()
    d, k = args.d, args.k
    sigma = dl.analytic_gaussian_sigma(EPS, DELTA)
    atol = NOISE_ATOL_FRACTION * sigma
    try:
        import primme  # noqa: F401

        have_primme = True
    except ImportError:
        have_primme = False
    vendor, _ = cpu_info()
    half, fast = _half_capability(torch.device("cpu"))
    print(f"# {machine()}")
    print(f"# vendor {vendor or 'unknown'}; warm start {str(half)[6:] if fast else 'off'} by default; products "
          f"(Xᵀ A)ᵀ for float32: {transposed_product(torch.device('cpu'), torch.float32, k + 8)}, "
          f"float64: {transposed_product(torch.device('cpu'), torch.float64, k + 8)}")
    print(f"# d = {d}, k = {k}, ε = {EPS}, δ = {DELTA}, σ = {sigma:.4f}; times in s; peers at equal subspace "
          "accuracy (see the docstring)\n")
    print("| spectrum | dtype | release | noise | solve | iters | products | warm | vec err | sub err "
          "| scipy | × scipy | PRIMME (sub) | lobpcg (sub) | rsvd (sub) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.spectra:
        m = gram(kind, d, k, sigma, seed=d)
        for name in args.dtypes:
            dt = getattr(torch, name)
            md = m.to(dt)
            seed = 1000 + d
            mech = dl.GaussianMechanism(sigma, 1.0)
            t_noise, noisy = best_time(lambda: mech.perturb(md, generator=torch.Generator().manual_seed(seed)), 3,
                                       warm_up=False)
            t_solve, res = best_time(lambda: dl.topk_eigh(noisy, k, generator=torch.Generator().manual_seed(seed),
                                                          check=False, atol=atol), 3, warm_up=False)
            t_rel = t_noise + t_solve
            a = noisy.numpy()
            t_sp, _ = once(lambda: sla.eigh(a, subset_by_index=[d - k, d - 1]))
            _, (_, v_ref) = once(lambda: sla.eigh(a.astype(np.float64), subset_by_index=[d - k, d - 1]))
            v_ref = np.ascontiguousarray(v_ref[:, ::-1])
            vec, sub = errors(res.eigenvectors.numpy(), v_ref)
            target = max(sub, 1e-4) if sub > 1e-4 else sub
            cells = []
            if have_primme:
                runs = [sweep("PRIMME", lambda tol, b=b: peer_primme(a, k, tol, b), [10.0**-e for e in range(2, 10)],
                              v_ref, target) for b in (16, 32)]
                done = [r for r in runs if r is not None and not math.isnan(r[0])]
                cells.append(min(done) if done else runs[0])
            else:
                cells.append("n/a")
            x0 = torch.randn(d, k, generator=torch.Generator().manual_seed(0), dtype=dt)
            cells.append(sweep("lobpcg", lambda tol: peer_lobpcg(noisy, k, tol, x0), [10.0**-e for e in range(2, 9)],
                               v_ref, target))
            cells.append(sweep("rsvd", lambda q: peer_rsvd(a, k, q), [2, 4, 8, 16, 32], v_ref, target))

            def cell(c) -> str:
                if isinstance(c, str):
                    return c
                if c is None or math.isnan(c[0]):
                    return "-" if c is None else f"- ({c[1]:.1e} at {c[2]:g})"
                return f"{c[0]:.3f} ({c[1]:.1e})"

            print(f"| {kind} | {name} | {t_rel:.3f} | {t_noise:.3f} | {t_solve:.3f} | {res.iterations} | "
                  f"{res.matvecs} | {res.warm_start or 'none'} | {vec:.1e} | {sub:.1e} | {t_sp:.3f} | "
                  f"{t_sp / t_rel:.1f} | {cell(cells[0])} | {cell(cells[1])} | {cell(cells[2])} |", flush=True)
    if not args.no_first_call:
        # The first call's extra time is mostly the first touch of fresh memory, which on a
        # virtual machine varies from run to run: five fresh processes per dtype.
        print("\n| dtype | first call s (median of 5 processes) | second call s | first / second: median (min–max) |")
        print("|---|---|---|---|")
        for name in args.dtypes:
            runs = [first_call(name, d, k) for _ in range(5)]
            ratios = sorted(a / b for a, b in runs)
            firsts, seconds = sorted(a for a, _ in runs), sorted(b for _, b in runs)
            print(f"| {name} | {firsts[2]:.3f} | {seconds[2]:.3f} | {ratios[2]:.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f}) |",
                  flush=True)

if __name__ == "__main__":
    main()
