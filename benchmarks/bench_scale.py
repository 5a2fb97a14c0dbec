"""Release at scale: time, memory and accuracy against the floor and the usual tools.

For d in {1024, 2048, 4096, 8192} with k = 32 (and, with ``--big``, d = 32768 with k = 64,
run alone), a spiked float64 Gram M (k directions at 3-8× the noise edge √(2d)·σ, as in
``bench_release.py``) is released with ``dplowrank.release_rank_k`` at ε = 1, δ = 1e-6
(Δ = 1, σ = 4.22) in float32 and float64. Each row prints

* ``release``: best-of-``repeats`` wall time of the whole call (Gram check, noise, solve);
* ``floor``: the parts no release can avoid, timed the same way in the same dtype:
  d(d+1)/2 standard normals (the faster of one ``torch.randn`` call and two halves drawn
  on two threads, as the library does) plus one product of the Gram with a (d, ⌈1.3k⌉)
  block; ``x floor`` = release / floor;
* ``floor d2``: the floor as issue 5 measured it (d² normals in one stream plus the same
  product; 0.12 s in float32 at d = 4096 there), ``x fl2`` = release / floor d2;
* ``scipy``, ``numpy``: ``scipy.linalg.eigh(subset_by_index=top k)`` and
  ``numpy.linalg.eigh`` of the same noisy matrix in the same dtype (the faster of one run
  with their BLAS on all cores and one on a single core; skipped beyond d = 8192, numpy
  beyond ``--numpy-max``), and ``x scipy`` = scipy / release;
* ``lobpcg``, ``rsvd``: ``torch.lobpcg(largest=True)`` and sklearn's ``randomized_svd``
  (defaults: 10 oversamples, n_iter='auto') on the same noisy matrix, with their
  eigenvector errors;
* ``err``: max over the k columns of ‖±v̂ − v‖ against the float64 dense solution of the
  same noisy matrix (LAPACK ``syevr`` on the matrix upcast to float64);
* ``peak``: the process's peak resident memory during the release (``VmHWM`` after
  resetting it through ``/proc/self/clear_refs``), the Gram itself included.

The same noisy matrix is rebuilt from the release's generator seed: the noise depends only
on the generator state (see ``dplowrank/mechanisms/_noise.py``).

The d = 32768 row releases from the float64 Gram (8.6 GB) with ``overwrite=True``, so
the noise goes in place: no second d×d buffer. No dense reference is feasible there; its
``err`` column is the Davis–Kahan bound √k·max‖Av − λv‖ / (λ_k − λ_{k+1}) on the sine of
the largest principal angle to the exact top-k subspace (λ_{k+1} bounded through the
release's ``spectrum_slack``), computed from the noisy matrix left in the buffer.

Usage::

    python benchmarks/bench_scale.py                  # d = 1024 … 8192 (~10 min on 2 cores)
    python benchmarks/bench_scale.py --dims 1024 4096 --no-numpy
    python benchmarks/bench_scale.py --big            # also d = 32768, k = 64 (~1-2 min, 9.5 GB)
    python benchmarks/bench_scale.py --only-big --device cuda
"""

from __future__ import annotations

import os

# This machine's cores are shared with other jobs; OpenMP's default spin-waiting then
# stalls every parallel region (MKL's syevd at m = 768 took 9.4 s instead of 0.06 s).
# Passive waiting keeps the timings about the work measured; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import gc
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy
import scipy.linalg as sla
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine

import dplowrank as dl

EPS, DELTA = 1.0, 1e-6


# ----------------------------------------------------------------------------- helpers


