"""Budgets and ledgers: the filter never overspends, ledgers survive restarts and refuse damage,
and processes that share a ledger file take turns."""

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dplowrank as dl
from dplowrank.accounting import (
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyAccountant,
    SelfComposedEvent,
)
from dplowrank.accounting._budget import _canonical

# DP-SGD-like steps from a small grid (their RDP is cached), zero-cost and q = 1 steps included.
_sampled = st.builds(
    PoissonSampledEvent,
    st.sampled_from([0.0, 0.01, 0.1, 1.0]),
    st.builds(GaussianEvent, st.sampled_from([0.7, 1.5, 4.0])),
)
budget_events = st.one_of(
    st.builds(GaussianEvent, st.floats(0.2, 20.0)),
    _sampled,
    st.builds(SelfComposedEvent, _sampled, st.integers(1, 500)),
)


@settings(max_examples=60)
@given(
    budget_eps=st.floats(0.1, 5.0), log_delta=st.floats(-9, -3),
    events=st.lists(budget_events, min_size=1, max_size=25),
    method=st.sampled_from(["auto", "rdp"]), on_disk=st.booleans(), restart_at=st.integers(0, 25),
)
def test_budget_filter_never_overspends(tmp_path_factory, budget_eps, log_delta, events, method, on_disk,
                                        restart_at):
    """Random sequences of Gaussian and Poisson-subsampled releases, refusals included, with the
    budget saved and restored (a restarted process) part-way: the total never passes the budget."""
    delta = 10.0**log_delta
    folder = tmp_path_factory.mktemp("budget")
    budget = dl.PrivacyBudget(budget_eps, delta, method=method, path=folder / "ledger.json" if on_disk else None)
    charged = []
    for i, ev in enumerate(events):
        if i == restart_at:
            path = budget.save() if on_disk else budget.save(folder / "saved.json")
            budget = dl.PrivacyBudget.load(path)
            assert budget.events == tuple(charged) and budget.method == method
        before = budget.events
        try:
            budget.spend(ev)
            charged.append(ev)
        except dl.BudgetExceededError:
            assert budget.events == before  # a refusal charges nothing
        assert budget.events == tuple(charged)
        assert PrivacyAccountant(charged).delta(budget_eps, method) <= delta
        assert budget.spent_epsilon() <= budget_eps * (1 + 1e-9)
    if budget.path is not None and (charged or budget.path.exists()):
        assert dl.PrivacyBudget.load(budget.path).events == tuple(charged)


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
        "no events": json.dumps({"ledger": {"events": []}, "integrity": {"sha256": "0"}}).encode(),
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




def test_tiny_noise_is_refused_not_an_overflow():
    """Found by the audit: spend(GaussianEvent(1e-160)) raised OverflowError, not BudgetExceededError."""
    budget = dl.PrivacyBudget(1.0, 1e-6)
    budget.spend(GaussianEvent(10.0))
    for z in (1e-160, 5e-324):
        assert not budget.can_afford(GaussianEvent(z))
        with pytest.raises(dl.BudgetExceededError, match="epsilon=inf.*nothing was charged"):
            budget.spend(GaussianEvent(z))
        with pytest.raises(dl.BudgetExceededError):
            budget.spend(PoissonSampledEvent(0.01, GaussianEvent(z)))
    assert budget.events == (GaussianEvent(10.0),)


def _write_ledger(path, payload):
    """A ledger with a valid checksum around any payload (what anyone can write: no secret)."""
    digest = hashlib.sha256(_canonical(payload)).hexdigest()
    path.write_text(json.dumps({"ledger": payload, "integrity": {"sha256": digest}}))
    return path


def _good_payload(tmp_path):
    b = dl.PrivacyBudget(2.0, 1e-6)
    b.spend(GaussianEvent(4.0))
    return json.loads(b.save(tmp_path / "good.json").read_text())["ledger"]


