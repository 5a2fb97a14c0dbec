"""Accounting against independent accountants: dp_accounting (PLD and RDP) and opacus.

These need the optional extras (``pip install 'dplowrank[accounting]'``); without them the
whole module is skipped, and the core accounting tests in the other test_accounting*
modules still run.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dplowrank.accounting import (
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyAccountant,
    SelfComposedEvent,
)
from dplowrank.privacy import DEFAULT_ORDERS, rdp_to_epsilon, sampled_gaussian_rdp

dpa = pytest.importorskip("dp_accounting", reason="dp_accounting (optional extra) not installed")
opacus_rdp = pytest.importorskip("opacus.accountants.analysis.rdp", reason="opacus (optional extra) not installed")
from dp_accounting import rdp as dpa_rdp  # noqa: E402

from dplowrank.accounting import bridges  # noqa: E402


def ten_at_three():
    return PrivacyAccountant([GaussianEvent(3.0)] * 10)


def test_pld_agrees_with_exact_gdp():
    assert bridges.pld_epsilon(ten_at_three(), 1e-5) == pytest.approx(4.6530, abs=1e-3)


event_lists = st.lists(
    st.one_of(
        st.builds(GaussianEvent, st.floats(0.5, 30.0)),
        st.builds(lambda z, n: SelfComposedEvent(GaussianEvent(z), n), st.floats(1.0, 30.0), st.integers(1, 20)),
    ),
    min_size=1, max_size=6,
)


def _flat(events):
    for e in events:
        if isinstance(e, SelfComposedEvent):
            yield e.event, e.count
        else:
            yield e, 1


@settings(max_examples=25)
@given(events=event_lists, log_delta=st.floats(-10, -3))
def test_gaussian_lists_against_dp_accounting_and_opacus(events, log_delta):
    delta = 10.0**log_delta
    acc = PrivacyAccountant(events)
    # exact GDP vs dp_accounting's PLD (which is an upper bound with discretisation error)
    pld = bridges.pld_epsilon(acc, delta)
    # (gdp_delta is padded by a relative 1e-7 to stay above the exact curve: ε rises by less)
    assert acc.epsilon(delta) <= pld * (1 + 1e-7) + 1e-9
    assert acc.epsilon(delta) == pytest.approx(pld, abs=2e-3 * max(1.0, pld))
    # RDP equals opacus' RDP accountant on the same orders
    hist_rdp = sum(
        n * opacus_rdp.compute_rdp(q=1.0, noise_multiplier=e.noise_multiplier, steps=1, orders=list(DEFAULT_ORDERS))
        for e, n in _flat(events)
    )
    eps_opacus, _ = opacus_rdp.get_privacy_spent(orders=list(DEFAULT_ORDERS), rdp=hist_rdp, delta=delta)
    assert acc.epsilon(delta, method="rdp") == pytest.approx(eps_opacus, rel=1e-9, abs=1e-12)


@settings(max_examples=15)
@given(q=st.floats(1e-4, 0.5), z=st.floats(0.5, 8.0), steps=st.integers(1, 2000), log_delta=st.floats(-9, -4))
def test_subsampled_steps_against_opacus(q, z, steps, log_delta):
    delta = 10.0**log_delta
    ours = sampled_gaussian_rdp(q, z, DEFAULT_ORDERS)
    theirs = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(DEFAULT_ORDERS))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)
    acc = PrivacyAccountant([SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)])
    eps_o, _ = opacus_rdp.get_privacy_spent(orders=list(DEFAULT_ORDERS), rdp=steps * theirs, delta=delta)
    assert acc.epsilon(delta, method="rdp") == pytest.approx(eps_o, rel=1e-5)


# A small grid of DP-SGD steps, so that both sides' per-step RDP caches are reused.
_steps = st.builds(
    PoissonSampledEvent,
    st.sampled_from([1e-3, 0.01, 0.05, 0.2]),
    st.builds(GaussianEvent, st.sampled_from([0.8, 1.1, 2.0, 4.0])),
)
mixed_lists = st.lists(
    st.one_of(
        st.builds(GaussianEvent, st.floats(1.0, 30.0)),
        st.builds(SelfComposedEvent, st.builds(GaussianEvent, st.floats(2.0, 30.0)), st.integers(1, 10)),
        _steps,
        st.builds(SelfComposedEvent, _steps, st.integers(1, 3000)),
    ),
    min_size=1, max_size=6,
).map(lambda xs: ComposedEvent(tuple(xs)))


@settings(max_examples=20)
@given(event=mixed_lists, log_delta=st.floats(-10, -3), epsilon=st.floats(0.5, 8.0))
def test_mixed_gaussian_and_subsampled_against_dp_accounting_rdp(event, log_delta, epsilon):
    """Gaussian releases and Poisson-subsampled steps, composed, against dp_accounting's RdpAccountant."""
    delta = 10.0**log_delta
    acc = PrivacyAccountant([event])
    theirs = dpa_rdp.RdpAccountant(orders=list(DEFAULT_ORDERS))
    theirs.compose(bridges.to_dp_accounting(acc))
    r_theirs = np.asarray(theirs._rdp, dtype=float)  # shape: (len(DEFAULT_ORDERS),)
    r_ours = acc.rdp()
    orders = np.asarray(DEFAULT_ORDERS)
    # Integer orders: both use the exact binomial sum (Mironov, Talwar & Zhang 2019, Eq. (8)).
    integer = np.array([float(a).is_integer() for a in DEFAULT_ORDERS])
    np.testing.assert_allclose(r_ours[integer], r_theirs[integer], rtol=1e-6, atol=1e-12)
    # Fractional orders: dp_accounting 1.6 sums the Sec. 3.3 series with every term made
    # positive, an upper bound (up to ~40% above near α = 1; sometimes it gives up: inf).
    # Ours is the exact value (mpmath and opacus agree, test_subsampled_steps_against_opacus
    # and test_accounting.py::test_sampled_rdp_against_mpmath), so never above theirs.
    assert np.all(r_ours <= r_theirs * (1 + 1e-6) + 1e-12)
    # The same conversion (Canonne, Kamath & Steinke 2020, Prop. 12) on the same integer-order
    # RDP gives the same ε, unless dp_accounting's KL shortcut (ε = 0 once
    # δ² + expm1(−RDP) > 0) applies, which dplowrank does not use.
    eps_int_t, _ = dpa_rdp.rdp_privacy_accountant.compute_epsilon(orders[integer], r_theirs[integer], delta)
    eps_int_o = rdp_to_epsilon(r_ours[integer], orders[integer], delta)[0]
    if eps_int_t > 0:
        assert eps_int_o == pytest.approx(eps_int_t, rel=1e-6, abs=1e-9)
    # over all orders ours is at most theirs (same orders, smaller or equal RDP)
    eps_t = theirs.get_epsilon(delta)
    if eps_t > 0:
        assert acc.epsilon(delta, method="rdp") <= eps_t * (1 + 1e-6) + 1e-9
        assert acc.delta(epsilon, method="rdp") <= theirs.get_delta(epsilon) * (1 + 1e-6) + 1e-15
    # and the bridge round-trips the mixed composition exactly
    assert bridges.from_dp_accounting(bridges.to_dp_accounting(event), None) == event


