"""Release at scale: the noise-aware stopping rule, overwrite / in-place semantics, memory.

No test here is timed; speed is measured by ``benchmarks/bench_scale.py``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import dplowrank as dl
import dplowrank.release._pipeline as release_mod  # white-box: the solver call the pipeline makes
from dplowrank.linalg import NOISE_ATOL_FRACTION, topk_eigh

from .conftest import requires_cuda, spiked_rows
from .test_linalg import reference, subspace_distance, true_residual

EPS, DELTA = 1.0, 1e-6
SIGMA = dl.analytic_gaussian_sigma(EPS, DELTA)  # for sensitivity 1


def _g(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def spiked_gram(d: int, k: int, seed: int, *, strength: float = 1.0) -> torch.Tensor:
    """U diag(s) Uᵀ with s = strength·edge·linspace(8, 3, k), edge = √(2d)·σ; float64, symmetric."""
    g = _g(seed)
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    s = strength * math.sqrt(2 * d) * SIGMA * torch.linspace(8.0, 3.0, k, dtype=torch.float64)
    m = (u * s) @ u.T
    return (m + m.T) / 2


def noisy_matrix(gram: torch.Tensor, seed: int, dtype=torch.float64) -> torch.Tensor:
    """The noisy matrix a release with ``generator=_g(seed)`` draws (isotropic, Δ = 1)."""
    mech = dl.GaussianMechanism(SIGMA, 1.0)
    return mech.perturb(gram, generator=_g(seed), dtype=dtype)


def release(data, k: int = 4, seed: int = 0, **kw):
    kw.setdefault("epsilon", EPS)
    kw.setdefault("delta", DELTA)
    if not isinstance(data, dl.GramAccumulator) and "row_norm" not in kw:
        kw.setdefault("sensitivity", 1.0)
    return dl.release_rank_k(data, k, generator=_g(seed), **kw)


def assert_same_release(a, b) -> None:
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    assert torch.equal(a.spectrum, b.spectrum)
    assert (a.noise_scale, a.solver, a.converged) == (b.noise_scale, b.solver, b.converged)


# --------------------------------------------------------------------------- stopping rule


def _davis_kahan_ok(A: torch.Tensor, r, k: int) -> tuple[float, float]:
    """(subspace error vs dense, Davis–Kahan bound ‖R‖_F / (θ_k − λ_{k+1}))."""
    _w_ref, v_ref, w_all = reference(A, k)
    wide = torch.complex128 if A.dtype.is_complex else torch.float64
    V = r.eigenvectors.to(wide)
    R = A.to(wide) @ V - V * r.eigenvalues.to(torch.float64).to(wide)
    gap = float(r.eigenvalues[-1]) - float(w_all[-k - 1])
    bound = float(torch.linalg.matrix_norm(R)) / gap if gap > 0 else math.inf
    return subspace_distance(r.eigenvectors, v_ref), bound


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128]
)
@pytest.mark.parametrize("frac", [1e-3, 1e-2, 1.0])
def test_atol_is_never_exceeded(frac, dtype, seed):
    """The stated tolerance holds for the returned pairs, in float64, and so does the
    subspace bound that follows from it (Davis–Kahan sin Θ theorem)."""
    d, k = 500, 8
    gram = spiked_gram(d, k, seed)
    if dtype.is_complex:
        mech = dl.ComplexGaussianMechanism(SIGMA, 1.0)
        A = mech.perturb(gram, generator=_g(seed), dtype=dtype.to_real())
    else:
        A = noisy_matrix(gram, seed, dtype)
    atol = frac * SIGMA
    r = topk_eigh(A, k, solver="lanczos", generator=_g(seed), atol=atol)
    assert r.converged and r.atol == atol
    res = true_residual(A, r)  # max_j ‖A v_j − λ_j v_j‖ in float64
    assert res <= r.tol * r.scale * (1 + 1e-9)
    assert r.tol >= atol / r.scale * (1 - 1e-12)
    eps = torch.finfo(dtype.to_real()).eps
    fro = float(torch.linalg.matrix_norm(A.to(torch.complex128 if dtype.is_complex else torch.float64)))
    # The target is atol itself unless that is below the dtype's rounding floor.
    assert res <= max(atol, 3 * eps * fro) * (1 + 1e-9)
    sub, bound = _davis_kahan_ok(A, r, k)
    assert sub <= bound * (1 + 1e-6) + 1e-12


def test_looser_atol_takes_fewer_steps_and_stays_accurate():
    """Solving to 0.01·σ instead of the float64 default saves Krylov steps, and the
    eigenvectors stay within 1e-4 of dense (the benchmark's acceptance criterion)."""
    d, k = 1200, 12
    A = noisy_matrix(spiked_gram(d, k, 3), 3)
    tight = topk_eigh(A, k, solver="lanczos", generator=_g(0))
    loose = topk_eigh(A, k, solver="lanczos", generator=_g(0), atol=NOISE_ATOL_FRACTION * SIGMA)
    assert tight.converged and loose.converged
    assert loose.iterations < tight.iterations
    assert loose.matvecs < tight.matvecs
    _, v_ref, _ = reference(A, k)
    s = torch.sign((loose.eigenvectors * v_ref).sum(0))
    assert float((loose.eigenvectors * s - v_ref).norm(dim=0).max()) <= 1e-4


def test_atol_below_rounding_floor_is_raised_to_the_floor():
    """float32: an absolute target far below eps·‖A‖_F cannot be met; the solver resolves it
    to the rounding floor (reported in ``tol``) and still converges honestly."""
    d, k = 800, 6
    A = noisy_matrix(spiked_gram(d, k, 4), 4, torch.float32)
    r = topk_eigh(A, k, solver="lanczos", generator=_g(0), atol=1e-9)
    assert r.converged
    eps = torch.finfo(torch.float32).eps
    fro = float(torch.linalg.matrix_norm(A.double()))
    assert r.tol * r.scale > 1e-9
    assert r.tol == pytest.approx(2 * eps * fro / r.scale, rel=0.5)
    assert true_residual(A, r) <= r.tol * r.scale


def test_atol_with_tol_takes_the_looser():
    A = noisy_matrix(spiked_gram(700, 4, 5), 5)
    r = topk_eigh(A, 4, solver="lanczos", generator=_g(0), tol=1e-3, atol=1e-6)
    assert r.tol == pytest.approx(1e-3)
    r = topk_eigh(A, 4, solver="lanczos", generator=_g(0), tol=1e-12, atol=SIGMA)
    assert r.tol == pytest.approx(SIGMA / r.scale, rel=1e-12)
    assert true_residual(A, r) <= SIGMA


def test_dense_reports_atol():
    A = noisy_matrix(spiked_gram(200, 3, 6), 6)
    r = topk_eigh(A, 3, solver="dense", atol=0.5)
    assert r.atol == 0.5 and r.tol == pytest.approx(0.5 / r.scale)
    assert true_residual(A, r) <= 1e-9 * r.scale


def test_release_passes_the_noise_aware_tolerance(monkeypatch):
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return topk_eigh(*args, **kwargs)

    monkeypatch.setattr(release_mod, "topk_eigh", spy)
    gram = spiked_gram(600, 4, 7)
    r = release(gram, 4, seed=7)
    assert seen["atol"] == pytest.approx(NOISE_ATOL_FRACTION * r.noise_scale)
    # ... and the released vectors are within the implied bound of the exact ones.
    A = noisy_matrix(gram, 7)
    w_ref, v_ref, w_all = reference(A, 4)
    gap = float(w_ref[-1] - w_all[-5])
    assert subspace_distance(r.eigenvectors, v_ref) <= 2 * NOISE_ATOL_FRACTION * SIGMA / gap


# --------------------------------------------------------------------------- overwrite


@pytest.mark.parametrize("as_numpy", [False, True])
def test_user_gram_is_untouched_without_opt_in(as_numpy):
    gram = spiked_gram(300, 3, 8)
    data = gram.numpy().copy() if as_numpy else gram.clone()
    release(data, 3, seed=1)
    after = torch.from_numpy(data) if as_numpy else data
    assert torch.equal(after, gram)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_overwrite_adds_the_noise_in_place_and_changes_nothing_else(as_numpy):
    gram = spiked_gram(700, 4, 9)
    ref = release(gram.clone(), 4, seed=2)
    data = gram.numpy().copy() if as_numpy else gram.clone()
    r = release(data, 4, seed=2, overwrite=True)
    assert_same_release(r, ref)
    after = torch.from_numpy(data) if as_numpy else data
    # The buffer now holds exactly the noisy matrix the release was computed from.
    assert torch.equal(after, noisy_matrix(gram, 2))


@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": torch.float32}, {"mechanism": "complex"}],
    ids=["other-dtype", "complex"],
)
def test_overwrite_leaves_input_alone_when_it_cannot_be_done_in_place(kwargs):
    gram = spiked_gram(600, 3, 10)
    data = gram.clone()
    r = release(data, 3, seed=3, overwrite=True, **kwargs)
    assert torch.equal(data, gram)
    assert_same_release(r, release(gram, 3, seed=3, **kwargs))


