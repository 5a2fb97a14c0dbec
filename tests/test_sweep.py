"""Bad-input sweep: Hypothesis throws garbage at every public entry point.

Each call must either succeed or raise one of the documented errors (ValueError and its
subclasses such as BudgetExceededError and InsufficientMemoryError, TypeError,
FileNotFoundError); any other exception is a crash and fails the test. Budgets are never
charged by a failing call. The example counts add up to more than 10,000 per run.
"""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dplowrank as dl
from dplowrank.accounting import event_from_dict
from dplowrank.diagnostics import noise_edge, noise_norm_bound

DOCUMENTED = (ValueError, TypeError, FileNotFoundError)

weird_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e308, 1e308),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 0.5, 1e-300, 1e300, True, False, None, "1", b"x", 1j, [], [1.0], {}]),
)


def _matrices():
    shapes = st.one_of(
        st.tuples(st.integers(0, 6), st.integers(0, 6)),
        st.tuples(st.integers(1, 4)),
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    )
    dtypes = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.bool_, np.complex128])
    elems = st.floats(allow_nan=True, allow_infinity=True, width=16)

    @st.composite
    def build(draw):
        shape = draw(shapes)
        dtype = draw(dtypes)
        n = int(np.prod(shape)) if shape else 1
        vals = draw(st.lists(elems, min_size=n, max_size=n))
        with np.errstate(all="ignore"):
            arr = np.asarray(vals, dtype=np.float64).reshape(shape)
            if draw(st.booleans()) and arr.ndim == 2 and arr.shape[0] == arr.shape[1]:
                arr = arr + arr.T  # often symmetric
            arr = arr.astype(dtype)
        kind = draw(st.sampled_from(["numpy", "torch", "list"]))
        if kind == "torch" and dtype != np.float16:
            return torch.from_numpy(np.ascontiguousarray(arr))
        if kind == "list":
            return arr.tolist()
        return arr

    return build()


