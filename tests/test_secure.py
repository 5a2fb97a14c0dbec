"""Secure noise source: distribution tests (moments, KS), independence, determinism of streams."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dplowrank._secure import SecureNormalSource

N = 400_000


@pytest.mark.parametrize("combine, dtype", [(1, torch.float64), (2, torch.float64), (3, torch.float64),
                                            (2, torch.float32)])
def test_secure_normals_are_standard_normal(combine, dtype):
    z = SecureNormalSource.from_seed(7, combine=combine).normals(N, stream=0, dtype=dtype).numpy().astype(float)
    se = 1 / math.sqrt(N)
    assert abs(z.mean()) < 6 * se
    assert abs(z.var() - 1) < 6 * math.sqrt(2 / N)
    assert abs(stats.skew(z)) < 6 * math.sqrt(6 / N)
    assert abs(stats.kurtosis(z)) < 6 * math.sqrt(24 / N)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # tails: P(|Z| > 3) matches 2Φ(−3)
    tail = np.mean(np.abs(z) > 3)
    assert abs(tail - 2 * stats.norm.sf(3)) < 6 * math.sqrt(2 * stats.norm.sf(3) / N)


@pytest.mark.parametrize("combine", [1, 2])
def test_neighbouring_draws_are_uncorrelated(combine):
    z = SecureNormalSource.from_seed(3, combine=combine).normals(N, stream=5).numpy()
    for lag in (1, 2, N // 2):
        r = np.corrcoef(z[:-lag], z[lag:])[0, 1]
        assert abs(r) < 6 / math.sqrt(N - lag), (lag, r)
    # squares too: consecutive outputs share the radius of one Box–Muller pair (whose two
    # coordinates are independent), so even their squares must be uncorrelated
    r2 = np.corrcoef(z[:-1] ** 2, z[1:] ** 2)[0, 1]
    assert abs(r2) < 6 / math.sqrt(N)


def test_streams_are_deterministic_and_independent():
    a = SecureNormalSource.from_seed("s")
    b = SecureNormalSource.from_seed("s")
    assert torch.equal(a.normals(1000, stream=3), b.normals(1000, stream=3))
    x, y = a.normals(N, stream=0).numpy(), a.normals(N, stream=1).numpy()
    assert abs(np.corrcoef(x, y)[0, 1]) < 6 / math.sqrt(N)
    assert not torch.equal(SecureNormalSource().normals(100, stream=0), SecureNormalSource().normals(100, stream=0))
    assert a.seeded and not SecureNormalSource().seeded
    assert a.new_streams(3) == [0, 1, 2] and a.new_streams(2) == [3, 4]
    assert a.normals(10, stream=0, dtype=torch.float32).dtype == torch.float32


def test_secure_source_rejects_bad_input():
    with pytest.raises(ValueError, match="32 bytes"):
        SecureNormalSource(b"short")
    with pytest.raises(ValueError, match="combine must be a positive integer, got 0"):
        SecureNormalSource(combine=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mechanism", ["gaussian", "complex"])
def test_secure_noise_is_the_same_on_cuda_as_on_the_cpu(mechanism):
    """The keystream is computed on the host (blocks on a thread pool whatever the device)
    and copied: one key gives bit-identical noise on both devices."""
    import dplowrank as dl

    g = torch.randn(1300, 1300, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = g + g.T
    mech = dl.GaussianMechanism(1.5, 1.0) if mechanism == "gaussian" else dl.ComplexGaussianMechanism(1.5, 1.0)
    cpu = mech.perturb(g, generator=SecureNormalSource.from_seed(7))
    gpu = mech.perturb(g.cuda(), generator=SecureNormalSource.from_seed(7))
    assert torch.equal(gpu.cpu(), cpu)
