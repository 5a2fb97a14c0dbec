"""One call: factorise a model's target layers from no data, public data or a private release."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validation import check_choice, check_int, check_positive
from ..diagnostics import noise_edge
from ._factor import ALLOCATIONS, Unit, allocate_ranks, left_basis
from ._importance import ImportanceStatistics
from ._module import LowRankLinear, replace_linears
from ._private import ESTIMATORS, PrivateStatistics
from ._quantize import SCALE_BITS, quantize
from ._stats import ActivationStatistics
from ._targets import LayerGroup
from ._weighted import weighted_factors

__all__ = ["CompressionResult", "compress_model"]


@dataclass(eq=False)
class CompressionResult:
    """What :func:`compress_model` did.

    Attributes
    ----------
    method : {"svd", "whitened", "importance", "private"}
        Data-free truncated SVD; whitened from given activation statistics or weighted by given
        importance scores (both non-private unless declared public); or from a private release.
    joint : bool
        Whether shared-input groups were factorised jointly (one shared down-projection).
    groups : tuple of LayerGroup
    ranks : dict of str to int
        Rank of each compressed module (members of a joint group share theirs).
    parameters_before, parameters_after : int
        Weight parameters of the target layers, dense and factorised (biases excluded).
    layers : dict of str to LowRankLinear
        The new modules, by name.
    originals : dict of str to nn.Linear
        The replaced modules (to evaluate against or to undo).
    privacy : PrivateStatistics or None
        The releases used (``method == "private"``).
    signal : dict of str to int
        Private only: released eigenvalues above the noise edge per group (the spikes used).
    public_statistics : bool
        ``method == "whitened"`` or ``"importance"``: whether the statistics were declared
        public (``collect_statistics(..., public=True)``).
    factorization : {"whitened", "importance"}
        Activation-whitened factors, or importance-weighted (LPAF) factors.
    bits : (int, int) or None
        (B1, B2) of quantised factors (LPLR storage), ``None`` for float factors.
    bits_after : int or None
        Exact stored bits of the quantised factors (codes and scales).
    """

    method: str
    joint: bool
    groups: tuple
    ranks: dict
    parameters_before: int
    parameters_after: int
    layers: dict
    originals: dict
    privacy: PrivateStatistics | None = None
    signal: dict = field(default_factory=dict)
    public_statistics: bool = False
    factorization: str = "whitened"
    bits: tuple | None = None
    bits_after: int | None = None

    @property
    def bits_per_parameter(self) -> float:
        """Stored bits of the factorised layers (codes and scales, or 32 per float32 parameter)
        per dense weight parameter (biases excluded)."""
        total = self.bits_after if self.bits_after is not None else 32 * self.parameters_after
        return total / self.parameters_before

    @property
    def ratio(self) -> float:
        """parameters_after / parameters_before."""
        return self.parameters_after / self.parameters_before

    @property
    def privacy_status(self) -> str:
        """What the factors reveal about a private corpus.

        ``"private"``: released through the Gaussian mechanism (ε from :meth:`epsilon`);
        ``"data_free"``: the weights alone (SVD); ``"public"``: statistics declared public;
        ``"not_private"``: raw statistics of a corpus *not* declared public. Such a model
        carries no guarantee at all (ε = ∞) and must not be published if the corpus is private.
        """
        if self.method == "private":
            return "private"
        if self.method == "svd":
            return "data_free"
        return "public" if self.public_statistics else "not_private"

    def epsilon(self, delta: float | None = None) -> float:
        """Total ε of the model at ``delta``: the composed cost of its releases when private,
        0 when no private data was used (data-free or public statistics), and ``math.inf``
        when it was factorised from raw private statistics (no guarantee)."""
        status = self.privacy_status
        if status == "private":
            return self._released().spent_epsilon(delta)
        return math.inf if status == "not_private" else 0.0

    def _released(self) -> PrivateStatistics:
        """The releases of a private model (``privacy_status == "private"`` guarantees them)."""
        if self.privacy is None:
            raise ValueError("this model was not compressed from released statistics")
        return self.privacy

    def undo(self, model: nn.Module) -> nn.Module:
        """Put the original linears back into ``model``."""
        return replace_linears(model, self.originals)

    def metadata(self) -> dict:
        """A JSON-ready summary (stored by :func:`save_compressed`).

        ``privacy.status`` is always present (see :attr:`privacy_status`); a private model also
        records its composed ε at the plan's δ, μ, the events, and where its noise came from
        (``randomness``: "secure", or "seeded": reproducible, not for publication).
        """
        out = {"method": self.method, "joint": self.joint, "ranks": dict(self.ranks),
               "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
               "factorization": self.factorization, "bits": None if self.bits is None else list(self.bits),
               "bits_per_parameter": self.bits_per_parameter,
               "groups": [g.to_dict() for g in self.groups]}
        status = self.privacy_status
        privacy: dict = {"status": status}
        if status == "private":
            released = self._released()
            privacy.update({
                "epsilon": self.epsilon(), "delta": released.delta, "mu": released.accountant.mu(),
                "events": [r.privacy_event.to_dict() for r in released._all()],
                "unit": "one example (sequence)",
                "randomness": released.randomness,
                "for_publication": released.for_publication,
            })
        elif status == "not_private":
            privacy["epsilon"] = None  # no guarantee: JSON has no infinity
            privacy["warning"] = "factorised from raw statistics of a corpus not declared public"
        else:
            privacy["epsilon"] = 0.0
        out["privacy"] = privacy
        return out

    def table(self) -> str:
        """One row per compressed module: shapes, rank, parameters, and the release's noise."""
        lines = [f"{'layer':<48} {'d_in':>5} {'d_out':>6} {'rank':>5} {'params':>9}"
                 + ("  sigma/edge  spikes" if self.privacy and self.privacy.releases else "")]
        for g in self.groups:
            for name, d_out in zip(g.members, g.out_features):
                row = f"{name:<48} {g.in_features:>5} {d_out:>6} {self.ranks[name]:>5} {self.layers[name].rank * (g.in_features + d_out):>9}"
                if self.privacy and g.name in self.privacy.releases and g.name in self.signal:
                    r = self.privacy.releases[g.name]
                    row += f"  {r.noise_scale:.3g}/{noise_edge(r.noise_shape, r.dim, r.noise_scale):.3g}  {self.signal[g.name]:>4}"
                lines.append(row)
        lines.append(f"weights {self.parameters_before} -> {self.parameters_after} (ratio {self.ratio:.3f}); method={self.method}"
                     + (", joint" if self.joint else "") + f", {self.factorization} factors"
                     + (f", quantised to {self.bits[0]}/{self.bits[1]} bits" if self.bits else "")
                     + f"; {self.bits_per_parameter:.3g} bits per dense parameter")
        status = self.privacy_status
        if status == "private":
            released = self._released()
            lines.append(f"privacy: ({self.epsilon():.4g}, {released.delta:g})-DP for the whole model, "
                         f"{len(released._all())} releases, one example per unit; noise "
                         f"{released.randomness}" + ("" if released.for_publication else " (not for publication)"))
        elif status == "not_private":
            lines.append("privacy: NOT PRIVATE: factorised from raw statistics of a corpus not declared public "
                         "(no guarantee; do not publish if the corpus is private)")
        else:
            lines.append("privacy: no private data used (" + ("data-free" if status == "data_free" else
                                                               "public statistics") + ")")
        return "\n".join(lines)