def _call(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except DOCUMENTED:
        pass


@settings(max_examples=2500, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    data=_matrices(), k=weird_scalars | st.integers(-2, 8), epsilon=weird_scalars, delta=weird_scalars,
    bound=weird_scalars, mode=st.sampled_from(["row_norm", "sensitivity", "both", "none"]),
    options=st.fixed_dictionaries({}, optional={
        "mechanism": st.sampled_from(["gaussian", "complex", "laplace", None, 3]),
        "noise_shape": st.sampled_from(["isotropic", "upper_triangular", "gue", None]),
        "neighbour": st.sampled_from(["add_remove", "replace", "swap", None]),
        "solver": st.sampled_from(["auto", "dense", "lanczos", "nope"]),
        "psd": st.sampled_from([True, False, 1, "yes"]),
        "dtype": st.sampled_from([None, "float32", "float64", torch.float16, "int8"]),
        "calibration": st.sampled_from(["analytic", "classic", "laplace"]),
        "device": st.sampled_from([None, "cpu", "tpu", 5]),
    }),
)
def test_release_rank_k_sweep(data, k, epsilon, delta, bound, mode, options):
    budget = dl.PrivacyBudget(1e6, 0.5)
    kwargs = dict(epsilon=epsilon, delta=delta, budget=budget, generator=torch.Generator().manual_seed(0), **options)
    if mode in ("row_norm", "both"):
        kwargs["row_norm"] = bound
    if mode in ("sensitivity", "both"):
        kwargs["sensitivity"] = bound
    try:
        r = dl.release_rank_k(data, k, **kwargs)
    except DOCUMENTED:
        assert budget.events == ()  # a failing call charges nothing
        return
    assert len(budget.events) == 1
    assert torch.isfinite(r.eigenvectors).all()


@settings(max_examples=1500, suppress_health_check=list(HealthCheck), deadline=None)
@given(rows=_matrices(), row_norm=weird_scalars, dim=weird_scalars | st.integers(-1, 5),
       neighbour=st.sampled_from(["add_remove", "replace", "x", None]))
def test_gram_accumulator_sweep(rows, row_norm, dim, neighbour):
    try:
        acc = dl.GramAccumulator(row_norm=row_norm, dim=dim, neighbour=neighbour)
    except DOCUMENTED:
        return
    before = (acc.n_rows, None if acc.dim is None or acc._gram is None else acc.gram.clone())
    try:
        acc.update(rows)
    except DOCUMENTED:
        assert acc.n_rows == before[0]
        if before[1] is not None:
            assert torch.equal(acc.gram, before[1])


@settings(max_examples=2000, suppress_health_check=list(HealthCheck), deadline=None)
@given(a=weird_scalars, b=weird_scalars, c=weird_scalars,
       method=st.sampled_from(["analytic", "classic", "x", None]))
def test_calibration_sweep(a, b, c, method):
    _call(dl.analytic_gaussian_sigma, a, b, c)
    _call(dl.classic_gaussian_sigma, a, b, c)
    _call(dl.gaussian_epsilon, a, b, c)
    _call(dl.gaussian_delta, a, b, c)
    _call(dl.calibrate_noise, a, epsilon=b, delta=c, calibration=method)
    _call(dl.calibrate_noise, a, noise_scale=b, delta=c)
    _call(dl.calibrate_noise, a, rho=b)
    _call(dl.calibrate_noise, a, mu=b, delta=c)
    _call(dl.gram_sensitivity, a, method)
    _call(noise_edge, method, a, b)
    _call(noise_norm_bound, "isotropic", a, b, c)


@settings(max_examples=2000, suppress_health_check=list(HealthCheck), deadline=None)
@given(z=weird_scalars, q=weird_scalars, n=weird_scalars, eps=weird_scalars, delta=weird_scalars,
       weights=st.lists(weird_scalars, max_size=4),
       method=st.sampled_from(["auto", "gdp", "zcdp", "rdp", "pld", None]))
def test_accounting_sweep(z, q, n, eps, delta, weights, method):
    budget = dl.PrivacyBudget(2.0, 1e-6)
    try:
        ev = dl.SelfComposedEvent(dl.PoissonSampledEvent(q, dl.GaussianEvent(z)), n)
    except DOCUMENTED:
        ev = None
    if ev is not None:
        acc = dl.PrivacyAccountant([ev])
        _call(acc.epsilon, delta, method)
        _call(acc.delta, eps, method)
        before = budget.events
        try:
            budget.spend(ev)
        except DOCUMENTED:
            assert budget.events == before
    _call(dl.calibrate_plan, eps, delta, weights=weights)
    _call(dl.calibrate_plan, eps, delta, num_releases=n)
    _call(dl.PrivacyBudget, eps, delta, method=method)
    _call(event_from_dict, {"type": "gaussian", "noise_multiplier": z})
    _call(event_from_dict, {"type": "poisson_sampled", "sampling_probability": q, "event": weights})
    _call(event_from_dict, {"type": "self_composed", "count": n, "event": {"type": "gaussian", "noise_multiplier": z}})


@settings(max_examples=1500, suppress_health_check=list(HealthCheck), deadline=None)
@given(a=_matrices(), k=weird_scalars | st.integers(-1, 7), solver=st.sampled_from(["auto", "dense", "lanczos", "x"]),
       tol=st.one_of(st.none(), weird_scalars), sigma=weird_scalars)
def test_linalg_and_mechanism_sweep(a, k, solver, tol, sigma):
    t = a if isinstance(a, torch.Tensor) else None
    if t is not None:
        _call(dl.topk_eigh, t, k, solver=solver, tol=tol, generator=torch.Generator().manual_seed(0))
        try:
            mech = dl.GaussianMechanism(sigma, 1.0)
        except DOCUMENTED:
            return
        _call(mech.perturb, t, generator=torch.Generator().manual_seed(0))
    _call(dl.theory_bounds, a, k, noise_scale=sigma)


@settings(max_examples=600, suppress_health_check=list(HealthCheck), deadline=None)
@given(blob=st.binary(max_size=400), text=st.text(max_size=200))
def test_files_sweep(tmp_path_factory, blob, text):
    d = tmp_path_factory.mktemp("files")
    for name, data in (("a.npz", blob), ("b.json", blob), ("c.json", text.encode()), ("d.ckpt", blob)):
        (d / name).write_bytes(data)
    _call(dl.load_release, d / "a.npz")
    _call(dl.PrivacyBudget.load, d / "b.json")
    _call(dl.PrivacyBudget.load, d / "c.json")
    _call(dl.GramAccumulator.load_checkpoint, d / "d.ckpt")
    try:
        doc = json.loads(text)
    except ValueError:
        return
    _call(event_from_dict, doc)


def test_too_large_is_refused_before_allocation(monkeypatch):
    with pytest.raises(dl.InsufficientMemoryError, match="GiB"):
        dl.GramAccumulator(row_norm=1.0, dim=10**7, device="cpu")
    # a Gram that exists, but whose noisy copy does not fit in what is (made to look) available
    import dplowrank._memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1_000_000)
    m = torch.eye(600, dtype=torch.float64)
    budget = dl.PrivacyBudget(1.0, 1e-6)
    with pytest.raises(dl.InsufficientMemoryError, match="needs about 2.7 MiB on cpu.*nothing was allocated or charged"):
        dl.release_rank_k(m, 2, sensitivity=1.0, noise_scale=1.0, budget=budget, dtype="float64",
                          generator=torch.Generator().manual_seed(0))
    assert budget.events == ()


def test_sweep_is_large_enough():
    counts = [2500, 1500, 2000, 2000, 1500, 600]
    assert sum(counts) >= 10_000
