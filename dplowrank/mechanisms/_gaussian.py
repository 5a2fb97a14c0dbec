"""The real symmetric and complex Hermitian Gaussian mechanisms for Gram matrices.

Both take a symmetric matrix M whose Frobenius sensitivity Δ over neighbouring datasets
is known (see ``_sensitivity``), and return M plus calibrated noise. Each privacy claim
and the derivation behind it sits in the class docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._memory import empty
from .._tensor import as_device, check_dense
from .._validation import check_choice, check_positive
from ..privacy import GaussianEvent
from ._noise import noisy_hermitian, noisy_symmetric

if TYPE_CHECKING:  # annotations only; the source is imported where it is used
    from .._secure import SecureNormalSource

__all__ = ["NOISE_SHAPES", "GaussianMechanism", "ComplexGaussianMechanism"]

NOISE_SHAPES = ("isotropic", "upper_triangular")


def _check_square(M: torch.Tensor) -> int:
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor of shape (d, d), got {type(M).__name__}")
    check_dense(M, "M")
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"expected a square matrix tensor of shape (d, d), got {tuple(M.shape)}")
    return M.shape[0]


def _check_generator(generator: object, device: torch.device) -> None:
    """The noise source must be a torch.Generator on ``device``'s type or a SecureNormalSource."""
    from .._secure import SecureNormalSource

    if isinstance(generator, SecureNormalSource):
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or a SecureNormalSource, got {type(generator).__name__}"
        )
    if generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device}, but the noise is drawn on {device}")


def _half_std(sigma: float) -> float:
    """σ/√2 rounded up to the next float64: the computed quotient is within half an ulp of the
    true value, so one ulp up is never below it (the off-diagonal std of the isotropic and
    Hermitian shapes)."""
    return math.nextafter(sigma / math.sqrt(2.0), math.inf)


def _target(
    M: torch.Tensor, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device]:
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    dtype = dtype or (M.dtype if M.dtype in (torch.float32, torch.float64) else torch.float64)
    dev = as_device(device)  # None only for device=None
    return dtype, M.device if dev is None else dev


