"""The release: rows or a Gram → calibrated mechanism → top-k eigenpairs → a value object.

:func:`release_rank_k` is the library's front door. Private data reaches its output only
through a mechanism of ``dplowrank.mechanisms``; the returned :class:`LowRankRelease`
holds the noisy eigenpairs and how they were made, never raw data (not even the row
count, which is private under add/remove neighbours).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write_bytes
from ._memory import check_allocation
from ._parallel import run_blocks
from ._random import SECURE, SEEDED, _device_key, resolve_noise_source
from ._tensor import InexactIntegerError, as_device, as_tensor
from ._validation import check_choice, check_dense_input, check_k, check_positive
from .accounting._budget import PrivacyBudget
from .accounting._events import EVENT_NEIGHBOURS, GaussianEvent
from .gram import GramAccumulator
from .linalg import NOISE_ATOL_FRACTION, SOLVERS, topk_eigh
from .mechanisms._calibration import CALIBRATIONS, calibrate_noise
from .mechanisms._gaussian import NOISE_SHAPES, ComplexGaussianMechanism, GaussianMechanism
from .mechanisms._sensitivity import NEIGHBOURS

__all__ = ["LowRankRelease", "release_rank_k", "load_release"]

MECHANISMS = ("gaussian", "complex")
_FORMAT = "dplowrank.LowRankRelease"
_FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    extra: dict = field(default_factory=dict, repr=False)

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
            v, lam = self.hermitian_eigenvectors, self.hermitian_eigenvalues
            return (v * lam.to(v.dtype)) @ v.conj().T
        v = self.eigenvectors
        return (v * self.eigenvalues) @ v.T

    def diagnose(self, *, failure_probability: float = 0.05):
        """Gap and noise diagnostics (:func:`dplowrank.diagnose`): post-processing, free."""
        from .diagnostics import diagnose

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

    # ---- serialisation ------------------------------------------------------------
    def _metadata(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "mechanism": self.mechanism,
            "noise_shape": self.noise_shape,
            "neighbour": self.neighbour,
            "sensitivity": self.sensitivity,
            "noise_scale": self.noise_scale,
            "calibration": self.calibration,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "psd": self.psd,
            "solver": self.solver,
            "dtype": self.dtype,
            "device": self.device,
            "randomness": self.randomness,
            "converged": self.converged,
            "spectrum_slack": self.spectrum_slack,
            "extra": self.extra,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the release to ``path`` (a ``.npz`` file) atomically; no pickling.

        The file is written next to its destination and renamed into place, so an
        interrupted save never leaves a half-written release behind.
        """
        path = Path(path)
        arrays = {
            "eigenvalues": self.eigenvalues.detach().cpu().numpy(),
            "eigenvectors": self.eigenvectors.detach().cpu().numpy(),
            "metadata": np.array(json.dumps(self._metadata(), sort_keys=True)),
        }
        if self.spectrum is not None:
            arrays["spectrum"] = self.spectrum.detach().cpu().numpy()
        if self.hermitian_eigenvectors is not None:
            arrays["hermitian_eigenvalues"] = self.hermitian_eigenvalues.detach().cpu().numpy()
            arrays["hermitian_eigenvectors"] = self.hermitian_eigenvectors.detach().cpu().numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str | None = None) -> "LowRankRelease":
        """Read a release written by :meth:`save` (onto ``device``, default CPU)."""
        return load_release(path, device=device)