def compress_model(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    *,
    ratio: float | None = None,
    statistics: ActivationStatistics | PrivateStatistics | None = None,
    joint: bool = False,
    allocation: str = "uniform",
    estimator: str = "spike",
    factorization: str = "whitened",
    importance: ImportanceStatistics | None = None,
    sparsity: float = 0.0,
    bits: int | tuple[int, int] | None = None,
    bits_per_parameter: float | None = None,
    rounding: str = "auto",
) -> CompressionResult:
    """Replace the layers of ``groups`` in ``model`` by low-rank ones, in place.

    Parameters
    ----------
    model : nn.Module
    groups : sequence of LayerGroup
    ratio : float, optional
        Target parameter ratio of the factorised weights over the dense ones, in (0, 1).
        Give this or ``bits_per_parameter``.
    statistics : ActivationStatistics or PrivateStatistics, optional
        ``None``: data-free. ``ActivationStatistics``: whitened factorisation from their (raw)
        Grams — private data used this way is *not* protected; use it for public data or as a
        non-private reference. ``PrivateStatistics``: from the noise-aware estimate of each
        release (post-processing, free): whitened from the Grams, or weighted by the released
        importance (``factorization="importance"``).
    joint : bool, default False
        Factorise each shared-input group once with a shared down-projection
        (Peng et al., arXiv:2402.16319); single layers are unaffected.
    allocation : {"uniform", "energy"}, default "uniform"
        See :func:`allocate_ranks`; "energy" uses the (estimated) output spectra.
    estimator : {"spike", "ridge", "raw"}, default "spike"
        Private only: how the noisy Gram is used (see :func:`denoise_gram`).
    factorization : {"whitened", "importance"}, default "whitened"
        "importance": LPAF's importance-weighted (sparsity-aware) factors
        (:func:`weighted_factors`) from ``importance`` (raw scores, non-private unless public),
        the released importance in ``statistics`` (denoised, free), or, with neither,
        constant importance (the data-free SVD). Not with ``joint``.
    importance : ImportanceStatistics, optional
        Raw scores from :func:`collect_importance` for ``factorization="importance"``.
    sparsity : float, default 0
        ``factorization="importance"``: prune this fraction of the least important weights
        before factorising.
    bits : int or (int, int), optional
        Store the factors as (B1, B2)-bit codes, LPLR-style (arXiv:2310.11028): the left
        factor is quantised first (per column), the right factor is the least-squares fit
        L⁺W to the quantised left one (optimal for any input distribution), then quantised
        (per row). ``None``: float factors (default, unless ``bits_per_parameter`` is given:
        then 8).
    bits_per_parameter : float, optional
        Storage budget of quantised factors in bits per dense weight parameter (< 32);
        ranks are chosen so that the codes and scales fit it exactly.
    rounding : {"auto", "activation", "nearest"}, default "auto"
        How quantised factors are rounded. "activation": GPTQ-style (arXiv:2210.17323) with
        the group's input Gram, so that the rounding error of the right factor falls where
        the inputs carry little energy, and that of the left factor where the factor's own
        outputs do (:func:`dplowrank.compress.quantize` with ``hessian=``); the Gram is the
        statistics' (the released, noisy one for private statistics: post-processing), and
        the input directions outside a group's row space are weighted by its mean energy.
        "nearest": every entry to the nearest point. "auto": "activation" whenever
        Gram statistics are given, else "nearest".

    Returns
    -------
    CompressionResult
    """
    check_choice(allocation, "allocation", ALLOCATIONS)
    check_choice(estimator, "estimator", ESTIMATORS)
    check_choice(factorization, "factorization", FACTORIZATIONS)
    if not isinstance(joint, bool):
        raise TypeError(f"joint must be a bool, got {joint!r}")
    if factorization == "importance" and joint:
        raise ValueError("factorization='importance' factorises each layer on its own: joint must be False")
    bits, budget_ratio = _storage(ratio, bits, bits_per_parameter)
    check_choice(rounding, "rounding", ROUNDINGS)
    groups = tuple(groups)
    mods = dict(model.named_modules())
    method = _method(statistics, importance, factorization)
    weights = {n: mods[n].weight.detach() for g in groups for n in g.members}
    signal: dict = {}
    if factorization == "importance":
        scores = _importance_scores(groups, weights, statistics, importance, method)
        units, bases_by_unit = _importance_units(groups, weights, scores, bits)
    else:
        grams, bases, signal = _group_grams(groups, statistics, method, estimator)
        units, bases_by_unit = _units(groups, weights, grams, bases, joint, bits)
    unit_ranks = allocate_ranks(units, budget_ratio, strategy=allocation)
    if factorization == "importance":
        # separable weights (marginal importance): the closed form is the exact optimum
        steps = {"iters": 0, "als": 0} if _granularity(statistics, importance) == "marginal" and not sparsity else {}
        factors = {n: weighted_factors(weights[n], unit_ranks[n], scores[n], sparsity=sparsity, **steps)
                   for n in weights}
        new, ranks, after, nbits = _importance_layers(groups, mods, weights, factors, bits)
    else:
        hessians = (_input_hessians(groups, grams, bases)
                    if bits is not None and rounding != "nearest" and method != "svd" else {})
        if rounding == "activation" and bits is not None and not hessians:
            raise ValueError("rounding='activation' needs Gram statistics (statistics=...)")
        new, ranks, after, nbits = _factorised_layers(groups, mods, weights, bases_by_unit, unit_ranks, joint, bits,
                                                      hessians)
    originals = {n: mods[n] for n in new}
    replace_linears(model, new)
    before = sum(g.parameters for g in groups)
    public = False
    if method == "whitened" and isinstance(statistics, ActivationStatistics):
        public = bool(statistics.public)
    elif method == "importance" and importance is not None:
        public = bool(importance.public)
    released = statistics if method == "private" and isinstance(statistics, PrivateStatistics) else None
    return CompressionResult(method, joint, groups, ranks, before, after, new, originals, released, signal, public,
                             factorization, bits, nbits)


