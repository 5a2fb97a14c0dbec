"""One call: factorise a model's target layers from no data, public data or a private release."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validation import check_choice
from ..diagnostics import noise_edge
from ._factor import ALLOCATIONS, Unit, allocate_ranks, left_basis
from ._module import LowRankLinear, replace_linears
from ._private import ESTIMATORS, PrivateStatistics
from ._stats import ActivationStatistics
from ._targets import LayerGroup

__all__ = ["CompressionResult", "compress_model"]


@dataclass(eq=False)
class CompressionResult:
    """What :func:`compress_model` did.

    Attributes
    ----------
    method : {"svd", "whitened", "private"}
        Data-free truncated SVD, whitened from given statistics (non-private unless they are
        public), or whitened from a private release.
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
        ``method == "whitened"`` only: whether the statistics were declared public
        (``collect_statistics(..., public=True)``).
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
            return self.privacy.spent_epsilon(delta)
        return math.inf if status == "not_private" else 0.0

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
               "groups": [g.to_dict() for g in self.groups]}
        status = self.privacy_status
        privacy: dict = {"status": status}
        if status == "private":
            privacy.update({
                "epsilon": self.epsilon(), "delta": self.privacy.delta, "mu": self.privacy.accountant.mu(),
                "events": [r.privacy_event.to_dict() for r in self.privacy.releases.values()],
                "unit": "one example (sequence)",
                "randomness": self.privacy.randomness,
                "for_publication": self.privacy.for_publication,
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
                 + ("  sigma/edge  spikes" if self.privacy else "")]
        for g in self.groups:
            for name, d_out in zip(g.members, g.out_features):
                row = f"{name:<48} {g.in_features:>5} {d_out:>6} {self.ranks[name]:>5} {self.layers[name].rank * (g.in_features + d_out):>9}"
                if self.privacy:
                    r = self.privacy.releases[g.name]
                    row += f"  {r.noise_scale:.3g}/{noise_edge(r.noise_shape, r.dim, r.noise_scale):.3g}  {self.signal[g.name]:>4}"
                lines.append(row)
        lines.append(f"weights {self.parameters_before} -> {self.parameters_after} (ratio {self.ratio:.3f}); method={self.method}"
                     + (", joint" if self.joint else ""))
        status = self.privacy_status
        if status == "private":
            lines.append(f"privacy: ({self.epsilon():.4g}, {self.privacy.delta:g})-DP for the whole model, "
                         f"{len(self.privacy.releases)} releases, one example per unit; noise "
                         f"{self.privacy.randomness}" + ("" if self.privacy.for_publication else " (not for publication)"))
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
    ratio: float,
    statistics: ActivationStatistics | PrivateStatistics | None = None,
    joint: bool = False,
    allocation: str = "uniform",
    estimator: str = "spike",
) -> CompressionResult:
    """Replace the layers of ``groups`` in ``model`` by low-rank ones, in place.

    Parameters
    ----------
    model : nn.Module
    groups : sequence of LayerGroup
    ratio : float
        Target parameter ratio of the factorised weights over the dense ones, in (0, 1).
    statistics : ActivationStatistics or PrivateStatistics, optional
        ``None``: data-free truncated SVD. ``ActivationStatistics``: whitened factorisation
        from their (raw) Grams — private data used this way is *not* protected; use it for
        public data or as a non-private reference. ``PrivateStatistics``: whitened
        factorisation from the noise-aware estimate of each release (post-processing, free).
    joint : bool, default False
        Factorise each shared-input group once with a shared down-projection
        (Peng et al., arXiv:2402.16319); single layers are unaffected.
    allocation : {"uniform", "energy"}, default "uniform"
        See :func:`allocate_ranks`; "energy" uses the (estimated) output spectra.
    estimator : {"spike", "ridge", "raw"}, default "spike"
        Private only: how the noisy Gram is used (see :func:`denoise_gram`).

    Returns
    -------
    CompressionResult
    """
    check_choice(allocation, "allocation", ALLOCATIONS)
    check_choice(estimator, "estimator", ESTIMATORS)
    if not isinstance(joint, bool):
        raise TypeError(f"joint must be a bool, got {joint!r}")
    groups = tuple(groups)
    mods = dict(model.named_modules())
    if statistics is None:
        method = "svd"
    elif isinstance(statistics, PrivateStatistics):
        method = "private"
    elif isinstance(statistics, ActivationStatistics):
        method = "whitened"
    else:
        raise TypeError(f"statistics must be None, ActivationStatistics or PrivateStatistics, got {type(statistics).__name__}")
    grams, bases, signal = _group_grams(groups, statistics, method, estimator)
    weights = {n: mods[n].weight.detach() for g in groups for n in g.members}
    units, bases_by_unit = _units(groups, weights, grams, bases, joint)
    unit_ranks = allocate_ranks(units, ratio, strategy=allocation)
    new, ranks, after = _factorised_layers(groups, mods, weights, bases_by_unit, unit_ranks, joint)
    originals = {n: mods[n] for n in new}
    replace_linears(model, new)
    before = sum(g.parameters for g in groups)
    return CompressionResult(method, joint, groups, ranks, before, after, new, originals,
                             statistics if method == "private" else None, signal,
                             method == "whitened" and bool(statistics.public))


