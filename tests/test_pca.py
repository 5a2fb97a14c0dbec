"""PrivatePCA (scikit-learn estimator), the denoised release and the centred release."""

import math
import threading

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.utils.estimator_checks import check_estimator

import dplowrank as dl
from dplowrank.diagnostics import noise_edge, spike_estimate


@pytest.fixture(scope="module")
def digits():
    return load_digits().data / 16.0  # pixels in [0, 1]: every row has norm <= 8


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ---- scikit-learn's own checks --------------------------------------------------------------

#: Checks scikit-learn skips, each with its reason. Only the secure (default) estimator skips
#: any: its noise comes from the OS on every fit, so two fits never agree.
NONDETERMINISTIC = {"check_pipeline_consistency", "check_transformer_data_not_an_array",
                    "check_transformer_general", "check_fit_idempotent", "check_methods_subset_invariance",
                    "check_methods_sample_order_invariance", "check_n_features_in_after_fitting"}
ENVIRONMENT = {"check_array_api_input"}  # needs SCIPY_ARRAY_API=1; not about DP
#: Checks that fail by design, each for a DP reason (scikit-learn marks them "xfail").
DP_FAILS = {
    "check_estimators_empty_data_messages": (
        "an empty dataset is fitted, not refused: under add/remove a dataset of 0 rows neighbours "
        "one of 1 row, and refusing one while fitting the other would reveal a bit of the private count"),
}


@pytest.mark.parametrize("estimator", [
    dl.PrivatePCA(1, epsilon=1.0, data_norm=10.0, random_state=0),
    dl.PrivatePCA("auto", epsilon=2.0, data_norm=10.0, random_state=1, mechanism="complex"),
    dl.PrivatePCA(epsilon=1.0, data_norm=10.0),  # secure noise: non-deterministic
], ids=["seeded", "complex-auto", "secure"])
def test_check_estimator(estimator):
    results = check_estimator(estimator, on_fail=None, expected_failed_checks=DP_FAILS)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed
    assert {r["check_name"] for r in results if r["status"] == "xfail"} == set(DP_FAILS)
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    allowed = ENVIRONMENT | (NONDETERMINISTIC if estimator.random_state is None else set())
    assert skipped <= allowed, skipped - allowed
    assert len(results) > 40


# ---- the reference: ε = ∞ is scikit-learn's PCA -----------------------------------------------

@pytest.mark.parametrize("n_components", [8, 0.9, None])
def test_infinite_epsilon_equals_sklearn(digits, n_components):
    ours = dl.PrivatePCA(n_components, epsilon=math.inf, data_norm=8.0).fit(digits)
    ref = PCA(n_components, svd_solver="full").fit(digits)
    assert ours.n_components_ == ref.n_components_
    top = min(ref.n_components_, 40)  # digits has constant pixels: its last eigenvalues are 0, 0, 0
    cos = np.abs(np.sum(ours.components_[:top] * ref.components_[:top], axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-9)  # up to sign
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=1e-9, atol=1e-6)  # √roundoff
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-12)
    if ref.n_components_ < digits.shape[1]:
        assert ours.noise_variance_ == pytest.approx(ref.noise_variance_, rel=1e-9)
        assert ours.score(digits) == pytest.approx(ref.score(digits), rel=1e-9)
        np.testing.assert_allclose(ours.get_covariance(), ref.get_covariance(), atol=1e-9)
    z = ours.transform(digits)
    np.testing.assert_allclose(np.abs(z[:, :top]), np.abs(ref.transform(digits)[:, :top]), atol=1e-8)
    np.testing.assert_allclose(ours.inverse_transform(z), ref.inverse_transform(ref.transform(digits)), atol=1e-8)


def test_public_mean_and_uncentred(digits):
    mu = digits.mean(axis=0)  # declared public here for the test
    ours = dl.PrivatePCA(5, epsilon=math.inf, data_norm=8.0, centering="public", mean=mu).fit(digits)
    ref = PCA(5).fit(digits)
    np.testing.assert_allclose(np.abs(np.sum(ours.components_ * ref.components_, axis=1)), 1.0, atol=1e-9)
    raw = dl.PrivatePCA(3, epsilon=math.inf, data_norm=8.0, centering="none").fit(digits)
    _w, v = np.linalg.eigh(digits.T @ digits)
    np.testing.assert_allclose(np.abs(np.sum(raw.components_ * v[:, ::-1][:, :3].T, axis=1)), 1.0, atol=1e-9)
    assert np.all(raw.mean_ == 0)


