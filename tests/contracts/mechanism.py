"""The contract of a Gaussian mechanism on symmetric matrices, as a test base class.

A mechanism's tests subclass :class:`MechanismContract` (the subclass's name starts with
``Test``), state the documented noise (class attributes) and provide two factories::

    class TestIsotropic(MechanismContract):
        noise_shape, off_variance = "isotropic", 0.5

        def make_mechanism(self, noise_scale, sensitivity):
            return dl.GaussianMechanism(noise_scale, sensitivity, noise_shape="isotropic")

        def perturb(self, mechanism, M, generator, dtype=None):
            return mechanism.perturb(M, generator=generator, dtype=dtype)

The mechanism must have ``noise_scale`` σ, ``sensitivity`` Δ, ``mu`` and ``event`` (a
:class:`dplowrank.GaussianEvent`), as :class:`dplowrank.GaussianMechanism` does.

Statistical tests use fixed seeds and a loose two-sided p-value (``P_MIN`` = 1e-4): each
passes for a correct mechanism with probability 1 − 1e-4 over the seeds, so a fixed seed that
passes keeps passing, and a wrong variance (σ² against σ²/2: a 50 % error) fails at any seed
(the variance of the off-diagonal is estimated within ~1.6 %, of the diagonal within ~9 %).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import dplowrank as dl

from ._common import OneThread, dtype_name

__all__ = ["MechanismContract", "P_MIN"]

#: The smallest two-sided p-value a statistical test accepts.
P_MIN = 1e-4

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _two_sided_chi2(sum_sq: float, n: int) -> float:
    return 2.0 * min(stats.chi2.cdf(sum_sq, n), stats.chi2.sf(sum_sq, n))


class MechanismContract(OneThread):
    """Conformance tests for ``perturb(mechanism, M, generator)`` → M + noise.

    The documented noise, as class attributes (variances in units of σ²):

    ``noise_shape``
        The shape name, as the mechanism reports it (``mechanism.noise_shape``).
    ``complex_output``
        Whether the result is complex Hermitian (real symmetric otherwise).
    ``diag_variance``
        Variance of each diagonal entry (real; the imaginary part of a Hermitian diagonal is 0).
    ``off_variance``
        Variance of each off-diagonal entry, or of each of its real and imaginary parts.

    And the test setup: ``d`` and ``draws`` (the statistical tests look at ``draws`` noisy
    d×d matrices), ``noise_scale`` and ``sensitivity``, ``out_dtypes`` (the real precisions
    the tests run in) and ``device``.
    """

    noise_shape: str = ""
    complex_output: bool = False
    diag_variance: float = 1.0
    off_variance: float = 0.5
    d: int = 64
    draws: int = 4
    noise_scale: float = 0.7
    sensitivity: float = 1.3
    out_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    device: torch.device = torch.device("cpu")

    # ---- factories -------------------------------------------------------------------------

    def make_mechanism(self, noise_scale: float, sensitivity: float):
        """The mechanism under test, with noise scale σ and (Frobenius) sensitivity Δ."""
        raise NotImplementedError

    def perturb(self, mechanism, M: torch.Tensor, generator, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``M`` (real symmetric Tensor of shape (d, d)) plus the mechanism's noise, drawn from
        ``generator``; ``dtype`` the output's real precision (``None``: the mechanism's default)."""
        raise NotImplementedError

    def make_generator(self, seed: int):
        """A seeded noise source: a torch.Generator on :attr:`device` (a subclass may use
        ``dplowrank.SecureNormalSource.from_seed``)."""
        return torch.Generator(device=self.device).manual_seed(seed)

    # ---- helpers ---------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc) -> None:
        """Parametrise each test that takes ``dtype`` over this mechanism's ``out_dtypes``."""
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", self.out_dtypes, ids=[dtype_name(t) for t in self.out_dtypes])

    def _matrix(self, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
        """A symmetric matrix of small integers (exact in every float dtype), shape (d, d)."""
        g = torch.Generator().manual_seed(seed)
        u = torch.randint(-3, 4, (self.d, self.d), generator=g).to(torch.float64).triu()
        return (u + u.triu(1).T).to(dtype).to(self.device)

    def _expected_dtype(self, real: torch.dtype) -> torch.dtype:
        return _COMPLEX[real] if self.complex_output else real

    def _noise(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Samples of the noise over :attr:`draws` releases, in float64, by component:
        ``diag`` (real part of the diagonal), ``off`` (real part of the strict upper triangle)
        and, for a complex mechanism, ``off_imag``; all in units of σ."""
        mech = self.make_mechanism(self.noise_scale, self.sensitivity)
        M = self._matrix(dtype)
        iu = torch.triu_indices(self.d, self.d, 1)
        parts: dict[str, list] = {"diag": [], "off": [], "off_imag": []}
        for i in range(self.draws):
            out = self.perturb(mech, M, self.make_generator(100 + i), dtype=dtype)
            E = (out.cpu().to(torch.complex128 if out.is_complex() else torch.float64) - M.cpu().double())
            E = E / self.noise_scale
            parts["diag"].append(E.diagonal().real)
            parts["off"].append(E.real[iu[0], iu[1]])
            if out.is_complex():
                parts["off_imag"].append(E.imag[iu[0], iu[1]])
        return {k: torch.cat(v) for k, v in parts.items() if v}

    def _components(self) -> list[tuple[str, float]]:
        comps = [("diag", self.diag_variance), ("off", self.off_variance)]
        return comps + ([("off_imag", self.off_variance)] if self.complex_output else [])

    # ---- the contract: the noise -----------------------------------------------------------

    def test_noise_shape_is_reported(self):
        assert self.make_mechanism(self.noise_scale, self.sensitivity).noise_shape == self.noise_shape

    def test_variance_matches_the_documented_one(self, dtype):
        """Σ x²/v over n entries is χ²(n) for N(0, v) entries: diagonal and off-diagonal apart."""
        noise = self._noise(dtype)
        for comp, var in self._components():
            x = noise[comp]
            s = float((x * x).sum()) / var
            p = _two_sided_chi2(s, x.numel())
            assert p > P_MIN, (
                f"{comp}: variance {float((x * x).mean()):.4f}·σ² against the documented {var}·σ² "
                f"(n = {x.numel()}, p = {p:.2e}, {dtype})")

    def test_noise_mean_is_zero(self, dtype):
        """z = Σ x / √(n v) is N(0, 1) for mean-zero entries."""
        noise = self._noise(dtype)
        for comp, var in self._components():
            x = noise[comp]
            z = float(x.sum()) / math.sqrt(x.numel() * var)
            p = 2.0 * stats.norm.sf(abs(z))
            assert p > P_MIN, f"{comp}: mean {float(x.mean()):.4f}·σ (z = {z:.2f}, p = {p:.2e}, {dtype})"

    def test_noise_is_gaussian(self, dtype):
        """Kolmogorov–Smirnov of the standardised entries against N(0, 1)."""
        noise = self._noise(dtype)
        for comp, var in self._components():
            x = (noise[comp] / math.sqrt(var)).numpy()
            p = stats.kstest(x, "norm").pvalue
            assert p > P_MIN, f"{comp}: not N(0, {var}·σ²) (KS p = {p:.2e}, {dtype})"

    def test_output_is_exactly_symmetric(self, dtype):
        mech = self.make_mechanism(self.noise_scale, self.sensitivity)
        out = self.perturb(mech, self._matrix(dtype, seed=3), self.make_generator(5), dtype=dtype)
        assert torch.equal(out, out.mH), "the output is not exactly symmetric / Hermitian"
        if out.is_complex():
            assert bool((out.diagonal().imag == 0).all())
        assert bool(torch.isfinite(out).all())

    # ---- the contract: privacy -------------------------------------------------------------

    def test_privacy_event_is_the_documented_gdp(self):
        """μ = Δ/σ and one GaussianEvent(σ/Δ), priced as calibrate_noise and gaussian_epsilon price it."""
        sigma, sens, delta = self.noise_scale, self.sensitivity, 1e-6
        mech = self.make_mechanism(sigma, sens)
        assert mech.noise_scale == sigma and mech.sensitivity == sens
        assert mech.mu == pytest.approx(sens / sigma, rel=1e-15)
        assert mech.event == dl.GaussianEvent(sigma / sens)
        assert mech.event.mu == pytest.approx(mech.mu, rel=1e-15)
        cal = dl.calibrate_noise(sens, noise_scale=sigma, delta=delta)
        assert cal.event == mech.event and cal.mu == pytest.approx(mech.mu, rel=1e-15)
        eps = dl.PrivacyAccountant([mech.event]).epsilon(delta)
        assert eps == pytest.approx(dl.gaussian_epsilon(sigma, delta, sens), rel=1e-9)
        assert eps == pytest.approx(cal.epsilon, rel=1e-9)
        assert dl.PrivacyAccountant([mech.event]).delta(eps) <= delta * (1 + 1e-6)

    @pytest.mark.parametrize("epsilon, delta", [(0.5, 1e-8), (2.0, 1e-6), (8.0, 1e-5)])
    def test_mechanism_calibrated_for_a_target_meets_it(self, epsilon, delta):
        """σ from calibrate_noise(Δ, ε, δ) gives a mechanism whose event costs ε (not more, ~not less)."""
        cal = dl.calibrate_noise(self.sensitivity, epsilon=epsilon, delta=delta)
        mech = self.make_mechanism(cal.noise_scale, self.sensitivity)
        assert mech.event == cal.event
        spent = dl.PrivacyAccountant([mech.event]).epsilon(delta)
        assert epsilon * (1 - 1e-6) <= spent <= epsilon
        assert dl.gaussian_epsilon(mech.noise_scale, delta, mech.sensitivity) <= epsilon

    # ---- the contract: data handling -------------------------------------------------------

    def test_input_is_untouched(self, dtype):
        mech = self.make_mechanism(self.noise_scale, self.sensitivity)
        for M in (self._matrix(dtype, seed=4), self._matrix(torch.float64, seed=4) / 3):  # (a float64 M too)
            before = M.clone()
            out = self.perturb(mech, M, self.make_generator(0), dtype=dtype)
            assert out.data_ptr() != M.data_ptr()
            assert torch.equal(M.view(torch.uint8), before.view(torch.uint8)), "perturb wrote into M"

    def test_same_seed_same_output_other_seed_other_output(self, dtype):
        mech = self.make_mechanism(self.noise_scale, self.sensitivity)
        M = self._matrix(dtype, seed=1)
        a = self.perturb(mech, M, self.make_generator(42), dtype=dtype)
        b = self.perturb(mech, M, self.make_generator(42), dtype=dtype)
        c = self.perturb(mech, M, self.make_generator(43), dtype=dtype)
        assert torch.equal(a, b)
        same = float((a == c).double().mean())
        assert same < 0.01, f"two seeds gave {same:.1%} identical noisy entries"

    @pytest.mark.parametrize("given, asked", [
        (torch.float32, None), (torch.float64, None), (torch.float64, torch.float32),
        (torch.float32, torch.float64), (torch.float16, None), (torch.int64, None),
    ], ids=["f32", "f64", "f64-as-f32", "f32-as-f64", "f16", "i64"])
    def test_output_dtype_and_device(self, given, asked):
        """``dtype=None``: M's precision (float64 for a dtype other than float32 / float64)."""
        mech = self.make_mechanism(self.noise_scale, self.sensitivity)
        M = self._matrix(torch.float64, seed=2).to(given)
        out = self.perturb(mech, M, self.make_generator(0), dtype=asked)
        real = asked or (given if given in (torch.float32, torch.float64) else torch.float64)
        assert out.dtype == self._expected_dtype(real), (given, asked, out.dtype)
        assert out.device == M.device and out.shape == M.shape
