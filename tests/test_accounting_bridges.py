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
    assert acc.epsilon(delta) == pytest.approx(eps_o, rel=1e-5)


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
    assert acc.epsilon(1e-5) == pytest.approx(o.get_epsilon(1e-5), rel=1e-6)
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