FACTORIZATIONS = ("whitened", "importance")
ROUNDINGS = ("auto", "activation", "nearest")


def _input_hessians(groups, grams, bases) -> dict:
    """The Gram of each group's inputs in their own coordinates (shape (d_in, d_in)): Q K Qᵀ
    from the row-space Gram K, plus the mean energy of K on the directions outside the row
    space (which the statistic does not see; a quantised factor no longer ignores them)."""
    out = {}
    for g in groups:
        k, q = grams.get(g.name), bases.get(g.name)
        if k is None:
            continue
        k = 0.5 * (k + k.T).to(torch.float64)
        if q is None:
            out[g.name] = k
            continue
        q = q.to(torch.float64)
        mean = float(torch.diagonal(k).clamp(min=0.0).mean())
        out[g.name] = q @ (k - mean * torch.eye(k.shape[0], dtype=k.dtype)) @ q.T \
            + mean * torch.eye(q.shape[0], dtype=k.dtype)
    return out


def _storage(ratio, bits, bits_per_parameter) -> tuple[tuple[int, int] | None, float]:
    """(B1, B2) or None, and the budget as a ratio for :func:`allocate_ranks`."""
    if (ratio is None) == (bits_per_parameter is None):
        raise ValueError("give exactly one of ratio (parameters) and bits_per_parameter (quantised storage)")
    if bits is not None:
        if isinstance(bits, tuple) and len(bits) == 2:
            bits = (check_int(bits[0], "bits[0]", low=1, high=32), check_int(bits[1], "bits[1]", low=1, high=32))
        else:
            b = check_int(bits, "bits", low=1, high=32)
            bits = (b, b)
    if bits_per_parameter is not None:
        bpp = check_positive(bits_per_parameter, "bits_per_parameter")
        if bpp >= 32:
            raise ValueError(f"bits_per_parameter must be below 32, got {bits_per_parameter!r}")
        return bits or (8, 8), bpp / 32.0
    return bits, ratio


