"""The release value object: a private rank-k eigendecomposition and how it was made.

Everything a :class:`LowRankRelease` holds is the mechanism's output (post-processed) or
public configuration. Its file format is in :mod:`._format`; the pipeline that makes one
is in :mod:`._pipeline`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._files import check_key
from .._random import SECURE
from .._tensor import as_device
from ..diagnostics import GapReport, diagnose, noise_edge, signal_rank, spike_estimate
from ..linalg import realify
from ..privacy import EVENT_NEIGHBOURS, GaussianEvent
from ._format import ARRAY_FIELDS, read_release, write_release

__all__ = ["LowRankRelease", "load_release"]


@dataclass(frozen=True, eq=False)
class LowRankRelease:
    """A differentially private rank-k eigendecomposition of a Gram matrix.

    Everything in it is either the mechanism's output (post-processed) or public
    configuration; it is safe to publish (subject to :attr:`randomness`).

    Attributes
    ----------
    eigenvalues : Tensor of shape (k,)
        The top-k eigenvalues of the noisy matrix, descending (clipped at 0 when ``psd``).
        For the complex mechanism: those of the realified real rank-k output.
    eigenvectors : Tensor of shape (d, k)
        Orthonormal real eigenvectors matching ``eigenvalues``.
    mechanism : {"gaussian", "complex"}
    noise_shape : {"isotropic", "upper_triangular", "hermitian"}
    neighbour : str
        The neighbour relation the sensitivity is for (``"declared"`` for a Gram whose
        sensitivity the caller declared without naming one).
    sensitivity : float
        Frobenius sensitivity Δ of the released Gram.
    noise_scale : float
        σ of the Gaussian noise.
    calibration : str
        How σ was obtained: "analytic", "classic", "noise_scale", "zcdp" or "gdp".
    epsilon, delta : float or None
        The (ε, δ)-DP guarantee of this release alone (ε is exact for σ; ``None`` if no δ).
    psd : bool
        Whether negative eigenvalues were clipped at zero.
    solver : str
        The eigensolver used ("dense" or the iterative one).
    dtype, device : str
        Where and in what precision noise and eigensolver ran.
    randomness : {"secure", "seeded"}
        ``"secure"``: the noise came from an AES-256-CTR keystream keyed from ``os.urandom``
        (:class:`~dplowrank._secure.SecureNormalSource`). ``"seeded"``: the caller's generator
        or seed controlled it: reproducible, so only as private as the seed is secret, and
        not for publication (:attr:`for_publication`).
    hermitian_eigenvalues : Tensor of shape (k,) or None
        Complex mechanism only: top-k eigenvalues of the noisy Hermitian matrix.
    hermitian_eigenvectors : Tensor of shape (d, k), complex, or None
        Complex mechanism only: their eigenvectors.
    converged : bool
        Whether the iterative solver met its tolerance (always ``True`` for "dense").
    spectrum : Tensor of shape (min(k + 1, d),) or None
        The top eigenvalues of the noisy (real or Hermitian) matrix, one more than k when
        k < d, unclipped: λ_{k+1} lets the diagnostics judge the k-th gap.
    spectrum_slack : float
        Solver accuracy of the last entry of ``spectrum``: the noisy matrix's λ_{k+1} lies in
        [spectrum[k], spectrum[k] + spectrum_slack] (see ``EighResult.next_eigenvalue``).
    warm_start : str or None
        The half-precision type of the eigensolver's warm start ("float16"/"bfloat16"), or
        ``None`` when it started from a random block (see :func:`dplowrank.topk_eigh`).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    mechanism: str
    noise_shape: str
    neighbour: str
    sensitivity: float
    noise_scale: float
    calibration: str
    epsilon: float | None
    delta: float | None
    psd: bool
    solver: str
    dtype: str
    device: str
    randomness: str
    hermitian_eigenvalues: torch.Tensor | None = None
    hermitian_eigenvectors: torch.Tensor | None = None
    converged: bool = True
    spectrum: torch.Tensor | None = None
    spectrum_slack: float = 0.0
    warm_start: str | None = None

    @property
    def for_publication(self) -> bool:
        """True when the noise came from an unseeded secure source (``randomness == "secure"``)."""
        return self.randomness == SECURE

    @property
    def k(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def dim(self) -> int:
        return int(self.eigenvectors.shape[0])

    @property
    def mu(self) -> float:
        """GDP parameter μ = Δ/σ of this release."""
        return self.sensitivity / self.noise_scale

    @property
    def noise_multiplier(self) -> float:
        """σ/Δ."""
        return self.noise_scale / self.sensitivity

    @property
    def privacy_event(self) -> GaussianEvent:
        """The accounting event of this release, with its neighbour relation (``None`` for a
        declared sensitivity without one); the complex mechanism is priced as the real
        isotropic one."""
        relation = self.neighbour if self.neighbour in EVENT_NEIGHBOURS else None
        return GaussianEvent(self.noise_multiplier, relation)

    def to_dense(self, *, hermitian: bool = False) -> torch.Tensor:
        """The rank-k matrix V diag(λ) Vᵀ, Tensor of shape (d, d).

        Parameters
        ----------
        hermitian : bool, default False
            Complex mechanism only: return the complex Hermitian rank-k output
            V_h diag(λ_h) V_hᴴ instead of the realified real one.
        """
        if hermitian:
            if self.hermitian_eigenvectors is None:
                raise ValueError(
                    f"hermitian=True needs the complex mechanism; this release used {self.mechanism!r}"
                )
            lam, v = self._hermitian()
            return (v * lam.to(v.dtype)) @ v.conj().T
        v = self.eigenvectors
        return (v * self.eigenvalues) @ v.T

    @property
    def signal_rank(self) -> int:
        """How many of the k released eigenvalues clear the noise edge (with its finite-d
        margin): the components that carry signal (``diagnose().recommended_k``)."""
        return signal_rank(self._noisy_values(), self._edge(), self.dim)

    def denoised(self, k: int | str | None = None) -> LowRankRelease:
        """The release with debiased, shrunk eigenvalues: post-processing, free.

        Each released eigenvalue λ̃ above the noise edge e (with its finite-d margin,
        :func:`dplowrank.diagnostics.signal_threshold`) is read as a spike of the spiked
        Wigner model (arXiv:0910.2120, Thm 2.1: a true θ > e/2 appears at θ + e²/4θ) and
        replaced by θ·(1 − e²/4θ²), the eigenvalue that minimises the expected Frobenius
        error given that its eigenvector has squared overlap 1 − e²/4θ² with the truth;
        eigenvalues inside the bulk become 0. The eigenvectors are unchanged. For the complex
        mechanism the Hermitian eigenvalues are shrunk (edge 2√dσ) and the output realified
        again. See :mod:`dplowrank.diagnostics._spike` and ``docs/pca.md``.

        Parameters
        ----------
        k : int or "auto", optional
            Rank of the result: ``None`` (default) keeps the release's k (bulk components
            get eigenvalue 0); ``"auto"`` keeps the signal rank (:attr:`signal_rank`, at
            least 1); an int keeps that many (1 ≤ k ≤ self.k).

        Returns
        -------
        LowRankRelease
            Same metadata and privacy guarantee, ``psd=True`` (the shrunk values are ≥ 0),
            eigenvalues of shape (k,), eigenvectors of shape (d, k); ``spectrum`` keeps the
            noisy values (the diagnostics read them), cut to k + 1 entries.
        """
        if k is None:
            keep = self.k
        elif k == "auto":
            keep = max(self.signal_rank, 1)
        elif isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= self.k:
            keep = k
        else:
            raise ValueError(f"k must be None, 'auto' or an int in [1, {self.k}], got {k!r}")
        edge = self._edge()
        h_vals = h_vecs = None
        if self.mechanism == "complex":
            h_lam, h_v = self._hermitian()
            h_vecs = h_v[:, :keep]
            h_vals = spike_estimate(self._noisy_values()[:keep], edge, self.dim).shrunk.to(h_lam.dtype)
            vals, vecs = realify(h_vals, h_vecs, keep)
        else:
            vecs = self.eigenvectors[:, :keep]
            vals = spike_estimate(self._noisy_values()[:keep], edge, self.dim).shrunk.to(self.eigenvalues.dtype)
        spectrum = None if self.spectrum is None else self.spectrum[: keep + 1]
        slack = (self.spectrum_slack if spectrum is not None and self.spectrum is not None
                 and len(spectrum) == len(self.spectrum) else 0.0)
        return dataclasses.replace(self, eigenvalues=vals, eigenvectors=vecs, psd=True, spectrum=spectrum,
                                   spectrum_slack=slack, hermitian_eigenvalues=h_vals,
                                   hermitian_eigenvectors=h_vecs)

    def _noisy_values(self) -> torch.Tensor:
        """The k noisy eigenvalues as released, before any clipping or shrinkage (the
        ``spectrum``, which a denoised release keeps): denoising twice changes nothing."""
        if self.spectrum is not None and self.spectrum.shape[0] >= self.k:
            return self.spectrum[: self.k]
        return self._hermitian()[0] if self.mechanism == "complex" else self.eigenvalues

    def _hermitian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(hermitian_eigenvalues, hermitian_eigenvectors), which the complex mechanism always sets."""
        if self.hermitian_eigenvalues is None or self.hermitian_eigenvectors is None:
            raise ValueError(f"this release has no Hermitian eigenpairs (mechanism {self.mechanism!r})")
        return self.hermitian_eigenvalues, self.hermitian_eigenvectors

    def _edge(self) -> float:
        shape = "hermitian" if self.mechanism == "complex" else self.noise_shape
        return noise_edge(shape, self.dim, self.noise_scale)

    def diagnose(self, *, failure_probability: float = 0.05) -> GapReport:
        """Gap and noise diagnostics (:func:`dplowrank.diagnose`): post-processing, free."""
        return diagnose(self, failure_probability=failure_probability)

    def report(self, *, failure_probability: float = 0.05) -> str:
        """A readable table of the diagnostics: spectrum, noise level, gaps, conditions, k."""
        return self.diagnose(failure_probability=failure_probability).table()

    def __repr__(self) -> str:
        eps = "None" if self.epsilon is None else f"{self.epsilon:.4g}"
        return (
            f"LowRankRelease(k={self.k}, d={self.dim}, mechanism={self.mechanism!r}, "
            f"noise_shape={self.noise_shape!r}, epsilon={eps}, delta={self.delta}, "
            f"noise_scale={self.noise_scale:.6g}, sensitivity={self.sensitivity:.6g}, "
            f"solver={self.solver!r}, dtype={self.dtype!r}, device={self.device!r})"
        )

    # ---- files (the format is in ._format) ------------------------------------------------
    def save(self, path: str | os.PathLike, *, key: bytes | None = None) -> Path:
        """Write the release to ``path`` (a ``.npz`` file) atomically; no pickling.

        The file is written next to its destination and renamed into place, so an
        interrupted save never leaves a half-written release behind. It carries a SHA-256
        of its content (and, with a secret ``key`` of ≥ 16 bytes, an HMAC-SHA256 that
        :func:`load_release` then requires), see ``docs/release.md``.
        """
        return write_release(path, self._fields(), self._arrays(), key=check_key(key))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str | None = None,
             key: bytes | None = None) -> LowRankRelease:
        """Read a release written by :meth:`save` (onto ``device``, default CPU)."""
        return load_release(path, device=device, key=key)

    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ARRAY_FIELDS}

    def _arrays(self) -> dict:
        return {name: getattr(self, name) for name in ARRAY_FIELDS}


def load_release(path: str | os.PathLike, *, device: torch.device | str | None = None,
                 key: bytes | None = None) -> LowRankRelease:
    """Read a :class:`LowRankRelease` from a file written by :meth:`LowRankRelease.save`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError``, naming the file (and
    the field), for one that is not a dplowrank release, is damaged (its checksum fails),
    holds a field of the wrong type or range, or fails its HMAC with ``key``.
    """
    dev = as_device(device) or torch.device("cpu")
    fields, arrays = read_release(path, key=check_key(key))
    # keyword arguments of several types (tensors, None), read and checked by read_release
    tensors: dict[str, Any] = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()}
    return LowRankRelease(**tensors, **fields)