def test_overwrite_never_writes_a_read_only_array():
    arr = spiked_gram(300, 3, 11).numpy().copy()
    arr.flags.writeable = False
    before = arr.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.from_numpy warns about non-writable arrays
        r = release(arr, 3, seed=4, overwrite=True)
    assert np.array_equal(arr, before)
    assert_same_release(r, release(before, 3, seed=4))


def test_overwrite_must_be_a_bool():
    with pytest.raises(TypeError, match="overwrite must be a bool, got 1"):
        release(spiked_gram(50, 2, 0), 2, overwrite=1)


def test_rows_are_never_modified_and_their_gram_takes_noise_in_place(monkeypatch):
    rows = spiked_rows(400, 700, 3, seed=12)
    before = rows.copy()
    acc = dl.GramAccumulator(row_norm=2.0).update(rows)
    ref = dl.release_rank_k(acc, 3, epsilon=EPS, delta=DELTA, generator=_g(5))

    def no_copy(*a, **k):  # the out-of-place path must not run
        raise AssertionError("perturb (out of place) called for the library's own Gram")

    monkeypatch.setattr(dl.GaussianMechanism, "perturb", no_copy)
    r = dl.release_rank_k(rows, 3, epsilon=EPS, delta=DELTA, row_norm=2.0, generator=_g(5))
    assert np.array_equal(rows, before)
    assert_same_release(r, ref)
    assert not acc.consumed and torch.equal(acc.gram, dl.GramAccumulator(row_norm=2.0).update(rows).gram)