def test_opacus_history_and_dp_accounting_round_trip():
    from opacus.accountants import RDPAccountant

    o = RDPAccountant()
    o.history = [(1.1, 0.01, 500), (2.0, 1.0, 3)]
    events = bridges.from_opacus(o)
    acc = PrivacyAccountant([events])
    assert acc.epsilon(1e-5, method="rdp") == pytest.approx(o.get_epsilon(1e-5), rel=1e-6)
    assert acc.epsilon(1e-5) < acc.epsilon(1e-5, method="rdp")  # "auto" takes the tighter PLD
    back = bridges.from_dp_accounting(bridges.to_dp_accounting(acc), "add_remove")
    assert back == acc.composed_event()
    with pytest.raises(TypeError, match="history"):
        bridges.from_opacus(object())


def test_zero_and_full_sampling_match_dp_accounting():
    """q = 0 costs nothing and q = 1 is the plain Gaussian, as in dp_accounting's PLD."""
    full = PrivacyAccountant([SelfComposedEvent(PoissonSampledEvent(1.0, GaussianEvent(3.0)), 10)])
    assert full.epsilon(1e-5) == pytest.approx(bridges.pld_epsilon(full, 1e-5), abs=1e-3)
    none = PrivacyAccountant([PoissonSampledEvent(0.0, GaussianEvent(0.5))])
    assert none.epsilon(1e-5) == 0.0 == pytest.approx(bridges.pld_epsilon(none, 1e-5), abs=1e-9)
    assert math.isfinite(full.epsilon(1e-5, method="gdp"))


# ---- the "pld" method of the accountant ----------------------------------------------------------