def _group_grams(groups, statistics, method, estimator) -> tuple[dict, dict, dict]:
    """Step 1: the (estimated) row-space Gram of every group, its public basis, and (private)
    how many released eigenvalues clear the noise edge."""
    grams, bases, signal = {}, {}, {}
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


def _units(groups, weights, grams, bases, joint) -> tuple[list[Unit], dict]:
    """Step 2: one rank-allocation unit per factorised matrix (a joint group's stacked
    weights, or each member), with its left basis and output energy spectrum."""
    units, bases_by_unit = [], {}
    for g in groups:
        if joint and len(g.members) > 1:
            w = torch.cat([weights[n] for n in g.members])
            vecs, energy = left_basis(w, gram=grams[g.name], basis=bases[g.name])
            units.append(Unit(g.name, g.in_features, g.stacked_out, energy))
            bases_by_unit[g.name] = vecs
        else:
            for n in g.members:
                vecs, energy = left_basis(weights[n], gram=grams[g.name], basis=bases[g.name])
                units.append(Unit(n, g.in_features, int(weights[n].shape[0]), energy))
                bases_by_unit[n] = vecs
    return units, bases_by_unit


def _factorised_layers(groups, mods, weights, bases_by_unit, unit_ranks, joint):
    """Step 3: the low-rank modules (a joint group's members share their down-projection);
    returns (new modules by name, ranks by name, factorised parameter count)."""
    new: dict[str, LowRankLinear] = {}
    ranks: dict[str, int] = {}
    after = 0
    for g in groups:
        if joint and len(g.members) > 1:
            r = unit_ranks[g.name]
            u = bases_by_unit[g.name][:, :r]  # shape: (Σ d_out, r)
            w = torch.cat([weights[n] for n in g.members]).to(torch.float64)
            right = u.T @ w  # shape: (r, d_in), shared
            down = None
            start = 0
            for n, d_out in zip(g.members, g.out_features):
                lin = mods[n]
                layer = LowRankLinear.from_factors(
                    u[start:start + d_out].to(lin.weight.dtype), right.to(lin.weight.dtype),
                    None if lin.bias is None else lin.bias.detach(), down=down)
                down = layer.down
                new[n], ranks[n] = layer, r
                start += d_out
            after += r * (g.in_features + g.stacked_out)
        else:
            for n in g.members:
                lin = mods[n]
                r = unit_ranks[n]
                u = bases_by_unit[n][:, :r]
                right = u.T @ weights[n].to(torch.float64)
                new[n] = LowRankLinear.from_factors(u.to(lin.weight.dtype), right.to(lin.weight.dtype),
                                                    None if lin.bias is None else lin.bias.detach())
                ranks[n] = r
                after += r * (g.in_features + int(lin.out_features))
    return new, ranks, after