def test_ledger_with_valid_checksum_but_bad_fields(tmp_path):
    """Found by the audit: a missing field gave KeyError, a wrong type TypeError. Now every
    damaged ledger is a ValueError that names the file, and none loads as a fresh budget."""
    good = _good_payload(tmp_path)
    assert dl.PrivacyBudget.load(_write_ledger(tmp_path / "ok.json", good)).events == (GaussianEvent(4.0),)
    cases = {f"missing_{k}": {x: v for x, v in good.items() if x != k}
             for k in ("epsilon", "delta", "method", "orders", "events")}
    cases.update({
        "events_not_list": {**good, "events": 5},
        "events_dict": {**good, "events": {"type": "gaussian"}},
        "event_missing_field": {**good, "events": [{"type": "gaussian"}]},
        "event_not_dict": {**good, "events": [3]},
        "orders_str": {**good, "orders": "abc"},
        "orders_nested": {**good, "orders": [[2.0]]},
        "orders_bad": {**good, "orders": [0.5]},
        "epsilon_str": {**good, "epsilon": "2"},
        "epsilon_null": {**good, "epsilon": None},
        "delta_big": {**good, "delta": 2.0},
        "method_int": {**good, "method": 3},
        "count_float": {**good, "events": [{"type": "self_composed", "count": 1.5,
                                            "event": {"type": "gaussian", "noise_multiplier": 1.0}}]},
    })
    for name, payload in cases.items():
        p = _write_ledger(tmp_path / f"{name}.json", payload)
        with pytest.raises(ValueError, match="ledger") as info:
            dl.PrivacyBudget.load(p)
        assert str(p) in str(info.value), name
    # a top-level that is not an object, and a ledger that is not a dict
    for name, text in {"list": "[1, 2]", "number": "3", "ledger_list": '{"ledger": [], "sha256": "x"}'}.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        with pytest.raises(ValueError, match=str(p)):
            dl.PrivacyBudget.load(p)


def test_deeply_nested_ledger_is_a_clean_error(tmp_path):
    """Found by the audit: a deeply nested file gave RecursionError."""
    p = tmp_path / "deep.json"
    p.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(ValueError, match="damaged or not a ledger"):
        dl.PrivacyBudget.load(p)
    p.write_bytes(b'{"ledger": ' + b"[" * 200_000 + b"]" * 200_000 + b', "sha256": "0"}')
    with pytest.raises(ValueError, match=str(p)):
        dl.PrivacyBudget.load(p)
    event = {"type": "gaussian", "noise_multiplier": 1.0}
    for _ in range(150):  # within JSON's limits, past the event nesting limit
        event = {"type": "composed", "events": [event]}
    good = _good_payload(tmp_path)
    q = _write_ledger(tmp_path / "deep_event.json", {**good, "events": [event]})
    with pytest.raises(ValueError, match="nested deeper than 100"):
        dl.PrivacyBudget.load(q)


