"""The release pipeline: rows or a Gram → calibrated mechanism → top-k eigenpairs → a release.

:func:`release_rank_k` is the library's front door. Private data reaches its output only
through a mechanism of :mod:`dplowrank.mechanisms`; the returned
:class:`~dplowrank.LowRankRelease` holds the noisy eigenpairs and how they were made, never
raw data (not even the row count, which is private under add/remove neighbours).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .._memory import check_allocation
from .._random import device_key, resolve_noise_source
from .._tensor import InexactIntegerError, as_device, as_tensor
from .._validation import check_choice, check_dense_input, check_k, check_positive
from ..accounting import PrivacyBudget
from ..gram import GramAccumulator, check_gram, check_range
from ..linalg import NOISE_ATOL_FRACTION, SOLVERS, EighResult, realify, topk_eigh
from ..mechanisms import NEIGHBOURS, NOISE_SHAPES, ComplexGaussianMechanism, GaussianMechanism
from ..privacy import CALIBRATIONS, EVENT_NEIGHBOURS, GaussianEvent, calibrate_noise
from ._format import DTYPES, MECHANISMS
from ._result import LowRankRelease

__all__ = ["release_rank_k"]


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
    budget: PrivacyBudget | None = None,
    overwrite: bool = False,
    center: tuple[object, float] | None = None,
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
    center : (mean, count), optional
        Release the centred scatter M̃ − n·μμᵀ instead of M̃ = M + E, with ``mean`` μ of
        shape (d,) and ``count`` n > 0 either public (declared) or already released by a
        mechanism (e.g. a noisy sum and count, as :class:`dplowrank.PrivatePCA` does): the
        correction is applied to the *noisy* matrix, so it is post-processing and costs
        nothing here (the noise, its scale and the diagnostics are those of E). For
        M = Σ aaᵀ and μ the rows' mean this is Σ (a − μ)(a − μ)ᵀ + E. **The pair is used
        without noise**: passing the rows' true mean or count (private values) makes the
        release non-private; only a declared public pair or a released one is safe.

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
    # validate → resolve → calibrate → charge → perturb → solve → package. Everything up
    # to the charge may refuse; nothing is drawn before it.
    _check_options(mechanism, noise_shape, calibration, solver, psd, overwrite, budget)
    # the privacy specification is checked with a placeholder Δ, so that a bad ε or δ fails
    # before any rows are accumulated
    calibrate = functools.partial(calibrate_noise, epsilon=epsilon, delta=delta, calibration=calibration,
                                  noise_scale=noise_scale, rho=rho, mu=mu)
    calibrate(1.0)
    work_dtype = _check_dtype(dtype)
    dev = as_device(device)
    gram, sens, nb, scale = _resolve_matrix(data, row_norm, sensitivity, neighbour, dev)
    d = gram.shape[0]
    k = check_k(k, d)
    shift = _check_center(center, d)
    cal = calibrate(sens)
    dev = dev or gram.device
    work_dtype = work_dtype or (gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float64)
    noise_source, gen, source = resolve_noise_source(generator, dev)
    in_place = _in_place(data, gram, row_norm, overwrite, mechanism, work_dtype, dev)
    if not in_place:
        itemsize = torch.finfo(work_dtype).bits // 8 * (2 if mechanism == "complex" else 1)
        check_allocation(itemsize * d * d, dev, f"the noisy {d}x{d} matrix of this release")
    check_range(scale, cal.noise_scale, d, work_dtype)
    if budget is not None:
        # check, charge and persist atomically (threads and processes), before any noise is drawn
        budget.spend(GaussianEvent(cal.noise_multiplier, nb if nb in EVENT_NEIGHBOURS else None))
    if overwrite and isinstance(data, GramAccumulator):
        data.consume()  # its raw Gram is about to become (or be dropped for) M + E

    # --- the mechanism: reads the Gram's upper triangle once, writes the noisy matrix ---
    mech: GaussianMechanism | ComplexGaussianMechanism
    if mechanism == "gaussian":
        mech = GaussianMechanism(cal.noise_scale, sens, noise_shape)
    else:
        mech = ComplexGaussianMechanism(cal.noise_scale, sens)
    if in_place:
        if not isinstance(mech, GaussianMechanism):  # pragma: no cover - _in_place is False for "complex"
            raise RuntimeError("in-place noise is for the real Gaussian mechanism only")
        noisy = mech.perturb_(gram, generator=noise_source)
    else:
        noisy = mech.perturb(gram, generator=noise_source, dtype=work_dtype, device=dev)
    del gram

    # --- post-processing only from here on ---
    if shift is not None:  # the public or released mean: M̃ − n·μμᵀ
        mean = shift[0].to(device=noisy.device, dtype=torch.float64)
        noisy.sub_(torch.outer(mean, mean).mul_(shift[1]).to(noisy.dtype))
    # Noise-aware stopping: solving A = M + E beyond a small fraction of σ buys nothing.
    res = topk_eigh(noisy, k, solver=solver, generator=gen, check=False, atol=NOISE_ATOL_FRACTION * cal.noise_scale)
    del noisy
    return _package(res, k, mechanism, mech.noise_shape, nb, sens, cal, psd, work_dtype, dev, source)


def _check_options(mechanism, noise_shape, calibration, solver, psd, overwrite, budget) -> None:
    """Refuse bad choices and flags (before any data is read)."""
    check_choice(mechanism, "mechanism", MECHANISMS)
    check_choice(noise_shape, "noise_shape", NOISE_SHAPES)
    if mechanism == "complex" and noise_shape != "isotropic":
        raise ValueError(
            f"noise_shape={noise_shape!r} applies to the real mechanism only; the complex "
            "mechanism's noise is Hermitian (GUE-shaped)"
        )
    check_choice(calibration, "calibration", CALIBRATIONS)
    check_choice(solver, "solver", SOLVERS)
    if not isinstance(psd, bool):
        raise TypeError(f"psd must be a bool, got {psd!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
    if budget is not None and not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")


def _check_center(center: object, d: int) -> tuple[torch.Tensor, float] | None:
    """``center`` as (mean of shape (d,), float64; count > 0), or ``None``."""
    if center is None:
        return None
    if not isinstance(center, (tuple, list)) or len(center) != 2:
        raise TypeError(f"center must be a pair (mean, count), got {type(center).__name__}")
    mean, count = center
    check_dense_input(mean, "center mean")
    m = as_tensor(mean, "center mean").detach().to(torch.float64).cpu()
    if m.shape != (d,):
        raise ValueError(f"center mean must have shape ({d},), got {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError("center mean must be finite")
    return m, check_positive(count, "center count")


def _check_dtype(dtype: object) -> torch.dtype | None:
    """The working dtype asked for: ``None``, float32 or float64 (as a torch dtype or its name)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        return DTYPES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or a str, got {dtype!r} of type {type(dtype).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _in_place(data, gram, row_norm, overwrite, mechanism, work_dtype, dev) -> bool:
    """Whether the noise goes into the Gram's own buffer (no second d×d matrix): when the Gram
    is the library's own (from rows) or the caller opted in, and it already has the working
    dtype and device."""
    owned = row_norm is not None and not isinstance(data, GramAccumulator)
    return (
        (owned or overwrite)
        and mechanism == "gaussian"
        and gram.dtype == work_dtype
        and device_key(gram.device) == device_key(dev)
        and not (isinstance(data, np.ndarray) and not data.flags.writeable)
    )


def _package(res: EighResult, k, mechanism, noise_shape, nb, sens, cal, psd, work_dtype, dev, source) -> LowRankRelease:
    """The release from the solver's result (post-processing: clipping, realification)."""
    # λ_{k+1} (with its residual bound) is what the gap diagnostics need; as post-processing
    # of the noisy matrix it costs no privacy.
    spectrum = res.eigenvalues.detach().clone()
    if res.next_eigenvalue is not None:
        spectrum = torch.cat([spectrum, spectrum.new_tensor([res.next_eigenvalue])])
    vals, vecs = res.eigenvalues, res.eigenvectors
    h_vals = h_vecs = None
    if mechanism == "complex":
        h_vals, h_vecs = vals, vecs
        if psd:
            h_vals = h_vals.clamp(min=0.0)
        vals, vecs = realify(h_vals, h_vecs, k)
    if psd:
        vals = vals.clamp(min=0.0)
    return LowRankRelease(
        eigenvalues=vals,
        eigenvectors=vecs,
        mechanism=mechanism,
        noise_shape=noise_shape,
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
        warm_start=res.warm_start,
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
    scale = check_gram(x)
    nb = "declared" if neighbour is None else check_choice(neighbour, "neighbour", NEIGHBOURS)
    return x, sens, nb, scale