# ---- privacy plumbing -----------------------------------------------------------------------

def test_data_norm_is_required_and_nothing_is_spent(digits):
    budget = dl.PrivacyBudget(1.0, 1e-5)
    with pytest.raises(ValueError, match="data_norm is required"):
        dl.PrivatePCA(epsilon=1.0, budget=budget).fit(digits)
    assert budget.spent_epsilon() == 0.0


@pytest.mark.parametrize("bad, match", [
    (dict(epsilon=0.0), "epsilon"), (dict(epsilon=float("nan")), "epsilon"), (dict(delta=1.0), "delta"),
    (dict(data_norm=-1.0), "data_norm"), (dict(centering="median"), "centering"),
    (dict(centering="public"), "mean"), (dict(mean=np.zeros(64)), "mean"), (dict(n_components=65), "n_components"),
    (dict(n_components=1.5), "n_components"), (dict(n_components="all"), "n_components"),
    (dict(mechanism="laplace"), "mechanism"), (dict(mechanism="complex", noise_shape="upper_triangular"), "noise_shape"),
    (dict(n_samples=10), "n_samples"), (dict(weights={"gramm": 1.0}), "weights"),
    (dict(random_state=np.random.RandomState(0)), "random_state"), (dict(denoise=1), "denoise"),
])
def test_bad_parameters_are_refused_before_any_spending(digits, bad, match):
    budget = dl.PrivacyBudget(1.0, 1e-5)
    params = dict(epsilon=0.5, data_norm=8.0, budget=budget) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        dl.PrivatePCA(**params).fit(digits)
    assert budget.spent_epsilon() == 0.0


def test_errors_never_contain_private_values():
    x = np.full((5, 3), 123.456789)
    x[2, 1] = np.nan
    with pytest.raises(ValueError) as err:
        dl.PrivatePCA(epsilon=1.0, data_norm=1.0).fit(x)
    assert "123.45" not in str(err.value)


def test_messages_never_quote_the_rows():
    # scikit-learn's own messages would print the array (1-D, complex, strings) or the row count
    secret = 0.123456789
    cases = [np.array([secret, 0.2, 0.3]), np.array([[secret + 1j, 0.0]]),
             np.array([[secret, "hidden-text"]], dtype=object), np.zeros((7, 0))]
    for x in cases:
        with pytest.raises((ValueError, TypeError)) as err:
            dl.PrivatePCA(epsilon=1.0, data_norm=1.0).fit(x)
        msg = str(err.value)
        assert "0.1234" not in msg and "hidden-text" not in msg and "(7, 0)" not in msg, msg
    pca = dl.PrivatePCA(1, epsilon=1.0, data_norm=1.0, random_state=0).fit(np.eye(3))
    for z in (np.array([["alice"]], dtype=object), np.zeros((12345, 2)), np.array([[1j]])):
        with pytest.raises((ValueError, TypeError)) as err:
            pca.inverse_transform(z)  # projections of private rows
        assert "alice" not in str(err.value) and "12345" not in str(err.value)


def test_an_empty_dataset_is_fitted_like_any_other():
    # refusing n = 0 while fitting n = 1 would reveal one bit of the private count
    budget = dl.PrivacyBudget(2.0, 1e-5)
    pca = dl.PrivatePCA(2, epsilon=1.0, data_norm=1.0, budget=budget).fit(np.zeros((0, 4)))
    assert pca.components_.shape == (2, 4) and pca.n_samples_ >= 1.0
    assert budget.spent_epsilon() == pytest.approx(1.0, rel=1e-6)
    one = dl.PrivatePCA(2, epsilon=1.0, data_norm=1.0).fit(np.ones((1, 4)))
    assert one.components_.shape == (2, 4)