def _exact_sampled_delta(q: float, sigma: float, eps: float) -> float:
    """δ(ε) of one Poisson-subsampled Gaussian step under add/remove neighbours, in closed form
    with mpmath (independent of dp_accounting): the larger hockey-stick divergence of
    P = (1 − q)N(0, σ²) + qN(1, σ²) and Q = N(0, σ²), in either order. P/Q is increasing in x,
    so each divergence is one tail integral."""
    import mpmath as mp

    mp.mp.dps = 50
    q, s, e = mp.mpf(q), mp.mpf(sigma), mp.mpf(eps)
    tail = lambda t: mp.ncdf(-t)  # noqa: E731
    # H_ε(P‖Q): P/Q > e^ε for x > a
    a = s * s * mp.log((mp.e**e - (1 - q)) / q) + mp.mpf(1) / 2
    h_pq = (1 - q) * tail(a / s) + q * tail((a - 1) / s) - mp.e**e * tail(a / s)
    # H_ε(Q‖P): Q/P > e^ε for x < b, where P/Q < e^(−ε) (possible only if e^(−ε) > 1 − q)
    h_qp = mp.mpf(0)
    if mp.e ** (-e) > 1 - q:
        b = s * s * mp.log((mp.e ** (-e) - (1 - q)) / q) + mp.mpf(1) / 2
        h_qp = mp.ncdf(b / s) - mp.e**e * ((1 - q) * mp.ncdf(b / s) + q * mp.ncdf((b - 1) / s))
    return float(max(h_pq, h_qp))


@pytest.mark.parametrize(("q", "sigma", "eps"), [(0.01, 1.0, 0.5), (0.1, 0.8, 1.0), (0.3, 2.0, 0.2), (0.05, 0.5, 2.0)])
def test_pld_of_one_subsampled_step_bounds_the_exact_curve(q, sigma, eps):
    """The accountant's PLD δ(ε) is an upper bound on the exact δ of a subsampled Gaussian step
    (closed form, mpmath), and a tight one (within 1% plus the discretisation's 1e-6)."""
    acc = PrivacyAccountant([PoissonSampledEvent(q, GaussianEvent(sigma))])
    exact = _exact_sampled_delta(q, sigma, eps)
    got = acc.delta(eps, method="pld")
    assert got >= exact
    assert got <= exact * 1.01 + 1e-6
    assert acc.delta(eps) <= acc.delta(eps, method="rdp")


def test_pld_of_gaussian_releases_bounds_the_exact_gdp_curve():
    """Without subsampling the PLD (merged into one μ-GDP Gaussian) is above the exact curve
    (mpmath) and "auto" keeps the exact GDP, which is tighter still."""
    import mpmath as mp

    mp.mp.dps = 50
    acc = PrivacyAccountant([GaussianEvent(2.0), GaussianEvent(3.0)] * 3)
    mu = mp.sqrt(3 * (mp.mpf(1) / 4 + mp.mpf(1) / 9))
    for eps in (0.3, 1.0, 3.0):
        e = mp.mpf(eps)
        exact = float(mp.ncdf(-e / mu + mu / 2) - mp.e**e * mp.ncdf(-e / mu - mu / 2))
        assert acc.delta(eps, method="pld") >= exact
        assert acc.delta(eps) == acc.delta(eps, method="gdp") >= exact
    assert "pld" not in acc.valid_methods()


def test_auto_prices_a_release_plus_dpsgd_by_pld_when_tighter():
    """A Gaussian release plus DP-SGD: "auto" is the PLD figure, below RDP, and agrees with
    dp_accounting's own PLD accountant on the same events (which composes every release
    separately rather than merging them exactly)."""
    release = GaussianEvent(3.0)
    steps = SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 1000)
    acc = PrivacyAccountant([release, steps])
    rep = acc.report(1e-5)
    assert set(rep) == {"rdp", "pld"}
    assert rep["rdp"] == pytest.approx(2.224, abs=1e-3)  # RDP over opacus' orders
    assert acc.epsilon(1e-5) == rep["pld"] < 0.93 * rep["rdp"]  # 2.024
    assert rep["pld"] == pytest.approx(bridges.pld_epsilon(acc, 1e-5), abs=2e-3)
    # ε(δ) and δ(ε) are consistent: the padded δ at the reported ε is at most δ
    assert acc.delta(rep["pld"] * (1 + 1e-6)) <= 1e-5