def load_release(path: str | os.PathLike, *, device: torch.device | str | None = None) -> LowRankRelease:
    """Read a :class:`LowRankRelease` from a file written by :meth:`LowRankRelease.save`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError``, naming the file (and
    the field), for one that is not a dplowrank release, is damaged, or holds a field of the
    wrong type or range.
    """
    dev = as_device(device) or torch.device("cpu")
    name = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no release file at {name!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {key: f[key] for key in f.files}
        meta = json.loads(str(data.pop("metadata")))
    except Exception as exc:  # any failure to parse (bad zip, truncation, objects) is one error
        raise ValueError(f"{name!r} is not a readable dplowrank release: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{name!r} is not a dplowrank release file")
    if meta.get("version") != _FORMAT_VERSION:
        raise ValueError(f"unsupported release format version {meta.get('version')!r} in {name!r}")
    try:
        fields = _release_fields(meta)
        arrays = _release_arrays(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{name!r} is a damaged dplowrank release: {exc}") from exc
    return LowRankRelease(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()},
                          **fields)


_STR_FIELDS = {
    "mechanism": MECHANISMS, "noise_shape": ("isotropic", "upper_triangular", "hermitian"),
    "randomness": (SECURE, SEEDED), "dtype": tuple(_DTYPES),
    "neighbour": None, "calibration": None, "solver": None, "device": None,
}


def _release_fields(meta: dict) -> dict:
    """The metadata of a saved release, each field checked (``KeyError``/``ValueError``/``TypeError`` name it)."""
    out = {}
    for key, choices in _STR_FIELDS.items():
        v = meta[key]
        if not isinstance(v, str) or (choices is not None and v not in choices):
            raise ValueError(f"field {key!r} must be " + (f"one of {choices}" if choices else "a str") + f", got {v!r}")
        out[key] = v
    for key in ("sensitivity", "noise_scale"):
        out[key] = check_positive(meta[key], f"field {key!r}")
    for key in ("epsilon", "delta"):  # ε = 0 is possible (a tiny μ at a large δ)
        v = meta[key]
        out[key] = None if v is None else check_positive(v, f"field {key!r}", allow_zero=key == "epsilon")
    if out["delta"] is not None and not out["delta"] < 1.0:
        raise ValueError(f"field 'delta' must be < 1, got {out['delta']!r}")
    for key in ("psd", "converged"):
        if not isinstance(meta[key], bool):
            raise ValueError(f"field {key!r} must be a bool, got {meta[key]!r}")
        out[key] = meta[key]
    if not isinstance(meta["extra"], dict):
        raise ValueError(f"field 'extra' must be an object, got {meta['extra']!r}")
    out["extra"] = meta["extra"]
    out["spectrum_slack"] = check_positive(meta.get("spectrum_slack", 0.0), "field 'spectrum_slack'", allow_zero=True)
    return out


def _release_arrays(data: dict) -> dict:
    """The arrays of a saved release as tensors, with their kinds and shapes checked."""

    def real(key, ndim):
        a = data[key]
        if a.dtype.kind != "f" or a.ndim != ndim:
            raise ValueError(f"array {key!r} must be a real float array with {ndim} dimensions, "
                             f"got dtype {a.dtype} and shape {a.shape}")
        return torch.from_numpy(a)

    vals, vecs = real("eigenvalues", 1), real("eigenvectors", 2)
    if vecs.shape[1] != vals.shape[0]:
        raise ValueError(f"inconsistent shapes {tuple(vals.shape)} and {tuple(vecs.shape)}")
    out = {"eigenvalues": vals, "eigenvectors": vecs, "hermitian_eigenvalues": None,
           "hermitian_eigenvectors": None, "spectrum": real("spectrum", 1) if "spectrum" in data else None}
    if "hermitian_eigenvectors" in data or "hermitian_eigenvalues" in data:
        h_vals, h_vecs = real("hermitian_eigenvalues", 1), data["hermitian_eigenvectors"]
        if h_vecs.dtype.kind != "c" or tuple(h_vecs.shape) != tuple(vecs.shape) or h_vals.shape != vals.shape:
            raise ValueError(f"array 'hermitian_eigenvectors' must be complex of shape {tuple(vecs.shape)} "
                             f"(with {vals.shape[0]} eigenvalues), got dtype {h_vecs.dtype} and shape {h_vecs.shape}")
        out["hermitian_eigenvalues"], out["hermitian_eigenvectors"] = h_vals, torch.from_numpy(h_vecs)
    return out


# ---- the front door -----------------------------------------------------------------


def _symmetry_tolerance(dtype: torch.dtype) -> float:
    return 64.0 * torch.finfo(dtype).eps


_CHECK_STRIP_GPU = 4096  # rows per strip on a GPU
_CHECK_BLOCK = 256  # tiles of 256² float64 (512 kB) stay in cache: 27 ms at d = 4096 against 36 ms for 512


def _check_gram(M: torch.Tensor) -> float:
    """Raise unless M (shape (d, d)) is finite and symmetric to rounding; one blocked pass.

    Returns max |M_ij|, which the release reuses to check that the noisy matrix fits its
    working dtype (:func:`_check_range`). Each pair of blocks (I, J), J ≥ I, is read once:
    |M_IJ − M_JIᵀ| gives the asymmetry and max |M_IJ| the scale, whose NaN/Inf also flags
    non-finite entries (located afterwards).
    On the CPU the pairs are 256² tiles (cache-sized) on the thread pool; on a GPU, row
    strips whose figures stay on the device until one synchronisation at the end (a
    synchronisation per tile cost 1 s at d = 32768 on an H100, against ~10 ms for the pass).
    """
    d = M.shape[0]
    if M.device.type != "cpu":
        figures = []
        step = _CHECK_STRIP_GPU
        for i0 in range(0, d, step):
            i1 = min(d, i0 + step)
            upper = M[i0:i1, i0:]
            lo, hi = torch.aminmax(upper)
            asym = (upper - M[i0:, i0:i1].T).abs().max()
            figures.append(torch.stack([torch.maximum(-lo, hi), asym]))
        return _judge(M, torch.stack(figures).to("cpu", torch.float64).tolist())

    def pair(i0: int, j0: int) -> tuple[float, float]:
        i1, j1 = min(d, i0 + _CHECK_BLOCK), min(d, j0 + _CHECK_BLOCK)
        blk = M[i0:i1, j0:j1]
        lo, hi = torch.aminmax(blk)  # NaN and ±Inf propagate into the scale
        top = max(-float(lo), float(hi))
        if not math.isfinite(top):
            return top, 0.0
        dlo, dhi = torch.aminmax(blk - M[j0:j1, i0:i1].T)
        return top, max(-float(dlo), float(dhi))

    starts = range(0, d, _CHECK_BLOCK)
    return _judge(M, run_blocks(pair, [(i0, j0) for i0 in starts for j0 in starts if j0 >= i0], M.device))


def _judge(M: torch.Tensor, figures) -> float:
    """Raise the input error for M (shape (d, d)) from per-block figures ``(max |entry|,
    max asymmetry)``, naming the check but no value or position. Returns the largest |entry|."""
    # The messages name the check, never a value or a position of the (private) matrix.
    if not all(math.isfinite(top) and math.isfinite(asym) for top, asym in figures):
        raise ValueError("the Gram matrix has a NaN or Inf entry")
    scale = max(top for top, _ in figures)
    worst = max(asym for _, asym in figures)
    if worst > _symmetry_tolerance(M.dtype) * max(scale, 1e-300):
        raise ValueError(
            f"the Gram matrix must be symmetric (|M_ij - M_ji| within {_symmetry_tolerance(M.dtype):.3g} "
            "of its largest entry); it is not"
        )
    return scale


def _check_range(scale: float, sigma: float, d: int, dtype: torch.dtype) -> None:
    """Refuse a release whose noisy matrix would not be representable in ``dtype``.

    Called before the budget is charged. ``scale`` is max |M_ij| of the (finite) Gram. The
    noisy entries are M_ij + E_ij with E_ij ~ N(0, σ²) (σ²/2 off the diagonal), and the
    noise's eigenvalues reach 2σ√d, so max |M| + 8σ√d must stay below the largest finite
    number of ``dtype``: otherwise the noise or the solver would overflow (a float32 Gram of
    1e300 used to raise LinAlgError, a σ of 1e300 a RuntimeError, both after the charge).
    σ must also be a normal number of ``dtype``: a σ that flushes to zero or to a subnormal
    would leave the matrix without its noise.
    """
    info = torch.finfo(dtype)
    name = str(dtype).replace("torch.", "")
    if not math.isfinite(scale) or scale > info.max:
        raise ValueError(
            f"the Gram matrix's entries (or their public bound max_rows·row_norm²) do not fit {name} "
            f"(largest finite {info.max:.3g}); rescale the data or use dtype='float64'"
        )
    if not info.tiny <= sigma <= info.max:
        raise ValueError(
            f"the noise scale sigma={sigma:.3g} is not a normal {name} number (range "
            f"[{info.tiny:.3g}, {info.max:.3g}]); rescale the data (sensitivity) or use dtype='float64'"
        )
    reach = scale + 8.0 * sigma * math.sqrt(d)
    if not (math.isfinite(reach) and reach <= info.max):
        raise ValueError(
            f"the noisy matrix would overflow {name}: its entries plus noise of scale "
            f"sigma={sigma:.3g} at d={d} can exceed the largest finite {info.max:.3g}; "
            "rescale the data (sensitivity) or use dtype='float64'"
        )


def _resolve_matrix(data, row_norm, sensitivity, neighbour, device):
    """Return (raw Gram, Frobenius sensitivity, neighbour label, max |entry|) without copying user data."""
    if isinstance(data, GramAccumulator):
        if row_norm is not None or sensitivity is not None:
            raise ValueError(
                "a GramAccumulator carries its own row_norm and sensitivity; do not pass "
                f"row_norm={row_norm!r} or sensitivity={sensitivity!r}"
            )
        if neighbour is not None and check_choice(neighbour, "neighbour", NEIGHBOURS) != data.neighbour:
            raise ValueError(
                f"neighbour={neighbour!r} differs from the accumulator's {data.neighbour!r}"
            )
        gram = data.gram
        return gram, data.sensitivity, data.neighbour, data.entry_bound
    if row_norm is not None and sensitivity is not None:
        raise ValueError(
            "give row_norm (data are rows) or sensitivity (data is a Gram matrix), not both"
        )
    if row_norm is None and sensitivity is None:
        raise ValueError(
            "missing privacy bound: pass row_norm=C when data are rows (each row is clipped to "
            "norm C), or sensitivity=Δ when data is a Gram matrix; dplowrank never derives a "
            "bound from the data"
        )
    check_dense_input(data, "data")
    try:
        # a given Gram is used as it is (integers beyond 2⁵³ would be rounded before the noise)
        x = as_tensor(data, "data", exact=sensitivity is not None)
    except InexactIntegerError:
        raise
    except ValueError as exc:  # e.g. a ragged nested list
        raise ValueError(f"data could not be read as a 2-D array: {exc}") from exc
    x = x.detach()  # the release never differentiates; a view, so overwrite= still writes into data
    if x.ndim != 2:
        raise ValueError(f"data must be a 2-D array, got shape {tuple(x.shape)}")
    if row_norm is not None:
        nb = "add_remove" if neighbour is None else check_choice(neighbour, "neighbour", NEIGHBOURS)
        acc = GramAccumulator(row_norm=row_norm, neighbour=nb, device=device or x.device)
        acc.update(x)
        # the range check uses the accumulator's public bound max_rows·C², not the data
        return acc.gram, acc.sensitivity, nb, acc.entry_bound
    sens = check_positive(sensitivity, "sensitivity")
    if x.shape[0] != x.shape[1]:
        raise ValueError(
            f"with sensitivity=, data must be a square (d, d) Gram matrix, got shape {tuple(x.shape)}; "
            "for rows pass row_norm= instead"
        )
    if x.shape[0] == 0:
        raise ValueError("with sensitivity=, data must be a non-empty Gram matrix, got shape (0, 0)")
    scale = _check_gram(x)
    nb = "declared" if neighbour is None else check_choice(neighbour, "neighbour", NEIGHBOURS)
    return x, sens, nb, scale


def _realify(h_vals: torch.Tensor, h_vecs: torch.Tensor, k: int):
    """Best real rank-k approximation of Re(V diag(λ) Vᴴ).

    Re(V Λ Vᴴ) = B diag(λ, λ) Bᵀ with B = [Re V, Im V] (shape (d, 2k)). With B = QR, its
    eigenpairs come from the small matrix R diag(λ, λ) Rᵀ. Keeping the k eigenvalues of
    largest magnitude gives the Eckart–Young optimum, so by the triangle inequality the
    real output is within 2× the complex output's Frobenius error to any real rank-k
    target (Mangoubi & Vishnoi, arXiv:2306.16648, post-processing of the complex output).
    """
    b = torch.cat([h_vecs.real, h_vecs.imag], dim=1)  # shape: (d, 2k)
    lam2 = torch.cat([h_vals, h_vals]).to(torch.float64)
    q, r = torch.linalg.qr(b.to(torch.float64))  # q: (d, m), r: (m, 2k), m = min(d, 2k)
    small = (r * lam2) @ r.T
    small = 0.5 * (small + small.T)
    theta, w = torch.linalg.eigh(small)
    idx = torch.argsort(theta.abs(), descending=True)[:k]
    idx = idx[torch.argsort(theta[idx], descending=True)]
    vecs = q @ w[:, idx]
    return theta[idx].to(h_vals.dtype), vecs.to(b.dtype)


def release_rank_k(
    data: object,
    k: int,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    row_norm: float | None = None,
    sensitivity: float | None = None,
    mechanism: str = "gaussian",
    noise_shape: str = "isotropic",
    neighbour: str | None = None,
    calibration: str = "analytic",
    noise_scale: float | None = None,
    rho: float | None = None,
    mu: float | None = None,
    solver: str = "auto",
    psd: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    budget: "PrivacyBudget | None" = None,
    overwrite: bool = False,
) -> LowRankRelease:
    """Release a differentially private rank-k approximation of a Gram matrix.

    The private Gram M = Σ aaᵀ (rows clipped to ``row_norm``) or a given symmetric M with
    a declared Frobenius ``sensitivity`` is perturbed by a calibrated Gaussian mechanism,
    and the top-k eigenpairs of the noisy matrix are returned.

    Parameters
    ----------
    data : array or Tensor of shape (n, d), or of shape (d, d), or GramAccumulator
        Rows (with ``row_norm``), a symmetric Gram matrix (with ``sensitivity``), or an
        accumulator (which knows both). Never modified.
    k : int
        Rank, 1 ≤ k ≤ d.
    epsilon, delta : float
        Target (ε, δ); ε > 0, 0 < δ < 1. Alternatively fix the noise with exactly one of
        ``noise_scale`` (σ), ``rho`` (zCDP, σ = Δ/√(2ρ)) or ``mu`` (GDP, σ = Δ/μ); then
        ``delta`` (optional) only sets the reported ε.
    row_norm : float, optional
        Clipping norm C of each row (public). Sensitivity C² (add/remove) or √2·C² (replace).
    sensitivity : float, optional
        Frobenius sensitivity Δ of a Gram matrix given as ``data``.
    mechanism : {"gaussian", "complex"}, default "gaussian"
        Real symmetric noise, or complex Hermitian noise (Mangoubi & Vishnoi, arXiv:2306.16648).
    noise_shape : {"isotropic", "upper_triangular"}, default "isotropic"
        Real mechanism only: GOE-shaped, or Analyze Gauss (Dwork et al. 2014).
    neighbour : {"add_remove", "replace"}, optional
        The neighbour relation (default "add_remove" for rows).
    calibration : {"analytic", "classic"}, default "analytic"
        Balle & Wang (2018) analytic calibration, or the classical one (ε < 1 only).
    noise_scale, rho, mu : float, optional
        Fixed noise instead of a target ε (see above).
    solver : {"auto", "dense", "lanczos"}, default "auto"
        The top-k eigensolver (see :func:`dplowrank.topk_eigh`). The iterative solver
        stops at the noise-aware tolerance ‖A v − λ v‖ ≤ 0.01·σ for every returned pair
        (``NOISE_ATOL_FRACTION``; see ``docs/eigensolver.md``).
    psd : bool, default False
        Clip the released eigenvalues at zero (post-processing).
    generator : torch.Generator or SecureNormalSource, optional
        Source of all randomness. When omitted, the noise comes from a fresh
        :class:`~dplowrank._secure.SecureNormalSource` (AES-256-CTR, key from ``os.urandom``,
        Holohan–Braghin hardening). A :class:`torch.Generator` (on the target device) makes
        the release reproducible and marks it ``randomness="seeded"``.
    device : torch.device or str, optional
        Where noise and solve run (default: the data's device).
    dtype : torch.dtype or {"float32", "float64"}, optional
        Precision of the noisy matrix and the solve (default: that of the Gram, float64
        for rows). The noise is always drawn in this precision.
    budget : PrivacyBudget, optional
        Charged with this release's event before any noise is drawn; if the release would
        exceed it, :class:`BudgetExceededError` is raised and nothing is charged or drawn.
    overwrite : bool, default False
        Let the noise be added in place to the matrix of ``data``, with no second d×d
        buffer (8.6 GB saved at d = 32768 in float64). A Gram given as a tensor or a
        writeable array is then overwritten (it holds the noisy matrix afterwards: treat
        it as scratch); a :class:`GramAccumulator` is consumed (its ``gram``, ``update``
        and ``save_checkpoint`` raise from then on). The noise is the same as without
        ``overwrite`` for the same generator. In place happens only for the real mechanism
        and a matrix that already has the working ``dtype`` and ``device``; otherwise a new
        noisy matrix is built and the input is left unchanged (an accumulator is consumed
        all the same). Rows are never modified: their Gram is the library's own and always
        takes its noise in place.

    Returns
    -------
    LowRankRelease

    Raises
    ------
    ValueError, TypeError
        For bad input, before any noise is drawn.

    Examples
    --------
    >>> import numpy as np, torch
    >>> x = np.random.default_rng(0).normal(size=(500, 20))
    >>> r = release_rank_k(x, 3, epsilon=1.0, delta=1e-6, row_norm=5.0,
    ...                    generator=torch.Generator().manual_seed(0))
    >>> r.eigenvectors.shape
    torch.Size([20, 3])
    """
    # --- everything is validated before any noise is drawn ---
    check_choice(mechanism, "mechanism", MECHANISMS)
    check_choice(noise_shape, "noise_shape", NOISE_SHAPES)
    if mechanism == "complex" and noise_shape != "isotropic":
        raise ValueError(
            f"noise_shape={noise_shape!r} applies to the real mechanism only; the complex "
            "mechanism's noise is Hermitian (GUE-shaped)"
        )
    check_choice(calibration, "calibration", CALIBRATIONS)
    check_choice(solver, "solver", SOLVERS)
    # The privacy specification is checked now (with a placeholder Δ) so that a bad ε or δ
    # fails before any rows are accumulated.
    calibrate_noise(
        1.0, epsilon=epsilon, delta=delta, calibration=calibration,
        noise_scale=noise_scale, rho=rho, mu=mu,
    )
    if not isinstance(psd, bool):
        raise TypeError(f"psd must be a bool, got {psd!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
    if budget is not None and not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    if dtype is not None:
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
            dtype = _DTYPES[dtype]
        elif not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or a str, got {dtype!r} of type {type(dtype).__name__}")
        elif dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    dev = as_device(device)
    gram, sens, nb, scale = _resolve_matrix(data, row_norm, sensitivity, neighbour, dev)
    d = gram.shape[0]
    k = check_k(k, d)
    cal = calibrate_noise(
        sens, epsilon=epsilon, delta=delta, calibration=calibration,
        noise_scale=noise_scale, rho=rho, mu=mu,
    )
    dev = dev or gram.device
    work_dtype = dtype or (gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float64)
    noise_source, gen, source = resolve_noise_source(generator, dev)
    # In place (no second d×d buffer) when the Gram is the library's own (from rows) or the
    # caller opted in, and it already has the working dtype and device.
    owned = row_norm is not None and not isinstance(data, GramAccumulator)
    in_place = (
        (owned or overwrite)
        and mechanism == "gaussian"
        and gram.dtype == work_dtype
        and _device_key(gram.device) == _device_key(dev)
        and not (isinstance(data, np.ndarray) and not data.flags.writeable)
    )
    if not in_place:
        itemsize = torch.finfo(work_dtype).bits // 8 * (2 if mechanism == "complex" else 1)
        check_allocation(itemsize * d * d, dev, f"the noisy {d}x{d} matrix of this release")
    _check_range(scale, cal.noise_scale, d, work_dtype)
    if budget is not None:
        # check, charge and persist atomically (threads and processes), before any noise is drawn
        budget.spend(GaussianEvent(cal.noise_multiplier, nb if nb in EVENT_NEIGHBOURS else None))
    if overwrite and isinstance(data, GramAccumulator):
        data._consume()  # its raw Gram is about to become (or be dropped for) M + E

    # --- the mechanism: reads the Gram's upper triangle once, writes a fresh noisy matrix ---
    if mechanism == "gaussian":
        mech = GaussianMechanism(cal.noise_scale, sens, noise_shape)
    else:
        mech = ComplexGaussianMechanism(cal.noise_scale, sens)
    if in_place:
        noisy = mech.perturb_(gram, generator=noise_source)
    else:
        noisy = mech.perturb(gram, generator=noise_source, dtype=work_dtype, device=dev)
    del gram

    # --- post-processing only from here on ---
    # Noise-aware stopping: solving A = M + E beyond a small fraction of σ buys nothing.
    res = topk_eigh(
        noisy, k, solver=solver, generator=gen, check=False,
        atol=NOISE_ATOL_FRACTION * cal.noise_scale,
    )
    del noisy
    # λ_{k+1} (with its residual bound) is what the gap diagnostics need; as
    # post-processing of the noisy matrix it costs no privacy.
    spectrum = res.eigenvalues.detach().clone()
    if res.next_eigenvalue is not None:
        spectrum = torch.cat([spectrum, spectrum.new_tensor([res.next_eigenvalue])])
    top_vals, top_vecs = res.eigenvalues, res.eigenvectors
    h_vals = h_vecs = None
    if mechanism == "gaussian":
        vals, vecs = top_vals, top_vecs
        if psd:
            vals = vals.clamp(min=0.0)
    else:
        h_vals, h_vecs = top_vals, top_vecs
        if psd:
            h_vals = h_vals.clamp(min=0.0)
        vals, vecs = _realify(h_vals, h_vecs, k)
        if psd:
            vals = vals.clamp(min=0.0)
    return LowRankRelease(
        eigenvalues=vals,
        eigenvectors=vecs,
        mechanism=mechanism,
        noise_shape=mech.noise_shape,
        neighbour=nb,
        sensitivity=sens,
        noise_scale=cal.noise_scale,
        calibration=cal.method,
        epsilon=cal.epsilon,
        delta=cal.delta,
        psd=psd,
        solver=res.solver,
        dtype=str(work_dtype).replace("torch.", ""),
        device=str(dev),
        randomness=source,
        hermitian_eigenvalues=h_vals,
        hermitian_eigenvectors=h_vecs,
        converged=bool(res.converged),
        spectrum=spectrum,
        spectrum_slack=float(res.next_residual or 0.0),
    )