def _method(statistics, importance, factorization) -> str:
    if isinstance(statistics, PrivateStatistics):
        if importance is not None:
            raise ValueError("give importance inside the private statistics (release_statistics(importance=...)), "
                             "not raw scores next to them")
        if factorization == "importance" and statistics.importance is None:
            raise ValueError("factorization='importance' needs statistics released with importance=")
        if factorization == "whitened" and not statistics.releases:
            raise ValueError("these private statistics hold no Gram releases: use factorization='importance'")
        return "private"
    if statistics is not None and not isinstance(statistics, ActivationStatistics):
        raise TypeError(f"statistics must be None, ActivationStatistics or PrivateStatistics, got {type(statistics).__name__}")
    if factorization == "importance":
        if statistics is not None:
            raise ValueError("factorization='importance' reads importance=, not activation statistics")
        if importance is not None and not isinstance(importance, ImportanceStatistics):
            raise TypeError(f"importance must be ImportanceStatistics, got {type(importance).__name__}")
        return "svd" if importance is None else "importance"
    if importance is not None:
        raise ValueError("importance= is used with factorization='importance'")
    return "svd" if statistics is None else "whitened"


def _importance_scores(groups, weights, statistics, importance, method) -> dict:
    """Each layer's non-negative importance: denoised release, raw scores, or constant (data-free)."""
    if method == "private":
        scores = statistics.importance.denoised()
    elif method == "importance":
        scores = {n: importance.matrix(n) for n in importance.scores}
    else:
        scores = {n: torch.ones_like(w, dtype=torch.float64) for n, w in weights.items()}
    missing = [n for n in weights if n not in scores]
    if missing:
        raise ValueError(f"the importance has no scores for layers {missing[:5]}")
    return scores