@pytest.mark.parametrize("default", [torch.float32, torch.bfloat16, torch.float16])
def test_the_count_is_exact_before_its_noise_whatever_the_default_dtype(default):
    # n = 2**24 + 3 (float32 rounds it to 2**24 + 4) and n = 65793 (bfloat16: 66048)
    seen = []
    import dplowrank.pca._estimator as est

    real = est.gaussian_vector_noise

    def spy(x, noise_scale, *, source):
        seen.append(x.clone())
        return real(x, noise_scale, source=source)

    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(default)
        for n in (65793, 2**24 + 3):
            seen.clear()
            rows = np.zeros((n, 1), dtype=np.float32)
            est.gaussian_vector_noise = spy
            try:
                dl.PrivatePCA(1, epsilon=1.0, data_norm=1.0, centering="none", random_state=0).fit(rows)
            finally:
                est.gaussian_vector_noise = real
            assert seen[0].dtype == torch.float64 and float(seen[0][0]) == n
    finally:
        torch.set_default_dtype(before)


def test_the_estimator_is_its_own_accounting_event(digits):
    budget = dl.PrivacyBudget(1.0, 1e-5)
    pca = dl.PrivatePCA(3, epsilon=0.5, data_norm=8.0, random_state=0).fit(digits)
    budget.spend(pca)  # the whole plan: ε = 0.5 exactly
    assert budget.spent_epsilon() == pytest.approx(0.5, rel=1e-6)
    assert pca.release_.epsilon < 0.5  # the Gram's share alone: not what to charge


def test_budget_is_charged_once_with_the_whole_plan(digits):
    budget = dl.PrivacyBudget(2.0, 1e-5)
    pca = dl.PrivatePCA(4, epsilon=1.0, delta=1e-5, data_norm=8.0, budget=budget, random_state=0).fit(digits)
    # the plan composes to (1, 1e-5): the budget now shows ε = 1 at δ = 1e-5
    assert budget.spent_epsilon() == pytest.approx(1.0, rel=1e-6)
    assert len(pca.privacy_event_.events) == 3  # gram, mean, count
    with pytest.raises(dl.BudgetExceededError):
        dl.PrivatePCA(4, epsilon=1.9, delta=1e-5, data_norm=8.0, budget=budget).fit(digits)
    assert budget.spent_epsilon() == pytest.approx(1.0, rel=1e-6)  # the refusal charged nothing


