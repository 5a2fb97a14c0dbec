"""PrivatePCA: (ε, δ)-DP principal component analysis with the scikit-learn estimator API.

What is released, and how
-------------------------
Each row is one privacy unit, clipped to the public norm C = ``data_norm`` (by the library's
exact accumulator, :class:`dplowrank.GramAccumulator`). Up to three statistics of the clipped
rows q are released, each by the Gaussian mechanism, in one plan whose composition is
exactly (ε, δ)-DP (Gaussian releases compose exactly in GDP: μ² adds; Dong, Roth & Su 2019,
Cor. 3.3; :func:`dplowrank.calibrate_plan`):

=========  ======================  ====================  ===================  ==============
release    statistic               add/remove Δ           replace Δ (public n)  when
=========  ======================  ====================  ===================  ==============
"gram"     M = Σ qqᵀ  (d × d)      C²                     √2·C²                always
"mean"     s = Σ q    (d,)         C                      2·C                  centering="private"
"count"    n                       1                      (public)             n_samples=None
=========  ======================  ====================  ===================  ==============

Everything else is post-processing of the three noisy values (free): the mean μ̃ = s̃/ñ
(projected onto the ball of radius C, where the true mean of clipped rows lies), the centred
scatter S̃ = M̃ − ñ·μ̃μ̃ᵀ (:func:`dplowrank.release_rank_k` with ``center=``), its eigenpairs,
the spike shrinkage of the eigenvalues (``denoise``; :meth:`dplowrank.LowRankRelease.denoised`),
the explained variances λ/(ñ − 1), and the noise variance of the probabilistic PCA model.

A declared public ``n_samples`` changes the neighbour relation: when n is public, neighbouring
datasets have the same size, so they differ by one *replaced* row, and the sensitivities are
the replace ones (the count is then not released, and the rows are checked to number
``n_samples``). With ``centering="public"`` the rows are centred by the declared ``mean``
before clipping, so ``data_norm`` bounds ‖x − mean‖; with ``centering="private"`` or "none"
it bounds ‖x‖.

``epsilon=math.inf`` fits without noise (not private; for reference): then PrivatePCA with a
``data_norm`` no row exceeds equals scikit-learn's PCA.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import cast

import numpy as np
import torch
from scipy import sparse as scipy_sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._random import SECURE, SEEDED
from .._secure import SecureNormalSource
from .._validation import check_choice, check_delta, check_epsilon, check_positive
from ..accounting import PrivacyBudget, calibrate_plan
from ..gram import GramAccumulator, check_range
from ..mechanisms import NOISE_SHAPES, gaussian_vector_noise, gram_sensitivity
from ..privacy import ComposedEvent, GaussianEvent
from ..release import release_rank_k

__all__ = ["DEFAULT_WEIGHTS", "PrivatePCA"]

#: Default μ² shares of the plan (relative; only the releases that happen are used). The Gram
#: carries the components; the mean's error enters the scatter as a rank-two term of the same
#: order as the Gram noise per direction, so it gets a smaller but real share; the count only
#: scales the variances (relative error ~ σ/n), so it needs little.
DEFAULT_WEIGHTS = {"gram": 0.85, "mean": 0.12, "count": 0.03}
_CENTERINGS = ("private", "public", "none")
_MECHANISMS = ("gaussian", "complex")


class PrivatePCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Differentially private PCA: a drop-in for :class:`sklearn.decomposition.PCA`.

    The fit is (``epsilon``, ``delta``)-DP with respect to adding or removing one row (one
    *replaced* row when ``n_samples`` is declared); see the module docstring for what is
    released and ``docs/pca.md`` for the guarantees and limits.

    Parameters
    ----------
    n_components : int, float, "auto" or None, default "auto"
        Number of components. ``"auto"``: the signal rank of the release, the components
        whose eigenvalues clear the noise edge (at least 1; see
        :attr:`dplowrank.LowRankRelease.signal_rank`). A float in (0, 1): the fewest
        components whose explained variance ratio reaches it. ``None``: all d.
    epsilon : float, default 1.0
        Total ε of the fit (mean, count and covariance together); ``math.inf`` fits without
        noise (not private).
    delta : float, default 1e-5
        Total δ.
    data_norm : float
        The public bound C on each row's L2 norm (rows above it are clipped to it). Required:
        a bound taken from the data would leak it (diffprivlib's name for the same bound).
    centering : {"private", "public", "none"}, default "private"
        "private": a noisy mean with its own share of the budget. "public": the declared
        ``mean`` (no budget). "none": no centring (the uncentred second moment).
    mean : array of shape (n_features,), optional
        The public mean for ``centering="public"``.
    n_samples : int, optional
        A public row count. ``None`` (default): the count is released with its own small
        share. Declaring it makes the guarantee replace-one (see the module docstring).
    mechanism : {"gaussian", "complex"}, default "gaussian"
        Real symmetric noise, or complex Hermitian noise (arXiv:2306.16648).
    noise_shape : {"isotropic", "upper_triangular"}, default "isotropic"
        Real mechanism only: GOE-shaped, or Analyze Gauss's (Dwork et al. 2014).
    denoise : bool, default True
        Shrink the noisy eigenvalues with the spiked-Wigner estimate (free post-processing,
        :meth:`dplowrank.LowRankRelease.denoised`); components in the noise bulk then have
        explained variance 0.
    whiten : bool, default False
        Scale the transformed components to unit variance (as scikit-learn's PCA).
    weights : mapping of str to float, optional
        Relative μ² shares of the releases "gram", "mean" and "count" (default
        :data:`DEFAULT_WEIGHTS`).
    random_state : int or torch.Generator, optional
        Seeds the noise: reproducible, so the fit is marked ``randomness_ = "seeded"`` (not
        for publication). Two fits with the same seed on neighbouring datasets draw the same
        noise, so their difference reveals the differing row; ``sklearn.clone`` copies a
        generator, so clones draw the same noise too. ``None`` (default): the secure source (AES-256-CTR keyed from
        ``os.urandom``).
    budget : PrivacyBudget, optional
        Charged once with the whole plan, atomically, before any noise is drawn; a fit it
        cannot afford raises :class:`dplowrank.BudgetExceededError` and draws nothing.

    Attributes
    ----------
    components_ : ndarray (or Tensor) of shape (n_components_, n_features)
        Orthonormal principal axes, by decreasing explained variance.
    explained_variance_ : ndarray of shape (n_components_,)
        Released (shrunk when ``denoise``) eigenvalues of the scatter / (n − 1).
    explained_variance_ratio_ : ndarray of shape (n_components_,)
        ``explained_variance_`` / total variance, the total estimated by the trace of the
        noisy scatter (unbiased).
    singular_values_ : ndarray of shape (n_components_,)
        √(explained_variance_ · (n − 1)).
    mean_ : ndarray of shape (n_features,)
        The mean used to centre (noisy, public, or zeros).
    n_components_ : int
    n_samples_ : float
        The row count used (noisy and ≥ 1, or the declared one).
    noise_variance_ : float
        Probabilistic-PCA noise variance: the mean of the remaining variance per dimension.
    release_ : LowRankRelease or None
        The release of the centred scatter (denoised when ``denoise``); ``None`` at ε = ∞. Its
        ``epsilon`` and ``privacy_event`` are the Gram's share of the plan only: charge or
        account the fit with :attr:`privacy_event` (the whole plan), never with ``release_``.
    privacy_event_ : ComposedEvent or None
        What the fit cost, for an accountant; ``None`` at ε = ∞.
    randomness_ : {"secure", "seeded", "none"}
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when the rows had string column names.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> x = load_digits().data / 16.0                 # pixels in [0, 1]: every row has norm <= 8
    >>> pca = PrivatePCA(n_components=8, epsilon=1.0, delta=1e-5, data_norm=8.0, random_state=0)
    >>> pca.fit_transform(x).shape
    (1797, 8)
    """

    def __init__(
        self,
        n_components: int | float | str | None = "auto",
        *,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        data_norm: float | None = None,
        centering: str = "private",
        mean: object = None,
        n_samples: int | None = None,
        mechanism: str = "gaussian",
        noise_shape: str = "isotropic",
        denoise: bool = True,
        whiten: bool = False,
        weights: Mapping[str, float] | None = None,
        random_state: int | torch.Generator | None = None,
        budget: PrivacyBudget | None = None,
    ):
        self.n_components = n_components
        self.epsilon = epsilon
        self.delta = delta
        self.data_norm = data_norm
        self.centering = centering
        self.mean = mean
        self.n_samples = n_samples
        self.mechanism = mechanism
        self.noise_shape = noise_shape
        self.denoise = denoise
        self.whiten = whiten
        self.weights = weights
        self.random_state = random_state
        self.budget = budget

    # ---- fitting ------------------------------------------------------------------------------
    def fit(self, X, y=None) -> PrivatePCA:
        """Fit the model on the rows of X (spends the budget once).

        Parameters
        ----------
        X : array-like or Tensor of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit on X and return its projection, shape (n_samples, n_components_)."""
        return self._fit(X).transform(X)

    def _fit(self, X) -> PrivatePCA:
        spec = self._check_params()
        torch_in = isinstance(X, torch.Tensor)
        # no minimum row count: refusing n = 0 while fitting n = 1 would reveal a bit of the private n
        x = validate_data(self, _checked_rows(X), dtype=[np.float64, np.float32], ensure_min_samples=0)
        n, d = x.shape
        k_fixed = self._check_n_components(d)
        if spec["public_n"] is not None and spec["public_n"] != n:
            raise ValueError(f"n_samples={spec['public_n']} is declared public, but X has a different number of rows")
        rows = torch.from_numpy(np.array(x, dtype=np.float64))  # a copy; exact for float32 and float64
        if self.centering == "public":
            if spec["mean"].shape != (d,):
                raise ValueError(f"mean must have shape ({d},) (n_features), got {spec['mean'].shape}")
            rows = rows - torch.as_tensor(spec["mean"], dtype=torch.float64)
        acc = GramAccumulator(row_norm=spec["C"], neighbour=spec["neighbour"])
        acc.update(rows)
        exact = math.isinf(spec["epsilon"])
        if exact:
            scatter, count, mean = self._exact(acc, rows, spec)
            self.release_, self.privacy_event_, self.randomness_ = None, None, "none"
            lam, vec = torch.linalg.eigh(scatter)
            lam, vec = lam.flip(0), vec.flip(1)
            spectrum_total = float(lam.sum())
            k = self._choose_k(k_fixed, lam, spectrum_total, d, max(int((lam > 0).sum()), 1))
        else:
            release, count, mean = self._private(acc, rows, spec, d)
            spectrum_total = float(release.eigenvalues.sum())  # tr of the noisy centred scatter: unbiased
            full = release.denoised() if self.denoise else release
            k = self._choose_k(k_fixed, full.eigenvalues, spectrum_total, d, max(release.signal_rank, 1))
            self.release_ = release.denoised(k) if self.denoise else release
            lam, vec = full.eigenvalues, full.eigenvectors
        lam = lam[:k].clamp(min=0.0).to(torch.float64)
        comps = vec[:, :k].T.to(torch.float64)
        dof = max(count - 1.0, 1.0)
        total = max(spectrum_total, float(lam.sum()), 0.0) / dof
        ev = lam / dof
        self._fitted = {
            "components": comps.numpy(),
            "explained_variance": ev.numpy(),
            "explained_variance_ratio": (ev / total).numpy() if total > 0 else np.zeros(k),
            "singular_values": torch.sqrt(lam).numpy(),
            "mean": mean.numpy(),
            "noise_variance": max(total - float(ev.sum()), 0.0) / (d - k) if d > k else 0.0,
        }
        out = (lambda a: torch.from_numpy(a)) if torch_in else (lambda a: a)
        self.components_ = out(self._fitted["components"])
        self.explained_variance_ = out(self._fitted["explained_variance"])
        self.explained_variance_ratio_ = out(self._fitted["explained_variance_ratio"])
        self.singular_values_ = out(self._fitted["singular_values"])
        self.mean_ = out(self._fitted["mean"])
        self.noise_variance_ = self._fitted["noise_variance"]
        self.n_components_ = int(k)
        self.n_samples_ = float(count)
        return self

    def _exact(self, acc, rows, spec):
        """ε = ∞: the clipped statistics without noise (scatter, n, mean)."""
        gram, n = acc.gram, float(rows.shape[0])
        if self.centering == "private":
            total = acc.clip_rows(rows).sum(dim=0)
            mean = total / max(n, 1.0)
            return gram - torch.outer(total, total) / max(n, 1.0), n, mean
        mean = torch.zeros(rows.shape[1], dtype=torch.float64)
        if self.centering == "public":
            mean = torch.as_tensor(spec["mean"], dtype=torch.float64)
        return gram, n, mean

    def _private(self, acc, rows, spec, d):
        """Plan, charge, draw: (the release of the centred scatter, the count, the mean)."""
        names = ["gram"] + (["mean"] if self.centering == "private" else []) + (["count"] if spec["public_n"] is None else [])
        replace = spec["neighbour"] == "replace"
        c = spec["C"]
        sens = {"gram": gram_sensitivity(c, spec["neighbour"]), "mean": (2.0 if replace else 1.0) * c, "count": 1.0}
        plan = dict(zip(names, calibrate_plan(spec["epsilon"], spec["delta"], weights=[spec["weights"][m] for m in names],
                                              sensitivities=[sens[m] for m in names])))
        source, label = self._noise_source()
        check_range(acc.entry_bound, plan["gram"].noise_scale, d, torch.float64)
        event = ComposedEvent(tuple(GaussianEvent(plan[m].noise_multiplier, spec["neighbour"]) for m in names))
        if self.budget is not None:
            self.budget.spend(event)  # once, atomically, before any noise is drawn
        # --- the mechanisms ---
        if "count" in plan:
            # float64 explicitly: torch's default dtype (float32, or whatever the caller set) would
            # round n before its noise, and neighbours could then differ by more than 1
            exact_n = torch.tensor([float(rows.shape[0])], dtype=torch.float64)
            noisy_n = float(gaussian_vector_noise(exact_n, plan["count"].noise_scale, source=source)[0])
            count = max(noisy_n, 1.0)  # post-processing from here on
        else:
            count = float(spec["public_n"])
        center = None
        mean = torch.zeros(d, dtype=torch.float64)
        if self.centering == "private":
            noisy_s = gaussian_vector_noise(acc.clip_rows(rows).sum(dim=0), plan["mean"].noise_scale, source=source)
            mean = noisy_s / count
            norm = float(torch.linalg.vector_norm(mean))
            if norm > c:  # the true mean of clipped rows lies in the C-ball
                mean = mean * (c / norm)
            center = (mean, count)
        elif self.centering == "public":
            mean = torch.as_tensor(spec["mean"], dtype=torch.float64)
        release = release_rank_k(acc, d, noise_scale=plan["gram"].noise_scale, delta=spec["delta"],
                                 mechanism=self.mechanism, noise_shape=self.noise_shape, generator=source,
                                 solver="dense", dtype=torch.float64, center=center)
        if release.randomness != label:  # pragma: no cover - the source decides the label
            raise RuntimeError("internal error: the release's randomness label differs from its source's")
        self.privacy_event_ = event
        self.randomness_ = label
        return release, count, mean

    def _noise_source(self):
        """(source of all noise, its label): secure unless ``random_state`` seeds it."""
        rs = _check_random_state(self.random_state)
        if rs is None:
            return SecureNormalSource(), SECURE
        if isinstance(rs, torch.Generator):
            return rs, SEEDED
        return torch.Generator().manual_seed(int(rs) % 2**63), SEEDED

    def _check_params(self) -> dict:
        """Every parameter checked before any data is read; the plan's inputs."""
        eps = self.epsilon
        if not (isinstance(eps, float) and math.isinf(eps) and eps > 0):
            eps = check_epsilon(eps)  # math.inf alone is accepted: the exact, non-private fit
        delta = check_delta(self.delta)
        if self.data_norm is None:
            raise ValueError(
                "data_norm is required: the public bound on each row's L2 norm (rows above it are clipped). "
                "dplowrank never derives a bound from the data, which would leak it"
            )
        c = check_positive(self.data_norm, "data_norm")
        check_choice(self.centering, "centering", _CENTERINGS)
        check_choice(self.mechanism, "mechanism", _MECHANISMS)
        check_choice(self.noise_shape, "noise_shape", NOISE_SHAPES)
        if self.mechanism == "complex" and self.noise_shape != "isotropic":
            raise ValueError(f"noise_shape={self.noise_shape!r} applies to the real mechanism only")
        for flag in ("denoise", "whiten"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        mean = None
        if self.centering == "public":
            if self.mean is None:
                raise ValueError("centering='public' needs the public mean: pass mean=")
            mean = np.asarray(_as_numpy(self.mean), dtype=np.float64)
            if mean.ndim != 1 or not np.all(np.isfinite(mean)):
                raise ValueError("mean must be a finite 1-D array of shape (n_features,)")
        elif self.mean is not None:
            raise ValueError(f"mean= is used only with centering='public', got centering={self.centering!r}")
        public_n = self.n_samples
        if public_n is not None:
            if isinstance(public_n, bool) or not isinstance(public_n, numbers.Integral) or public_n < 1:
                raise ValueError(f"n_samples must be a positive integer or None, got {public_n!r}")
            public_n = int(public_n)
        weights = dict(DEFAULT_WEIGHTS)
        if self.weights is not None:
            unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
            if unknown:
                raise ValueError(f"weights has unknown releases {sorted(unknown)}; they are {sorted(DEFAULT_WEIGHTS)}")
            for key, w in self.weights.items():
                weights[key] = check_positive(w, f"weights[{key!r}]")
        if self.budget is not None and not isinstance(self.budget, PrivacyBudget):
            raise TypeError(f"budget must be a PrivacyBudget, got {type(self.budget).__name__}")
        if self.budget is not None and math.isinf(eps):
            raise ValueError("epsilon=inf fits without noise and cannot be charged to a budget")
        _check_random_state(self.random_state)
        neighbour = "add_remove" if public_n is None else "replace"
        return {"epsilon": float(eps), "delta": delta, "C": c, "mean": mean, "public_n": public_n,
                "weights": weights, "neighbour": neighbour}

    def _check_n_components(self, d: int):
        """``None`` for a data-chosen k ("auto" or a ratio), else the int k (checked against d)."""
        nc = self.n_components
        if nc is None:
            return d
        if isinstance(nc, str):
            if nc != "auto":
                raise ValueError(f"n_components must be an int, a float in (0, 1), 'auto' or None, got {nc!r}")
            return None
        if isinstance(nc, bool) or not isinstance(nc, numbers.Real):
            raise TypeError(f"n_components must be an int, a float in (0, 1), 'auto' or None, got {nc!r}")
        if isinstance(nc, numbers.Integral):
            if not 1 <= nc <= d:
                raise ValueError(f"n_components={nc} must lie in [1, n_features={d}]")
            return int(nc)
        if not 0.0 < float(nc) < 1.0:
            raise ValueError(f"a float n_components is a variance ratio in (0, 1), got {nc!r}")
        return None

    def _choose_k(self, k_fixed, lam, total, d, k_auto) -> int:
        if k_fixed is not None:
            return k_fixed
        if self.n_components == "auto":
            return k_auto
        ratio = torch.cumsum(lam.clamp(min=0.0), 0) / max(total, float(lam.clamp(min=0.0).sum()), 1e-300)
        ratio_target = cast(float, self.n_components)  # a real variance ratio here: an int or None gave k_fixed
        return min(int((ratio < float(ratio_target)).sum()) + 1, d)

    # ---- using the fitted model (post-processing: free) ---------------------------------------
    def transform(self, X):
        """Project X on the components: shape (n_samples, n_components_); the type of X."""
        check_is_fitted(self)
        torch_in = isinstance(X, torch.Tensor)
        x = validate_data(self, _checked_rows(X), dtype=[np.float64, np.float32], reset=False, ensure_min_samples=0)
        z = (x - self._fitted["mean"]) @ self._fitted["components"].T
        if self.whiten:
            z = z / np.sqrt(np.maximum(self._fitted["explained_variance"], np.finfo(np.float64).tiny))
        return torch.from_numpy(z) if torch_in else z

    def inverse_transform(self, X):
        """Map projections back: shape (n_samples, n_features); the type of X."""
        check_is_fitted(self)
        torch_in = isinstance(X, torch.Tensor)
        z = np.asarray(_checked_rows(X), dtype=np.float64)  # projections of private rows: never quoted
        if z.shape[1] != self.n_components_:
            raise ValueError(f"X must have {self.n_components_} columns (n_components_), got {z.shape[1]}")
        if not np.all(np.isfinite(z)):
            raise ValueError("X contains NaN or infinity")
        if self.whiten:
            z = z * np.sqrt(np.maximum(self._fitted["explained_variance"], 0.0))
        x = z @ self._fitted["components"] + self._fitted["mean"]
        return torch.from_numpy(x) if torch_in else x

    def get_covariance(self):
        """The model covariance Wᵀ(Λ − σ²I)W + σ²I, shape (n_features, n_features) (probabilistic PCA)."""
        check_is_fitted(self)
        w, ev, nv = self._fitted["components"], self._fitted["explained_variance"], self.noise_variance_
        cov = (w.T * np.maximum(ev - nv, 0.0)) @ w
        cov.flat[:: cov.shape[0] + 1] += nv
        return cov

    def score_samples(self, X):
        """Log-likelihood of each row under the probabilistic PCA model (Tipping & Bishop 1999)."""
        check_is_fitted(self)
        x = validate_data(self, _checked_rows(X), dtype=[np.float64, np.float32], reset=False, ensure_min_samples=0)
        cov = self.get_covariance()
        d = cov.shape[0]
        cov.flat[:: d + 1] += max(1e-12 * float(np.trace(cov)) / d, np.finfo(np.float64).tiny)
        _sign, logdet = np.linalg.slogdet(cov)
        r = x - self._fitted["mean"]
        maha = np.einsum("ij,ij->i", r, np.linalg.solve(cov, r.T).T)
        return -0.5 * (maha + d * math.log(2.0 * math.pi) + logdet)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows of X under the fitted model."""
        return float(np.mean(self.score_samples(X)))

    @property
    def privacy_event(self):
        """The whole fit's accounting event (``privacy_event_``), so that ``budget.spend(pca)``
        and accountants take the estimator itself. Not ``release_.privacy_event``: that is the
        Gram's share alone."""
        check_is_fitted(self)
        return self.privacy_event_

    @property
    def _n_features_out(self) -> int:
        return self.n_components_

    @property
    def for_publication(self) -> bool:
        """True when the fit's noise came from the secure source (``randomness_ == "secure"``)."""
        check_is_fitted(self)
        return self.randomness_ == SECURE

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


def _check_random_state(rs):
    """``random_state`` if it is None, an int or a torch.Generator; else a ``TypeError``."""
    if rs is None or isinstance(rs, torch.Generator) or (isinstance(rs, numbers.Integral) and not isinstance(rs, bool)):
        return rs
    raise TypeError(f"random_state must be None, an int or a torch.Generator, got {type(rs).__name__}")


def _checked_rows(x):
    """``x`` for scikit-learn's validation, after the checks whose scikit-learn messages would
    quote the data (a 1-D array, complex or unparsable entries): these refusals name the
    problem, never a value. Tensors become CPU numpy arrays; data frames pass through (their
    column names are public metadata)."""
    x = _as_numpy(x)
    if scipy_sparse.issparse(x):
        return x  # scikit-learn refuses it, naming no value
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise ValueError("X could not be read as a 2-D array of numbers") from None
    if arr.dtype.kind == "c":
        raise ValueError("Complex data not supported: X holds complex numbers")
    if arr.dtype.kind in "OUSV":
        try:
            arr = arr.astype(np.float64)
        except TypeError:
            raise TypeError("X holds an entry that is not a number (float() argument must be a string or a "
                            "real number)") from None
        except ValueError:
            raise ValueError("X holds a string that is not a number") from None
    if arr.ndim != 2:
        raise ValueError(f"Expected a 2D array of shape (n_samples, n_features), got a {arr.ndim}D one. "
                         "Reshape your data either using array.reshape(-1, 1) if your data has a single "
                         "feature or array.reshape(1, -1) if it contains a single sample.")
    if arr.shape[1] == 0:  # scikit-learn's message would print the (private) row count
        raise ValueError("0 feature(s) (shape=(, 0)) while a minimum of 1 is required (the row count is private)")
    return x if hasattr(x, "columns") else arr


def _as_numpy(x):
    """A tensor as a CPU numpy array (anything else as it is, for scikit-learn's validation)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x

