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
from dplowrank.privacy import DEFAULT_ORDERS, sampled_gaussian_rdp


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
    assert sub.valid_methods()[0] == "rdp" and sub.mu() is None
    with pytest.raises(ValueError, match="cannot price Poisson-subsampled"):
        sub.epsilon(1e-5, method="gdp")


def test_without_dp_accounting_auto_is_rdp_and_pld_is_refused_by_name(monkeypatch):
    """The "pld" method needs the accounting extra: without it "auto" prices subsampled records
    by RDP, and asking for "pld" names the missing package."""
    from dplowrank.accounting import _accountant

    monkeypatch.setattr(_accountant, "pld_installed", lambda: False)
    sub = PrivacyAccountant([SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 100)])
    assert sub.valid_methods() == ("rdp",)
    assert sub.epsilon(1e-5) == sub.epsilon(1e-5, method="rdp")
    with pytest.raises(ValueError, match="method='pld' needs dp_accounting"):
        sub.epsilon(1e-5, method="pld")
    with pytest.raises(ImportError, match="dp_accounting"):
        sub.pld()


def test_release_is_accounted():
    x = np.random.default_rng(0).normal(size=(50, 6))
    r = dl.release_rank_k(x, 2, epsilon=0.7, delta=1e-6, row_norm=1.0, generator=torch.Generator().manual_seed(0))
    acc = PrivacyAccountant().add(r).add(r.privacy_event)
    assert acc.epsilon(1e-6) == pytest.approx(dl.gaussian_epsilon(r.noise_scale / math.sqrt(2), 1e-6,
                                                                   r.sensitivity), rel=1e-9)
    rc = dl.release_rank_k(x, 2, epsilon=0.7, delta=1e-6, row_norm=1.0, mechanism="complex")
    assert PrivacyAccountant([rc]).epsilon(1e-6) == pytest.approx(0.7, rel=1e-6)


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
        (lambda: dl.calibrate_plan(1.0, 1e-6, weights=5), TypeError, "weights must be a sequence.*got 5"),
        (lambda: dl.calibrate_plan(1.0, 1e-6, sensitivities="ab"), TypeError, "sensitivities must be a sequence"),
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


# ---- calibration: speed-ups keep the guarantee ------------------------------------------

@settings(max_examples=40)
@given(eps=st.floats(0.05, 20.0), log_delta=st.floats(-12, -2), m=st.integers(1, 3000),
       sens=st.floats(1e-3, 1e3))
def test_equal_plan_never_overshoots_in_any_order(eps, log_delta, m, sens):
    """Equal shares: the plan fits however its events are composed (in order, reversed, or
    as one SelfComposedEvent, whose n·μ² rounds differently from a running sum)."""
    delta = 10.0**log_delta
    plan = dl.calibrate_plan(eps, delta, num_releases=np.int64(m), sensitivities=[sens] * m)
    assert len(plan) == m and len({c.noise_scale for c in plan}) == 1
    for acc in (PrivacyAccountant(plan), PrivacyAccountant(plan[::-1]),
                PrivacyAccountant([SelfComposedEvent(plan[0].event, m)])):
        assert acc.delta(eps) <= delta
        assert acc.epsilon(delta) <= eps
    assert PrivacyAccountant(plan).epsilon(delta) == pytest.approx(eps, rel=1e-6)


@settings(max_examples=40)
@given(weights=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=60), log_delta=st.floats(-12, -2),
       eps=st.floats(0.05, 20.0), seed=st.integers(0, 2**32 - 1))
def test_weighted_plan_never_overshoots_in_any_order(weights, log_delta, eps, seed):
    delta = 10.0**log_delta
    plan = list(dl.calibrate_plan(eps, delta, weights=weights))
    np.random.default_rng(seed).shuffle(plan)
    grouped = ComposedEvent(tuple(ComposedEvent(tuple(c.event for c in plan[i:i + 7])) for i in range(0, len(plan), 7)))
    for acc in (PrivacyAccountant(plan), PrivacyAccountant([grouped])):
        assert acc.delta(eps) <= delta


@settings(max_examples=60)
@given(mus=st.lists(st.floats(1e-4, 1e3), min_size=1, max_size=20), log_delta=st.floats(-15, -1))
def test_vectorised_gdp_epsilon_is_the_scalar_one(mus, log_delta):
    """The plan's vectorised bisection returns gdp_epsilon's value (to a few ulps), never below it."""
    from dplowrank.privacy import gdp_delta, gdp_epsilon
    from dplowrank.privacy import gdp_epsilon_many as _gdp_epsilon_many

    delta = 10.0**log_delta
    for mu, e in zip(mus, _gdp_epsilon_many(mus, delta)):
        assert gdp_delta(mu, e) <= delta  # conservative by the scalar formula
        assert e == pytest.approx(gdp_epsilon(mu, delta), rel=1e-13, abs=1e-300)


