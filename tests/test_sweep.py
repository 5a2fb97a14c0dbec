"""Bad-input sweep: Hypothesis calls every public entry point with valid arguments, or with
exactly one of them spoiled.

Each sweep runs its Hypothesis test once per spoil kind (an argument, or a target and an
argument); each example spoils that kind (about two in five) or nothing ("none"), and builds
otherwise valid arguments, so the call reaches the code behind the first check. A valid call
must succeed (and a release must charge its budget exactly once); a spoiled one must raise
the documented error (``ValueError`` and its subclasses ``BudgetExceededError`` and
``InsufficientMemoryError``, ``TypeError``, ``FileNotFoundError``) whose message names the
bad argument or value, and must charge nothing, draw nothing and change nothing.

Every sweep counts what it reached (:class:`Tally`) and its test fails unless every spoil kind
was hit, at least 30 % of the examples were valid calls and every public name it declares
was both called successfully and (for entry points) refused. ``test_every_public_name_is_swept``
compares those declarations with ``dplowrank.__all__``; ``test_sweep_is_large_enough`` reads
each sweep's ``max_examples``.

Bad values come from the validators: a parameter checked by one of the ``check_*`` functions of
``dplowrank/_validation.py`` (or by an entry point's own check with the same contract: a
positive real, a probability, k in [1, d], one of a set of names) is spoiled with a value drawn
by :func:`_bad` from the table kept next to that validator (``BAD_EPSILON``, ``BAD_DELTA``,
``BAD_POSITIVE``, ``bad_k(d)``, ``BAD_CHOICE``, ...), and must raise the exception the table
gives. ``test_validators_refuse_their_own_bad_values`` checks each table against its validator.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import numbers
import os
import random
import re
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from torch import nn

import dplowrank as dl
import dplowrank._validation as validation
from dplowrank._validation import (  # the tables of bad values kept next to each validator
    BAD_CHOICE,
    BAD_DELTA,
    BAD_EPSILON,
    BAD_NONNEGATIVE,
    BAD_POSITIVE,
    BAD_VALUES,
    bad_k,
    check_choice,
    check_dense_input,
    check_int,
    check_k,
    check_positive,
    check_tolerance,
)
from dplowrank.accounting import event_from_dict
from dplowrank.compress import allocate_ranks

from .conftest import release_file_digest

DOCUMENTED = (ValueError, TypeError, FileNotFoundError)
SETTINGS = dict(suppress_health_check=list(HealthCheck), deadline=None)
MIN_SUCCESS_SHARE = 0.30


# ---- bookkeeping ---------------------------------------------------------------------------


class Tally:
    """What one sweep reached: examples, spoil kinds, and (public name, outcome) pairs."""

    def __init__(self) -> None:
        self.examples = 0
        self.kinds: Counter = Counter()
        self.calls: Counter = Counter()

    def start(self, kind: str) -> None:
        self.examples += 1
        self.kinds[kind] += 1
        event(f"spoil: {kind}")

    def ok(self, name: str, fn):
        """``fn()`` must succeed; its result's class is counted too (data classes are covered so)."""
        out = fn()
        self.calls[name, "ok"] += 1
        self.calls[type(out).__name__, "ok"] += 1
        return out

    def refused(self, name: str, fn, error, match: str) -> BaseException:
        """``fn()`` must raise ``error`` with a message matching ``match`` (the bad argument or value)."""
        with pytest.raises(error, match=match) as info:
            fn()
        self.calls[name, "refused"] += 1
        self.calls[type(info.value).__name__, "refused"] += 1
        return info.value


TALLIES: dict[str, Tally] = {}


def _run(name: str) -> Tally:
    """Run the sweep ``name`` once per spoil kind and check what it reached."""
    inner, kinds, covers = SWEEPS[name]
    tally = TALLIES[name] = Tally()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a thread pool only adds wake-up latency on a busy host
    try:
        for kind in kinds[1:]:
            # A fixed seed per kind: reproducible, and each kind's valid examples differ from the others'.
            seed(int.from_bytes(hashlib.blake2b(f"{name}/{kind}".encode(), digest_size=8).digest(), "little"))(inner)
            inner(kind)  # each example spoils `kind` or nothing
    finally:
        torch.set_num_threads(threads)
    n = _examples(name)
    assert tally.examples >= n, f"{name}: ran {tally.examples} examples, settings ask for {n}"
    missing = sorted(set(kinds) - set(tally.kinds))
    assert not missing, f"{name}: spoil kinds never drawn: {missing}"
    share = tally.kinds["none"] / tally.examples
    assert share >= MIN_SUCCESS_SHARE, f"{name}: only {share:.0%} of the examples were valid calls"
    for public, need in covers.items():
        for outcome in need:
            assert tally.calls[public, outcome] > 0, f"{name}: {public} never {outcome!r}: {dict(tally.calls)}"
    return tally


def _examples(name: str) -> int:
    """Examples the sweep ``name`` runs: its ``max_examples`` for each spoil kind."""
    inner, kinds, _ = SWEEPS[name]
    return inner._hypothesis_internal_use_settings.max_examples * (len(kinds) - 1)


def _mix(x: int) -> int:
    """Spread Hypothesis' integers (which favour small values) evenly before taking a residue."""
    return int.from_bytes(hashlib.blake2b(x.to_bytes(8, "little"), digest_size=8).digest(), "little")


# Strategies are built once: building (and validating) them per draw costs more than the calls swept.
_INDEX = st.integers(0, 2**64 - 1)
_BOOL = st.booleans()
_floats = functools.lru_cache(maxsize=None)(lambda lo, hi: st.floats(lo, hi))
_ints = functools.lru_cache(maxsize=None)(lambda lo, hi: st.integers(lo, hi))


def _choose(draw, options):
    """One of ``options``, close to uniformly (``st.sampled_from`` favours the first few)."""
    options = list(options)
    return options[_mix(draw(_INDEX)) % len(options)]


def _pick(options):
    """:func:`_choose` as a strategy (for the argument tables)."""
    options = list(options)
    return _INDEX.map(lambda x: options[_mix(x) % len(options)])


def _spoiled(draw, kind: str, share: float = 0.4) -> str:
    """What this example spoils: the run's ``kind`` (a ``share`` of the examples), else nothing ("none")."""
    return kind if _mix(draw(_INDEX)) % 1000 < 1000 * share else "none"


def _error_for_real(value) -> type:
    """The documented error for a bad value where a positive real is expected."""
    return TypeError if isinstance(value, bool) or not isinstance(value, numbers.Real) else ValueError


#: ``_bad(..., none=SKIP)``: None is a valid value of that parameter (its default).
SKIP = "skip"


def _bad(draw, table, *, error: type | None = None, none: type | str | None = None):
    """A spoiled value and the exception it must raise, drawn from a validator's ``table`` of
    (bad value, exception) pairs (``dplowrank._validation``: a validator's bad values sit next
    to it).

    ``error``: draw only among the values refused with this exception (a spoil kind about the
    type or about the value). ``none``: where the entry point reads ``None`` as "not given"
    before the validator sees it, the exception it raises then, or ``SKIP`` where ``None`` is
    valid; by default ``None`` keeps its table's exception.
    """
    pool = [(v, e) for v, e in table if error is None or e is error]
    if none is not None:
        pool = [(v, none if v is None else e) for v, e in pool if not (v is None and none == SKIP)]
    return _choose(draw, pool)


BAD_BOOL = [1, 0, "yes", None, 1.0]
BAD_DEVICE = ["tpu", "nonsense", "cpu:x", [1], 3.5]
BAD_GENERATOR = [5, "seed", np.random.default_rng(0), random.Random(0)]


def _container(arr: np.ndarray, kind: str):
    if kind == "list" and (arr.ndim == 0 or 0 in arr.shape):
        kind = "numpy"  # a list cannot say "no rows of width d" (it would read as shape (0,))
    if kind == "torch":
        return torch.from_numpy(np.array(arr, order="C"))  # (np.ascontiguousarray makes a 0-d array 1-d)
    if kind == "list":
        return arr.tolist()
    return arr


def _snapshot(x):
    if isinstance(x, np.ndarray) and x.dtype != object:
        return x.copy()
    if isinstance(x, torch.Tensor) and x.layout == torch.strided and x.device.type != "meta":
        return x.detach().clone()
    if isinstance(x, dl.GramAccumulator):
        return (x.n_rows, x.n_clipped, x.consumed, None if x._gram is None else x._gram.clone())
    return None


def _unchanged(x, before) -> bool:
    if before is None:
        return True
    if isinstance(x, np.ndarray):
        return np.array_equal(x, before, equal_nan=x.dtype.kind in "fc")
    if isinstance(x, torch.Tensor):
        return torch.equal(torch.nan_to_num(x), torch.nan_to_num(before)) and torch.equal(x.isnan(), before.isnan())
    n_rows, n_clipped, consumed, gram = before
    return (x.n_rows, x.n_clipped, x.consumed) == (n_rows, n_clipped, consumed) and (
        gram is None or torch.equal(x._gram, gram))


# ---- release_rank_k ---------------------------------------------------------------------------

RELEASE_KINDS = (
    "none", "k_value", "k_type", "epsilon", "delta", "noise_value", "spec_count", "classic_eps",
    "bound_value", "bound_count", "data_nonfinite", "data_asym", "data_range", "data_shape",
    "data_type", "data_complex", "data_layout", "acc_conflict", "acc_unusable", "mechanism",
    "noise_shape", "neighbour", "calibration", "solver", "psd", "overwrite", "dtype", "device",
    "generator", "budget", "budget_exceeded",
)


