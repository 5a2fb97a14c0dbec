"""Every (mechanism, noise shape) pair against the mechanism contract
(``tests/contracts/mechanism.py``), with a seeded torch.Generator and with a seeded
SecureNormalSource as the noise source."""

from __future__ import annotations

import dplowrank as dl
from dplowrank.mechanisms import NOISE_SHAPES

from .contracts import MechanismContract

#: The documented off-diagonal variance of each real noise shape, in units of σ²
#: (docs/mechanisms.md; the diagonal is N(0, σ²) for every shape).
REAL_OFF_VARIANCE = {"isotropic": 0.5, "upper_triangular": 1.0}


class _Real(MechanismContract):
    def make_mechanism(self, noise_scale, sensitivity):
        return dl.GaussianMechanism(noise_scale, sensitivity, noise_shape=self.noise_shape)

    def perturb(self, mechanism, M, generator, dtype=None):
        return mechanism.perturb(M, generator=generator, dtype=dtype)


class _Secure:
    """The noise from a seeded SecureNormalSource instead of a torch.Generator."""

    def make_generator(self, seed):
        return dl.SecureNormalSource.from_seed(seed)


class TestGaussianIsotropic(_Real):
    noise_shape, off_variance = "isotropic", REAL_OFF_VARIANCE["isotropic"]


class TestGaussianUpperTriangular(_Real):
    noise_shape, off_variance = "upper_triangular", REAL_OFF_VARIANCE["upper_triangular"]


class TestComplexGaussianHermitian(MechanismContract):
    noise_shape, complex_output, off_variance = "hermitian", True, 0.5

    def make_mechanism(self, noise_scale, sensitivity):
        return dl.ComplexGaussianMechanism(noise_scale, sensitivity)

    def perturb(self, mechanism, M, generator, dtype=None):
        return mechanism.perturb(M, generator=generator, dtype=dtype)


class TestGaussianIsotropicSecure(_Secure, TestGaussianIsotropic):
    pass


class TestGaussianUpperTriangularSecure(_Secure, TestGaussianUpperTriangular):
    pass


class TestComplexGaussianHermitianSecure(_Secure, TestComplexGaussianHermitian):
    pass


def test_every_noise_shape_has_a_contract():
    tested = {cls.noise_shape for cls in (TestGaussianIsotropic, TestGaussianUpperTriangular)}
    assert set(NOISE_SHAPES) == tested == set(REAL_OFF_VARIANCE), (NOISE_SHAPES, tested)