def test_pld_failure_leaves_auto_on_rdp(monkeypatch):
    """A record the PLD cannot price (dp_accounting failing, a run too long to discretise) makes
    "auto" fall back to RDP; asking for "pld" explicitly raises."""
    from dplowrank.accounting import _accountant

    acc = PrivacyAccountant([SelfComposedEvent(PoissonSampledEvent(0.02, GaussianEvent(1.0)), 50)])
    monkeypatch.setattr(_accountant, "_PLD_MAX_COUNT", 10)
    assert acc.epsilon(1e-5) == acc.epsilon(1e-5, method="rdp")
    assert acc.delta(2.0) == acc.delta(2.0, method="rdp")
    with pytest.raises(ValueError, match="steps exceed"):
        acc.epsilon(1e-5, method="pld")


def test_budget_auto_spends_by_pld(tmp_path):
    """A ledger priced "auto" affords DP-SGD steps that RDP would refuse, and its file says "auto"."""
    from dplowrank import BudgetExceededError, PrivacyBudget

    steps = SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 400)
    probe = PrivacyAccountant([GaussianEvent(4.0), steps])
    pld, rdp = probe.epsilon(1e-5, method="pld"), probe.epsilon(1e-5, method="rdp")
    assert pld < rdp
    cap = (pld + rdp) / 2
    auto = PrivacyBudget(cap, 1e-5, path=tmp_path / "auto.json")
    auto.spend(GaussianEvent(4.0))
    auto.spend(steps)
    assert auto.spent_epsilon() == pytest.approx(pld, rel=1e-9)
    strict = PrivacyBudget(cap, 1e-5, method="rdp")
    strict.spend(GaussianEvent(4.0))
    with pytest.raises(BudgetExceededError):
        strict.spend(steps)


def test_pld_is_not_trusted_below_its_numerical_accuracy():
    """dp_accounting's FFT self-composition loses the far tail of long runs (an audit measured
    true δ 2.2e-12 – 2.6e-12 where its PLD said 1e-12, q = 0.01, z = 1, 10⁵ steps; rigorous
    lower bound on the true ε(1e-12): 37.44). The PLD's δ is padded by 1e-15 per step and ε(δ)
    falls back to RDP below 100 × that pad."""
    from dplowrank import PrivacyBudget

    long_run = PrivacyAccountant().add(PoissonSampledEvent(0.01, GaussianEvent(1.0)), count=10**5)
    assert long_run.epsilon(1e-12) == long_run.epsilon(1e-12, method="rdp") >= 37.44
    with pytest.raises(ValueError, match="below what the PLD of this record resolves"):
        long_run.epsilon(1e-12, method="pld")
    # 10⁷ steps at q = 1e-4, z = 0.8: the PLD said ε(1e-12) = 4.05 where the true value is ≈ 4.31
    step = PoissonSampledEvent(1e-4, GaussianEvent(0.8))
    budget = PrivacyBudget(4.06, 1e-12)
    assert not budget.can_afford(step, count=10**7)
    assert PrivacyAccountant().add(step, count=10**7).epsilon(1e-12) > 4.31
    # at an ordinary δ the PLD still prices DP-SGD, padded: never above RDP, never below the unpadded PLD
    ordinary = PrivacyAccountant().add(PoissonSampledEvent(0.01, GaussianEvent(1.1)), count=1000)
    assert ordinary.epsilon(1e-5) < ordinary.epsilon(1e-5, method="rdp")
    assert ordinary.epsilon(1e-5) >= bridges.pld_epsilon(ordinary, 1e-5) - 1e-3
    assert ordinary.delta(1.0) >= 1e-15 * 1001


def test_plan_dpsgd_agrees_with_opacus_calibration_on_an_empty_rdp_budget():
    """opacus' get_noise_multiplier (its RDP accountant) and PrivacyBudget.plan_dpsgd on an empty
    budget priced by RDP find the same z: both bisect the same RDP curve (opacus to its ε
    tolerance, so its z is within that of ours, and never below ours by more than it)."""
    from opacus.accountants.utils import get_noise_multiplier

    from dplowrank import PrivacyBudget

    for eps, q, steps in [(2.0, 0.01, 1000), (8.0, 256 / 60_000, 3000)]:
        theirs = get_noise_multiplier(target_epsilon=eps, target_delta=1e-5, sample_rate=q, steps=steps,
                                      accountant="rdp", epsilon_tolerance=1e-4)
        ours = PrivacyBudget(eps, 1e-5, method="rdp").plan_dpsgd(q, steps)
        assert ours == pytest.approx(theirs, rel=2e-3)
        if eps == 2.0:  # with the PLD ("auto") the same budget affords less noise
            assert PrivacyBudget(eps, 1e-5).plan_dpsgd(q, steps) < ours