@st.composite
def _release_cases(draw, kind):
    spoil = _spoiled(draw, kind)
    if spoil in ("data_asym", "data_range"):
        form = "gram"
    elif spoil.startswith("data_") or spoil.startswith("bound_"):
        form = _choose(draw, ["rows", "gram"])
    elif spoil.startswith("acc_"):
        form = "accumulator"
    else:
        form = _choose(draw, ["rows", "gram", "accumulator"])
    d = draw(_ints(2 if spoil == "data_asym" else 1, 6))
    n = draw(_ints(0 if form == "rows" else 1, 8))
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    rows = rng.normal(size=(n, d)) * _choose(draw, [1e-3, 1.0, 10.0])
    if draw(_BOOL) and n > 1:
        rows[1:] = rows[0]  # repeated rows: a rank-one Gram
    bound = draw(_floats(0.1, 10.0))
    neighbour = _choose(draw, [None, "add_remove", "replace"])
    case = SimpleNamespace(spoil=spoil, kind=spoil, form=form, d=d, expect=None, consume_first=False)
    kwargs: dict = {}
    storage = _choose(draw, ["numpy", "torch", "list"])
    dtype_in = _choose(draw, [np.float64, np.float32, np.float16, np.int64, np.bool_])
    if form == "rows":
        case.data = _container(rows.astype(dtype_in) if dtype_in is not np.bool_ else rows > 0, storage)
        kwargs["row_norm"] = bound
        sens = dl.gram_sensitivity(bound, neighbour or "add_remove")
        gram_float32 = False
    elif form == "gram":
        if draw(_BOOL):
            m = rows.T @ rows
        else:
            a = rng.normal(size=(d, d))
            m = a + a.T
        m = m.astype(dtype_in) if dtype_in is not np.bool_ else m > 0
        case.data = _container(m, storage)
        kwargs["sensitivity"] = sens = bound
        gram_float32 = storage != "list" and dtype_in in (np.float32, np.float16)
    else:
        nb = neighbour or "add_remove"
        acc = dl.GramAccumulator(row_norm=bound, neighbour=nb)
        case.data = acc.update(rows) if n else acc
        sens = acc.sensitivity
        neighbour = _choose(draw, [None, nb])
        gram_float32 = False
    if neighbour is not None:
        kwargs["neighbour"] = neighbour
    # privacy specification: a target (ε, δ) or a fixed noise, with noise multiplier z = σ/Δ in [0.1, 50]
    mode = _choose(draw, ["eps", "noise_scale", "rho", "mu"])
    z = draw(_floats(0.1, 50.0))
    if mode == "eps":
        kwargs["epsilon"] = draw(_floats(0.05, 10.0))
        kwargs["delta"] = draw(_floats(1e-10, 0.1))
        if kwargs["epsilon"] < 1.0 and draw(_BOOL):
            kwargs["calibration"] = "classic"
    else:
        kwargs[mode] = {"noise_scale": z * sens, "rho": 0.5 / z**2, "mu": 1.0 / z}[mode]
        if draw(_BOOL):
            kwargs["delta"] = draw(_floats(1e-10, 0.1))
    kwargs["mechanism"] = _choose(draw, ["gaussian", "complex"])
    if kwargs["mechanism"] == "gaussian":
        kwargs["noise_shape"] = _choose(draw, ["isotropic", "upper_triangular"])
    kwargs["solver"] = _choose(draw, ["auto", "dense", "lanczos"])
    kwargs["psd"] = draw(_BOOL)
    kwargs["overwrite"] = draw(_BOOL)
    kwargs["dtype"] = _choose(draw, [None, "float32", "float64", torch.float32, torch.float64])
    kwargs["device"] = _choose(draw, [None, "cpu"])
    gen_kind = _choose(draw, ["torch", "torch", "secure_seeded", "secure"])
    kwargs["generator"] = {"torch": torch.Generator().manual_seed(draw(_ints(0, 2**31))),
                           "secure_seeded": dl.SecureNormalSource.from_seed(draw(_ints(0, 99))),
                           "secure": None}[gen_kind]
    case.randomness = "secure" if gen_kind == "secure" else "seeded"
    case.budget = dl.PrivacyBudget(1e6, 0.5)
    k = draw(_ints(1, d))

    def expect(error, match):
        case.expect = (error, match)

    if spoil in ("k_value", "k_type"):
        k, error = _bad(draw, bad_k(d), error=ValueError if spoil == "k_value" else TypeError)
        expect(error, r"\bk\b")
    elif spoil == "epsilon":
        for key in ("noise_scale", "rho", "mu"):
            kwargs.pop(key, None)
        kwargs["delta"] = 1e-6
        kwargs["epsilon"], error = _bad(draw, BAD_EPSILON, none=ValueError)  # None: no privacy specification
        expect(error, "epsilon")
    elif spoil == "delta":
        for key in ("noise_scale", "rho", "mu"):
            kwargs.pop(key, None)
        kwargs["epsilon"] = 0.5
        kwargs["delta"], error = _bad(draw, BAD_DELTA, none=ValueError)  # None: "delta is required with epsilon"
        expect(error, "delta")
    elif spoil == "noise_value":
        for key in ("epsilon", "noise_scale", "rho", "mu"):
            kwargs.pop(key, None)
        key = _choose(draw, ["noise_scale", "rho", "mu"])
        kwargs[key], error = _bad(draw, BAD_POSITIVE, none=ValueError)  # None: no privacy specification
        expect(error, key)
    elif spoil == "spec_count":
        extra = _choose(draw, ["epsilon", "noise_scale", "rho", "mu", "nothing"])
        if extra == "nothing":
            for key in ("epsilon", "noise_scale", "rho", "mu"):
                kwargs.pop(key, None)
        elif extra in kwargs:
            kwargs["epsilon" if extra != "epsilon" else "mu"] = 1.0
        else:
            kwargs[extra] = 1.0
        expect(ValueError, "exactly one")
    elif spoil == "classic_eps":
        for key in ("noise_scale", "rho", "mu"):
            kwargs.pop(key, None)
        kwargs.update(epsilon=draw(_floats(1.0, 10.0)), delta=1e-6, calibration="classic")
        expect(ValueError, "epsilon < 1")
    elif spoil == "bound_value":
        key = "row_norm" if form == "rows" else "sensitivity"
        kwargs[key], error = _bad(draw, BAD_POSITIVE, none=ValueError)  # None: "missing privacy bound"
        expect(error, key)
    elif spoil == "bound_count":
        if draw(_BOOL):
            kwargs.pop("row_norm", None)
            kwargs.pop("sensitivity", None)
            expect(ValueError, "missing privacy bound: pass row_norm")
        else:
            kwargs["row_norm"] = kwargs["sensitivity"] = bound
            expect(ValueError, "row_norm.*not both")
    elif spoil == "data_nonfinite":
        arr = np.array(rows if form == "rows" else (m if form == "gram" else None), dtype=np.float64)
        if arr.size == 0:
            arr = np.zeros((1, d))
        i, j = draw(_ints(0, arr.shape[0] - 1)), draw(_ints(0, d - 1))
        arr[i, j] = _choose(draw, [math.nan, math.inf, -math.inf])
        case.data = _container(arr, storage)
        expect(ValueError, "NaN or Inf")
    elif spoil == "data_asym":
        arr = np.array(m, dtype=np.float64)
        i, j = _choose(draw, [(0, 1), (1, 0), (d - 1, 0)])
        arr[i, j] += 1.0 + 2.0 * np.abs(arr).max()
        case.data = _container(arr, storage)
        expect(ValueError, "must be symmetric")
    elif spoil == "data_range":
        variant = _choose(draw, ["huge_gram_f32", "huge_sigma_f32", "tiny_sigma_f32", "overflow_f64"])
        for key in ("epsilon", "noise_scale", "rho", "mu", "calibration"):
            kwargs.pop(key, None)
        base = np.eye(d) + np.abs(np.array(m, dtype=np.float64))
        if variant == "huge_gram_f32":
            arr, kwargs["noise_scale"], kwargs["dtype"] = base / base.max() * 1e300, z, "float32"
        elif variant == "huge_sigma_f32":
            arr, kwargs["sensitivity"], kwargs["noise_scale"], kwargs["dtype"] = base, 1e300, 1e300 * z, "float32"
        elif variant == "tiny_sigma_f32":
            arr, kwargs["sensitivity"], kwargs["noise_scale"], kwargs["dtype"] = base, 1e-300, 1e-300 * z, "float32"
        else:
            arr, kwargs["noise_scale"], kwargs["dtype"] = base / base.max() * 1e308, 1e308, "float64"
        case.data = _container(arr, _choose(draw, ["numpy", "torch"]))
        expect(ValueError, "float32" if variant.endswith("f32") else "overflow float64")
    elif spoil == "data_shape":
        if form == "rows":
            shape = _choose(draw, [(d,), (2, 2, d), ()])
            expect(ValueError, "data must be a 2-D array, got shape")
        else:
            shape = _choose(draw, [(d + 1, d), (d, d + 2), (0, 0), (d,), (1, d, d)])
            expect(ValueError, "shape")
        case.data = _container(np.ones(shape), storage)
    elif spoil == "data_type":
        case.data = _choose(draw,
            [None, "abc", 3.0, {"a": 1}, object(), [["a", "b"]], [[1.0, 2.0], [3.0]], np.array([[object()]])])
        expect((TypeError, ValueError), "data")
    elif spoil == "data_complex":
        arr = np.ones((d, d)) + 1j * np.eye(d)
        case.data = _container(arr, _choose(draw, ["numpy", "torch", "list"]))
        expect(TypeError, "data must be real")
    elif spoil == "data_layout":
        layout = _choose(draw, ["coo", "csr", "meta"])
        t = torch.eye(d, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            case.data = {"coo": t.to_sparse, "csr": t.to_sparse_csr, "meta": lambda: t.to("meta")}[layout]()
        expect(ValueError, "'meta' device") if layout == "meta" else expect(TypeError, "dense")
    elif spoil == "acc_conflict":
        what = _choose(draw, ["row_norm", "sensitivity", "neighbour"])
        if what == "neighbour":
            kwargs["neighbour"] = "replace" if case.data.neighbour == "add_remove" else "add_remove"
            expect(ValueError, "differs from the accumulator")
        else:
            kwargs[what] = 1.0
            expect(ValueError, "carries its own")
    elif spoil == "acc_unusable":
        if draw(_BOOL):
            case.data = dl.GramAccumulator(row_norm=bound, neighbour=case.data.neighbour)
            expect(ValueError, "no rows yet")
        else:
            case.consume_first = True
            expect(ValueError, "consumed")
    elif spoil in ("mechanism", "noise_shape", "neighbour", "calibration", "solver"):
        bad, error = _bad(draw, BAD_CHOICE, none=SKIP if spoil == "neighbour" else None)  # neighbour=None: declared
        if spoil == "noise_shape" and draw(_BOOL):
            kwargs["mechanism"], bad, error = "complex", "upper_triangular", ValueError
        if spoil == "calibration":
            kwargs.pop("noise_scale", None), kwargs.pop("rho", None), kwargs.pop("mu", None)
            kwargs.update(epsilon=0.5, delta=1e-6)
        kwargs[spoil] = bad
        expect(error, spoil)
    elif spoil in ("psd", "overwrite"):
        kwargs[spoil] = _choose(draw, BAD_BOOL)
        expect(TypeError, spoil)
    elif spoil == "dtype":
        kwargs["dtype"] = _choose(draw, ["int8", "float16", "float", torch.float16, torch.int32, np.float32, 5])
        expect((ValueError, TypeError), "dtype")
    elif spoil == "device":
        kwargs["device"] = _choose(draw, BAD_DEVICE)
        expect(ValueError, "device")
    elif spoil == "generator":
        kwargs["generator"] = _choose(draw, BAD_GENERATOR)
        expect(TypeError, "generator")
    elif spoil == "budget":
        case.budget = _choose(draw, [object(), 5, "budget", {}, dl.PrivacyAccountant()])
        expect(TypeError, "budget")
    elif spoil == "budget_exceeded":
        case.budget = dl.PrivacyBudget(1e-4, 1e-9)
        expect(dl.BudgetExceededError, "budget|exceed")
    case.k, case.kwargs = k, kwargs
    case.work_dtype = {None: torch.float32 if gram_float32 else torch.float64, "float32": torch.float32,
                       "float64": torch.float64}.get(kwargs.get("dtype"), kwargs.get("dtype"))
    return case


@settings(max_examples=84, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _release_sweep(kind, data):
    case = data.draw(_release_cases(kind), label="case")
    tally = TALLIES["release"]
    tally.start(case.kind)
    if case.consume_first:  # a release that takes the accumulator's Gram for its noise
        dl.release_rank_k(case.data, 1, mu=1.0, overwrite=True, generator=torch.Generator().manual_seed(0))
    before = _snapshot(case.data)
    gen = case.kwargs["generator"]
    state = gen.get_state() if isinstance(gen, torch.Generator) else None
    call = lambda: dl.release_rank_k(case.data, case.k, budget=case.budget, **case.kwargs)  # noqa: E731
    if case.expect is not None:
        tally.refused("release_rank_k", call, *case.expect)
        if isinstance(case.budget, dl.PrivacyBudget):
            assert case.budget.events == ()  # a refused release charges nothing ...
        if state is not None:
            assert torch.equal(gen.get_state(), state)  # ... draws nothing ...
        assert _unchanged(case.data, before)  # ... and leaves its input (and an accumulator) as it was
        return
    r = tally.ok("release_rank_k", call)
    assert len(case.budget.events) == 1 and case.budget.events[0] == r.privacy_event  # charged exactly once
    assert (r.k, r.dim, r.eigenvectors.shape) == (case.k, case.d, (case.d, case.k))
    assert torch.isfinite(r.eigenvalues).all() and torch.isfinite(r.eigenvectors).all()
    assert r.randomness == case.randomness and r.dtype == str(case.work_dtype).replace("torch.", "")
    if "epsilon" in case.kwargs:
        assert r.epsilon <= case.kwargs["epsilon"] and r.delta == case.kwargs["delta"]
    if case.kwargs["psd"]:
        assert (r.eigenvalues >= 0).all()
    if not case.kwargs["overwrite"] or case.form == "rows":
        assert _unchanged(case.data, before)


def test_release_rank_k_sweep():
    _run("release")


# ---- GramAccumulator ---------------------------------------------------------------------------

GRAM_KINDS = ("none", "row_norm", "dim", "neighbour", "device", "rows_nonfinite", "rows_width", "rows_shape",
              "rows_type", "rows_complex", "no_rows", "too_large")


@st.composite
def _gram_cases(draw, kind):
    spoil = _spoiled(draw, kind)
    d = draw(_ints(1, 6))
    c = draw(_floats(0.1, 10.0))
    ctor = {"row_norm": c}
    if draw(_BOOL):
        ctor["dim"] = d
    if draw(_BOOL):
        ctor["neighbour"] = _choose(draw, ["add_remove", "replace"])
    if draw(_BOOL):
        ctor["device"] = "cpu"
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    batches = []
    for _ in range(draw(_ints(1, 3))):
        n = draw(_ints(0, 5))
        rows = rng.normal(size=(n, d)) * _choose(draw, [0.01, 1.0, 30.0])
        storage = _choose(draw, ["numpy", "torch", "list"])
        dtype = _choose(draw, [np.float64, np.float32, np.float16, np.int64])
        if n == 1 and draw(_BOOL):
            rows = rows[0]  # one row as a vector
        batches.append(_container(rows.astype(dtype), storage))
    case = SimpleNamespace(spoil=spoil, kind=spoil, ctor=ctor, batches=batches, d=d, bad_at=None, expect=None)
    if spoil in ("row_norm", "dim", "neighbour", "device", "too_large"):
        if spoil == "row_norm":
            ctor["row_norm"], error = _bad(draw, BAD_POSITIVE)
            case.expect = (error, "row_norm")
        elif spoil == "dim":
            ctor["dim"] = _choose(draw, [0, -1, 1.5, "3", True, [3]])
            case.expect = ((ValueError, TypeError), "dim")
        elif spoil == "neighbour":
            ctor["neighbour"], error = _bad(draw, BAD_CHOICE)
            case.expect = (error, "neighbour")
        elif spoil == "device":
            ctor["device"] = _choose(draw, BAD_DEVICE)
            case.expect = (ValueError, "device")
        else:
            ctor.update(dim=draw(_ints(10**6, 10**7)), device="cpu")
            case.expect = (dl.InsufficientMemoryError, "GiB")
    elif spoil == "no_rows":
        ctor.pop("device", None)
        ctor.pop("dim", None)  # with dim the Gram exists before any row (zeros)
        case.batches = []
        case.expect = (ValueError, "no rows yet")
    else:
        case.bad_at = draw(_ints(0, len(batches)))
        if spoil == "rows_nonfinite":
            bad = rng.normal(size=(draw(_ints(1, 4)), d))
            bad[draw(_ints(0, bad.shape[0] - 1)), draw(_ints(0, d - 1))] = draw(
                _pick([math.nan, math.inf, -math.inf]))
            case.expect = (ValueError, r"^rows contains a NaN or Inf entry; the batch was not added$")
        elif spoil == "rows_width":
            bad = np.ones((2, d + draw(_ints(1, 3))))
            ctor["dim"] = d  # a width the accumulator knows before the first batch
            case.expect = (ValueError, f"rows must have {d} columns")
        elif spoil == "rows_shape":
            bad = np.ones(_choose(draw, [(2, 2, d), (2, 0), ()]))
            if bad.ndim == 2:
                ctor.pop("dim", None)
            case.expect = (ValueError, "shape")
        elif spoil == "rows_type":
            bad = _choose(draw, [None, "rows", 3.0, {"a": 1}, [["a"] * d], np.array([[object()] * d])])
            case.expect = (TypeError, "rows")
        else:
            bad = np.ones((2, d)) * (1 + 1j)
            case.expect = (TypeError, "rows must be real")
        case.bad = _container(bad, _choose(draw, ["numpy", "torch"])) if isinstance(bad, np.ndarray) \
            and bad.dtype.kind in "biufc" else bad
    return case


def _clipped_gram(batches, c: float) -> np.ndarray:
    """Reference: each row scaled to norm ≤ C in float64 numpy, then Σ xxᵀ."""
    rows = [np.atleast_2d(np.asarray(b, dtype=np.float64)) for b in batches]
    x = np.concatenate([r for r in rows if r.size], axis=0) if any(r.size for r in rows) else None
    if x is None:
        return None
    norms = np.linalg.norm(x, axis=1)
    x = x * np.where(norms > c, c / np.where(norms > 0, norms, 1.0), 1.0)[:, None]
    return x.T @ x


@settings(max_examples=140, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _gram_sweep(kind, data):
    case = data.draw(_gram_cases(kind), label="case")
    tally = TALLIES["gram"]
    tally.start(case.kind)
    make = lambda: dl.GramAccumulator(**case.ctor)  # noqa: E731
    if case.spoil in ("row_norm", "dim", "neighbour", "device", "too_large"):
        tally.refused("GramAccumulator", make, *case.expect)
        return
    acc = tally.ok("GramAccumulator", make)
    if case.spoil == "no_rows":
        tally.refused("GramAccumulator", lambda: acc.gram, *case.expect)
        return
    for i, rows in enumerate(case.batches + [None]):
        if i == case.bad_at:
            before = _snapshot(acc)
            tally.refused("GramAccumulator", lambda: acc.update(case.bad), *case.expect)
            assert _unchanged(acc, before)  # a refused batch leaves no trace
        if rows is not None:
            tally.ok("GramAccumulator", lambda: acc.update(rows))
    n = sum(np.atleast_2d(np.asarray(b)).shape[0] if np.asarray(b).size else 0 for b in case.batches)
    assert acc.n_rows == n and 0 <= acc.n_clipped <= n
    c = acc.row_norm
    assert acc.sensitivity == dl.gram_sensitivity(c, acc.neighbour)
    ref = _clipped_gram(case.batches, c)
    if acc._gram is not None:
        g = acc.gram
        assert g.dtype == torch.float64 and torch.isfinite(g).all()
        assert float(g.diagonal().sum()) <= n * c * c * (1 + 1e-9)  # every row has norm ≤ C
        if ref is not None:
            # Inputs are rounded to their own dtype before clipping, so compare loosely.
            np.testing.assert_allclose(g.numpy(), ref, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(ref).max()))


def test_gram_accumulator_sweep():
    _run("gram")


# ---- calibration, sensitivity and noise levels --------------------------------------------------

CAL_ARGS = {  # function -> its arguments, each with a strategy of valid values
    "analytic_gaussian_sigma": {"epsilon": st.floats(0.01, 20.0), "delta": st.floats(1e-12, 0.5),
                                "sensitivity": st.floats(1e-3, 1e3)},
    "classic_gaussian_sigma": {"epsilon": st.floats(0.01, 0.99), "delta": st.floats(1e-12, 0.5),
                               "sensitivity": st.floats(1e-3, 1e3)},
    "gaussian_epsilon": {"noise_scale": st.floats(0.05, 1e3), "delta": st.floats(1e-12, 0.5),
                         "sensitivity": st.floats(1e-3, 10.0)},
    "gaussian_delta": {"noise_scale": st.floats(0.05, 1e3), "epsilon": st.floats(0.0, 20.0),
                       "sensitivity": st.floats(1e-3, 10.0)},
    "calibrate_noise": {"sensitivity": st.floats(1e-3, 1e3), "epsilon": st.floats(0.01, 20.0),
                        "delta": st.floats(1e-12, 0.5), "noise_scale": st.floats(1e-3, 1e3),
                        "rho": st.floats(1e-4, 1e2), "mu": st.floats(1e-3, 1e2)},
    "gram_sensitivity": {"row_norm": st.floats(1e-3, 1e3), "neighbour": _pick(["add_remove", "replace"])},
    "noise_edge": {"noise_shape": _pick(["isotropic", "upper_triangular", "hermitian"]),
                   "d": st.integers(1, 10**6), "noise_scale": st.floats(1e-6, 1e6)},
    "noise_norm_bound": {"noise_shape": _pick(["isotropic", "upper_triangular", "hermitian"]),
                         "d": st.integers(1, 10**6), "noise_scale": st.floats(1e-6, 1e6),
                         "failure_probability": st.floats(1e-9, 0.5)},
    "GaussianMechanism": {"noise_scale": st.floats(1e-6, 1e6), "sensitivity": st.floats(1e-6, 1e6),
                          "noise_shape": _pick(["isotropic", "upper_triangular"])},
    "ComplexGaussianMechanism": {"noise_scale": st.floats(1e-6, 1e6), "sensitivity": st.floats(1e-6, 1e6)},
}
CHOICE_ARGS = {"neighbour", "noise_shape", "calibration"}
CAL_KINDS = ("none",) + tuple(f"{f}:{a}" for f, args in CAL_ARGS.items() for a in args) \
    + ("calibrate_noise:calibration", "calibrate_noise:spec_count")


@st.composite
def _cal_cases(draw, kind):
    name, spoil = kind.split(":")
    if _spoiled(draw, kind) == "none":
        spoil = "none"
    args = {a: draw(s) for a, s in CAL_ARGS[name].items()}
    if name == "calibrate_noise":
        if spoil in ("calibration", "spec_count", "epsilon"):
            mode = "epsilon"
        elif spoil in ("noise_scale", "rho", "mu"):
            mode = spoil
        else:
            mode = _choose(draw, ["epsilon", "noise_scale", "rho", "mu"])
        for key in ("epsilon", "noise_scale", "rho", "mu"):
            if key != mode:
                del args[key]
        if mode == "epsilon":
            args["calibration"] = "classic" if args["epsilon"] < 1 and draw(_BOOL) else "analytic"
        elif spoil != "delta" and draw(_BOOL):
            del args["delta"]
    case = SimpleNamespace(name=name, args=args, spoil=spoil, kind=kind if spoil != "none" else "none", expect=None)
    if spoil == "spec_count":
        args[_choose(draw, ["noise_scale", "rho", "mu"])] = 1.0
        case.expect = (ValueError, "exactly one")
    elif spoil in CHOICE_ARGS:
        args[spoil], error = _bad(draw, BAD_CHOICE)
        case.expect = (error, spoil)
    elif spoil != "none":
        table, none = _cal_table(name, spoil, args)
        args[spoil], error = _bad(draw, table, none=none)
        case.expect = (error, spoil)
    return case


def _cal_table(name: str, arg: str, args: dict) -> tuple:
    """(table, none) for :func:`_bad`: the bad values of argument ``arg`` of ``name``."""
    if arg == "d":  # a dimension: BAD_POSITIVE's values are refused alike, and so is a fraction
        return BAD_POSITIVE + ((1.5, ValueError),), None
    if arg in ("delta", "failure_probability"):  # (failure_probability: a probability, as delta)
        # calibrate_noise reads delta=None as "not given": required with epsilon, valid otherwise
        none = (ValueError if "epsilon" in args else SKIP) if name == "calibrate_noise" else None
        return BAD_DELTA, none
    spec = name == "calibrate_noise" and arg in ("epsilon", "noise_scale", "rho", "mu")
    none = ValueError if spec else None  # None there: no privacy specification ("exactly one")
    if arg == "epsilon":
        # gaussian_delta takes any ε ≥ 0 (check_positive(..., allow_zero=True))
        return (BAD_NONNEGATIVE if name == "gaussian_delta" else BAD_EPSILON), none
    return BAD_POSITIVE, none


def _cal_call(name: str, a: dict):
    fn = getattr(dl, name)
    if name in ("calibrate_noise",):
        return fn(a.pop("sensitivity"), **a) if "sensitivity" in a else fn(**a)
    return fn(**a)


@settings(max_examples=64, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _calibration_sweep(kind, data):
    case = data.draw(_cal_cases(kind), label="case")
    tally = TALLIES["calibration"]
    tally.start(case.kind)
    call = lambda: _cal_call(case.name, dict(case.args))  # noqa: E731
    if case.expect is not None:
        tally.refused(case.name, call, *case.expect)
        return
    out = tally.ok(case.name, call)
    a = case.args
    if case.name in ("analytic_gaussian_sigma", "classic_gaussian_sigma"):
        assert 0 < out < math.inf
        # calibrated noise never overshoots the target ε
        assert dl.gaussian_epsilon(out, a["delta"], a["sensitivity"]) <= a["epsilon"] * (1 + 1e-9)
    elif case.name == "gaussian_epsilon":
        assert 0 <= out <= math.inf
    elif case.name == "gaussian_delta":
        assert 0 <= out <= 1
    elif case.name == "calibrate_noise":
        assert isinstance(out, dl.NoiseCalibration) and 0 < out.noise_scale < math.inf
        assert out.event == dl.GaussianEvent(out.noise_scale / out.sensitivity)
        assert out.noise_multiplier == pytest.approx(1 / out.mu) and out.rho == pytest.approx(out.mu**2 / 2)
        if "epsilon" in a:
            assert out.epsilon <= a["epsilon"]
    elif case.name == "gram_sensitivity":
        assert out == pytest.approx(a["row_norm"] ** 2 * (math.sqrt(2) if a["neighbour"] == "replace" else 1))
    elif case.name in ("noise_edge", "noise_norm_bound"):
        assert 0 < out < math.inf
    else:
        assert out.mu == pytest.approx(a["sensitivity"] / a["noise_scale"])


def test_calibration_sweep():
    _run("calibration")


# ---- accounting ------------------------------------------------------------------------------

ACC_KINDS = ("none", "z", "q", "count", "member", "delta", "epsilon", "method", "budget_epsilon", "budget_delta",
             "plan_count", "plan_weights", "dict_field", "dict_type")


@st.composite
def _events(draw, depth=0):
    # (Poisson subsampling is priced by numerical integration: the slowest event, so drawn least)
    kinds = ["gaussian", "gaussian", "poisson", "self", "composed", "composed"] if depth < 2 else ["gaussian"]
    kind = _choose(draw, kinds)
    if kind == "gaussian":
        return dl.GaussianEvent(draw(_floats(0.3, 20.0)))
    if kind == "poisson":
        return dl.PoissonSampledEvent(draw(_floats(0.0, 1.0)), dl.GaussianEvent(draw(_floats(0.5, 20.0))))
    if kind == "self":
        return dl.SelfComposedEvent(draw(_events(depth + 1)), draw(_ints(0, 50)))
    return dl.ComposedEvent(tuple(draw(st.lists(_events(depth + 1), max_size=3))))


def _count_events(tally: Tally, ev) -> None:
    """Count the (valid) events of a tree built by :func:`_events` as constructed."""
    tally.calls[type(ev).__name__, "ok"] += 1
    for inner in getattr(ev, "events", ()) or ((ev.event,) if hasattr(ev, "event") else ()):
        _count_events(tally, inner)


def _has_subsampling(ev) -> bool:
    if isinstance(ev, dl.PoissonSampledEvent):
        return 0.0 < ev.sampling_probability < 1.0
    if isinstance(ev, dl.SelfComposedEvent):
        return _has_subsampling(ev.event)
    if isinstance(ev, dl.ComposedEvent):
        return any(_has_subsampling(e) for e in ev.events)
    return False


@st.composite
def _acc_cases(draw, kind):
    spoil = _spoiled(draw, kind)
    ev = draw(_events())
    methods = ["auto", "rdp"] if _has_subsampling(ev) else ["auto", "rdp", "gdp", "zcdp"]
    case = SimpleNamespace(spoil=spoil, kind=spoil, event=ev, method=_choose(draw, methods),
                           delta=draw(_floats(1e-12, 0.5)), epsilon=draw(_floats(0.01, 20.0)),
                           budget=(draw(_floats(0.1, 50.0)), draw(_floats(1e-10, 0.1))),
                           plan=_choose(draw, ["count", "weights"]),
                           count=draw(_ints(1, 200)),
                           weights=draw(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=5)),
                           build=None, doc=None, expect=None)
    if spoil in ("z", "q", "count", "member"):
        inner = dl.GaussianEvent(1.0)
        if spoil == "z":
            bad = _choose(draw, [0, -1.0, math.nan, -math.inf, "1", None, True, 1j])
            case.build = lambda: dl.GaussianEvent(bad)
            case.expect = (_error_for_real(bad), "noise_multiplier")
        elif spoil == "q":
            bad = _choose(draw, [-0.1, 1.5, math.nan, math.inf, "0.5", None, True])
            case.build = lambda: dl.PoissonSampledEvent(bad, inner)
            case.expect = (_error_for_real(bad), "sampling_probability")
        elif spoil == "count":
            bad = _choose(draw, [-1, 1.5, "2", None, True, math.nan])
            case.build = lambda: dl.SelfComposedEvent(inner, bad)
            case.expect = ((ValueError, TypeError), "count")
        else:
            bad = _choose(draw, [5, "gaussian", None, {"type": "gaussian"}])
            case.build = lambda: dl.ComposedEvent((inner, bad))
            case.expect = (TypeError, "not a privacy event")
    elif spoil == "delta":
        case.delta, error = _bad(draw, BAD_DELTA)
        case.expect = (error, "delta")
    elif spoil == "epsilon":  # PrivacyAccountant.delta(epsilon): any ε ≥ 0
        case.epsilon, error = _bad(draw, BAD_NONNEGATIVE)
        case.expect = (error, "epsilon")
    elif spoil == "method":
        # (and "PLD": the names are case-sensitive)
        case.method, error = _bad(draw, BAD_CHOICE + (("PLD", ValueError),))
        case.expect = (error, "method")
    elif spoil == "budget_epsilon":
        bad, error = _bad(draw, BAD_EPSILON)
        case.budget, case.expect = (bad, 1e-6), (error, "epsilon")
    elif spoil == "budget_delta":
        bad, error = _bad(draw, BAD_DELTA)
        case.budget, case.expect = (1.0, bad), (error, "delta")
    elif spoil == "plan_count":
        case.plan, case.count = "count", _choose(draw, [0, -3, 1.5, "2", True, 10**7])
        case.expect = ((ValueError, TypeError), "num_releases")
    elif spoil == "plan_weights":
        case.plan = "weights"
        case.weights = _choose(draw, [[], [0.0], [-1.0, 1.0], [math.nan], [math.inf, 1.0], ["a"], None, 5])
        case.expect = ((ValueError, TypeError), "weight|exactly one")
    elif spoil in ("dict_field", "dict_type"):
        doc = ev.to_dict()
        if spoil == "dict_field":
            doc.pop(_choose(draw, sorted(k for k in doc if k != "type")), None)
        else:
            doc["type"] = _choose(draw, ["laplace", "", None, 5])
        case.doc = doc
        case.expect = (ValueError, "event")
    return case


@settings(max_examples=100, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _accounting_sweep(kind, data):
    case = data.draw(_acc_cases(kind), label="case")
    tally = TALLIES["accounting"]
    tally.start(case.kind)
    ev = case.event
    name = {"z": "GaussianEvent", "q": "PoissonSampledEvent", "count": "SelfComposedEvent", "member": "ComposedEvent"}
    if case.build is not None:
        tally.refused(name[case.spoil], case.build, *case.expect)
        return
    if case.doc is not None:
        tally.refused("event_from_dict", lambda: event_from_dict(case.doc), *case.expect)
        return
    _count_events(tally, ev)
    assert tally.ok("event_from_dict", lambda: event_from_dict(json.loads(json.dumps(ev.to_dict())))) == ev
    acc = tally.ok("PrivacyAccountant", lambda: dl.PrivacyAccountant([ev]))
    if case.spoil in ("delta", "epsilon", "method"):
        fn = acc.epsilon if case.spoil != "epsilon" else acc.delta
        arg = case.delta if case.spoil != "epsilon" else case.epsilon
        tally.refused("PrivacyAccountant", lambda: fn(arg, case.method), *case.expect)
        return
    eps = tally.ok("PrivacyAccountant", lambda: acc.epsilon(case.delta, case.method))
    assert 0.0 <= eps <= math.inf
    if math.isfinite(eps):
        assert acc.delta(eps * (1 + 1e-9) + 1e-12, case.method) <= case.delta * (1 + 1e-6) + 1e-15
    make_budget = lambda: dl.PrivacyBudget(*case.budget)  # noqa: E731
    if case.spoil in ("budget_epsilon", "budget_delta"):
        tally.refused("PrivacyBudget", make_budget, *case.expect)
        return
    budget = tally.ok("PrivacyBudget", make_budget)
    if budget.can_afford(ev):
        tally.ok("PrivacyBudget", lambda: budget.spend(ev))
        assert budget.events == (ev,)
    else:
        tally.refused("PrivacyBudget", lambda: budget.spend(ev), dl.BudgetExceededError, "budget|exceed")
        assert budget.events == ()
    if case.plan == "count":
        plan = lambda: dl.calibrate_plan(case.epsilon, case.delta, num_releases=case.count)  # noqa: E731
    else:
        plan = lambda: dl.calibrate_plan(case.epsilon, case.delta, weights=case.weights)  # noqa: E731
    if case.spoil in ("plan_count", "plan_weights"):
        tally.refused("calibrate_plan", plan, *case.expect)
        return
    cals = tally.ok("calibrate_plan", plan)
    total = dl.PrivacyAccountant([c.event for c in cals]).epsilon(case.delta)
    assert total <= case.epsilon * (1 + 1e-9)  # the plan never overshoots


def test_accounting_sweep():
    _run("accounting")


# ---- eigensolver, mechanisms, secure noise --------------------------------------------------

LIN_TARGETS = {
    "topk_eigh": ("A_nonfinite", "A_shape", "A_type", "A_dtype", "k_value", "k_type", "solver", "tol", "generator"),
    "GaussianMechanism": ("mech_matrix", "mech_complex", "noise_scale", "sensitivity", "noise_shape"),
    "ComplexGaussianMechanism": ("mech_matrix", "mech_complex", "noise_scale", "sensitivity"),
    "SecureNormalSource": ("key", "combine", "n", "stream", "sec_dtype"),
}
LIN_KINDS = ("none",) + tuple(f"{t}:{k}" for t, ks in LIN_TARGETS.items() for k in ks)


@st.composite
def _lin_cases(draw, kind):
    target, spoil = kind.split(":")
    if _spoiled(draw, kind) == "none":
        spoil = "none"
    d = draw(_ints(1, 7))
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    a = rng.normal(size=(d, d))
    dtype = _choose(draw, [torch.float32, torch.float64, torch.complex64, torch.complex128])
    if dtype.is_complex:
        a = a + 1j * rng.normal(size=(d, d))
        m = torch.from_numpy(a + a.conj().T).to(dtype)
    else:
        m = torch.from_numpy(a + a.T).to(dtype)
    case = SimpleNamespace(target=target, spoil=spoil, kind=kind if spoil != "none" else "none", d=d, m=m,
                           expect=None,
                           k=draw(_ints(1, d)), solver=_choose(draw, ["auto", "dense", "lanczos"]),
                           tol=_choose(draw, [None, 1e-6, 1e-3]),
                           generator=torch.Generator().manual_seed(draw(_ints(0, 2**31))),
                           sigma=draw(_floats(1e-3, 1e3)), sens=draw(_floats(1e-3, 1e3)),
                           shape=_choose(draw, ["isotropic", "upper_triangular"]),
                           out_dtype=_choose(draw, [None, torch.float32, torch.float64]),
                           key=draw(st.binary(min_size=32, max_size=32)), combine=draw(_ints(1, 4)),
                           n=draw(_ints(0, 50)), stream=draw(_ints(0, 2**64 - 1)),
                           seeded=draw(_BOOL), in_place=draw(_BOOL),
                           sec_dtype=_choose(draw, [torch.float32, torch.float64]))
    if target in ("GaussianMechanism", "ComplexGaussianMechanism"):
        case.m = m.real.to(torch.float64) if m.is_complex() else m
        case.noise = _choose(draw, ["torch", "secure"])
    if spoil == "A_nonfinite":
        bad = case.m.clone()
        bad[draw(_ints(0, d - 1)), draw(_ints(0, d - 1))] = _choose(draw, [math.nan, math.inf])
        case.m, case.expect = bad, (ValueError, "non-finite")
    elif spoil == "A_shape":
        case.m = torch.ones(_choose(draw, [(d, d + 1), (d,), (1, d, d), (0, 0)]), dtype=torch.float64)
        case.expect = (ValueError, "shape")
    elif spoil == "A_type":
        case.m = _choose(draw, [np.eye(d), [[1.0]], None, "A"])
        case.expect = (TypeError, "A must be a torch.Tensor")
    elif spoil == "A_dtype":
        case.m = case.m.real.to(_choose(draw, [torch.float16, torch.int64, torch.bfloat16]))
        case.expect = (TypeError, "dtype")
    elif spoil in ("k_value", "k_type"):
        case.k, error = _bad(draw, bad_k(d), error=ValueError if spoil == "k_value" else TypeError)
        case.expect = (error, r"\bk\b")
    elif spoil == "solver":
        case.solver, error = _bad(draw, BAD_CHOICE)
        case.expect = (error, "solver")
    elif spoil == "tol":  # a positive real, or None (the default)
        case.tol, error = _bad(draw, BAD_POSITIVE, none=SKIP)
        case.expect = (error, "tol")
    elif spoil == "generator":
        case.generator, case.expect = _choose(draw, BAD_GENERATOR), (TypeError, "generator")
    elif spoil == "mech_matrix":
        case.m = torch.ones(_choose(draw, [(d, d + 1), (d,), (1, d, d)]), dtype=torch.float64)
        case.expect = (ValueError, "square")
    elif spoil == "mech_complex":
        case.m = case.m.to(torch.complex128)
        case.expect = (TypeError, "real")
    elif spoil in ("noise_scale", "sensitivity"):
        bad, error = _bad(draw, BAD_POSITIVE)
        setattr(case, "sigma" if spoil == "noise_scale" else "sens", bad)
        case.expect = (error, spoil)
    elif spoil == "noise_shape":
        case.shape, error = _bad(draw, BAD_CHOICE)
        case.expect = (error, "noise_shape")
    elif spoil == "key":
        case.key = _choose(draw, [b"", b"x" * 16, b"x" * 33, "x" * 32, 5])
        case.expect = (ValueError, "key must be 32 bytes")
    elif spoil == "combine":
        case.combine, case.expect = _choose(draw, [0, -1, 1.5, True, "2"]), (ValueError, "combine")
    elif spoil == "n":
        case.n, case.expect = _choose(draw, [-1, 1.5, "3", None]), (ValueError, r"\bn must")
    elif spoil == "stream":
        case.stream, case.expect = _choose(draw, [-1, 2**64, 2**100]), (ValueError, "stream")
        case.n = max(case.n, 1)  # n = 0 draws nothing and reads no stream
    elif spoil == "sec_dtype":
        case.sec_dtype = _choose(draw, ["float32", torch.int32, torch.complex64, None, 5])
        case.expect = (TypeError, "dtype")
    return case


def _lin_call(case, tally):
    if case.target == "topk_eigh":
        call = lambda: dl.topk_eigh(  # noqa: E731
            case.m, case.k, solver=case.solver, tol=case.tol, generator=case.generator)
        if case.expect is not None:
            return tally.refused("topk_eigh", call, *case.expect)
        res = tally.ok("topk_eigh", call)
        exact = torch.linalg.eigvalsh(case.m.to(torch.complex128 if case.m.is_complex() else torch.float64))
        top = exact.flip(0)[: case.k]
        single = case.m.dtype in (torch.float32, torch.complex64)
        scale = float(exact.abs().max()) + 1.0
        assert res.eigenvalues.shape == (case.k,) and res.eigenvectors.shape == (case.d, case.k)
        assert float((res.eigenvalues.double() - top).abs().max()) <= (1e-3 if single else 1e-6) * scale
        v = res.eigenvectors.to(torch.complex128 if case.m.is_complex() else torch.float64)
        gram = v.conj().T @ v
        assert float((gram - torch.eye(case.k, dtype=gram.dtype)).abs().max()) <= (1e-3 if single else 1e-8)
        return res
    if case.target == "SecureNormalSource":
        make = (lambda: dl.SecureNormalSource.from_seed(case.key, combine=case.combine)) if case.seeded \
            else (lambda: dl.SecureNormalSource(case.key, combine=case.combine))
        if case.spoil in ("key", "combine"):
            if case.seeded and case.spoil == "key":  # from_seed hashes any seed into a key: nothing to refuse
                tally.ok("SecureNormalSource", make)
                return None
            return tally.refused("SecureNormalSource", make, *case.expect)
        src = tally.ok("SecureNormalSource", make)
        draw = lambda: src.normals(case.n, stream=case.stream, dtype=case.sec_dtype)  # noqa: E731
        if case.expect is not None:
            return tally.refused("SecureNormalSource", draw, *case.expect)
        z = tally.ok("SecureNormalSource", draw)
        assert z.shape == (case.n,) and z.dtype == case.sec_dtype and torch.isfinite(z).all()
        assert torch.equal(z, draw())  # a stream is reproducible
        if case.n >= 4:
            other = src.normals(case.n, stream=(case.stream + 1) % 2**64, dtype=case.sec_dtype)
            assert not torch.equal(z, other)
        assert src.seeded  # a caller's key or seed is reproducible: never "secure"
        return z
    # the two mechanisms
    complex_mech = case.target == "ComplexGaussianMechanism"
    make = (lambda: dl.ComplexGaussianMechanism(case.sigma, case.sens)) if complex_mech \
        else (lambda: dl.GaussianMechanism(case.sigma, case.sens, case.shape))
    if case.spoil in ("noise_scale", "sensitivity", "noise_shape"):
        return tally.refused(case.target, make, *case.expect)
    mech = tally.ok(case.target, make)
    assert mech.mu == pytest.approx(case.sens / case.sigma) and mech.event == dl.GaussianEvent(case.sigma / case.sens)
    gen = case.generator if case.noise == "torch" else dl.SecureNormalSource.from_seed(case.stream)
    in_place = case.in_place and not complex_mech and case.expect is None
    perturb = (lambda: mech.perturb_(case.m, generator=gen)) if in_place \
        else (lambda: mech.perturb(case.m, generator=gen, dtype=case.out_dtype))
    if case.expect is not None:
        return tally.refused(case.target, perturb, *case.expect)
    before = case.m.clone()
    out = tally.ok(case.target, perturb)
    assert out.shape == case.m.shape and torch.isfinite(out).all()
    assert torch.equal(out, out.conj().T)  # exactly symmetric / Hermitian
    if in_place:
        assert out is case.m
    else:
        assert torch.equal(case.m, before)
    return out


@settings(max_examples=70, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _linalg_sweep(kind, data):
    case = data.draw(_lin_cases(kind), label="case")
    tally = TALLIES["linalg"]
    tally.start(case.kind)
    _lin_call(case, tally)


def test_linalg_mechanism_and_secure_noise_sweep():
    _run("linalg")


# ---- diagnostics and analysis tools --------------------------------------------------------------

DIAG_TARGETS = {
    "diagnose": ("failure_probability", "no_spectrum"),
    "check_bounds": ("m_shape", "k_value", "trials", "failure_probability", "mechanism", "noise_shape",
                     "noise_scale", "generator"),
    "gap_repulsion": ("m_shape", "k_value", "noise_scale"),
    "theory_bounds": ("m_shape", "m_nonfinite", "m_type", "k_value", "noise_scale", "noise_shape",
                      "failure_probability"),
}
DIAG_KINDS = ("none",) + tuple(f"{t}:{k}" for t, ks in DIAG_TARGETS.items() for k in ks)


@st.composite
def _diag_cases(draw, kind):
    target, spoil = kind.split(":")
    if _spoiled(draw, kind) == "none":
        spoil = "none"
    d = draw(_ints(2, 5))
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    a = rng.normal(size=(d, d))
    case = SimpleNamespace(
        target=target, spoil=spoil, kind=kind if spoil != "none" else "none", d=d,
        m=_choose(draw, [np.asarray, torch.from_numpy])(a @ a.T),
        k=draw(_ints(2 if target == "gap_repulsion" else 1, d)), sigma=draw(_floats(0.01, 10.0)),
        beta=draw(_floats(1e-6, 0.5)), trials=draw(_ints(1, 3)),
        mechanism=_choose(draw, ["gaussian", "complex"]),
        shape=_choose(draw, ["isotropic", "upper_triangular"]),
        generator=torch.Generator().manual_seed(draw(_ints(0, 2**31))), expect=None)
    if spoil == "failure_probability":  # a probability in (0, 1), as delta
        case.beta, error = _bad(draw, BAD_DELTA)
        case.expect = (error, "failure_probability")
    elif spoil == "no_spectrum":
        case.expect = (ValueError, "spectrum")
    elif spoil == "m_shape":
        shapes = {"theory_bounds": [(d, d + 1), (2, d, d)], "gap_repulsion": [(d, d + 1), (d,)]}
        case.m = np.ones(_choose(draw, shapes.get(target, [(d, d + 1), (2, d, d), (d,)])))
        case.expect = (ValueError, "square|shape")
    elif spoil == "m_nonfinite":
        case.m = np.array(torch.as_tensor(case.m).numpy(), dtype=np.float64)
        case.m[0, draw(_ints(0, d - 1))] = math.nan
        case.expect = (ValueError, "NaN or Inf")
    elif spoil == "m_type":
        case.m = _choose(draw, [np.array([["a"] * d] * d), np.array([[object()]])])
        case.expect = (TypeError, "dtype")
    elif spoil == "k_value":
        table = bad_k(d) + (((1, ValueError),) if target == "gap_repulsion" else ())  # (gap_repulsion: k ≥ 2)
        case.k, error = _bad(draw, table)
        case.expect = (error, r"\bk\b")
    elif spoil == "trials":
        case.trials, case.expect = _choose(draw, [0, -2, 1.5, "3"]), (ValueError, "trials")
    elif spoil in ("mechanism", "noise_shape"):
        bad, error = _bad(draw, BAD_CHOICE)
        setattr(case, "shape" if spoil == "noise_shape" else "mechanism", bad)
        case.expect = (error, spoil)
    elif spoil == "noise_scale":
        case.sigma, error = _bad(draw, BAD_POSITIVE)
        case.expect = (error, "noise_scale")
    elif spoil == "generator":
        case.generator, case.expect = _choose(draw, BAD_GENERATOR), (TypeError, "generator")
    return case


@settings(max_examples=20, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _diagnostics_sweep(kind, data):
    case = data.draw(_diag_cases(kind), label="case")
    tally = TALLIES["diagnostics"]
    tally.start(case.kind)
    if case.target == "diagnose":
        m = torch.as_tensor(case.m)
        r = dl.release_rank_k(m, case.k, sensitivity=1.0, noise_scale=case.sigma,
                              generator=case.generator)
        if case.spoil == "no_spectrum":
            r = dataclasses.replace(r, spectrum=None)
        call = lambda: dl.diagnose(r, failure_probability=case.beta)  # noqa: E731
        if case.expect is not None:
            tally.refused("diagnose", call, *case.expect)
            return
        report = tally.ok("diagnose", call)
        assert isinstance(report, dl.GapReport) and isinstance(report.table(), str)
        return
    if case.target == "check_bounds":
        call = lambda: dl.check_bounds(  # noqa: E731
            case.m, case.k, noise_scale=case.sigma, mechanism=case.mechanism, noise_shape=case.shape,
            trials=case.trials, failure_probability=case.beta, generator=case.generator, progress_bar=False)
    elif case.target == "gap_repulsion":
        call = lambda: dl.gap_repulsion(case.m, case.k, noise_scale=case.sigma, trials=case.trials,  # noqa: E731
                                        generator=case.generator)
    else:
        call = lambda: dl.theory_bounds(case.m, case.k, noise_scale=case.sigma, noise_shape=case.shape,  # noqa: E731
                                        failure_probability=case.beta)
    if case.expect is not None:
        tally.refused(case.target, call, *case.expect)
        return
    out = tally.ok(case.target, call)
    if case.target == "check_bounds":
        assert isinstance(out, dl.BoundCheck)
    elif case.target == "gap_repulsion":
        assert out.real_gaps.shape == (case.trials,) and out.complex_gaps.shape == (case.trials,)


def test_diagnostics_sweep():
    _run("diagnostics")


# ---- files: saved releases, ledgers, checkpoints and compressed models -----------------------------

FILE_ARTIFACTS = ("release", "budget", "checkpoint", "compressed")
FILE_KINDS = ("none",) + tuple(f"{artifact}:{damage}" for artifact in FILE_ARTIFACTS
                               for damage in ("garbage", "truncated", "crafted", "directory", "missing"))
FILES_DIR: list[Path] = []


class _Net(nn.Module):
    """A tiny model with a shared-input pair (attn.q, attn.k) and a single layer (out)."""

    def __init__(self, d_in: int = 4, h: int = 5, d_out: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.attn = nn.ModuleDict({"q": nn.Linear(d_in, h), "k": nn.Linear(d_in, h)})
        self.out = nn.Linear(h, d_out)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[-1]))

    def forward(self, x):
        return self.out(torch.tanh(self.attn["q"](x)) * self.attn["k"](x))


def _net_batches(seed: int, n_batches: int = 2, batch: int = 4, d_in: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(batch, 3, d_in, generator=g)} for _ in range(n_batches)]


def _forward(model, batch):
    return model(batch["x"])


NET_PATTERNS = dict(include=[r"attn\.(q|k)", "out"], shared=[r"(?P<group>attn)\.(q|k)"])


def _compressed_model(seed: int):
    model = _Net(seed=seed)
    dl.compress_model(model, dl.find_groups(model, **NET_PATTERNS), ratio=0.6, joint=True)
    return model


def _save(artifact: str, path: Path, seed: int):
    """Save one artifact of each kind; return (path written, a function that loads it, an equality check)."""
    gen = torch.Generator().manual_seed(seed)
    if artifact == "release":
        r = dl.release_rank_k(torch.eye(3, dtype=torch.float64) * (seed % 7 + 1), 2, sensitivity=1.0,
                              noise_scale=0.5, mechanism=("gaussian", "complex")[seed % 2], generator=gen)
        p = r.save(path)
        return p, (dl.load_release if seed % 2 else dl.LowRankRelease.load), \
            lambda back: torch.equal(back.eigenvectors, r.eigenvectors) and back.mu == r.mu
    if artifact == "budget":
        b = dl.PrivacyBudget(5.0, 1e-6)
        b.spend(dl.GaussianEvent(2.0 + seed % 5))
        p = b.save(path)
        return p, dl.PrivacyBudget.load, lambda back: back.events == b.events and back.epsilon == b.epsilon
    if artifact == "checkpoint":
        acc = dl.GramAccumulator(row_norm=1.0 + seed % 3)
        if seed % 4:
            acc.update(torch.randn(5, 3, generator=gen, dtype=torch.float64))
        p = acc.save_checkpoint(path, cursor={"batch": seed})
        return p, dl.GramAccumulator.load_checkpoint, lambda back: back[1] == {"batch": seed} and (
            back[0].n_rows == acc.n_rows and (acc._gram is None or torch.equal(back[0].gram, acc.gram)))
    model = _compressed_model(seed)
    p = dl.save_compressed(model, path, metadata={"seed": seed})
    x = torch.randn(2, 4, generator=gen)

    def check(back):
        with torch.no_grad():
            return back.compression_metadata == {"seed": seed} and torch.equal(back(x), model(x))

    return p, lambda q: dl.load_compressed(_Net(seed=99), q), check


def _craft(artifact: str, p: Path, how: str) -> None:
    """Alter a saved file so that any checksum still holds but one field is missing or wrong."""
    if artifact == "checkpoint":
        raw = p.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        meta, gram = json.loads(raw[8:8 + n])["meta"], raw[8 + n:]
        field = {"missing": "n_rows", "type": "dim", "value": "row_norm"}[how]
        if how == "missing":
            del meta[field]
        else:
            meta[field] = {"type": "3", "value": -1.0}[how]
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode() + gram).hexdigest()
        header = json.dumps({"meta": meta, "integrity": {"sha256": digest}}, sort_keys=True).encode()
        p.write_bytes(len(header).to_bytes(8, "little") + header + gram)
    elif artifact == "budget":
        doc = json.loads(p.read_text())
        ledger = doc["ledger"]
        if how == "missing":
            del ledger["events"]
        else:
            ledger["epsilon" if how == "value" else "events"] = -1.0 if how == "value" else "none"
        doc["integrity"] = {"sha256": hashlib.sha256(_canonical_json(ledger)).hexdigest()}
        p.write_text(json.dumps(doc))
    elif artifact == "release":
        with np.load(p, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        doc = json.loads(str(data["metadata"]))
        meta = doc["meta"]
        if how == "missing":
            del meta["noise_scale"]
        else:
            meta["sensitivity" if how == "value" else "psd"] = -2.0 if how == "value" else "yes"
        doc["integrity"] = {"sha256": release_file_digest(meta, data)}
        data["metadata"] = np.array(json.dumps(doc))
        buf = io.BytesIO()
        np.savez(buf, **data)
        p.write_bytes(buf.getvalue())
    else:
        cfg_path = p / "compression.json"
        cfg = json.loads(cfg_path.read_text())
        if how == "missing":
            del cfg["layers"]
        elif how == "type":
            next(iter(cfg["layers"].values()))["rank"] = "2"
        else:
            cfg["factors_sha256"] = "0" * 64  # the factors of another save
        cfg_path.write_text(json.dumps(cfg))


def _canonical_json(payload: dict) -> bytes:
    """The bytes a budget ledger's checksum covers (sorted keys, no spaces), written as a forger would."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


@st.composite
def _file_cases(draw, kind):
    artifact, damage = kind.split(":")
    spoil = _spoiled(draw, kind, 0.5)  # a valid save-and-load costs more and teaches less
    return SimpleNamespace(artifact=artifact, kind=spoil, damage=damage if spoil != "none" else "none",
                           seed=draw(_ints(0, 10**6)), blob=draw(st.binary(max_size=300)),
                           cut=draw(_floats(0.0, 0.99)), how=_choose(draw, ["missing", "type", "value"]))


@settings(max_examples=25, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _files_sweep(kind, data):
    case = data.draw(_file_cases(kind), label="case")
    tally = TALLIES["files"]
    tally.start(case.kind)
    root = Path(tempfile.mkdtemp(dir=FILES_DIR[0]))
    name = {"release": "load_release" if case.seed % 2 else "LowRankRelease.load", "budget": "PrivacyBudget.load",
            "checkpoint": "GramAccumulator.load_checkpoint", "compressed": "load_compressed"}[case.artifact]
    saver = {"release": "LowRankRelease.save", "budget": "PrivacyBudget.save",
             "checkpoint": "GramAccumulator.save_checkpoint", "compressed": "save_compressed"}[case.artifact]
    try:
        target = root / "artifact"
        p, load, same = tally.ok(saver, lambda: _save(case.artifact, target, case.seed))
        if case.damage == "none":
            back = tally.ok(name, lambda: load(p))
            assert same(back)
            return
        if case.damage == "missing":
            q = root / "nothing-here"
            error = ValueError if case.artifact == "compressed" else FileNotFoundError
            tally.refused(name, lambda: load(q), error, re.escape(q.name))
            return
        if case.damage == "directory":
            q = root / "a-directory"
            q.mkdir()
            if case.artifact == "compressed":
                q = p / "compression.json"  # a file where a directory is expected
            tally.refused(name, lambda: load(q), ValueError, re.escape(q.name))
            return
        victim = p / "factors.safetensors" if case.artifact == "compressed" else p
        if case.damage == "garbage":
            victim.write_bytes(case.blob)
        elif case.damage == "truncated":
            raw = victim.read_bytes()
            victim.write_bytes(raw[: int(len(raw) * case.cut)])
        else:
            _craft(case.artifact, p, case.how)
        tally.refused(name, lambda: load(p), ValueError, re.escape(p.name))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch_dir(tmp_path):
    """Where the file sweeps write: memory-backed when the host has /dev/shm (each save syncs to
    disk, and these sweeps test what a loader refuses, not durability: test_crash_safety does)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="dplowrank-sweep-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def test_files_sweep(scratch_dir):
    FILES_DIR[:] = [scratch_dir]
    _run("files")


# ---- model compression ----------------------------------------------------------------------------

COMPRESS_KINDS = ("none", "fg_model", "fg_include", "fg_regex", "fg_nomatch", "fg_shared", "cs_clip",
                  "cs_neighbour", "cs_route", "rs_statistics", "rs_epsilon", "rs_delta", "rs_weights",
                  "rs_unclipped", "rs_budget", "cm_ratio", "cm_allocation", "cm_estimator", "cm_joint",
                  "cm_statistics", "lrl_args", "sc_metadata", "lc_model", "lc_config")


@st.composite
def _compress_cases(draw, kind):
    spoil = _spoiled(draw, kind)
    case = SimpleNamespace(
        spoil=spoil, kind=spoil, seed=draw(_ints(0, 10**6)), include=list(NET_PATTERNS["include"]),
        shared=list(NET_PATTERNS["shared"]) if draw(_BOOL) else [], clip=_choose(draw,
            ["normalize", 0.5, 2.0]), neighbour=_choose(draw, ["add_remove", "replace"]),
        route=_choose(draw, ["auto", "input"]), epsilon=draw(_floats(0.5, 50.0)),
        delta=draw(_floats(1e-9, 1e-3)), weights=None, ratio=draw(_floats(0.2, 0.9)),
        joint=draw(_BOOL), allocation=_choose(draw, ["uniform", "energy"]),
        estimator=_choose(draw, ["spike", "ridge", "raw"]),
        stats_kind=_choose(draw, ["private", "private", "raw", "none"]),
        lrl=(draw(_ints(1, 6)), draw(_ints(1, 6)), draw(_ints(1, 4))),
        save=draw(_ints(0, 3)) == 0, budget=dl.PrivacyBudget(1e6, 0.5), bad=None,
        expect=None)
    if draw(_BOOL):
        case.weights = {"attn" if case.shared else "attn.q": draw(_floats(0.1, 10.0))}
    spoilers = {
        "fg_model": lambda: (_choose(draw, [None, 5, "model", nn.Linear]), (TypeError, "model")),
        "fg_include": lambda: (_choose(draw, [None, 5, [5], [None], ["out", b"x"]]), (TypeError, "include")),
        "fg_regex": lambda: ([_choose(draw, ["(", "[a-", "*x"])], (ValueError, "regular expression")),
        "fg_nomatch": lambda: (["nothing", r"attn\.z"], (ValueError, "no nn.Linear")),
        "fg_shared": lambda: ([r"attn\.(q|k)"], (ValueError, "named capture")),
        "cs_clip": lambda: _bad_clip(draw),
        "cs_neighbour": lambda: _spoil(draw, BAD_CHOICE, "neighbour"),
        "cs_route": lambda: _spoil(draw, BAD_CHOICE, "route"),
        "rs_statistics": lambda: (_choose(draw, [None, 5, {}, []]), (TypeError, "statistics")),
        "rs_epsilon": lambda: _spoil(draw, BAD_EPSILON, "epsilon"),
        "rs_delta": lambda: _spoil(draw, BAD_DELTA, "delta"),
        "rs_weights": lambda: ({"no-such-group": 1.0}, (ValueError, "unknown groups")),
        "rs_unclipped": lambda: (None, (ValueError, "clip=None")),
        "rs_budget": lambda: (dl.PrivacyBudget(1e-3, 1e-9), (dl.BudgetExceededError, "budget|exceed")),
        "cm_ratio": lambda: (_choose(draw, [0.0, 1.0, 1.5, -0.5, math.nan, math.inf, None, "0.5"]),
                             ((ValueError, TypeError), "ratio")),
        "cm_allocation": lambda: _spoil(draw, BAD_CHOICE, "allocation"),
        "cm_estimator": lambda: _spoil(draw, BAD_CHOICE, "estimator"),
        "cm_joint": lambda: (_choose(draw, BAD_BOOL), (TypeError, "joint")),
        "cm_statistics": lambda: (_choose(draw, [5, "stats", {}, []]), (TypeError, "statistics")),
        "lrl_args": lambda: ((draw(_ints(0, 2)), _choose(draw, [0, -1, 1.5, True, "3", None])),
                             (ValueError, r"in_features|out_features|rank")),
        "sc_metadata": lambda: (_choose(draw, [{"a": object()}, {"a": {1, 2}}, {(1, 2): 3}, 5, "meta"]),
                                (TypeError, "metadata")),
        "lc_model": lambda: (_choose(draw, [None, 5, "model"]), (TypeError, "model")),
        "lc_config": lambda: (_choose(draw, ["drop_layers", "layers_list", "bad_rank", "bad_owner",
                                                    "bad_sha", "not_json"]), (ValueError, "compressed_model_dir")),
    }
    if spoil != "none":
        case.bad, case.expect = spoilers[spoil]()
    return case


def _spoil(draw, table, name: str, **kwargs):
    """(bad value, (exception, message pattern)) for the compression sweep's table of spoilers."""
    bad, error = _bad(draw, table, **kwargs)
    return bad, (error, name)


def _bad_clip(draw):
    """clip: a positive real (check_positive), "normalize" or None; any other str is refused as a value."""
    bad, error = _bad(draw, BAD_POSITIVE, none=SKIP)
    return bad, (ValueError if isinstance(bad, str) else error, "clip")


@settings(max_examples=14, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _compress_sweep(kind, data):
    case = data.draw(_compress_cases(kind), label="case")
    tally = TALLIES["compress"]
    tally.start(case.kind)
    s, bad = case.spoil, case.bad
    model = _Net(seed=case.seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 1. targets
    fg_model = bad if s == "fg_model" else model
    include = bad if s in ("fg_include", "fg_regex", "fg_nomatch") else case.include
    shared = bad if s == "fg_shared" else case.shared
    find = lambda: dl.find_groups(fg_model, include, shared=shared)  # noqa: E731
    if s.startswith("fg_"):
        tally.refused("find_groups", find, *case.expect)
        return
    groups = tally.ok("find_groups", find)
    assert groups and all(isinstance(g, dl.LayerGroup) for g in groups)
    tally.calls["LayerGroup", "ok"] += 1
    # 2. statistics
    collect = lambda clip: dl.collect_statistics(  # noqa: E731
        model, _net_batches(case.seed), groups, clip=clip, neighbour=bad if s == "cs_neighbour" else case.neighbour,
        route=bad if s == "cs_route" else case.route, mask_key=None, forward=_forward)
    if s.startswith("cs_"):
        tally.refused("collect_statistics", lambda: collect(bad if s == "cs_clip" else case.clip), *case.expect)
        assert not any(m._forward_hooks for m in model.modules())  # hooks removed on error
        return
    stats = tally.ok("collect_statistics", lambda: collect(None if s == "rs_unclipped" else case.clip))
    assert isinstance(stats, dl.ActivationStatistics) and not any(m._forward_hooks for m in model.modules())
    # 3. release
    budget = bad if s == "rs_budget" else case.budget
    release = lambda: dl.release_statistics(  # noqa: E731
        bad if s == "rs_statistics" else stats, epsilon=bad if s == "rs_epsilon" else case.epsilon,
        delta=bad if s == "rs_delta" else case.delta, weights=bad if s == "rs_weights" else case.weights,
        generator=torch.Generator().manual_seed(case.seed), budget=budget)
    if s.startswith("rs_"):
        tally.refused("release_statistics", release, *case.expect)
        if isinstance(budget, dl.PrivacyBudget):
            assert budget.events == ()
        return
    private = tally.ok("release_statistics", release)
    assert isinstance(private, dl.PrivateStatistics) and len(budget.events) == 1  # the whole plan, once
    assert len(budget.events[0].events) == len(groups)
    assert private.spent_epsilon() <= case.epsilon * (1 + 1e-9)
    # 4. compression
    statistics = {"private": private, "raw": stats, "none": None}[case.stats_kind]
    compress = lambda: dl.compress_model(  # noqa: E731
        model, groups, ratio=bad if s == "cm_ratio" else case.ratio,
        statistics=bad if s == "cm_statistics" else statistics, joint=bad if s == "cm_joint" else case.joint,
        allocation=bad if s == "cm_allocation" else case.allocation,
        estimator=bad if s == "cm_estimator" else case.estimator)
    if s.startswith("cm_"):
        tally.refused("compress_model", compress, *case.expect)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
        return
    result = tally.ok("compress_model", compress)
    low = [m for m in model.modules() if isinstance(m, dl.LowRankLinear)]
    assert low and result.parameters_after < result.parameters_before
    with torch.no_grad():
        assert torch.isfinite(model(_net_batches(case.seed + 1, 1)[0]["x"])).all()
    # 5. a low-rank layer on its own
    i, o, r = case.lrl
    if s == "lrl_args":
        args = list(case.lrl)
        args[bad[0]] = bad[1]
        tally.refused("LowRankLinear", lambda: dl.LowRankLinear(*args), *case.expect)
        return
    layer = tally.ok("LowRankLinear", lambda: dl.LowRankLinear(i, o, r))
    assert layer(torch.ones(2, i)).shape == (2, o) and layer.dense_weight().shape == (o, i)
    # 6. files (not every example: each save syncs to disk)
    if not (case.save or s.startswith("sc_") or s.startswith("lc_")):
        return
    root = Path(tempfile.mkdtemp(dir=FILES_DIR[0]))
    try:
        out = root / "compressed_model_dir"
        if s == "sc_metadata":
            tally.refused("save_compressed", lambda: dl.save_compressed(model, out, metadata=bad), *case.expect)
            assert not out.exists() and not list(root.iterdir())  # nothing written
            return
        tally.ok("save_compressed", lambda: dl.save_compressed(model, out, metadata=result.metadata()))
        fresh = _Net(seed=case.seed + 1)
        if s == "lc_model":
            tally.refused("load_compressed", lambda: dl.load_compressed(bad, out), *case.expect)
            return
        if s == "lc_config":
            _damage_config(out, bad)
            fresh_before = {k: v.clone() for k, v in fresh.state_dict().items()}
            tally.refused("load_compressed", lambda: dl.load_compressed(fresh, out), *case.expect)
            assert all(torch.equal(v, fresh_before[k]) for k, v in fresh.state_dict().items())
            return
        tally.ok("load_compressed", lambda: dl.load_compressed(fresh, out))
        x = _net_batches(case.seed + 2, 1)[0]["x"]
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _damage_config(path: Path, how: str) -> None:
    cfg_path = path / "compression.json"
    if how == "not_json":
        cfg_path.write_text("{not json")
        return
    cfg = json.loads(cfg_path.read_text())
    first = next(iter(cfg["layers"].values()))
    if how == "drop_layers":
        del cfg["layers"]
    elif how == "layers_list":
        cfg["layers"] = list(cfg["layers"])
    elif how == "bad_rank":
        first["rank"] = -1
    elif how == "bad_owner":
        first["shares_down_with"] = "no.such.layer"
    else:
        cfg["weights_sha256"] = hashlib.sha256(b"other weights").hexdigest()
    cfg_path.write_text(json.dumps(cfg))


def test_compress_sweep(scratch_dir):
    FILES_DIR[:] = [scratch_dir]
    _run("compress")


# ---- the PCA estimator ----------------------------------------------------------------------------

PCA_KINDS = ("none", "epsilon", "delta", "data_norm", "centering", "mechanism", "noise_shape", "n_components",
             "random_state", "rows_nonfinite", "budget")


@st.composite
def _pca_cases(draw, kind):
    spoil = _spoiled(draw, kind)
    n, d = draw(_ints(3, 40)), draw(_ints(1, 6))
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    case = SimpleNamespace(
        kind=spoil, x=_choose(draw, [np.asarray, torch.from_numpy])(rng.normal(size=(n, d))),
        kw=dict(n_components=_choose(draw, ["auto", None, 1, min(2, d), 0.5]), epsilon=draw(_floats(0.05, 8.0)),
                delta=draw(_floats(1e-9, 1e-3)), data_norm=draw(_floats(0.1, 10.0)),
                centering=_choose(draw, ["private", "none"]), mechanism=_choose(draw, ["gaussian", "complex"]),
                random_state=_choose(draw, [None, draw(_ints(0, 2**31))])),
        budget=dl.PrivacyBudget(100.0, 0.5), expect=None)
    if case.kw["mechanism"] == "gaussian":
        case.kw["noise_shape"] = _choose(draw, ["isotropic", "upper_triangular"])
    if spoil == "epsilon":
        bad, error = _bad(draw, [(v, e) for v, e in BAD_EPSILON if not (isinstance(v, float) and v == math.inf)])
        case.kw["epsilon"], case.expect = bad, (error, "epsilon")
    elif spoil == "delta":
        case.kw["delta"], error = _bad(draw, BAD_DELTA)
        case.expect = (error, "delta")
    elif spoil == "data_norm":
        case.kw["data_norm"], error = _bad(draw, BAD_POSITIVE, none=ValueError)
        case.expect = (error, "data_norm")
    elif spoil in ("centering", "mechanism"):
        case.kw[spoil], error = _bad(draw, BAD_CHOICE)
        case.expect = (error, spoil)
    elif spoil == "noise_shape":
        case.kw["mechanism"] = "gaussian"
        case.kw["noise_shape"], error = _bad(draw, BAD_CHOICE)
        case.expect = (error, "noise_shape")
    elif spoil == "n_components":
        case.kw["n_components"], error = _choose(draw, [(0, ValueError), (d + 1, ValueError), (1.5, ValueError),
                                                        ("all", ValueError), (True, TypeError), ([1], TypeError)])
        case.expect = (error, "n_components")
    elif spoil == "random_state":
        case.kw["random_state"] = _choose(draw, [np.random.RandomState(0), "seed", 1.5, random.Random(0)])
        case.expect = (TypeError, "random_state")
    elif spoil == "rows_nonfinite":
        x = np.array(torch.as_tensor(case.x).numpy())
        x[draw(_ints(0, n - 1)), draw(_ints(0, d - 1))] = _choose(draw, [math.nan, math.inf, -math.inf])
        case.x, case.expect = x, (ValueError, "NaN|infinity")
    elif spoil == "budget":
        case.budget = dl.PrivacyBudget(0.01, 1e-9)
        case.expect = (dl.BudgetExceededError, "budget")
    return case


@settings(max_examples=30, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _pca_sweep(kind, data):
    case = data.draw(_pca_cases(kind), label="case")
    tally = TALLIES["pca"]
    tally.start(case.kind)
    est = dl.PrivatePCA(budget=case.budget, **case.kw)
    before = case.budget.spent_epsilon()
    if case.expect is not None:
        tally.refused("PrivatePCA", lambda: est.fit(case.x), *case.expect)
        assert case.budget.spent_epsilon() == before  # a refused fit charges nothing
        return
    z = tally.ok("PrivatePCA", lambda: est.fit_transform(case.x))
    assert z.shape == (case.x.shape[0], est.n_components_)
    assert type(z) is type(case.x)
    assert len(case.budget.events) == 1  # the whole plan, charged once


def test_pca_sweep():
    _run("pca")


# ---- torch.distributed (a gloo group of one process, in this process) -----------------------------

DIST_KINDS = ("none", "k", "epsilon", "delta", "src", "data", "sensitivity", "row_start", "rows_nonfinite",
              "budget")


@st.composite
def _distributed_cases(draw, kind):
    spoil = _spoiled(draw, kind)
    which = _choose(draw, ["release_rank_k_distributed", "release_rank_k_sharded", "reduce_statistics"])
    if spoil in ("sensitivity", "row_start", "rows_nonfinite"):
        which = "release_rank_k_sharded"
    if which == "reduce_statistics" and spoil not in ("none", "src", "data"):
        which = "release_rank_k_distributed"
    n, d = draw(_ints(3, 30)), draw(_ints(2, 8))
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    x = rng.normal(size=(n, d))
    case = SimpleNamespace(kind=spoil, which=which, x=x, d=d, k=draw(_ints(1, d)), src=0,
                           kw=dict(epsilon=draw(_floats(0.1, 8.0)), delta=draw(_floats(1e-9, 1e-3))),
                           sensitivity=draw(_floats(0.5, 5.0)), row_start=0, budget=dl.PrivacyBudget(100.0, 0.5),
                           expect=None)
    if spoil == "k":
        case.k, error = _bad(draw, bad_k(d))
        case.expect = (error, "k")
    elif spoil == "epsilon":
        bad, error = _bad(draw, [(v, e) for v, e in BAD_EPSILON if not (isinstance(v, float) and v == math.inf)])
        case.kw["epsilon"], case.expect = bad, (error, "epsilon")
    elif spoil == "delta":
        case.kw["delta"], error = _bad(draw, BAD_DELTA)
        case.expect = (error, "delta")
    elif spoil == "src":
        case.src = _choose(draw, [1, -1, 2, True, 0.0, "0"])
        case.expect = (ValueError, "src|dst")
    elif spoil == "data":
        case.expect = (TypeError, "acc must be|rows must be|stats must be")
    elif spoil == "sensitivity":
        case.sensitivity, error = _bad(draw, BAD_POSITIVE)
        case.expect = (error, "sensitivity")
    elif spoil == "row_start":
        case.row_start, case.expect = _choose(draw, [(1, ValueError), (-512, ValueError), (512, ValueError),
                                                     (1.0, TypeError), ("0", TypeError)]), None
        case.row_start, error = case.row_start
        case.expect = (error, "row_start|rows \\[|do not fit")
    elif spoil == "rows_nonfinite":
        case.x = rng.normal(size=(d, d))
        case.x[draw(_ints(0, d - 1)), draw(_ints(0, d - 1))] = _choose(draw, [math.nan, math.inf, -math.inf])
        case.expect = (ValueError, "finite")
    elif spoil == "budget":
        case.budget = dl.PrivacyBudget(0.05, 1e-9)
        case.expect = (dl.BudgetExceededError, "budget")
    return case


def _distributed_call(case):
    if case.which == "release_rank_k_distributed":
        acc = dl.GramAccumulator(row_norm=2.0, dim=case.d)
        acc.update(case.x)
        arg = "not an accumulator" if case.kind == "data" else acc
        return lambda: dl.release_rank_k_distributed(arg, case.k, src=case.src, budget=case.budget,
                                                     generator=dl.SecureNormalSource.from_seed(1), **case.kw)
    if case.which == "release_rank_k_sharded":
        m = case.x if case.kind == "rows_nonfinite" else case.x.T @ case.x
        rows = case.x.tolist() if case.kind == "data" else torch.from_numpy(np.ascontiguousarray(m))
        return lambda: dl.release_rank_k_sharded(rows, case.k, row_start=case.row_start, sensitivity=case.sensitivity,
                                                 src=case.src, budget=case.budget,
                                                 generator=dl.SecureNormalSource.from_seed(1), **case.kw)
    from dplowrank.compress import collect_statistics, find_groups

    model = nn.Sequential(nn.Linear(case.d, 3)).double()
    stats = collect_statistics(model, [{"x": torch.from_numpy(case.x)}], find_groups(model, ["0"]), clip=1.0,
                               prior=None, mask_key=None, forward=lambda m, b: m(b["x"]))
    arg = {"0": stats["0"]} if case.kind == "data" else stats
    return lambda: dl.reduce_statistics(arg, dst=case.src)


@settings(max_examples=10, **SETTINGS)  # per spoil kind
@given(data=st.data())
def _distributed_sweep(kind, data):
    case = data.draw(_distributed_cases(kind), label="case")
    tally = TALLIES["distributed"]
    tally.start(case.kind)
    call = _distributed_call(case)
    spent = len(case.budget.events)
    if case.expect is not None:
        tally.refused(case.which, call, *case.expect)
        assert len(case.budget.events) == spent  # a refusal charges nothing
        return
    out = tally.ok(case.which, call)
    if case.which == "reduce_statistics":
        assert out is True  # the only rank is the destination
    else:
        assert out.eigenvalues.shape == (case.k,) and len(case.budget.events) == spent + 1


def test_distributed_sweep(tmp_path):
    """The collectives' bad input, in a gloo group of this one process (world size 1)."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        _run("distributed")
    finally:
        dist.destroy_process_group()


# ---- what the sweeps cover -----------------------------------------------------------------------

BOTH, OK, REFUSED = ("ok", "refused"), ("ok",), ("refused",)
SWEEPS = {  # name -> (Hypothesis function, spoil kinds, {public name: outcomes it must reach})
    "release": (_release_sweep, RELEASE_KINDS, {
        "release_rank_k": BOTH, "LowRankRelease": OK, "BudgetExceededError": REFUSED}),
    "gram": (_gram_sweep, GRAM_KINDS, {"GramAccumulator": BOTH, "InsufficientMemoryError": REFUSED}),
    "calibration": (_calibration_sweep, CAL_KINDS, {
        "analytic_gaussian_sigma": BOTH, "classic_gaussian_sigma": BOTH, "gaussian_epsilon": BOTH,
        "gaussian_delta": BOTH, "calibrate_noise": BOTH, "NoiseCalibration": OK, "gram_sensitivity": BOTH,
        "noise_edge": BOTH, "noise_norm_bound": BOTH}),
    "accounting": (_accounting_sweep, ACC_KINDS, {
        "GaussianEvent": BOTH, "PoissonSampledEvent": BOTH, "SelfComposedEvent": BOTH, "ComposedEvent": BOTH,
        "event_from_dict": BOTH, "PrivacyAccountant": BOTH, "PrivacyBudget": BOTH,
        "calibrate_plan": BOTH}),
    "linalg": (_linalg_sweep, LIN_KINDS, {
        "topk_eigh": BOTH, "EighResult": OK, "GaussianMechanism": BOTH, "ComplexGaussianMechanism": BOTH,
        "SecureNormalSource": BOTH}),
    "diagnostics": (_diagnostics_sweep, DIAG_KINDS, {
        "diagnose": BOTH, "GapReport": OK, "check_bounds": BOTH, "BoundCheck": OK, "gap_repulsion": BOTH,
        "theory_bounds": BOTH}),
    "files": (_files_sweep, FILE_KINDS, {
        "LowRankRelease.save": OK, "LowRankRelease.load": BOTH, "load_release": BOTH, "PrivacyBudget.save": OK,
        "PrivacyBudget.load": BOTH, "GramAccumulator.save_checkpoint": OK,
        "GramAccumulator.load_checkpoint": BOTH, "save_compressed": OK, "load_compressed": BOTH}),
    "compress": (_compress_sweep, COMPRESS_KINDS, {
        "find_groups": BOTH, "LayerGroup": OK, "collect_statistics": BOTH, "ActivationStatistics": OK,
        "release_statistics": BOTH, "PrivateStatistics": OK, "compress_model": BOTH, "LowRankLinear": BOTH,
        "save_compressed": BOTH, "load_compressed": BOTH}),
    "pca": (_pca_sweep, PCA_KINDS, {"PrivatePCA": BOTH}),
    "distributed": (_distributed_sweep, DIST_KINDS, {
        "release_rank_k_distributed": BOTH, "release_rank_k_sharded": BOTH, "reduce_statistics": BOTH}),
}

# Public names with no sweep of their own, and why. Keep this short: a new entry point belongs
# in a sweep, not here.
EXEMPT: dict[str, str] = {
    "DistributedError": "raised only when a peer rank dies or times out, which a one-process group cannot do; "
                        "tests/test_distributed.py kills a rank of a 2-process job to reach it",
}
# Methods the issue names, swept alongside the public functions.
REQUIRED_METHODS = {"LowRankRelease.save", "LowRankRelease.load", "PrivacyBudget.save", "PrivacyBudget.load",
                    "GramAccumulator.save_checkpoint", "GramAccumulator.load_checkpoint"}


def test_every_public_name_is_swept():
    covered = {name for _, _, covers in SWEEPS.values() for name in covers}
    uncovered = sorted(set(dl.__all__) - covered - set(EXEMPT))
    assert not uncovered, f"public names without sweep coverage: {uncovered}"
    assert covered >= REQUIRED_METHODS, sorted(REQUIRED_METHODS - covered)
    stale = sorted(set(EXEMPT) - set(dl.__all__)) + sorted(
        n for n in covered if "." not in n and n not in dl.__all__)
    assert not stale, f"sweep declarations name no public object: {stale}"


def test_sweep_is_large_enough():
    counts = {name: _examples(name) for name in SWEEPS}  # read from each sweep's settings
    assert sum(counts.values()) >= 10_000, counts


# ---- the tables of bad values ----------------------------------------------------------------------

#: How to call each validator on a value, naming the parameter "the_value" (check_k names "k").
VALIDATOR_CALLS = {
    "check_epsilon": lambda v: validation.check_epsilon(v, "the_value"),
    "check_delta": lambda v: validation.check_delta(v, "the_value"),
    "check_positive": lambda v: check_positive(v, "the_value"),
    "check_choice": lambda v: check_choice(v, "the_value", ("isotropic", "upper_triangular")),
    "check_dense_input": lambda v: check_dense_input(v, "the_value"),
    "check_int": lambda v: check_int(v, "the_value", low=1),
    "check_tolerance": lambda v: check_tolerance(v, "the_value"),
}


def test_every_validator_has_a_table():
    validators = {n for n in validation.__all__ if n.startswith("check_")}
    assert validators == {f.__name__ for f in BAD_VALUES}, "a check_* function without its BAD_ table"
    assert validators == set(VALIDATOR_CALLS) | {"check_k"}
    assert all(BAD_VALUES.values()), "an empty table"


@pytest.mark.parametrize("name", sorted(VALIDATOR_CALLS))
def test_validators_refuse_their_own_bad_values(name):
    """Each validator refuses each value of its own table with that exception, naming the parameter."""
    table = BAD_VALUES[getattr(validation, name)]
    for value, error in table:
        with pytest.raises(error, match="the_value"):
            VALIDATOR_CALLS[name](value)


@pytest.mark.parametrize("d", [1, 2, 7])
def test_check_k_refuses_its_own_bad_values(d):
    assert bad_k(d)[: len(BAD_VALUES[check_k])] == BAD_VALUES[check_k]  # BAD_K, and the values above d
    for value, error in bad_k(d):
        with pytest.raises(error, match=r"\bk\b"):
            check_k(value, d)
    assert [check_k(k, d) for k in range(1, d + 1)] == list(range(1, d + 1))  # and nothing valid is in there


def test_check_positive_with_zero_refuses_the_nonnegative_table():
    for value, error in BAD_NONNEGATIVE:
        with pytest.raises(error, match="the_value"):
            check_positive(value, "the_value", allow_zero=True)
    assert check_positive(0.0, "the_value", allow_zero=True) == 0.0


# ---- targeted checks -----------------------------------------------------------------------------


def test_too_large_is_refused_before_allocation(monkeypatch):
    with pytest.raises(dl.InsufficientMemoryError, match="GiB"):
        dl.GramAccumulator(row_norm=1.0, dim=10**7, device="cpu")
    # a Gram that exists, but whose noisy copy does not fit in what is (made to look) available
    import dplowrank._memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1_000_000)
    m = torch.eye(600, dtype=torch.float64)
    budget = dl.PrivacyBudget(1.0, 1e-6)
    with pytest.raises(dl.InsufficientMemoryError,
                       match="needs about 2.7 MiB on cpu.*nothing was allocated or charged"):
        dl.release_rank_k(m, 2, sensitivity=1.0, noise_scale=1.0, budget=budget, dtype="float64",
                          generator=torch.Generator().manual_seed(0))
    assert budget.events == ()


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (np.eye(3) * 1e300, dict(sensitivity=1.0, epsilon=1.0, delta=1e-6, dtype="float32"),
         "entries .* do not fit float32"),
        (np.eye(3), dict(sensitivity=1e300, epsilon=1.0, delta=1e-6, dtype="float32"), "sigma=.*float32"),
        (np.eye(3), dict(sensitivity=1e-300, noise_scale=1e-300, dtype="float32"), "sigma=1e-300 .*float32"),
        (np.eye(3) * 1e308, dict(sensitivity=1.0, noise_scale=1e308), "overflow float64"),
        (np.zeros((0, 0)), dict(sensitivity=1.0, epsilon=1.0, delta=1e-6),
         "non-empty Gram matrix, got shape \\(0, 0\\)"),
        (torch.eye(3).to_sparse(), dict(sensitivity=1.0, epsilon=1.0, delta=1e-6), "dense.*sparse_coo"),
        (torch.eye(3, device="meta"), dict(row_norm=1.0, epsilon=1.0, delta=1e-6), "'meta' device"),
        ([[1.0, 2.0], [3.0]], dict(row_norm=1.0, epsilon=1.0, delta=1e-6), "data could not be read"),
    ],
    ids=["gram-beyond-float32", "sigma-beyond-float32", "sigma-below-float32", "noisy-beyond-float64",
         "empty-gram", "sparse", "meta", "ragged"],
)
def test_unrepresentable_or_unreadable_input_charges_nothing(data, kwargs, match):
    budget = dl.PrivacyBudget(1e6, 0.5)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with pytest.raises((ValueError, TypeError), match=match):
        dl.release_rank_k(data, 1, budget=budget, generator=gen, **kwargs)
    assert budget.events == () and torch.equal(gen.get_state(), state)


def test_find_groups_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        dl.find_groups(None, [".*"])
    with pytest.raises(TypeError, match="include patterns must be str, got 5"):
        dl.find_groups(_Net(), [5])


# Crashes this sweep found in code it did not own at first; each is now a documented error that
# names the bad value. Regression tests, one per former crash.
FORMER_GAPS = {
    "GaussianMechanism.perturb: sparse matrix": (
        lambda: dl.GaussianMechanism(1.0, 1.0).perturb(torch.eye(3).to_sparse(), generator=torch.Generator()),
        TypeError, "layout"),
    "GaussianMechanism.perturb: generator=5": (
        lambda: dl.GaussianMechanism(1.0, 1.0).perturb(torch.eye(3), generator=5), TypeError, "generator"),
    "GaussianMechanism.perturb: dtype=torch.int32": (
        lambda: dl.GaussianMechanism(1.0, 1.0).perturb(torch.eye(3), generator=torch.Generator(), dtype=torch.int32),
        ValueError, "dtype"),
    "GaussianMechanism.perturb: device='tpu'": (
        lambda: dl.GaussianMechanism(1.0, 1.0).perturb(torch.eye(3), generator=torch.Generator(), device="tpu"),
        ValueError, "tpu"),
    "GaussianMechanism.perturb_: integer matrix": (
        lambda: dl.GaussianMechanism(1.0, 1.0).perturb_(torch.eye(3, dtype=torch.int64), generator=torch.Generator()),
        ValueError, "int64"),
    "ComplexGaussianMechanism.perturb: generator='x'": (
        lambda: dl.ComplexGaussianMechanism(1.0, 1.0).perturb(torch.eye(3), generator="x"), TypeError, "generator"),
    "topk_eigh: sparse matrix": (lambda: dl.topk_eigh(torch.eye(3, dtype=torch.float64).to_sparse(), 1),
                                 TypeError, "layout"),
    "topk_eigh: meta matrix": (lambda: dl.topk_eigh(torch.eye(3, device="meta"), 1), ValueError, "meta"),
    "diagnose: not a release": (lambda: dl.diagnose(None), TypeError, "LowRankRelease"),
    "check_bounds: NaN matrix": (
        lambda: dl.check_bounds(np.full((3, 3), math.nan), 1, noise_scale=1.0, trials=1, progress_bar=False),
        ValueError, "finite"),
    "check_bounds: trials=True": (
        lambda: dl.check_bounds(np.eye(3), 1, noise_scale=1.0, trials=True, progress_bar=False),
        ValueError, "trials"),
    "gap_repulsion: NaN matrix": (
        lambda: dl.gap_repulsion(np.full((3, 3), math.nan), 2, noise_scale=1.0, trials=1), ValueError, "finite"),
    "gap_repulsion: trials=0": (
        lambda: dl.gap_repulsion(np.eye(3), 2, noise_scale=1.0, trials=0), ValueError, "trials"),
    "GramAccumulator.update: sparse rows": (
        lambda: dl.GramAccumulator(row_norm=1.0).update(torch.eye(3).to_sparse()), TypeError, "layout"),
    "GramAccumulator.update: 0-d array": (
        lambda: dl.GramAccumulator(dim=1, row_norm=1.0).update(np.ones(())), ValueError, "shape"),
    "SecureNormalSource.new_streams(-1)": (
        lambda: dl.SecureNormalSource().new_streams(-1), ValueError, "count"),
    "noise_edge: d=1.5": (lambda: dl.noise_edge("isotropic", 1.5, 1.0), ValueError, "d must be"),
    "noise_norm_bound: failure_probability='0.1'": (
        lambda: dl.noise_norm_bound("isotropic", 4, 1.0, "0.1"), TypeError, "failure_probability"),
    "compress_model: ratio=None": (lambda: allocate_ranks([], None), TypeError, "ratio"),
}


@pytest.mark.parametrize("name", sorted(FORMER_GAPS))
def test_former_crashes_are_documented_errors(name):
    fn, kind, words = FORMER_GAPS[name]
    with pytest.raises(kind, match=words):
        fn()