def test_plan_is_fast_and_exact_for_many_releases():
    """Not a timing test (benchmarks/bench_accounting.py times it): 1,000 equal shares need one
    ε bisection (the audit found 2,000), and the plan spends the whole budget and no more."""
    from unittest import mock

    from dplowrank.accounting import _plan

    with mock.patch.object(_plan, "gdp_epsilon", wraps=_plan.gdp_epsilon) as spy:
        plan = dl.calibrate_plan(1.0, 1e-6, num_releases=1000)
    assert spy.call_count == 1
    acc = PrivacyAccountant(plan)
    assert acc.epsilon(1e-6) <= 1.0 and acc.epsilon(1e-6) == pytest.approx(1.0, rel=1e-8)  # 1e-9 of slack (_EPS_SLACK)
    assert plan[0].epsilon == pytest.approx(dl.gaussian_epsilon(plan[0].noise_scale, 1e-6), rel=1e-12)
    # many distinct shares: one vectorised bisection, the same values as the scalar one
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=300).tolist()
    with mock.patch.object(_plan, "gdp_epsilon_many", wraps=_plan.gdp_epsilon_many) as vec:
        plan = dl.calibrate_plan(1.0, 1e-6, weights=w)
    assert vec.call_count == 1 and len(vec.call_args.args[0]) == 300
    for c in plan[:20]:
        assert c.epsilon == pytest.approx(dl.gaussian_epsilon(c.noise_scale, 1e-6), rel=1e-13)
    assert PrivacyAccountant(plan).delta(1.0) <= 1e-6


def test_plan_weights_of_any_scale():
    """Found by the audit: weights [1e308, 1e308] overflowed math.fsum. Weights are now divided by
    their maximum first, so any finite positive scale gives the same plan."""
    ref = dl.calibrate_plan(1.0, 1e-6, num_releases=2)
    for w in ([1e308, 1e308], [1.7e308] * 3 + [1e-10], [5e-324, 5e-324]):
        plan = dl.calibrate_plan(1.0, 1e-6, weights=w)
        assert PrivacyAccountant(plan).delta(1.0) <= 1e-6
    assert dl.calibrate_plan(1.0, 1e-6, weights=[1e308, 1e308]) == ref
    assert dl.calibrate_plan(1.0, 1e-6, weights=[3.0, 3.0]) == ref


def test_integral_counts_of_any_type():
    acc = PrivacyAccountant().add(GaussianEvent(3.0), count=np.int64(10))
    assert acc.epsilon(1e-5) == ten_at_three().epsilon(1e-5)
    assert dl.calibrate_plan(1.0, 1e-6, num_releases=np.int32(3)) == dl.calibrate_plan(1.0, 1e-6, num_releases=3)
    assert SelfComposedEvent(GaussianEvent(1.0), np.uint8(4)).count == 4
    with pytest.raises(ValueError, match="got 2.0"):
        PrivacyAccountant().add(GaussianEvent(1.0), count=2.0)
    with pytest.raises(ValueError, match=r"got np.float64\(3.0\)|got 3.0"):
        dl.calibrate_plan(1.0, 1e-6, num_releases=np.float64(3.0))


# ---- degenerate events: priced first and explicitly --------------------------------------