def spiked_gram(d: int, k: int, sigma: float, seed: int, device: str = "cpu") -> torch.Tensor:
    """U diag(s) Uᵀ, s = edge·linspace(8, 3, k), edge = √(2d)·σ: float64, exactly symmetric.

    Built in row blocks (no d×d temporary) and mirrored from its upper triangle.
    Returns a Tensor of shape (d, d).
    """
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    u = u.to(device)
    edge = math.sqrt(2 * d) * sigma
    us = u * (edge * torch.linspace(8.0, 3.0, k, dtype=torch.float64, device=device))
    m = torch.empty((d, d), dtype=torch.float64, device=device)
    bs = 2048
    for i0 in range(0, d, bs):
        i1 = min(d, i0 + bs)
        m[i0:i1, i0:] = us[i0:i1] @ u[i0:].T
        m[i1:, i0:i1] = m[i0:i1, i1:].T
    return m


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Minimum wall time of ``repeats`` calls (CUDA synchronised) and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def secure_time(fn: Callable[[], object], repeats: int) -> float | None:
    """Best time of a release with the default secure noise source (``None`` when its
    ``cryptography`` dependency is missing)."""
    try:
        return best_time(fn, repeats)[0]
    except ImportError:
        return None


def best_blas(fn: Callable[[], object]) -> tuple[float, object]:
    """One timed call of a numpy/scipy routine with its BLAS on all cores and one on one core
    (threadpoolctl); the faster. OpenBLAS's threads spin-wait and stall when the cores are
    shared with other jobs; one thread is then often faster, and this keeps the comparison
    fair to scipy and numpy."""
    t_all, out = best_time(fn, 1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn
        return t_all, out
    with threadpool_limits(limits=1, user_api="blas"):
        t_one, out = best_time(fn, 1)
    return min(t_all, t_one), out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    """Reset this process's peak RSS (Linux ≥ 4.0) and CUDA's peak-allocation counter."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float:
    """Peak resident memory since :func:`reset_peak`, in GB (CUDA: peak allocated)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return float("nan")


def floor_parts(gram: torch.Tensor, k: int, dtype: torch.dtype) -> list[Callable[[], object]]:
    """The floor's parts as callables: [draws in one stream, draws on two threads (CPU),
    one product]. The floor is min(draws) + product.

    d(d+1)/2 standard normals are drawn into a reused buffer of at most 2**25 entries per
    stream, so the measurement needs no d×d memory of its own. The product is the Gram in
    ``dtype`` (a converted copy when the Gram has another dtype) times a (d, ⌈1.3k⌉) block.
    """
    d = gram.shape[0]
    dev = gram.device
    n = d * (d + 1) // 2
    chunk = min(n, 2**25)
    gens = [torch.Generator(device=dev).manual_seed(i) for i in range(2)]
    bufs = [torch.empty(chunk, dtype=dtype, device=dev) for _ in range(2)]

    def draw(i: int, count: int) -> None:
        while count > 0:
            c = min(count, chunk)
            bufs[i][:c].normal_(generator=gens[i])
            count -= c

    def two() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: draw(i, (n + 1 - i) // 2), range(2)))

    a = gram if gram.dtype == dtype else gram.to(dtype)
    x = torch.randn(d, math.ceil(1.3 * k), dtype=dtype, device=dev)
    parts = [lambda: draw(0, n)]
    if dev.type == "cpu" and torch.get_num_threads() > 1:
        parts.append(two)
    parts.append(lambda: a @ x)
    return parts


def issue_floor_draws(gram: torch.Tensor, dtype: torch.dtype) -> Callable[[], object]:
    """The draws of the floor as issue 5 measured it: d² normals in one stream (reused
    buffer of at most 2**25 entries); with one product it gives the ``floor d2`` column."""
    d, dev = gram.shape[0], gram.device
    n = d * d
    chunk = min(n, 2**25)
    gen = torch.Generator(device=dev).manual_seed(7)
    buf = torch.empty(chunk, dtype=dtype, device=dev)

    def draw() -> None:
        count = n
        while count > 0:
            c = min(count, chunk)
            buf[:c].normal_(generator=gen)
            count -= c

    return draw


def interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best-of-``repeats`` wall time of each callable, measured round-robin so that all of
    them see the same background load (this machine's cores are shared)."""
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_time(fn, 1)[0])
    return best


def floor_time(gram: torch.Tensor, k: int, dtype: torch.dtype, repeats: int) -> float:
    """min(draw times) + product time; see :func:`floor_parts`."""
    times = interleaved(floor_parts(gram, k, dtype), repeats)
    return min(times[:-1]) + times[-1]


def vec_error(v_hat: torch.Tensor, v_ref: torch.Tensor) -> float:
    """max_j ‖±v̂_j − v_j‖ after sign alignment. Shapes (d, k), (d, k); float64 on CPU."""
    v_hat = v_hat.to("cpu", torch.float64)
    s = torch.sign((v_hat * v_ref).sum(0))
    s[s == 0] = 1.0
    return float((v_hat * s - v_ref).norm(dim=0).max())


def fmt(x: float | None, spec: str = "8.3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'-':>{int(spec.split('.')[0])}}"
    return format(x, spec)


def release(gram, k, dtype, seed, **kw):
    """The release timed here: a seeded torch generator (reproducible), or with
    ``seed=None`` the library's default secure noise source."""
    gen = None if seed is None else torch.Generator(device=gram.device).manual_seed(seed)
    return dl.release_rank_k(
        gram, k, epsilon=EPS, delta=DELTA, sensitivity=1.0, dtype=dtype, generator=gen, **kw,
    )


# ----------------------------------------------------------------------------- one row


HEADER = (
    f"{'d':>6} {'k':>3} {'dtype':>7} | {'release':>8} {'floor':>7} {'x floor':>7} "
    f"{'floor d2':>8} {'x fl2':>6} {'secure':>7} | "
    f"{'scipy':>8} {'x scipy':>7} {'numpy':>8} | {'lobpcg':>8} {'lob err':>8} "
    f"{'rsvd':>8} {'rsvd err':>8} | {'err':>8} {'it':>3} {'peak GB':>7}"
)


def run_row(gram: torch.Tensor, k: int, dtype: torch.dtype, args, sigma: float) -> None:
    d = gram.shape[0]
    dev = gram.device
    seed = 1000 + d
    repeats = args.repeats if d <= 4096 else max(1, args.repeats // 2)
    gc.collect()
    reset_peak()
    rel = release(gram, k, dtype, seed)
    peak = peak_gb(str(dev))
    parts = floor_parts(gram, k, dtype) + [issue_floor_draws(gram, dtype)]
    times = interleaved([lambda: release(gram, k, dtype, seed)] + parts, repeats)
    t_rel, t_floor = times[0], min(times[1:-2]) + times[-2]
    t_floor_d2 = times[-1] + times[-2]
    t_secure = secure_time(lambda: release(gram, k, dtype, None), repeats)
    del parts

    # the same noisy matrix, from the same seed
    gen = torch.Generator(device=dev).manual_seed(seed)
    noisy = dl.GaussianMechanism(rel.noise_scale, 1.0).perturb(gram, generator=gen, dtype=dtype)
    # ... and the release's very solve: the generator continues from the same state
    solve = dl.topk_eigh(noisy, k, generator=gen, check=False,
                         atol=dl.linalg.NOISE_ATOL_FRACTION * rel.noise_scale)
    assert torch.equal(solve.eigenvectors, rel.eigenvectors), "the solve was not reproduced"
    a = noisy.cpu().numpy()
    t_sp = t_np = None
    if d <= 8192:
        t_sp, _ = best_blas(functools.partial(sla.eigh, a, subset_by_index=[d - k, d - 1]))
    if d <= min(8192, args.numpy_max) and not args.no_numpy:
        t_np, _ = best_blas(functools.partial(np.linalg.eigh, a))
    _, v = sla.eigh(a.astype(np.float64), subset_by_index=[d - k, d - 1])
    v_ref = torch.from_numpy(np.ascontiguousarray(v[:, ::-1]))
    err = vec_error(rel.eigenvectors, v_ref)

    t_lob = lob_err = None
    if d <= args.lobpcg_max:
        x0 = torch.randn(d, k, generator=torch.Generator(device=dev).manual_seed(0), dtype=dtype,
                         device=dev)
        try:
            t_lob, (_, v_lob) = best_time(
                functools.partial(torch.lobpcg, noisy, k=k, X=x0, largest=True, niter=200), 1
            )
            lob_err = vec_error(v_lob, v_ref)
        except Exception as exc:  # report in the table, do not abort it
            print(f"  (torch.lobpcg failed at d={d}, {dtype}: {type(exc).__name__}: {exc})")
    t_rs = rs_err = None
    if d <= args.rsvd_max:
        from sklearn.utils.extmath import randomized_svd

        t_rs, (u_rs, _, _) = best_blas(functools.partial(randomized_svd, a, k, random_state=0))
        rs_err = vec_error(torch.from_numpy(np.ascontiguousarray(u_rs)), v_ref)
    del noisy, a
    name = str(dtype).replace("torch.", "")
    print(
        f"{d:>6} {k:>3} {name:>7} | {t_rel:8.3f} {t_floor:7.3f} {t_rel / t_floor:7.2f} "
        f"{t_floor_d2:8.3f} {t_rel / t_floor_d2:6.2f} {fmt(t_secure, '7.3f')} | "
        f"{fmt(t_sp)} {fmt(None if t_sp is None else t_sp / t_rel, '7.1f')} {fmt(t_np)} | "
        f"{fmt(t_lob)} {fmt(lob_err, '8.1e')} {fmt(t_rs)} {fmt(rs_err, '8.1e')} | "
        f"{err:8.1e} {solve.iterations:>3} {peak:7.2f}",
        flush=True,
    )


def run_big(args, sigma: float) -> None:
    """d = 32768, k = 64 from a float64 Gram.

    CPU: one release with ``overwrite=True`` (noise in place, float64). CUDA: float32 and
    float64 releases out of place (best of ``--repeats``), then the in-place one. Each row
    is followed by its breakdown: the Gram check, the noise, the solve (timed alone).
    """
    from dplowrank.gram import check_gram

    d, k = args.big_d, 64
    dev = args.device
    t0 = time.perf_counter()
    gram = spiked_gram(d, k, sigma, seed=d, device=dev)
    _sync()
    t_build = time.perf_counter() - t0
    rows = [(torch.float64, True)]
    if dev.startswith("cuda"):
        rows = [(torch.float32, False), (torch.float64, False), (torch.float64, True)]
    atol = dl.linalg.NOISE_ATOL_FRACTION * sigma
    for dtype, in_place in rows:
        seed = 1000 + d
        t_floor = floor_time(gram, k, dtype, 1 if in_place else args.repeats)
        t_floor_d2 = best_time(issue_floor_draws(gram, dtype), 1)[0] + interleaved(
            floor_parts(gram, k, dtype)[-1:], 1 if in_place else args.repeats)[0]
        gc.collect()
        reset_peak()
        if in_place:
            t_rel, rel = best_time(lambda: release(gram, k, dtype, seed, overwrite=True), 1)
        else:
            t_rel, rel = best_time(lambda: release(gram, k, dtype, seed), args.repeats)
        peak = peak_gb(dev)
        t_check, _ = best_time(lambda: check_gram(gram), 1)
        if in_place:
            noisy = gram  # it now holds M + E
            t_noise = None
        else:
            t_noise, noisy = best_time(
                lambda: dl.GaussianMechanism(sigma, 1.0).perturb(
                    gram, generator=torch.Generator(device=dev).manual_seed(seed), dtype=dtype),
                1,
            )
        # the solve alone (another starting block than the release's: same work, near enough)
        t_solve, res = best_time(
            lambda noisy=noisy: dl.topk_eigh(noisy, k, generator=torch.Generator(device=dev).manual_seed(0),
                                             check=False, atol=atol),
            1,
        )
        # Davis–Kahan bound on the subspace error, from the residuals of the released pairs.
        v = rel.eigenvectors.to(noisy.dtype)
        r = float((noisy @ v - v * rel.eigenvalues.to(noisy.dtype)).norm(dim=0).max())
        gap = float(rel.eigenvalues[k - 1]) - (float(rel.spectrum[k]) + rel.spectrum_slack)
        bound = math.sqrt(k) * r / gap if gap > 0 else float("inf")
        t_secure = None
        if t_noise is None:  # the buffer is scratch now: time the in-place noise on it ...
            t_noise, _ = best_time(
                lambda: dl.GaussianMechanism(sigma, 1.0).perturb_(
                    gram, generator=torch.Generator(device=dev).manual_seed(seed)),
                1,
            )
            # ... and a whole in-place release with the default secure noise source
            t_secure = secure_time(lambda: release(gram, k, dtype, None, overwrite=True), 1)
        name = str(dtype).replace("torch.", "")
        print(
            f"{d:>6} {k:>3} {name:>7} | {t_rel:8.3f} {t_floor:7.3f} {t_rel / t_floor:7.2f} "
            f"{t_floor_d2:8.3f} {t_rel / t_floor_d2:6.2f} {fmt(t_secure, '7.3f')} | "
            f"{'-':>8} {'-':>7} {'-':>8} | {'-':>8} {'-':>8} {'-':>8} {'-':>8} | "
            f"{bound:8.1e} {res.iterations:>3} {peak:7.2f}",
            flush=True,
        )
        print(
            f"        {'in place' if in_place else 'out of place'}: check {t_check:.3f} s, "
            f"noise {t_noise:.3f} s, solve {t_solve:.3f} s ({res.iterations} steps, "
            f"{res.matvecs} columns, solver {rel.solver}); err = Davis–Kahan bound √k·r/gap, "
            f"max residual r = {r / sigma:.2e}·σ; Gram built in {t_build:.1f} s",
            flush=True,
        )
        del noisy, v


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (halved beyond 4096)")
    p.add_argument("--no-numpy", action="store_true", help="skip numpy.linalg.eigh")
    p.add_argument("--numpy-max", type=int, default=8192, help="largest d for numpy.linalg.eigh")
    p.add_argument("--lobpcg-max", type=int, default=8192, help="largest d for torch.lobpcg")
    p.add_argument("--rsvd-max", type=int, default=8192, help="largest d for randomized_svd")
    p.add_argument("--big", action="store_true", help="also d = 32768, k = 64 (9.5 GB)")
    p.add_argument("--only-big", action="store_true", help="only d = 32768, k = 64")
    p.add_argument("--big-d", type=int, default=32768, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print(machine())
    sigma = dl.analytic_gaussian_sigma(EPS, DELTA)
    dev_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"torch {torch.__version__} ({dev_name}), numpy {np.__version__}, scipy "
        f"{scipy.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load "
        f"{os.getloadavg()[0]:.1f}; eps={EPS}, delta={DELTA}, sigma={sigma:.4f} (sensitivity 1); "
        "times in s (release, secure and floor: best of repeats, interleaved; others: one run)"
    )
    print(HEADER)
    print("-" * len(HEADER))
    with torch.no_grad():
        if not args.only_big:
            for d in args.dims:
                gram = spiked_gram(d, args.k, sigma, seed=d, device=args.device)
                for name in args.dtypes:
                    run_row(gram, args.k, getattr(torch, name), args, sigma)
                del gram
        if args.big or args.only_big:
            run_big(args, sigma)
    print(
        "release: seeded torch generator; secure: the same release with the default secure "
        "noise source; x floor = release / floor; floor d2 = d^2 normals in one stream + one "
        "product (the floor as issue 5 defines it), x fl2 = release / floor d2; x scipy = scipy / release (same dtype); err = "
        "max eigenvector error vs float64 dense eigh of the same noisy matrix; it = solver steps."
    )


if __name__ == "__main__":
    main()
