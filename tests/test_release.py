"""release_rank_k end to end: utility, structure, records, serialisation, bad input."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import dplowrank as dl

from .conftest import best_rank_k, requires_cuda, spiked_rows


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def spiked():
    x = spiked_rows(2000, 30, 3, seed=7)
    c = 3.0
    m = dl.GramAccumulator(row_norm=c).update(x).gram
    return x, c, m


def test_reproducible_for_a_generator(spiked):
    x, c, _ = spiked
    a = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c, generator=_g(5))
    b = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c, generator=_g(5))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert a.randomness == "seeded" and not a.for_publication


def test_default_randomness_is_secure_and_fresh(spiked):
    x, c, _ = spiked
    a = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c)
    b = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c)
    assert a.randomness == "secure" and a.for_publication
    assert not torch.equal(a.eigenvalues, b.eigenvalues)
    # a seeded secure source is reproducible and marked not for publication
    s1 = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c, generator=dl.SecureNormalSource.from_seed(4))
    s2 = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c, generator=dl.SecureNormalSource.from_seed(4))
    assert torch.equal(s1.eigenvalues, s2.eigenvalues) and s1.randomness == "seeded"


def test_secure_noise_has_the_mechanism_variances():
    # the secure source behind the mechanism: diagonal σ², off-diagonal σ²/2 (isotropic)
    mech = dl.GaussianMechanism(2.0, 1.0)
    e = mech.perturb(torch.zeros(700, 700, dtype=torch.float64), generator=dl.SecureNormalSource.from_seed(1))
    assert torch.equal(e, e.T)
    iu = torch.triu_indices(700, 700, offset=1)
    off = e[iu[0], iu[1]]
    assert float(off.var()) == pytest.approx(2.0, rel=0.01)
    assert float(e.diagonal().var()) == pytest.approx(4.0, rel=0.12)
    assert stats.kstest(off.numpy() / math.sqrt(2.0), "norm").pvalue > 1e-3


@pytest.mark.parametrize("mechanism", ["gaussian", "complex"])
def test_tends_to_exact_rank_k_as_epsilon_grows(spiked, mechanism):
    x, c, m = spiked
    m_k = best_rank_k(m, 3)
    errs = []
    for eps in (0.5, 5.0, 50.0, 500.0, 5e4):
        e = np.mean([
            float(torch.linalg.matrix_norm(
                dl.release_rank_k(x, 3, epsilon=eps, delta=1e-6, row_norm=c, mechanism=mechanism,
                                  generator=_g(s)).to_dense() - m_k))
            for s in range(5)
        ])
        errs.append(e / float(torch.linalg.matrix_norm(m_k)))
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 1e-4
    # σ → 0: the release is M_k up to rounding
    r = dl.release_rank_k(m, 3, sensitivity=c * c, noise_scale=1e-10, mechanism=mechanism, generator=_g())
    torch.testing.assert_close(r.to_dense(), m_k, rtol=1e-8, atol=1e-8 * float(m.abs().max()))


@pytest.mark.parametrize("mechanism, shape", [("gaussian", "isotropic"), ("gaussian", "upper_triangular"),
                                              ("complex", "isotropic")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eigenvectors_orthonormal(spiked, mechanism, shape, dtype):
    x, c, _ = spiked
    r = dl.release_rank_k(x, 5, epsilon=0.7, delta=1e-6, row_norm=c, mechanism=mechanism,
                          noise_shape=shape, dtype=dtype, generator=_g(1))
    v = r.eigenvectors
    assert v.dtype == dtype and r.dtype == str(dtype).replace("torch.", "")
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(v.T @ v, torch.eye(5, dtype=dtype), atol=tol, rtol=0)
    assert torch.all(r.eigenvalues[:-1] >= r.eigenvalues[1:])
    if mechanism == "complex":
        h = r.hermitian_eigenvectors
        assert h.is_complex()
        torch.testing.assert_close(h.conj().T @ h, torch.eye(5, dtype=h.dtype), atol=tol, rtol=0)
        dense_h = r.to_dense(hermitian=True)
        assert torch.equal(dense_h, dense_h.conj().T) or torch.allclose(dense_h, dense_h.conj().T)


def test_release_is_an_eigendecomposition_of_the_noisy_matrix(spiked):
    # same generator ⇒ same noise: rebuild the noisy matrix and compare with dense eigh
    _, c, m = spiked
    sigma = 40.0
    r = dl.release_rank_k(m, 4, sensitivity=c * c, noise_scale=sigma, solver="dense", generator=_g(9))
    noisy = dl.GaussianMechanism(sigma, c * c).perturb(m, generator=_g(9))
    w, v = torch.linalg.eigh(noisy)
    torch.testing.assert_close(r.eigenvalues, w.flip(0)[:4], rtol=1e-10, atol=1e-8)
    proj = v[:, -4:] @ v[:, -4:].T
    torch.testing.assert_close(r.eigenvectors @ r.eigenvectors.T, proj, atol=1e-8, rtol=0)


def test_rotation_equivariance(spiked):
    _, c, m = spiked
    d = m.shape[0]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_g(2), dtype=torch.float64))
    mq = q @ m @ q.T
    mq = 0.5 * (mq + mq.T)
    # deterministic: with negligible noise, release(Q M Qᵀ) = Q release(M) Qᵀ
    a = dl.release_rank_k(m, 3, sensitivity=c * c, noise_scale=1e-9, generator=_g())
    b = dl.release_rank_k(mq, 3, sensitivity=c * c, noise_scale=1e-9, generator=_g())
    torch.testing.assert_close(q @ a.to_dense() @ q.T, b.to_dense(), rtol=1e-7, atol=1e-6)
    # in distribution: the isotropic noise is rotation invariant, so the error laws agree
    m_k, mq_k = best_rank_k(m, 3), best_rank_k(mq, 3)
    sigma = 60.0
    ea = [float(torch.linalg.matrix_norm(
        dl.release_rank_k(m, 3, sensitivity=c * c, noise_scale=sigma, generator=_g(s)).to_dense() - m_k))
        for s in range(150)]
    eb = [float(torch.linalg.matrix_norm(
        dl.release_rank_k(mq, 3, sensitivity=c * c, noise_scale=sigma, generator=_g(1000 + s)).to_dense() - mq_k))
        for s in range(150)]
    assert stats.ks_2samp(ea, eb).pvalue > 1e-3


def test_error_scales_as_one_over_epsilon(spiked):
    x, c, m = spiked
    m_k = best_rank_k(m, 3)
    epss = np.array([2.0, 4.0, 8.0, 16.0])
    errs, sigmas = [], []
    for eps in epss:
        e = []
        for s in range(20):
            r = dl.release_rank_k(x, 3, epsilon=float(eps), delta=1e-6, row_norm=c, generator=_g(s))
            e.append(float(torch.linalg.matrix_norm(r.to_dense() - m_k)))
        errs.append(np.mean(e))
        sigmas.append(r.noise_scale)
    slope = np.polyfit(np.log(epss), np.log(errs), 1)[0]
    assert -1.2 < slope < -0.75, (slope, errs)
    ratio = np.array(errs) / np.array(sigmas)  # error ∝ σ on a well-separated spiked model
    assert ratio.max() / ratio.min() < 1.2, ratio


def test_upper_triangular_is_noisier_than_isotropic(spiked):
    _, c, m = spiked
    m_k = best_rank_k(m, 3)

    def mean_err(shape):
        return np.mean([float(torch.linalg.matrix_norm(
            dl.release_rank_k(m, 3, sensitivity=c * c, noise_scale=80.0, noise_shape=shape,
                              generator=_g(s)).to_dense() - m_k)) for s in range(40)])

    assert mean_err("upper_triangular") > 1.15 * mean_err("isotropic")


def test_complex_realified_within_twice_the_hermitian_error(spiked):
    # deterministic per draw: ‖R_k − M_k‖_F ≤ 2‖H_k − M_k‖_F (best rank-k + Re is a contraction)
    _, c, m = spiked
    for k in (1, 3, 6):
        m_k = best_rank_k(m, k).to(torch.complex128)
        for s in range(10):
            r = dl.release_rank_k(m, k, sensitivity=c * c, noise_scale=150.0, mechanism="complex",
                                  generator=_g(s))
            err_h = float(torch.linalg.matrix_norm(r.to_dense(hermitian=True) - m_k))
            err_r = float(torch.linalg.matrix_norm(r.to_dense() - m_k.real))
            assert err_r <= 2 * err_h + 1e-9
            # and the real output is the best real rank-k approximation of Re(H_k)
            re_h = r.to_dense(hermitian=True).real
            assert err_r > 0 and float(torch.linalg.matrix_norm(r.to_dense() - re_h)) <= float(
                torch.linalg.matrix_norm(best_rank_k_abs(re_h, k) - re_h)) + 1e-8


def best_rank_k_abs(a, k):
    w, v = torch.linalg.eigh(a)
    idx = torch.argsort(w.abs(), descending=True)[:k]
    return (v[:, idx] * w[idx]) @ v[:, idx].T


def test_psd_clips_eigenvalues():
    m = torch.diag(torch.tensor([5.0, 1e-3, 0.0, 0.0], dtype=torch.float64))
    raw = dl.release_rank_k(m, 4, sensitivity=1.0, noise_scale=1.0, generator=_g(0))
    assert float(raw.eigenvalues.min()) < 0
    clipped = dl.release_rank_k(m, 4, sensitivity=1.0, noise_scale=1.0, psd=True, generator=_g(0))
    assert float(clipped.eigenvalues.min()) == 0.0
    torch.testing.assert_close(clipped.eigenvalues, raw.eigenvalues.clamp(min=0))


def test_records_and_privacy_event(spiked):
    x, c, _ = spiked
    r = dl.release_rank_k(x, 2, epsilon=0.8, delta=1e-6, row_norm=c, neighbour="replace", generator=_g())
    assert r.sensitivity == pytest.approx(math.sqrt(2) * c * c)
    assert r.noise_scale == pytest.approx(dl.analytic_gaussian_sigma(0.8, 1e-6, r.sensitivity))
    assert r.epsilon <= 0.8 and r.epsilon == pytest.approx(0.8, rel=1e-6)
    assert r.delta == 1e-6 and r.neighbour == "replace" and r.calibration == "analytic"
    assert r.mechanism == "gaussian" and r.noise_shape == "isotropic" and r.psd is False
    assert r.privacy_event == dl.GaussianEvent(r.noise_scale / r.sensitivity, "replace")
    assert r.mu == pytest.approx(1 / r.noise_multiplier)
    assert r.device == "cpu" and r.solver in ("dense", "lanczos") and r.converged
    rc = dl.release_rank_k(x, 2, epsilon=0.5, delta=1e-6, row_norm=c, calibration="classic",
                           mechanism="complex", generator=_g())
    assert rc.noise_scale == pytest.approx(dl.classic_gaussian_sigma(0.5, 1e-6, c * c))
    assert rc.noise_shape == "hermitian" and rc.epsilon < 0.5  # classic is loose: exact ε is smaller
    rz = dl.release_rank_k(x, 2, rho=0.1, row_norm=c, generator=_g())
    assert rz.epsilon is None and rz.noise_scale == pytest.approx(c * c / math.sqrt(0.2))
    assert "LowRankRelease(k=2" in repr(rz)


def test_accumulator_and_gram_inputs_agree(spiked):
    x, c, m = spiked
    acc = dl.GramAccumulator(row_norm=c).update(x)
    a = dl.release_rank_k(acc, 3, epsilon=1.0, delta=1e-6, generator=_g(4))
    b = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c, generator=_g(4))
    g = dl.release_rank_k(m.numpy(), 3, epsilon=1.0, delta=1e-6, sensitivity=c * c, generator=_g(4))
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    torch.testing.assert_close(a.eigenvalues, g.eigenvalues, rtol=1e-12, atol=1e-9)
    assert g.neighbour == "declared"


def test_user_data_is_not_modified(spiked):
    _, c, m = spiked
    before = m.clone()
    dl.release_rank_k(m, 3, sensitivity=c * c, epsilon=1.0, delta=1e-6, generator=_g())
    dl.release_rank_k(m, 3, sensitivity=c * c, epsilon=1.0, delta=1e-6, mechanism="complex", generator=_g())
    assert torch.equal(m, before)


def test_save_load_round_trip(tmp_path, spiked):
    x, c, _ = spiked
    for mech in ("gaussian", "complex"):
        r = dl.release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=c, mechanism=mech, generator=_g())
        p = r.save(tmp_path / f"{mech}.npz")
        back = dl.load_release(p)
        assert torch.equal(back.eigenvalues, r.eigenvalues)
        assert torch.equal(back.eigenvectors, r.eigenvectors)
        assert back.epsilon == r.epsilon and back.noise_scale == r.noise_scale
        assert back.mechanism == mech and back.privacy_event == r.privacy_event
        if mech == "complex":
            assert torch.equal(back.hermitian_eigenvectors, r.hermitian_eigenvectors)
        with np.load(p, allow_pickle=False) as f:  # nothing pickled inside
            assert set(f.files) >= {"eigenvalues", "eigenvectors", "metadata"}
    assert sorted(q.name for q in tmp_path.iterdir()) == ["complex.npz", "gaussian.npz"]


def test_load_rejects_damaged_files(tmp_path, spiked):
    x, c, _ = spiked
    p = dl.release_rank_k(x, 2, epsilon=1.0, delta=1e-6, row_norm=c, generator=_g()).save(tmp_path / "r.npz")
    raw = p.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        dl.load_release(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="other.npz"):
        dl.load_release(tmp_path / "other.npz")
    np.savez(tmp_path / "obj.npz", metadata=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        dl.load_release(tmp_path / "obj.npz")


def test_release_files_carry_a_checksum_and_an_hmac_with_a_key(tmp_path, spiked):
    """A flipped byte in an array is refused by the checksum; a file saved with a key needs
    that key (a wrong key, no key, or a key for an unkeyed file are refused); format 1
    files (no integrity fields) still load."""
    x, c, _ = spiked
    r = dl.release_rank_k(x, 2, epsilon=1.0, delta=1e-6, row_norm=c, generator=_g())
    p = r.save(tmp_path / "r.npz")
    with np.load(p, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    flipped = data["eigenvectors"].copy()
    flipped[0, 0] = np.nextafter(flipped[0, 0], np.inf)  # one ulp: still a valid release otherwise
    np.savez(tmp_path / "flip.npz", **{**data, "eigenvectors": flipped})
    with pytest.raises(ValueError, match="flip.npz.*checksum"):
        dl.load_release(tmp_path / "flip.npz")
    key = b"k" * 32
    keyed = r.save(tmp_path / "keyed.npz", key=key)
    assert torch.equal(dl.load_release(keyed, key=key).eigenvectors, r.eigenvectors)
    with pytest.raises(ValueError, match="key"):
        dl.load_release(keyed)
    with pytest.raises(ValueError, match="HMAC"):
        dl.load_release(keyed, key=b"x" * 32)
    with pytest.raises(ValueError, match="no HMAC"):
        dl.load_release(p, key=key)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        r.save(tmp_path / "short.npz", key=b"short")
    assert not (tmp_path / "short.npz").exists()
    # format 1: the metadata object itself, with the never-filled "extra" field, no integrity
    meta = json.loads(str(data["metadata"]))["meta"]
    old = {**{k: v for k, v in meta.items() if k != "warm_start"}, "version": 1, "extra": {}}
    np.savez(tmp_path / "v1.npz", **{**data, "metadata": np.array(json.dumps(old))})
    back = dl.load_release(tmp_path / "v1.npz")
    assert torch.equal(back.eigenvectors, r.eigenvectors) and back.warm_start is None
    with pytest.raises(ValueError, match="format 1"):
        dl.load_release(tmp_path / "v1.npz", key=key)


# ---- bad input: a clear error naming the value, raised before any noise -----------------

ROWS = np.random.default_rng(0).normal(size=(20, 4))
GRAM = ROWS.T @ ROWS


def _nan_rows():
    x = ROWS.copy()
    x[13, 2] = np.nan
    return x


def _asym():
    g = GRAM.copy()
    g[0, 3] += 1.0
    return g


@pytest.mark.parametrize(
    "data, kwargs, exc, match",
    [
        (_nan_rows(), dict(row_norm=1.0), ValueError, "NaN or Inf entry; the batch was not added"),
        (ROWS[0], dict(row_norm=1.0), ValueError, "2-D array, got shape \\(4,\\)"),
        (ROWS[None], dict(row_norm=1.0), ValueError, "got shape \\(1, 20, 4\\)"),
        (ROWS, dict(sensitivity=1.0), ValueError, "square \\(d, d\\) Gram matrix, got shape \\(20, 4\\)"),
        (_asym(), dict(sensitivity=1.0), ValueError, "must be symmetric .*; it is not"),
        (GRAM * np.nan, dict(sensitivity=1.0), ValueError, "NaN or Inf entry"),
        (ROWS, dict(), ValueError, "missing privacy bound"),
        (ROWS, dict(row_norm=1.0, sensitivity=1.0), ValueError, "not both"),
        (ROWS * 1j, dict(row_norm=1.0), TypeError, "complex"),
        (GRAM * (1 + 0j), dict(sensitivity=1.0), TypeError, "complex"),
        ("rows", dict(row_norm=1.0), TypeError, "str"),
        (ROWS, dict(row_norm=-1.0), ValueError, "row_norm must be finite and > 0, got -1.0"),
        (GRAM, dict(sensitivity=float("inf")), ValueError, "sensitivity must be finite and > 0, got inf"),
    ],
)
def test_bad_data(data, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dl.release_rank_k(data, 2, epsilon=1.0, delta=1e-6, **kwargs)


@pytest.mark.parametrize(
    "k, kwargs, exc, match",
    [
        (0, {}, ValueError, "k must lie in \\[1, d\\] = \\[1, 4\\], got k=0"),
        (5, {}, ValueError, "got k=5"),
        (1.5, {}, TypeError, "k must be an integer, got 1.5"),
        (2, dict(epsilon=0.0), ValueError, "got 0.0"),
        (2, dict(epsilon=-3), ValueError, "got -3"),
        (2, dict(delta=1.0), ValueError, "got 1.0"),
        (2, dict(delta=0), ValueError, "got 0"),
        (2, dict(mechanism="wishart"), ValueError, "'wishart'"),
        (2, dict(noise_shape="gue"), ValueError, "'gue'"),
        (2, dict(mechanism="complex", noise_shape="upper_triangular"), ValueError, "real mechanism only"),
        (2, dict(neighbour="swap"), ValueError, "'swap'"),
        (2, dict(solver="magic"), ValueError, "'magic'"),
        (2, dict(calibration="classic", epsilon=1.5), ValueError, "epsilon=1.5"),
        (2, dict(dtype="float16"), ValueError, "'float16'"),
        (2, dict(psd="yes"), TypeError, "'yes'"),
        (2, dict(noise_scale=1.0), ValueError, "exactly one"),
        (2, dict(device="tpu:0"), ValueError, "tpu"),
    ],
)
def test_bad_options(k, kwargs, exc, match):
    base = dict(epsilon=1.0, delta=1e-6, row_norm=1.0)
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        dl.release_rank_k(ROWS, k, **base)


def test_conflicting_accumulator_options():
    acc = dl.GramAccumulator(row_norm=1.0, neighbour="replace").update(ROWS)
    with pytest.raises(ValueError, match="carries its own row_norm"):
        dl.release_rank_k(acc, 2, epsilon=1.0, delta=1e-6, row_norm=1.0)
    with pytest.raises(ValueError, match="differs from the accumulator's 'replace'"):
        dl.release_rank_k(acc, 2, epsilon=1.0, delta=1e-6, neighbour="add_remove")


def test_no_noise_is_drawn_when_input_is_bad():
    g = _g(0)
    state = g.get_state()
    for bad in (dict(k=9), dict(k=2, solver="nope")):
        with pytest.raises(ValueError):
            dl.release_rank_k(ROWS, epsilon=1.0, delta=1e-6, row_norm=1.0, generator=g, **bad)
    assert torch.equal(g.get_state(), state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_named():
    with pytest.raises(ValueError, match="CUDA is not available"):
        dl.release_rank_k(ROWS, 2, epsilon=1.0, delta=1e-6, row_norm=1.0, device="cuda",
                          generator=torch.Generator())


@requires_cuda
def test_cuda_release_matches_cpu_shapes_and_guarantees():
    x = torch.from_numpy(spiked_rows(3000, 256, 4, seed=1)).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for mech in ("gaussian", "complex"):
        r = dl.release_rank_k(x, 4, epsilon=1.0, delta=1e-6, row_norm=3.0, mechanism=mech, generator=gen)
        assert r.device.startswith("cuda") and r.eigenvectors.is_cuda
        v = r.eigenvectors
        torch.testing.assert_close(v.T @ v, torch.eye(4, dtype=v.dtype, device=v.device), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="generator lives on cpu"):
        dl.release_rank_k(x, 4, epsilon=1.0, delta=1e-6, row_norm=3.0, generator=torch.Generator())


@requires_cuda
def test_cuda_noise_from_worker_threads_lands_on_the_callers_stream():
    """Secure noise is drawn on host threads; each thread's current CUDA stream is its own, so
    the workers enqueued on the default stream and work the caller queued on its stream next
    (the solver) could read the matrix before the noise. Delaying the default stream exposes it."""
    d = 2048
    mech = dl.GaussianMechanism(1.0, 1.0)
    side = torch.cuda.Stream()
    m = torch.zeros(d, d, device="cuda")
    with torch.cuda.stream(side):
        torch.cuda._sleep(2_000_000_000)  # the caller's stream is busy for a while...
        out = mech.perturb_(m, generator=dl.SecureNormalSource.from_seed(1))
        snapshot = out.clone()  # ...and reads the noisy matrix on that stream
    torch.cuda.synchronize()
    assert torch.equal(snapshot, out) and float(out.abs().sum()) > 0
    with torch.cuda.stream(side):
        m2 = torch.zeros(d, d, device="cuda")
        with torch.cuda.stream(torch.cuda.default_stream()):
            torch.cuda._sleep(2_000_000_000)  # now the default stream is the slow one
        out2 = mech.perturb_(m2, generator=dl.SecureNormalSource.from_seed(2))
        snap2 = out2.clone()
    torch.cuda.synchronize()
    assert torch.equal(snap2, out2) and float(snap2.abs().sum()) > 0


# ---- Hypothesis: structural properties of every release ------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60)
@given(
    d=st.integers(2, 12),
    data=st.data(),
    mechanism=st.sampled_from(["gaussian", "complex"]),
    psd=st.booleans(),
    seed=st.integers(0, 2**31),
    log_sigma=st.floats(-3, 2),
)
def test_release_structure_property(d, data, mechanism, psd, seed, log_sigma):
    k = data.draw(st.integers(1, d))
    n = data.draw(st.integers(1, 20))
    rows = torch.randn(n, d, generator=_g(seed), dtype=torch.float64)
    r = dl.release_rank_k(rows, k, row_norm=1.0, noise_scale=10.0**log_sigma, delta=1e-6,
                          mechanism=mechanism, psd=psd, generator=_g(seed + 1))
    assert r.eigenvalues.shape == (k,) and r.eigenvectors.shape == (d, k)
    v = r.eigenvectors
    torch.testing.assert_close(v.T @ v, torch.eye(k, dtype=v.dtype), atol=1e-9, rtol=0)
    assert torch.all(r.eigenvalues[:-1] >= r.eigenvalues[1:])
    if psd:
        assert float(r.eigenvalues.min()) >= 0.0
    dense = r.to_dense()
    assert torch.allclose(dense, dense.T, atol=1e-12)
    assert int(torch.linalg.matrix_rank(dense, atol=1e-9 * (1 + float(dense.abs().max())))) <= k
    assert r.epsilon is not None and r.epsilon > 0


def test_an_integer_gram_beyond_2_53_is_refused_not_rounded_before_its_noise():
    """Found by the audit: two int64 Grams 1 apart near 2⁶⁰ (declared Δ = 1) were both rounded to
    float64 before the noise and released 256 apart."""
    m = np.full((2, 2), 2**60, dtype=np.int64)
    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        dl.release_rank_k(m, 1, sensitivity=1.0, epsilon=1.0, delta=1e-6, generator=_g())
    ok = np.full((2, 2), 2**52, dtype=np.int64)  # exact in float64
    assert dl.release_rank_k(ok, 1, sensitivity=1.0, epsilon=1.0, delta=1e-6, generator=_g()).k == 1