def test_directory_is_not_a_ledger(tmp_path):
    """Found by the audit: load(directory) raised IsADirectoryError from deep inside."""
    with pytest.raises(ValueError, match=f"{str(tmp_path)!r} is a directory"):
        dl.PrivacyBudget.load(tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        dl.PrivacyBudget(1.0, 1e-6, path=tmp_path)


def test_infinite_noise_in_a_ledger_is_standard_json(tmp_path):
    p = tmp_path / "b.json"
    b = dl.PrivacyBudget(1.0, 1e-6, path=p)
    b.spend(GaussianEvent(math.inf))
    b.spend(PoissonSampledEvent(0.0, GaussianEvent(0.5)))
    text = p.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    back = dl.PrivacyBudget.load(p)
    assert back.events == b.events and back.spent_epsilon() == 0.0


# ---- processes sharing one ledger file ------------------------------------------------------

def test_two_budgets_on_one_file_adopt_each_others_charges(tmp_path):
    """A budget that spends first re-reads the ledger (as a second process would see it), so a
    stale copy can neither forget nor double-spend what the other charged."""
    p = tmp_path / "shared.json"
    a = dl.PrivacyBudget(1.0, 1e-6, path=p)
    a.spend(GaussianEvent(8.0))
    b = dl.PrivacyBudget.load(p)  # "the other process"
    a.spend(GaussianEvent(9.0))
    b.spend(GaussianEvent(10.0))  # b sees a's second charge first
    assert b.events == (GaussianEvent(8.0), GaussianEvent(9.0), GaussianEvent(10.0))
    assert dl.PrivacyBudget.load(p).events == b.events
    # room for one more release of this size, not two: the second spender is refused
    rem = dl.PrivacyBudget.load(p).remaining_mu()
    last = GaussianEvent(1.0 / rem * (1 + 1e-9))
    assert a.can_afford(last) and b.can_afford(last)
    a.spend(last)
    assert not b.can_afford(last)
    with pytest.raises(dl.BudgetExceededError):
        b.spend(last)
    assert PrivacyAccountant(dl.PrivacyBudget.load(p).events).delta(1.0) <= 1e-6


def test_shared_ledger_that_changed_underneath_is_refused(tmp_path):
    p = tmp_path / "shared.json"
    a = dl.PrivacyBudget(1.0, 1e-6, path=p)
    a.spend(GaussianEvent(8.0))
    other = dl.PrivacyBudget(5.0, 1e-6)
    other.spend(GaussianEvent(3.0))
    other.save(p)  # a different budget written over the file
    with pytest.raises(ValueError, match="different budget"):
        a.spend(GaussianEvent(8.0))
    diverged = dl.PrivacyBudget(1.0, 1e-6)
    diverged.spend(GaussianEvent(7.0))
    diverged.save(p)  # same budget, other history
    with pytest.raises(ValueError, match="no longer extends"):
        a.spend(GaussianEvent(8.0))
    p.unlink()
    with pytest.raises(FileNotFoundError, match="disappeared"):
        a.spend(GaussianEvent(8.0))
    assert a.events == (GaussianEvent(8.0),)


def test_spend_waits_for_the_ledger_lock(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    p = tmp_path / "shared.json"
    budget = dl.PrivacyBudget(1.0, 1e-6, path=p)
    with open(tmp_path / "shared.json.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process holds the ledger
        worker = threading.Thread(target=budget.spend, args=(GaussianEvent(8.0),))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and not p.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
        worker.join(10)
    assert not worker.is_alive()
    assert dl.PrivacyBudget.load(p).events == (GaussianEvent(8.0),)


_CHILD = textwrap.dedent("""
    import os, sys, time
    from dplowrank.accounting import BudgetExceededError, GaussianEvent, PrivacyBudget
    budget = PrivacyBudget.load(sys.argv[1])
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):  # start together, so the spends interleave
        time.sleep(0.001)
    ok = 0
    for _ in range(int(sys.argv[2])):
        try:
            budget.spend(GaussianEvent(20.0))
            ok += 1
        except BudgetExceededError:
            pass
    print(ok, flush=True)
""")


def test_two_processes_cannot_overspend_a_shared_ledger(tmp_path):
    """Two processes that loaded the same ledger spend concurrently: every grant is recorded and
    the total stays within the budget. (Without the lock and re-read, each process would grant
    ``fits`` releases from its own stale copy and the last writer would erase the other's.)"""
    pytest.importorskip("fcntl")
    p, go = tmp_path / "shared.json", tmp_path / "go"
    budget = dl.PrivacyBudget(1.0, 1e-6, path=p)
    budget.spend(GaussianEvent(1e6))  # the file exists before the children start
    fits = max(n for n in range(1, 100)
               if PrivacyAccountant([GaussianEvent(1e6)] + [GaussianEvent(20.0)] * n).delta(1.0) <= 1e-6)
    assert 10 <= fits <= 40
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(p), str(fits), str(go)], stdout=subprocess.PIPE,
                              text=True, cwd=str(tmp_path), env=env) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        granted = [int(proc.communicate(timeout=300)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs)
    final = dl.PrivacyBudget.load(p)
    assert sum(granted) == len(final.events) - 1 == fits  # every grant recorded, none lost
    assert PrivacyAccountant(final.events).delta(1.0) <= 1e-6


# ---- threads sharing one budget object -------------------------------------------------------


def _slow_pricing(monkeypatch, seconds=0.02):
    """Widen the window between a spend's check and its charge (pricing a ledger takes time
    in real use; here it takes ``seconds``), so that an unlocked budget races reliably."""
    original = PrivacyAccountant.delta

    def slow(self, *a, **kw):
        time.sleep(seconds)
        return original(self, *a, **kw)

    monkeypatch.setattr(PrivacyAccountant, "delta", slow)


def _race(threads: int, release) -> tuple[int, int]:
    """Start ``threads`` threads together, each calling ``release()``; return (made, refused)."""
    barrier, made, refused = threading.Barrier(threads), [], []

    def worker():
        barrier.wait()
        try:
            made.append(release())
        except dl.BudgetExceededError:
            refused.append(1)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    return len(made), len(refused)


@pytest.mark.parametrize("on_disk", [False, True])
def test_threads_cannot_overspend_a_shared_budget(tmp_path, monkeypatch, on_disk):
    """Four threads release on a budget that fits one release: exactly one release is made and
    recorded. (Without a lock, a budget with no ledger path let several threads pass the check
    before any of them charged: two noisy releases, one recorded.)"""
    _slow_pricing(monkeypatch)
    rows = np.random.default_rng(0).normal(size=(100, 5)) / 3
    for trial in range(3):
        budget = dl.PrivacyBudget(1.0, 1e-6, path=(tmp_path / f"b{trial}.json") if on_disk else None)
        assert _race(4, lambda: dl.release_rank_k(rows, 2, epsilon=1.0, delta=1e-6, row_norm=1.0, budget=budget,
                                                  generator=torch.Generator().manual_seed(1))) == (1, 3)
        assert len(budget.events) == 1 and budget.spent_epsilon() <= 1.0 + 1e-9


def test_compression_charges_its_whole_plan_once_and_atomically(monkeypatch):
    """release_statistics checked affordability, then charged group by group, each charge a
    separate critical section: another thread could spend in between, and the ledger held one
    event per group. Now the plan is one composed event, charged before any noise is drawn."""
    from dplowrank.accounting import ComposedEvent
    from dplowrank.compress import release_statistics

    from .test_compress import _toy_stats

    _, groups, stats = _toy_stats()
    budget = dl.PrivacyBudget(1.0, 1e-6)
    charged = []
    original = dl.PrivacyBudget.spend

    def spy(self, event, count=1):
        charged.append(event)
        return original(self, event, count)

    monkeypatch.setattr(dl.PrivacyBudget, "spend", spy)
    priv = release_statistics(stats, epsilon=1.0, delta=1e-6, budget=budget, generator=torch.Generator().manual_seed(0))
    assert len(charged) == 1 and isinstance(charged[0], ComposedEvent) and len(charged[0].events) == len(groups)
    assert budget.events == (charged[0],) and all(e.neighbour == "add_remove" for e in charged[0].events)
    assert budget.spent_epsilon() == pytest.approx(priv.spent_epsilon(), rel=1e-9)
    # concurrent plans on a budget that fits one: exactly one is released
    _slow_pricing(monkeypatch)
    budget = dl.PrivacyBudget(1.0, 1e-6)
    assert _race(3, lambda: release_statistics(stats, epsilon=1.0, delta=1e-6, budget=budget,
                                               generator=torch.Generator().manual_seed(0))) == (1, 2)
    assert len(budget.events) == 1


# ---- integrity: a checksum is not tamper evidence; an HMAC with the user's key is ---------------


def test_an_edited_ledger_loads_without_a_key_and_is_refused_with_one(tmp_path):
    """Deleting events (or raising ε) and recomputing the SHA-256 gave a ledger that loaded as
    valid: the checksum catches corruption only. With key=, the HMAC refuses the edit."""
    key = b"0123456789abcdef0123456789abcdef"
    for with_key in (False, True):
        p = tmp_path / f"ledger{with_key}.json"
        b = dl.PrivacyBudget(1.0, 1e-6, path=p, key=key if with_key else None)
        b.spend(GaussianEvent(10.0))
        b.spend(GaussianEvent(10.0))
        doc = json.loads(p.read_text())
        doc["ledger"]["events"] = []  # the forger erases the spending
        doc["ledger"]["epsilon"] = 10.0  # and raises the budget
        doc["integrity"]["sha256"] = hashlib.sha256(_canonical(doc["ledger"])).hexdigest()
        forged = tmp_path / f"forged{with_key}.json"
        forged.write_text(json.dumps(doc))
        if not with_key:
            assert dl.PrivacyBudget.load(forged).events == ()  # documented: corruption check only
            continue
        assert len(dl.PrivacyBudget.load(p, key=key).events) == 2
        with pytest.raises(ValueError, match="HMAC check"):
            dl.PrivacyBudget.load(forged, key=key)
        with pytest.raises(ValueError, match="pass key="):
            dl.PrivacyBudget.load(p)
        with pytest.raises(ValueError, match="HMAC check"):
            dl.PrivacyBudget.load(p, key=b"another key of 32 bytes........")
        # a budget sharing the ledger re-reads it with its key on every spend
        again = dl.PrivacyBudget.load(p, key=key)
        forged.replace(p)
        with pytest.raises(ValueError, match="HMAC check"):
            again.spend(GaussianEvent(50.0))
    with pytest.raises(ValueError, match="carries no HMAC"):
        dl.PrivacyBudget.load(tmp_path / "ledgerFalse.json", key=key)


# ---- neighbour relations ---------------------------------------------------------------------


def test_events_record_their_neighbour_relation_and_mixed_relations_are_refused():
    """The accountant composed add/remove and replace releases as if their noise multipliers
    were for the same relation."""
    rows = np.random.default_rng(0).normal(size=(50, 4)) / 3
    kw = dict(epsilon=1.0, delta=1e-6, row_norm=1.0, generator=torch.Generator().manual_seed(0))
    ar = dl.release_rank_k(rows, 2, **kw)
    rep = dl.release_rank_k(rows, 2, neighbour="replace", **kw)
    declared = dl.release_rank_k(np.eye(4), 2, epsilon=1.0, delta=1e-6, sensitivity=1.0,
                                 generator=torch.Generator().manual_seed(0))
    assert ar.privacy_event.neighbour == "add_remove" and rep.privacy_event.neighbour == "replace"
    assert declared.privacy_event.neighbour is None
    acc = PrivacyAccountant([ar, declared])
    assert acc.neighbour == "add_remove"
    with pytest.raises(ValueError, match="different neighbour relations"):
        acc.add(rep)
    assert len(acc) == 2  # nothing recorded
    with pytest.raises(ValueError, match="different neighbour relations"):
        dl.ComposedEvent((ar.privacy_event, rep.privacy_event))
    budget = dl.PrivacyBudget(5.0, 1e-6)
    budget.spend(ar)
    with pytest.raises(ValueError, match="different neighbour relations"):
        budget.spend(rep)
    assert budget.events == (ar.privacy_event,)
    with pytest.raises(ValueError, match="add/remove"):
        PoissonSampledEvent(0.1, GaussianEvent(1.0, "replace"))
    # explicit conversion: replace = remove + add, so μ at most doubles (√2 for a Gram)
    converted = ar.privacy_event.for_replace(2**0.5)
    assert converted.neighbour == "replace" and converted.mu >= 2**0.5 * ar.mu
    acc_rep = PrivacyAccountant([rep, converted])
    assert acc_rep.mu() == pytest.approx((rep.mu**2 + 2 * ar.mu**2) ** 0.5)
    assert GaussianEvent(1.0).for_replace().mu == 2.0
    with pytest.raises(ValueError, match="sensitivity_ratio"):
        GaussianEvent(1.0).for_replace(0.5)
    # the relation survives the ledger, and a dict without one is refused (it is required)
    assert dl.event_from_dict(rep.privacy_event.to_dict()) == rep.privacy_event
    with pytest.raises(ValueError, match="malformed"):
        dl.event_from_dict({"type": "gaussian", "noise_multiplier": 1.0})
    with pytest.raises(ValueError, match="neighbour must be one of"):
        GaussianEvent(1.0, "swap")


def test_plan_dpsgd_finds_the_smallest_affordable_noise_multiplier():
    """plan_dpsgd: the planned steps fit, a slightly smaller z does not, nothing is charged,
    and bad arguments are refused by name."""
    b = dl.PrivacyBudget(2.0, 1e-5, method="rdp")
    b.spend(GaussianEvent(4.0))
    z = b.plan_dpsgd(0.01, 300)
    assert b.can_afford(PoissonSampledEvent(0.01, GaussianEvent(z)), count=300)
    assert not b.can_afford(PoissonSampledEvent(0.01, GaussianEvent(z / (1 + 2e-4))), count=300)
    assert len(b.events) == 1
    # a budget with nothing left refuses every plan
    full = dl.PrivacyBudget(0.1, 1e-5, method="rdp")
    with pytest.raises(ValueError, match="no noise multiplier up to 10 fits"):
        full.plan_dpsgd(0.5, 1000, max_noise=10.0)
    for kwargs, name in [({"sample_rate": 0.0, "steps": 5}, "sample_rate"), ({"sample_rate": 0.1, "steps": 0}, "steps"),
                         ({"sample_rate": 0.1, "steps": 2.0}, "steps"),
                         ({"sample_rate": 0.1, "steps": 5, "max_noise": float("nan")}, "max_noise")]:
        with pytest.raises(ValueError, match=name):
            b.plan_dpsgd(**kwargs)
    assert len(b.events) == 1