@pytest.mark.parametrize("z", [1e-160, 1e-200, 5e-324, 1e-300])
def test_tiny_noise_multiplier_costs_infinity(z):
    """Found by the audit: GaussianEvent(1e-160) passed validation and μ**2 raised OverflowError."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        acc = PrivacyAccountant([GaussianEvent(z), GaussianEvent(3.0)])
        assert acc.mu() == math.inf and acc.rho() == math.inf
        for method in ("auto", "gdp", "zcdp", "rdp"):
            assert acc.epsilon(1e-5, method) == math.inf
            assert acc.delta(10.0, method) == 1.0
        sub = PrivacyAccountant([PoissonSampledEvent(0.01, GaussianEvent(z))])
        assert sub.epsilon(1e-5) == math.inf


@pytest.mark.parametrize("z", [1e154, 1e200, 1.7e308])
def test_huge_noise_multiplier_costs_nothing_measurable(z):
    """z**2 overflows for z > 1.3e154 (OverflowError); the cost is 0 to float precision."""
    from dplowrank.privacy import rdp_to_epsilon

    floor = rdp_to_epsilon(np.zeros(len(DEFAULT_ORDERS)), DEFAULT_ORDERS, 1e-5)[0]  # RDP's grid floor
    acc = PrivacyAccountant([GaussianEvent(z)] * 3)
    assert acc.epsilon(1e-5) == acc.epsilon(1e-5, "gdp") == acc.epsilon(1e-5, "zcdp") == 0.0
    assert acc.epsilon(1e-5, "rdp") == pytest.approx(floor, rel=1e-12)
    sub = PrivacyAccountant([PoissonSampledEvent(0.5, GaussianEvent(z))])
    assert sub.epsilon(1e-5, "rdp") == pytest.approx(floor)
    assert sub.epsilon(1e-5) <= sub.epsilon(1e-5, "rdp")  # the PLD (when installed) prices it at 0


def test_zero_and_full_sampling_and_infinite_noise():
    """q = 1 is the plain Gaussian (all methods), q = 0 and z = ∞ cost nothing (ε = 0 under auto)."""
    step = PoissonSampledEvent(1.0, GaussianEvent(3.0))
    full = PrivacyAccountant([step] * 10)
    assert full.valid_methods() == ("gdp", "zcdp", "rdp")
    assert full.report(1e-5) == ten_at_three().report(1e-5)
    free = [PoissonSampledEvent(0.0, GaussianEvent(0.1)), GaussianEvent(math.inf),
            PoissonSampledEvent(0.3, GaussianEvent(math.inf)), SelfComposedEvent(GaussianEvent(0.1), 0)]
    acc = PrivacyAccountant(free)
    assert acc.valid_methods() == ("gdp", "zcdp", "rdp")
    assert acc.epsilon(1e-9) == 0.0 and acc.delta(0.0) == 0.0 and acc.mu() == 0.0
    assert all(v == 0.0 for v in acc.report(1e-9).values())
    # free events leave a priced ledger's ε unchanged
    mixed = PrivacyAccountant(free + [GaussianEvent(3.0)] * 10)
    assert mixed.epsilon(1e-5) == ten_at_three().epsilon(1e-5)


def test_infinite_noise_serialises_as_standard_json():
    """GaussianEvent(inf) once wrote the non-standard token Infinity; it is now the string "inf"."""
    ev = SelfComposedEvent(PoissonSampledEvent(0.5, GaussianEvent(math.inf)), 3)
    text = json.dumps(ev.to_dict(), allow_nan=False)
    assert '"inf"' in text and "Infinity" not in text
    assert event_from_dict(json.loads(text)) == ev
    # old files written with the Infinity token still read back
    assert event_from_dict(json.loads('{"type": "gaussian", "noise_multiplier": Infinity, "neighbour": null}')) \
        == GaussianEvent(math.inf)
    for bad in ("Inf", "infinity", "-inf", "nan", "3.0"):
        with pytest.raises(ValueError, match="malformed"):
            event_from_dict({"type": "gaussian", "noise_multiplier": bad, "neighbour": None})


def test_deeply_nested_event_is_a_clean_error():
    obj = {"type": "gaussian", "noise_multiplier": 1.0, "neighbour": None}
    for _ in range(5000):
        obj = {"type": "self_composed", "count": 1, "event": obj}
    with pytest.raises(ValueError, match="nested deeper than 100"):
        event_from_dict(obj)
    ok = {"type": "gaussian", "noise_multiplier": 1.0, "neighbour": None}
    for _ in range(100):
        ok = {"type": "composed", "events": [ok]}
    assert PrivacyAccountant([event_from_dict(ok)]).mu() == 1.0


def test_sampled_rdp_against_mpmath():
    """Fractional orders by quadrature against mpmath's integral of A_α (Mironov, Talwar & Zhang
    2019, Sec. 3): the exact value, which dp_accounting's series only bounds from above."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    for q, z, a in [(0.001, 0.8, 1.1), (0.05, 1.1, 1.1), (0.05, 4.0, 1.5), (0.2, 0.8, 1.3), (0.01, 2.0, 7.5)]:
        Q, Z, A = mp.mpf(q), mp.mpf(z), mp.mpf(a)

        def f(x, Q=Q, Z=Z, A=A):
            return mp.npdf(x, 0, Z) * ((1 - Q) + Q * mp.exp((2 * x - 1) / (2 * Z * Z))) ** A

        exact = float(mp.log(mp.quad(f, [-mp.inf, -5 * Z, 0, A, A + 5 * Z, mp.inf])) / (A - 1))
        assert sampled_gaussian_rdp(q, z, [a])[0] == pytest.approx(exact, rel=1e-8)


# ---- opacus history (no opacus needed: only .history is read) ------------------------------

def test_from_opacus_requires_whole_step_counts():
    """Found by the audit: int(steps) silently truncated 2.5 steps to 2."""
    from types import SimpleNamespace

    from dplowrank.accounting import bridges

    ok = bridges.from_opacus(SimpleNamespace(history=[(1.1, 0.01, np.int64(500)), (2.0, 1.0, 3.0), (1.0, 0.5, 0)]))
    assert [e.count for e in ok.events] == [500, 3, 0]
    assert ok.events[1].event == GaussianEvent(2.0, "add_remove")
    for steps, match in [(2.5, "whole number, got 2.5"), (float("nan"), "whole number, got nan"),
                         (float("inf"), "whole number, got inf"), ("7", "whole number, got '7'"),
                         (True, "whole number, got True"), (-3, "must be >= 0, got -3")]:
        with pytest.raises(ValueError, match=match):
            bridges.from_opacus(SimpleNamespace(history=[(1.1, 0.01, steps)]))
    with pytest.raises(ValueError, match="unexpected opacus history entry"):
        bridges.from_opacus(SimpleNamespace(history=[(1.1, 0.01)]))


# ---- the docs stay correct ------------------------------------------------------------------

def test_docs_top_example_runs(tmp_path, monkeypatch, capsys):
    """Execute the first Python block of docs/accounting.md as written."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "accounting.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/accounting.md", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "refused" in out and (tmp_path / "ledger.json").exists()