def test_concurrent_fits_never_overspend(digits):
    budget = dl.PrivacyBudget(1.0, 1e-5)
    ok, refused = [], []

    def fit():
        try:
            dl.PrivatePCA(2, epsilon=0.8, delta=5e-6, data_norm=8.0, budget=budget).fit(digits[:300])
            ok.append(1)
        except dl.BudgetExceededError:
            refused.append(1)

    threads = [threading.Thread(target=fit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 1 and len(refused) == 3
    assert budget.spent_epsilon() <= 1.0


def test_public_n_makes_the_guarantee_replace_one(digits):
    pca = dl.PrivatePCA(3, epsilon=1.0, data_norm=8.0, n_samples=len(digits), random_state=0).fit(digits)
    assert {e.neighbour for e in pca.privacy_event_.events} == {"replace"}
    assert len(pca.privacy_event_.events) == 2  # no count release
    assert pca.n_samples_ == len(digits)


def test_randomness_labels(digits):
    assert dl.PrivatePCA(2, data_norm=8.0).fit(digits).randomness_ == "secure"
    seeded = dl.PrivatePCA(2, data_norm=8.0, random_state=3).fit(digits)
    assert seeded.randomness_ == "seeded" and not seeded.for_publication
    again = dl.PrivatePCA(2, data_norm=8.0, random_state=3).fit(digits)
    np.testing.assert_array_equal(seeded.components_, again.components_)
    a = dl.PrivatePCA(2, data_norm=8.0).fit(digits)
    b = dl.PrivatePCA(2, data_norm=8.0).fit(digits)
    assert not np.array_equal(a.components_, b.components_)


def test_clipping_bounds_each_rows_influence():
    # one huge row moves the fit no more than a row of norm C would (it is clipped to C)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) * 0.3
    big = np.vstack([x, 1e6 * np.ones(6)])
    cap = np.vstack([x, np.ones(6) / math.sqrt(6) * 2.0])
    a = dl.PrivatePCA(2, epsilon=math.inf, data_norm=2.0).fit(big)
    b = dl.PrivatePCA(2, epsilon=math.inf, data_norm=2.0).fit(cap)
    np.testing.assert_allclose(a.explained_variance_, b.explained_variance_, rtol=1e-4)


def test_torch_in_torch_out(digits):
    t = torch.from_numpy(digits)
    pca = dl.PrivatePCA(3, epsilon=2.0, data_norm=8.0, random_state=0)
    z = pca.fit_transform(t)
    assert isinstance(z, torch.Tensor) and z.shape == (len(digits), 3)
    assert isinstance(pca.components_, torch.Tensor)
    assert isinstance(pca.inverse_transform(z), torch.Tensor)
    assert isinstance(pca.transform(digits), np.ndarray)  # numpy in, numpy out


def test_auto_rank_is_the_signal_rank(digits):
    pca = dl.PrivatePCA(epsilon=4.0, data_norm=8.0, random_state=0).fit(digits)
    assert pca.n_components_ == pca.release_.k
    full = dl.PrivatePCA(None, epsilon=4.0, data_norm=8.0, random_state=0, denoise=False).fit(digits)
    assert pca.n_components_ == max(full.release_.signal_rank, 1)
    assert np.all(pca.explained_variance_ > 0)
    # more budget, more signal
    big = dl.PrivatePCA(epsilon=64.0, data_norm=8.0, random_state=0).fit(digits)
    assert big.n_components_ > pca.n_components_


def test_private_pca_captures_most_variance_at_large_epsilon(digits):
    s = np.cov(digits.T)
    opt = np.sort(np.linalg.eigvalsh(s))[::-1][:8].sum()
    caps = []
    for seed in range(5):
        u = dl.PrivatePCA(8, epsilon=16.0, data_norm=8.0, random_state=seed).fit(digits).components_
        caps.append(np.trace(u @ s @ u.T) / opt)
    assert np.mean(caps) > 0.9


# ---- the denoised release -------------------------------------------------------------------

def test_spike_estimate_inverts_the_outlier_location():
    e = 10.0
    theta = torch.tensor([5.5, 8.0, 30.0, 100.0], dtype=torch.float64)  # above e/2
    lam = theta + e * e / (4 * theta)
    est = spike_estimate(torch.cat([lam, torch.tensor([9.0, -3.0], dtype=torch.float64)]), e)
    np.testing.assert_allclose(est.theta[:4], theta, rtol=1e-12)
    np.testing.assert_allclose(est.shrunk[:4], theta * (1 - e * e / (4 * theta * theta)), rtol=1e-12)
    assert est.rank == 4 and float(est.shrunk[4:].abs().sum()) == 0.0
    assert float(spike_estimate(torch.tensor([e]), e).shrunk[0]) == 0.0  # continuous at the edge


def test_denoised_release_matches_the_spiked_model():
    # Planted spikes well above the edge: the shrunk eigenvalues estimate θ·overlap² and the
    # debiased θ lies within a few percent of the truth; the raw ones are biased up by e²/4θ.
    d, sigma = 300, 1.0
    e = noise_edge("isotropic", d, sigma)
    theta = np.array([4.0, 2.5, 1.5]) * e
    g = _g(0)
    u, _ = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))
    m = (u * torch.tensor(theta)) @ u.T
    raw_err, den_err = [], []
    for seed in range(6):
        r = dl.release_rank_k(m, 6, sensitivity=1.0, noise_scale=sigma, generator=_g(seed + 1))
        den = r.denoised()
        est = spike_estimate(r.eigenvalues, e)
        np.testing.assert_allclose(est.theta[:3].numpy(), theta, rtol=0.1)  # finite d: ~6 % at 1.5 e
        assert r.signal_rank == 3 and den.k == 6 and np.all(den.eigenvalues[3:].numpy() == 0)
        assert den.signal_rank == 3  # read from the noisy spectrum the denoised release keeps
        torch.testing.assert_close(den.denoised().eigenvalues, den.eigenvalues)  # idempotent
        raw_err.append(float(torch.linalg.matrix_norm(r.to_dense() - m)))
        den_err.append(float(torch.linalg.matrix_norm(den.to_dense() - m)))
    assert np.mean(den_err) < 0.8 * np.mean(raw_err)