# --------------------------------------------------------------------------- accumulator


def _acc(seed: int = 13) -> dl.GramAccumulator:
    return dl.GramAccumulator(row_norm=2.0).update(spiked_rows(500, 700, 3, seed=seed))


def test_accumulator_in_place_equals_out_of_place_bitwise():
    out_of_place = dl.release_rank_k(_acc(), 3, epsilon=EPS, delta=DELTA, generator=_g(6))
    acc = _acc()
    raw = acc.gram.clone()
    r = dl.release_rank_k(acc, 3, epsilon=EPS, delta=DELTA, generator=_g(6), overwrite=True)
    assert_same_release(r, out_of_place)
    assert acc.consumed
    # Out of place the accumulator is untouched and reusable.
    acc2 = _acc()
    dl.release_rank_k(acc2, 3, epsilon=EPS, delta=DELTA, generator=_g(6))
    assert not acc2.consumed and torch.equal(acc2.gram, raw)


def test_consumed_accumulator_refuses_reuse(tmp_path):
    acc = _acc()
    dl.release_rank_k(acc, 3, epsilon=EPS, delta=DELTA, generator=_g(7), overwrite=True)
    with pytest.raises(ValueError, match="consumed.*overwrite=True"):
        _ = acc.gram
    with pytest.raises(ValueError, match="consumed"):
        acc.update(np.ones((2, 700)))
    with pytest.raises(ValueError, match="consumed"):
        acc.save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="consumed"):
        dl.release_rank_k(acc, 3, epsilon=EPS, delta=DELTA, generator=_g(7))
    assert not (tmp_path / "ckpt").exists()


def test_accumulator_is_consumed_even_when_a_copy_is_made():
    acc = _acc()
    r = dl.release_rank_k(
        acc, 3, epsilon=EPS, delta=DELTA, generator=_g(8), overwrite=True, dtype=torch.float32
    )
    assert acc.consumed
    assert_same_release(
        r, dl.release_rank_k(_acc(), 3, epsilon=EPS, delta=DELTA, generator=_g(8), dtype=torch.float32)
    )


def test_failed_budget_leaves_accumulator_intact():
    acc = _acc()
    raw = acc.gram.clone()
    budget = dl.PrivacyBudget(epsilon=0.1, delta=DELTA)
    with pytest.raises(dl.BudgetExceededError):
        dl.release_rank_k(acc, 3, epsilon=EPS, delta=DELTA, generator=_g(9), overwrite=True,
                          budget=budget)
    assert not acc.consumed and torch.equal(acc.gram, raw)


# --------------------------------------------------------------------------- memory


_MEMORY_PROBE = r"""
import sys, torch
import dplowrank as dl

def peak():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc/self/status")

d, overwrite = int(sys.argv[1]), sys.argv[2] == "1"
torch.set_num_threads(2)  # two noise workers, each with its strip in flight, on any machine
g = torch.Generator().manual_seed(0)
u, _ = torch.linalg.qr(torch.randn(d, 8, generator=g, dtype=torch.float64))
w = u * torch.linspace(800.0, 400.0, 8, dtype=torch.float64)
gram = torch.empty(d, d, dtype=torch.float64)
for i in range(0, d, 256):  # filled in strips: no d x d temporary before the release
    torch.matmul(w[i:i + 256], u.T, out=gram[i:i + 256])
base = peak()
dl.release_rank_k(gram, 8, epsilon=1.0, delta=1e-6, sensitivity=1.0, overwrite=overwrite,
                  generator=torch.Generator().manual_seed(1))
print(peak() - base)
"""