@dataclass(frozen=True, slots=True)
class GaussianMechanism:
    """Real symmetric Gaussian mechanism: M ↦ M + E.

    Noise shapes (σ = ``noise_scale``):

    * ``"isotropic"`` (GOE-shaped): E = σ(G + Gᵀ)/2, so E_ii ~ N(0, σ²) and
      E_ij = E_ji ~ N(0, σ²/2). Its density is ∝ exp(−‖E‖²_F / 2σ²). The map
      φ(X) = (X_ii, √2·X_ij for i < j) is an isometry from symmetric matrices with the
      Frobenius norm onto R^{d(d+1)/2}, and φ(E) is N(0, σ²I). So this is the Gaussian
      mechanism on φ(M), whose L2 sensitivity is the Frobenius sensitivity Δ of M.
    * ``"upper_triangular"`` (Analyze Gauss, Dwork, Talwar, Thakurta & Zhang, STOC 2014,
      Alg. 1): E_ij = E_ji ~ N(0, σ²) for i ≤ j, the Gaussian mechanism on vech(M), whose
      L2 sensitivity is at most Δ because ‖vech(X)‖₂ ≤ ‖X‖_F. Same diagonal, twice the
      off-diagonal variance of the isotropic shape at equal privacy.

    Privacy claim: with Δ the Frobenius sensitivity of M, either shape is μ-GDP with
    μ = Δ/σ and therefore (ε, δ)-DP for δ = δ(ε; μ) of Balle & Wang (2018, Thm 8).

    Parameters
    ----------
    noise_scale : float
        σ > 0.
    sensitivity : float
        Frobenius sensitivity Δ > 0 of the matrix this mechanism is applied to.
    noise_shape : {"isotropic", "upper_triangular"}, default "isotropic"
    """

    noise_scale: float
    sensitivity: float
    noise_shape: str = "isotropic"

    def __post_init__(self) -> None:
        check_positive(self.noise_scale, "noise_scale")
        check_positive(self.sensitivity, "sensitivity")
        check_choice(self.noise_shape, "noise_shape", NOISE_SHAPES)

    @property
    def mu(self) -> float:
        """GDP parameter μ = Δ/σ."""
        return self.sensitivity / self.noise_scale

    @property
    def event(self) -> GaussianEvent:
        """The accounting event of one application: noise multiplier σ/Δ."""
        return GaussianEvent(self.noise_scale / self.sensitivity)

    def noise_stds(self) -> tuple[float, float]:
        """(diagonal std, off-diagonal std) of the noise; σ/√2 is rounded up (never less noise than claimed)."""
        return self._stds()

    def _stds(self) -> tuple[float, float]:
        """(diagonal std, off-diagonal std); σ/√2 is rounded up (never less noise than claimed)."""
        off = _half_std(self.noise_scale) if self.noise_shape == "isotropic" else self.noise_scale
        return self.noise_scale, off

    def perturb(
        self,
        M: torch.Tensor,
        *,
        generator: torch.Generator | SecureNormalSource,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Return a new noisy matrix: the upper triangle of ``M``, mirrored, plus the noise.

        ``M``: real Tensor of shape (d, d), symmetric, any float dtype and device; it is read
        once, block by block, and never modified. The result has shape (d, d), ``dtype``
        (default M's, float64 for other dtypes) and lives on ``device`` (default M's), where
        the noise is drawn. ``M`` is never rounded before its noise: a float64 ``M`` released
        in float32 is added to float32 draws in float64, and only M + E is rounded to float32
        (post-processing; see ``_noise.compute_dtype``).
        """
        _check_square(M)
        if M.is_complex():
            raise TypeError(f"GaussianMechanism needs a real matrix, got dtype {M.dtype}")
        dtype, device = _target(M, dtype, device)
        _check_generator(generator, device)
        out = empty(tuple(M.shape), dtype=dtype, device=device)
        diag, off = self._stds()
        return noisy_symmetric(M, out, diag_std=diag, off_std=off, generator=generator)

    def perturb_(self, M: torch.Tensor, *, generator: torch.Generator | SecureNormalSource) -> torch.Tensor:
        """Add the noise to the symmetric matrix ``M`` (real, shape (d, d)) in place and return it.

        Noise is drawn in ``M``'s dtype on ``M``'s device; the same generator state gives the
        same noise as :meth:`perturb`.
        """
        _check_square(M)
        if M.is_complex():
            raise TypeError(f"GaussianMechanism needs a real matrix, got dtype {M.dtype}")
        if M.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"perturb_ adds the noise in M's dtype, which must be float32 or float64, got {M.dtype}")
        _check_generator(generator, M.device)
        diag, off = self._stds()
        return noisy_symmetric(M, M, diag_std=diag, off_std=off, generator=generator)


@dataclass(frozen=True, slots=True)
class ComplexGaussianMechanism:
    """Complex Hermitian Gaussian mechanism (Mangoubi & Vishnoi, arXiv:2306.16648): M ↦ M + Z.

    Z = σ(W + W*)/2 with W = X + iY, X and Y iid standard normal: Z_ii ~ N(0, σ²) real,
    Re Z_ij, Im Z_ij ~ N(0, σ²/2) independent (GUE-shaped).

    Privacy claim: M is real, so M + Z = (M + Re Z) + i·Im Z. Re Z is exactly the isotropic
    real noise of :class:`GaussianMechanism` and Im Z is independent of Re Z and of the
    data, so the output is post-processing of the real isotropic release (M + Re Z)
    together with data-independent randomness. Its privacy cost is therefore that of the
    real isotropic mechanism with the same σ and Δ: μ-GDP with μ = Δ/σ.

    The common way of writing the noise as c(G + G*) corresponds to σ = 2c.

    Parameters
    ----------
    noise_scale : float
        σ > 0.
    sensitivity : float
        Frobenius sensitivity Δ > 0 of the (real) matrix.
    """

    noise_scale: float
    sensitivity: float

    def __post_init__(self) -> None:
        check_positive(self.noise_scale, "noise_scale")
        check_positive(self.sensitivity, "sensitivity")

    @property
    def noise_shape(self) -> str:
        return "hermitian"

    @property
    def mu(self) -> float:
        """GDP parameter μ = Δ/σ."""
        return self.sensitivity / self.noise_scale

    @property
    def event(self) -> GaussianEvent:
        """Priced as the real isotropic mechanism: noise multiplier σ/Δ."""
        return GaussianEvent(self.noise_scale / self.sensitivity)

    def perturb(
        self,
        M: torch.Tensor,
        *,
        generator: torch.Generator | SecureNormalSource,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Return the complex Hermitian matrix M + Z, Tensor of shape (d, d).

        ``M``: real symmetric Tensor of shape (d, d), read block by block and never
        modified. ``dtype`` is the real precision (float32 → complex64, float64 →
        complex128; default M's); the result lives on ``device`` (default M's).
        """
        _check_square(M)
        if M.is_complex():
            raise TypeError(f"ComplexGaussianMechanism takes a real matrix, got dtype {M.dtype}")
        dtype, device = _target(M, dtype, device)
        _check_generator(generator, device)
        cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
        out = empty(tuple(M.shape), dtype=cdt, device=device)
        return noisy_hermitian(M, out, scale=self.noise_scale, off_scale=_half_std(self.noise_scale),
                               generator=generator)