def test_denoised_auto_rank_and_bad_k():
    # (seed 0 is one of the ≈ 0.5 % of draws whose top noise eigenvalue crosses the threshold)
    r = dl.release_rank_k(torch.zeros(40, 40, dtype=torch.float64), 5, sensitivity=1.0, noise_scale=1.0,
                          generator=_g(1))
    auto = r.denoised("auto")
    assert auto.k == 1 and float(auto.eigenvalues[0]) == 0.0  # pure noise: nothing kept
    assert auto.diagnose().k == 1
    for bad in (0, 6, "max", True, 2.0):
        with pytest.raises(ValueError, match="k must be"):
            r.denoised(bad)


def test_denoised_complex_release():
    d, sigma = 120, 1.0
    e = noise_edge("hermitian", d, sigma)
    u, _ = torch.linalg.qr(torch.randn(d, 2, generator=_g(4), dtype=torch.float64))
    m = (u * torch.tensor([3.0 * e, 2.0 * e], dtype=torch.float64)) @ u.T
    r = dl.release_rank_k(m, 4, sensitivity=1.0, noise_scale=sigma, mechanism="complex", generator=_g(5))
    den = r.denoised(2)
    assert den.k == 2 and den.hermitian_eigenvalues.shape == (2,)
    assert float(torch.linalg.matrix_norm(den.to_dense() - m)) < float(torch.linalg.matrix_norm(r.to_dense() - m))


def test_denoised_release_round_trips_through_a_file(tmp_path, digits):
    r = dl.release_rank_k(digits, 8, epsilon=1.0, delta=1e-5, row_norm=8.0, generator=_g(0)).denoised()
    back = dl.load_release(r.save(tmp_path / "den.npz"))
    torch.testing.assert_close(back.eigenvalues, r.eigenvalues)
    assert back.psd


def test_denoising_beats_textbook_analyze_gauss_on_digits(digits):
    # Acceptance: the rank-8 release's Frobenius error on digits at (1, 1e-5), mean over 30
    # draws, ≤ 0.45 × Analyze Gauss with the classic σ and upper-triangular noise.
    m = digits.T @ digits
    w, v = np.linalg.eigh(m)
    mk = (v[:, -8:] * w[-8:]) @ v[:, -8:].T
    classic = 64.0 * math.sqrt(2 * math.log(1.25 / 1e-5))  # Δ = C² = 64, ε = 1
    ours, textbook = [], []
    for seed in range(30):
        r = dl.release_rank_k(digits, 8, epsilon=1.0, delta=1e-5, row_norm=8.0, generator=_g(seed)).denoised()
        ours.append(np.linalg.norm(r.to_dense().numpy() - mk))
        ag = dl.release_rank_k(digits, 8, noise_scale=classic, row_norm=8.0, noise_shape="upper_triangular",
                               generator=_g(1000 + seed))
        textbook.append(np.linalg.norm(ag.to_dense().numpy() - mk))
    assert np.mean(ours) <= 0.45 * np.mean(textbook)


# ---- the centred release ----------------------------------------------------------------------

def test_center_subtracts_the_rank_one_term_after_the_noise(digits):
    mu, n = digits.mean(axis=0), float(len(digits))
    a = dl.release_rank_k(digits, 5, epsilon=1.0, delta=1e-5, row_norm=8.0, generator=_g(2), center=(mu, n))
    b = dl.release_rank_k(digits, 64, epsilon=1.0, delta=1e-5, row_norm=8.0, generator=_g(2))
    centred = b.to_dense() - n * torch.outer(torch.from_numpy(mu), torch.from_numpy(mu))
    lam = torch.linalg.eigvalsh(centred).flip(0)[:5]
    torch.testing.assert_close(a.eigenvalues, lam, rtol=1e-8, atol=1e-6)
    for bad in [(mu[:3], n), (mu, -1.0), mu, (np.full(64, np.nan), n)]:
        with pytest.raises((ValueError, TypeError), match="center"):
            dl.release_rank_k(digits, 5, epsilon=1.0, delta=1e-5, row_norm=8.0, center=bad)


def test_report_tells_both_ranks(digits):
    r = dl.release_rank_k(digits, 8, epsilon=1.0, delta=1e-5, row_norm=8.0, generator=_g(0))
    rep = r.diagnose()
    assert rep.recommended_k == r.signal_rank >= 1 and rep.certified_k == 0
    text = r.report()
    assert "recommended k:" in text and "certified k:" in text and "inside the noise bulk" in text