def _granularity(statistics, importance) -> str:
    if isinstance(statistics, PrivateStatistics) and statistics.importance is not None:
        return statistics.importance.granularity
    return importance.granularity if importance is not None else "entry"


def _importance_units(groups, weights, scores, bits) -> tuple[list[Unit], dict]:
    units = []
    for g in groups:
        for n in g.members:
            _, s, _ = torch.linalg.svd(weights[n].to(torch.float64), full_matrices=False)
            d_out = int(weights[n].shape[0])
            units.append(Unit(n, g.in_features, d_out, s * s, _cost_bits(bits, (d_out,), g.in_features)))
    return units, {}


def _cost_bits(bits, outs, d_in) -> float | None:
    """Bits per unit of rank of quantised factors: codes, and one scale group per column of each
    left block and per row of the right factor."""
    if bits is None:
        return None
    return sum(outs) * bits[0] + d_in * bits[1] + SCALE_BITS * (len(outs) + 1)


def _quantised(lefts: list, right_w: torch.Tensor, bias_of, dtype, bits, down=None, hessian=None):
    """LPLR storage for factors sharing one right factor: each left block Q_{B1} per column, the
    right factor the least-squares fit to the quantised stacked left, Q_{B2} per row. With the
    inputs' Gram H (``hessian``), both are rounded activation-aware: the left block with the
    Gram R₀ H R₀ᵀ of the rank-space signal R₀x (R₀ = L⁺W), the right factor with H."""
    w = right_w.to(torch.float64)
    h_left = None
    if hessian is not None:
        r0 = torch.linalg.lstsq(torch.cat(lefts).to(torch.float64), w, driver="gelsd").solution
        h_left = r0 @ hessian @ r0.T
    qs = [quantize(left, bits[0], granularity="column", hessian=h_left) for left in lefts]
    stacked = torch.cat([q.dequantize() for q in qs])
    right = torch.linalg.lstsq(stacked, w, driver="gelsd").solution
    qr = quantize(right, bits[1], granularity="row", hessian=hessian)
    layers = []
    for q, bias in zip(qs, bias_of):
        layer = LowRankLinear.from_quantized(q, qr, bias, down=down, dtype=dtype)
        down = layer.down
        layers.append(layer)
    return layers


def _importance_layers(groups, mods, weights, factors, bits):
    new, ranks, after, nbits = {}, {}, 0, 0
    for g in groups:
        for n in g.members:
            lin, (left, right) = mods[n], factors[n]
            bias = None if lin.bias is None else lin.bias.detach()
            if bits is None:
                new[n] = LowRankLinear.from_factors(left.to(lin.weight.dtype), right.to(lin.weight.dtype), bias)
            else:
                (new[n],) = _quantised([left], weights[n], [bias], lin.weight.dtype, bits)
                nbits += new[n].nbits
            ranks[n] = int(left.shape[1])
            after += ranks[n] * (g.in_features + int(lin.out_features))
    return new, ranks, after, (nbits if bits is not None else None)


