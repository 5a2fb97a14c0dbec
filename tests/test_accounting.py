"""Accounting: reference values, independent accountants, Hypothesis properties, budgets, ledgers."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dplowrank as dl
from dplowrank.accounting import (
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyAccountant,
    SelfComposedEvent,
    event_from_dict,
)
from dplowrank.accounting._rdp import DEFAULT_ORDERS, sampled_gaussian_rdp


def ten_at_three():
    return PrivacyAccountant([GaussianEvent(3.0)] * 10)


def test_design_reference_values():
    acc = ten_at_three()
    assert round(acc.epsilon(1e-5), 4) == 4.6530
    assert round(acc.epsilon(1e-5, method="gdp"), 4) == 4.6530
    assert round(acc.epsilon(1e-5, method="rdp"), 4) == 5.0239
    one = PrivacyAccountant([GaussianEvent(3.0)])
    assert round(one.epsilon(1e-5), 4) == 1.2711
    assert round(PrivacyAccountant([GaussianEvent(3.7306316)]).epsilon(1e-5), 4) == 1.0
    assert acc.mu() == pytest.approx(math.sqrt(10) / 3)
    assert acc.rho() == pytest.approx(10 / 18)
    assert PrivacyAccountant().epsilon(1e-5) == 0.0


def test_methods_order_and_auto():
    acc = ten_at_three()
    rep = acc.report(1e-5)
    assert rep["gdp"] < rep["zcdp"] <= rep["rdp"] + 1e-9
    assert acc.epsilon(1e-5) == rep["gdp"]
    # δ(ε) inverts ε(δ)
    assert acc.delta(rep["gdp"]) == pytest.approx(1e-5, rel=1e-6)
    assert acc.delta(rep["rdp"], method="rdp") <= 1e-5 * (1 + 1e-9)
    sub = PrivacyAccountant([SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 100)])
    assert sub.valid_methods() == ("rdp",) and sub.mu() is None
    with pytest.raises(ValueError, match="cannot price Poisson-subsampled"):
        sub.epsilon(1e-5, method="gdp")
    with pytest.raises(ValueError, match="'pld'"):
        sub.epsilon(1e-5, method="pld")


def test_release_is_accounted():
    x = np.random.default_rng(0).normal(size=(50, 6))
    r = dl.release_rank_k(x, 2, epsilon=0.7, delta=1e-6, row_norm=1.0, generator=torch.Generator().manual_seed(0))
    acc = PrivacyAccountant().add(r).add(r.privacy_event)
    assert acc.epsilon(1e-6) == pytest.approx(dl.gaussian_epsilon(r.noise_scale / math.sqrt(2), 1e-6,
                                                                   r.sensitivity), rel=1e-9)
    rc = dl.release_rank_k(x, 2, epsilon=0.7, delta=1e-6, row_norm=1.0, mechanism="complex")
    assert PrivacyAccountant([rc]).epsilon(1e-6) == pytest.approx(0.7, rel=1e-6)


# ---- independent references -----------------------------------------------------------

dpa = pytest.importorskip("dp_accounting", reason="dp_accounting (optional extra) not installed")
opacus_rdp = pytest.importorskip("opacus.accountants.analysis.rdp", reason="opacus not installed")
from dplowrank.accounting import bridges  # noqa: E402


def test_pld_agrees_with_exact_gdp():
    assert bridges.pld_epsilon(ten_at_three(), 1e-5) == pytest.approx(4.6530, abs=1e-3)


event_lists = st.lists(
    st.one_of(
        st.builds(GaussianEvent, st.floats(0.5, 30.0)),
        st.builds(lambda z, n: SelfComposedEvent(GaussianEvent(z), n), st.floats(1.0, 30.0), st.integers(1, 20)),
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=25)
@given(events=event_lists, log_delta=st.floats(-10, -3))
def test_gaussian_lists_against_dp_accounting_and_opacus(events, log_delta):
    delta = 10.0**log_delta
    acc = PrivacyAccountant(events)
    # exact GDP vs dp_accounting's PLD (which is an upper bound with discretisation error)
    pld = bridges.pld_epsilon(acc, delta)
    assert acc.epsilon(delta) <= pld + 1e-9
    assert acc.epsilon(delta) == pytest.approx(pld, abs=2e-3 * max(1.0, pld))
    # RDP equals opacus' RDP accountant on the same orders
    hist_rdp = sum(
        n * opacus_rdp.compute_rdp(q=1.0, noise_multiplier=e.noise_multiplier, steps=1, orders=list(DEFAULT_ORDERS))
        for e, n in _flat(events)
    )
    eps_opacus, _ = opacus_rdp.get_privacy_spent(orders=list(DEFAULT_ORDERS), rdp=hist_rdp, delta=delta)
    assert acc.epsilon(delta, method="rdp") == pytest.approx(eps_opacus, rel=1e-9, abs=1e-12)


def _flat(events):
    for e in events:
        if isinstance(e, SelfComposedEvent):
            yield e.event, e.count
        else:
            yield e, 1


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


def test_opacus_history_and_dp_accounting_round_trip():
    from opacus.accountants import RDPAccountant

    o = RDPAccountant()
    o.history = [(1.1, 0.01, 500), (2.0, 1.0, 3)]
    events = bridges.from_opacus(o)
    acc = PrivacyAccountant([events])
    assert acc.epsilon(1e-5) == pytest.approx(o.get_epsilon(1e-5), rel=1e-6)
    back = bridges.from_dp_accounting(bridges.to_dp_accounting(acc))
    assert back == acc.composed_event()
    with pytest.raises(TypeError, match="history"):
        bridges.from_opacus(object())


# ---- Hypothesis properties -----------------------------------------------------------------

@given(
    eps=st.floats(0.05, 20.0), log_delta=st.floats(-12, -2),
    weights=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=40),
    sens=st.floats(1e-3, 1e3),
)
def test_plan_never_overshoots(eps, log_delta, weights, sens):
    delta = 10.0**log_delta
    plan = dl.calibrate_plan(eps, delta, weights=weights, sensitivities=[sens] * len(weights))
    acc = PrivacyAccountant(plan)
    assert acc.delta(eps) <= delta
    assert acc.epsilon(delta) <= eps * (1 + 1e-9)
    assert acc.epsilon(delta) == pytest.approx(eps, rel=1e-6)  # and wastes nothing
    # heavier weight ⇒ less noise per unit of sensitivity
    i, j = int(np.argmax(weights)), int(np.argmin(weights))
    assert plan[i].noise_multiplier <= plan[j].noise_multiplier


@given(z=st.floats(0.3, 50.0), m=st.integers(1, 30), log_delta=st.floats(-12, -2))
def test_epsilon_monotone_in_releases(z, m, log_delta):
    delta = 10.0**log_delta
    a = PrivacyAccountant([GaussianEvent(z)] * m)
    b = PrivacyAccountant([GaussianEvent(z)] * (m + 1))
    for method in ("gdp", "zcdp", "rdp"):
        assert a.epsilon(delta, method) <= b.epsilon(delta, method) + 1e-12


@given(z1=st.floats(0.3, 50.0), z2=st.floats(0.3, 50.0), m=st.integers(1, 10), log_delta=st.floats(-12, -2))
def test_epsilon_monotone_in_sigma_and_exact_is_tightest(z1, z2, m, log_delta):
    delta = 10.0**log_delta
    lo, hi = sorted((z1, z2))
    a = PrivacyAccountant([GaussianEvent(lo)] * m)
    b = PrivacyAccountant([GaussianEvent(hi)] * m)
    for method in ("gdp", "zcdp", "rdp"):
        assert b.epsilon(delta, method) <= a.epsilon(delta, method) + 1e-12
    rep = a.report(delta)
    assert rep["gdp"] <= rep["zcdp"] + 1e-9 and rep["gdp"] <= rep["rdp"] + 1e-9


@settings(max_examples=60)
@given(
    budget_eps=st.floats(0.1, 5.0), log_delta=st.floats(-9, -3),
    zs=st.lists(st.floats(0.2, 20.0), min_size=1, max_size=25),
)
def test_budget_filter_never_overspends(budget_eps, log_delta, zs):
    delta = 10.0**log_delta
    budget = dl.PrivacyBudget(budget_eps, delta)
    charged = []
    for z in zs:
        ev = GaussianEvent(z)
        before = budget.events
        try:
            budget.spend(ev)
            charged.append(ev)
        except dl.BudgetExceededError:
            assert budget.events == before  # a refusal charges nothing
        assert PrivacyAccountant(charged).delta(budget_eps) <= delta
        assert budget.spent_epsilon() <= budget_eps * (1 + 1e-9)


event_strategy = st.recursive(
    st.one_of(
        st.builds(GaussianEvent, st.floats(1e-3, 1e3)),
        st.builds(PoissonSampledEvent, st.floats(0, 1), st.builds(GaussianEvent, st.floats(1e-3, 1e3))),
    ),
    lambda inner: st.one_of(
        st.builds(SelfComposedEvent, inner, st.integers(0, 10**6)),
        st.builds(lambda xs: ComposedEvent(tuple(xs)), st.lists(inner, max_size=4)),
    ),
    max_leaves=10,
)


@given(event=event_strategy)
def test_event_json_round_trips(event):
    text = json.dumps(event.to_dict())
    assert event_from_dict(json.loads(text)) == event


@settings(max_examples=30)
@given(zs=st.lists(st.floats(0.5, 50.0), max_size=8))
def test_ledger_round_trips(tmp_path_factory, zs):
    path = tmp_path_factory.mktemp("ledger") / "budget.json"
    b = dl.PrivacyBudget(10.0, 1e-6, path=path)
    for z in zs:
        if b.can_afford(GaussianEvent(z)):
            b.spend(GaussianEvent(z))
    b.save()
    back = dl.PrivacyBudget.load(path)
    assert back.events == b.events and back.epsilon == b.epsilon and back.delta == b.delta
    assert back.spent_epsilon() == b.spent_epsilon()


# ---- budgets with releases, persistence, bad input --------------------------------------

def test_release_over_budget_is_refused_before_noise(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 5))
    budget = dl.PrivacyBudget(1.0, 1e-6, path=tmp_path / "b.json")
    dl.release_rank_k(x, 2, epsilon=0.8, delta=1e-6, row_norm=1.0, budget=budget)
    spent = budget.spent_epsilon()
    assert spent == pytest.approx(0.8, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(dl.BudgetExceededError, match="nothing was charged"):
        dl.release_rank_k(x, 2, epsilon=0.8, delta=1e-6, row_norm=1.0, budget=budget, generator=g)
    assert torch.equal(g.get_state(), state)  # no noise drawn
    assert budget.spent_epsilon() == spent
    resumed = dl.PrivacyBudget.load(tmp_path / "b.json")  # the ledger survived
    assert resumed.spent_epsilon() == pytest.approx(spent)
    # a plan fills the rest exactly
    rem = resumed.remaining_mu()
    sigma = 1.0 / rem  # sensitivity 1
    resumed.spend(GaussianEvent(sigma))
    assert resumed.spent_epsilon() <= 1.0 + 1e-9
    with pytest.raises(dl.BudgetExceededError):
        resumed.spend(GaussianEvent(1e4))


def test_ledger_corruption_never_loads_as_fresh(tmp_path):
    p = tmp_path / "b.json"
    b = dl.PrivacyBudget(2.0, 1e-6, path=p)
    b.spend(GaussianEvent(4.0))
    raw = p.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "garbage": b"\x00\xffnot json",
        "tampered": raw.replace(b'"noise_multiplier": 4.0', b'"noise_multiplier": 40.0'),
        "no events": json.dumps({"ledger": {"events": []}, "sha256": "0"}).encode(),
    }
    assert cases["tampered"] != raw
    for name, data in cases.items():
        q = tmp_path / f"{name}.json"
        q.write_bytes(data)
        with pytest.raises(ValueError, match="ledger"):
            dl.PrivacyBudget.load(q)
    with pytest.raises(FileNotFoundError):
        dl.PrivacyBudget.load(tmp_path / "missing.json")
    with pytest.raises(FileExistsError, match="resume it with"):
        dl.PrivacyBudget(2.0, 1e-6, path=p)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: dl.PrivacyBudget(0.0, 1e-6), ValueError, "epsilon must be finite and > 0, got 0.0"),
        (lambda: dl.PrivacyBudget(1.0, 1.5), ValueError, "got 1.5"),
        (lambda: GaussianEvent(-1.0), ValueError, "got -1.0"),
        (lambda: GaussianEvent(float("nan")), ValueError, "NaN"),
        (lambda: PoissonSampledEvent(1.5, GaussianEvent(1.0)), ValueError, "got 1.5"),
        (lambda: SelfComposedEvent(GaussianEvent(1.0), -2), ValueError, "got -2"),
        (lambda: PrivacyAccountant().add("gaussian"), TypeError, "'gaussian'"),
        (lambda: PrivacyAccountant().add(GaussianEvent(1.0), count=0), ValueError, "got 0"),
        (lambda: PrivacyAccountant().epsilon(0.0), ValueError, "got 0.0"),
        (lambda: event_from_dict({"type": "laplace", "b": 1}), ValueError, "'laplace'"),
        (lambda: event_from_dict({"type": "gaussian"}), ValueError, "malformed"),
        (lambda: dl.calibrate_plan(1.0, 1e-6), ValueError, "give num_releases"),
        (lambda: dl.calibrate_plan(1.0, 1e-6, weights=[1.0, -1.0]), ValueError, "got -1.0"),
        (lambda: dl.calibrate_plan(1.0, 1e-6, num_releases=2, weights=[1.0]), ValueError, "1 weights"),
        (lambda: dl.release_rank_k(np.ones((3, 3)), 1, epsilon=1.0, delta=1e-6, row_norm=1.0, budget=1.0),
         TypeError, "budget must be a PrivacyBudget"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_plan_refuses_a_share_that_underflows():
    """Found by the bad-input sweep: a weight ratio of 1e323 once gave μᵢ = 0 and a
    ZeroDivisionError; now a clear error names the release."""
    with pytest.raises(ValueError, match="release 1 .*zero share"):
        dl.calibrate_plan(1.0, 0.5, weights=[4.0480450661462125e23, 1e-300])