def _peak_growth(d: int, overwrite: bool) -> int:
    """Growth of the peak RSS (VmHWM) over a release, in a fresh process whose only
    earlier d×d allocation is the Gram itself (no reset of the high-water mark needed)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(d), "1" if overwrite else "0"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_in_place_release_needs_no_second_matrix():
    """Peak RSS growth over a d = 4096 float64 release: out of place it includes the noisy
    copy (134 MB); in place only noise strips (512 rows per worker, two workers, ~34 MB here,
    which the allocator may keep), the half-precision warm-start copy where it is used (34 MB,
    freed before the Krylov buffers) and the Krylov buffers (~27 MB): 106-118 MB measured
    (three runs), under one matrix."""
    d = 4096
    nbytes = 8 * d * d
    grow_copy = _peak_growth(d, overwrite=False)
    grow_in_place = _peak_growth(d, overwrite=True)
    assert grow_copy >= 0.9 * nbytes, (grow_copy, nbytes)
    assert grow_copy - grow_in_place >= 0.8 * nbytes, (grow_copy, grow_in_place, nbytes)
    assert grow_in_place < nbytes, (grow_in_place, nbytes)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_in_place_release_equals_out_of_place(dtype):
    gram = spiked_gram(1500, 8, 15).to(dtype).cuda()
    kw = dict(epsilon=EPS, delta=DELTA, sensitivity=1.0)
    ref = dl.release_rank_k(gram.clone(), 8, generator=_g(11, "cuda"), **kw)
    data = gram.clone()
    r = dl.release_rank_k(data, 8, generator=_g(11, "cuda"), overwrite=True, **kw)
    assert_same_release(r, ref)
    assert r.eigenvectors.device.type == "cuda"
    assert not torch.equal(data, gram)
    # Accuracy against dense on the CPU, within the noise-aware tolerance's bound.
    A = data.cpu()
    w_ref, v_ref, w_all = reference(A, 8)
    gap = float(w_ref[-1] - w_all[-9])
    slack = 0 if dtype == torch.float64 else 1e-4
    assert subspace_distance(r.eigenvectors.cpu(), v_ref) <= 2 * NOISE_ATOL_FRACTION * SIGMA / gap + slack


@pytest.mark.gpu
@requires_cuda
def test_cuda_dense_solver_on_ill_conditioned_float32():
    """cuSOLVER may fail on ill-conditioned float32 input; the dense path must then retry
    in float64 (or raise a clear error), never return garbage."""
    g = _g(16)
    d = 512
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -30, d, dtype=torch.float64)  # condition number 1e30
    s[::7] = 1.0  # repeated eigenvalues too
    A = ((u * s) @ u.T).float().cuda()
    A = (A + A.T) / 2
    try:
        r = topk_eigh(A, 10, solver="dense")
    except torch.linalg.LinAlgError as exc:
        assert "float32" in str(exc) and "cuda" in str(exc)
        return
    assert bool(torch.isfinite(r.eigenvectors).all())
    assert r.eigenvalues.dtype == torch.float32
    V = r.eigenvectors.double()
    assert float((V.T @ V - torch.eye(10, dtype=torch.float64, device="cuda")).abs().max()) < 1e-4


# ---- large CPU buffers on transparent huge pages -----------------------------------


def _vm_flags(addr: int) -> list[str] | None:
    """The VmFlags of the mapping of this process that holds ``addr`` (Linux only)."""
    try:
        with open("/proc/self/smaps") as fh:
            inside = False
            for line in fh:
                head = line.split()[0]
                if "-" in head and ":" not in head:
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and line.startswith("VmFlags:"):
                    return line.split()[1:]
    except OSError:
        return None
    return None


def test_large_buffers_are_advised_huge_pages_and_small_ones_are_plain():
    from dplowrank import _memory

    if _memory._libc_madvise() is False or _vm_flags(id(object())) is None:
        pytest.skip("needs Linux with madvise and /proc/self/smaps")
    big = _memory.empty((2048, 2048), dtype=torch.float32, device=torch.device("cpu"))
    assert big.shape == (2048, 2048) and big.dtype == torch.float32
    inner = (big.data_ptr() // _memory._HUGE + 1) * _memory._HUGE  # inside the advised part
    flags = _vm_flags(inner)
    assert flags is not None and "hg" in flags, flags
    small = _memory.empty((64, 64), dtype=torch.float64, device=torch.device("cpu"))
    assert small.shape == (64, 64) and small.dtype == torch.float64
    big.fill_(1.5)  # the memory is ordinary memory
    assert float(big.sum()) == 1.5 * 2048 * 2048


def test_without_madvise_it_is_plain_empty(monkeypatch):
    from dplowrank import _memory

    monkeypatch.setattr(_memory, "_madvise", False)
    t = _memory.empty((2048, 2048), dtype=torch.float64, device=torch.device("cpu"))
    assert t.shape == (2048, 2048) and t.dtype == torch.float64 and t.device.type == "cpu"