def _group_grams(groups, statistics, method, estimator) -> tuple[dict, dict, dict]:
    """Step 1: the (estimated) row-space Gram of every group, its public basis, and (private)
    how many released eigenvalues clear the noise edge."""
    grams: dict[str, torch.Tensor | None] = {}
    bases: dict[str, torch.Tensor | None] = {}
    signal: dict[str, int] = {}
    for g in groups:
        if method == "svd":
            grams[g.name], bases[g.name] = None, None
            continue
        src = statistics.groups if method == "whitened" else statistics.releases
        if g.name not in src:
            raise ValueError(f"the statistics have no entry for group {g.name!r}")
        if method == "whitened":
            st = statistics[g.name]
            grams[g.name], bases[g.name] = st.row_space_gram(), st.coordinates.basis
        else:
            rel = statistics.releases[g.name]
            grams[g.name] = statistics.row_space_gram(g.name, method=estimator)
            bases[g.name] = statistics.coordinates[g.name].basis
            edge = noise_edge(rel.noise_shape, rel.dim, rel.noise_scale)
            signal[g.name] = int((rel.eigenvalues > edge).sum())
    return grams, bases, signal


def _units(groups, weights, grams, bases, joint, bits=None) -> tuple[list[Unit], dict]:
    """Step 2: one rank-allocation unit per factorised matrix (a joint group's stacked
    weights, or each member), with its left basis and output energy spectrum."""
    units, bases_by_unit = [], {}
    for g in groups:
        if joint and len(g.members) > 1:
            w = torch.cat([weights[n] for n in g.members])
            vecs, energy = left_basis(w, gram=grams[g.name], basis=bases[g.name])
            units.append(Unit(g.name, g.in_features, g.stacked_out, energy,
                              _cost_bits(bits, g.out_features, g.in_features)))
            bases_by_unit[g.name] = vecs
        else:
            for n in g.members:
                vecs, energy = left_basis(weights[n], gram=grams[g.name], basis=bases[g.name])
                d_out = int(weights[n].shape[0])
                units.append(Unit(n, g.in_features, d_out, energy, _cost_bits(bits, (d_out,), g.in_features)))
                bases_by_unit[n] = vecs
    return units, bases_by_unit


def _factorised_layers(groups, mods, weights, bases_by_unit, unit_ranks, joint, bits=None, hessians=None):
    """Step 3: the low-rank modules (a joint group's members share their down-projection);
    returns (new modules by name, ranks by name, factorised parameter count, stored bits of
    quantised factors or None)."""
    new: dict[str, LowRankLinear] = {}
    ranks: dict[str, int] = {}
    after = nbits = 0
    for g in groups:
        if joint and len(g.members) > 1:
            r = unit_ranks[g.name]
            u = bases_by_unit[g.name][:, :r]  # shape: (Σ d_out, r)
            w = torch.cat([weights[n] for n in g.members]).to(torch.float64)
            lins = [mods[n] for n in g.members]
            biases = [None if lin.bias is None else lin.bias.detach() for lin in lins]
            dtype = lins[0].weight.dtype
            if bits is not None:
                blocks = list(torch.split(u, list(g.out_features)))
                layers = _quantised(blocks, w, biases, dtype, bits, hessian=(hessians or {}).get(g.name))
                nbits += layers[0].down.nbits + sum(layer.up.nbits for layer in layers)
            else:
                right = (u.T @ w).to(dtype)  # shape: (r, d_in), shared
                layers, down, start = [], None, 0
                for d_out, bias in zip(g.out_features, biases):
                    layer = LowRankLinear.from_factors(u[start:start + d_out].to(dtype), right, bias, down=down)
                    down = layer.down
                    layers.append(layer)
                    start += d_out
            for n, layer in zip(g.members, layers):
                new[n], ranks[n] = layer, r
            after += r * (g.in_features + g.stacked_out)
        else:
            for n in g.members:
                lin = mods[n]
                r = unit_ranks[n]
                u = bases_by_unit[n][:, :r]
                bias = None if lin.bias is None else lin.bias.detach()
                if bits is not None:
                    (new[n],) = _quantised([u], weights[n], [bias], lin.weight.dtype, bits,
                                           hessian=(hessians or {}).get(g.name))
                    nbits += new[n].nbits
                else:
                    right = u.T @ weights[n].to(torch.float64)
                    new[n] = LowRankLinear.from_factors(u.to(lin.weight.dtype), right.to(lin.weight.dtype), bias)
                ranks[n] = r
                after += r * (g.in_features + int(lin.out_features))
    return new, ranks, after, (nbits if bits is not None else None)
