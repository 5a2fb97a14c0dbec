"""The Gaussian mechanism on a vector (or any tensor, entrywise): x ↦ x + N(0, σ²I).

For a statistic whose L2 sensitivity over neighbouring datasets is Δ, adding independent
N(0, σ²) to every entry is the Gaussian mechanism of Dwork & Roth (2014, Thm A.1) and, in its
exact form, σ = Δ/μ is μ-GDP (Dong, Roth & Su 2019, Thm 2.7), so it is calibrated and composed
exactly like the Gram releases (``calibrate_plan``). The library releases first-order
importance scores this way (:func:`dplowrank.compress.release_statistics`).

Floating point: the statistic is never rounded before its noise; the sum is formed in float64
(the draws are float64) and the standard deviation is used as given (a float64 number).
"""

from __future__ import annotations

import torch

from .._validation import check_positive

__all__ = ["gaussian_vector_noise"]


def gaussian_vector_noise(x: torch.Tensor, noise_scale: float, *, source) -> torch.Tensor:
    """x + σ·z with z standard normal entrywise, in float64 (a new tensor).

    Parameters
    ----------
    x : Tensor of any shape
        The statistic, converted to float64 (exact for float32 and float64 input).
    noise_scale : float
        σ > 0.
    source : SecureNormalSource or torch.Generator
        A resolved noise source (see :func:`dplowrank._random.resolve_noise_source`): a
        secure source draws from a fresh keystream, a torch generator from its own state.

    Returns
    -------
    Tensor of the shape of ``x``, float64, on ``x``'s device
    """
    from .._secure import SecureNormalSource

    sigma = check_positive(noise_scale, "noise_scale")
    if not isinstance(x, torch.Tensor) or x.is_complex():
        raise TypeError("x must be a real torch.Tensor")
    base = x.detach().to(torch.float64)
    n = base.numel()
    if isinstance(source, SecureNormalSource):
        (stream,) = source.new_streams(1)
        z = source.normals(n, stream=stream, dtype=torch.float64, device=base.device)
    elif isinstance(source, torch.Generator):
        if source.device.type != base.device.type:
            raise ValueError(f"the generator is on {source.device}, but the noise is drawn on {base.device}")
        z = torch.randn(n, generator=source, dtype=torch.float64, device=base.device)
    else:
        raise TypeError(f"source must be a SecureNormalSource or a torch.Generator, got {type(source).__name__}")
    return torch.add(base, z.view(base.shape), alpha=sigma)
