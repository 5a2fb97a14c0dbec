"""Activation statistics of linear layers, one privacy unit per example (non-private until released).

For a group of linears that read the same input x (stacked weight W = P S Qᵀ, thin SVD,
ρ = min(d_in, Σ d_out)) everything a whitened factorisation needs is the Gram of the
*row-space coordinates* u = Qᵀx: W G Wᵀ = P S (Qᵀ G Q) S Pᵀ. So the statistic always has
dimension ρ, whichever side of the layer is smaller. It is read from the input
(u = Qᵀx; when ρ = d_in, Q = I and u = x) or, for a single down-projection (d_out < d_in),
from the output (u = S⁻¹Pᵀ(y − b), ρ² work per token instead of ρ·d_in).

Optionally the coordinates are preconditioned, z = D u, with D = (K₀/κ + λI)^{-1/2} built from
a *public* prior Gram K₀ (κ = tr K₀/ρ): directions that dominate every example (the mean,
"massive activations") are shrunk before clipping, so one example's bounded contribution is
spread over the directions that are not known in advance.

Privacy unit: one example (a row of the batch, e.g. one sentence). Its whole contribution
S_e = Σ_t z_t z_tᵀ over its non-padding tokens is scaled by one factor so that
‖S_e‖_F ≤ C (``clip=C``) or ‖S_e‖_F = C (``clip="normalize"``, C = 1: every example
contributes the largest amount allowed, which maximises signal per unit of noise and needs
no clipping norm chosen from the data). The Frobenius sensitivity of K = Σ_e S_e is C under
add/remove and √2·C under replace (contributions are PSD, so ⟨S_a, S_b⟩ ≥ 0). Nothing in this
module is private: a statistic becomes publishable only through
:func:`dplowrank.compress.release_statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._progress import progress
from .._validation import check_choice, check_positive
from ..mechanisms._sensitivity import NEIGHBOURS
from ._targets import LayerGroup

__all__ = ["Coordinates", "GroupStatistic", "ActivationStatistics", "collect_statistics", "coordinates_for"]

#: Per-example scales aim at C·(1 − 2⁻¹⁶) so that float32 rounding of the scaled
#: activations cannot push a contribution above C.
_CLIP_MARGIN = 1.0 - 2.0**-16

#: The output route divides by the singular values of W; it is used only when
#: s_max / s_min stays below this.
_MAX_OUTPUT_ROUTE_CONDITION = 1e3


@dataclass(frozen=True, eq=False)
class Coordinates:
    """Where a group's statistic lives (public: computed from the weights and the public prior).

    Attributes
    ----------
    basis : Tensor of shape (d_in, ρ), float64, or None
        Q: orthonormal basis of the stacked weight's row space (``None`` for Q = I, ρ = d_in).
    preconditioner : Tensor of shape (ρ, ρ), float64, or None
        D (symmetric positive definite), ``None`` for D = I. The statistic is the Gram of z = D u.
    route : {"input", "output"}
        Whether z is computed from the layer's input or from its output (single member only).
    reader : Tensor of shape (ρ, d), float64, or None
        The matrix applied to the input (d = d_in) or to y − b (d = d_out) to get z.
    """

    basis: torch.Tensor | None
    preconditioner: torch.Tensor | None
    route: str
    reader: torch.Tensor | None

    @property
    def dim(self) -> int:
        if self.preconditioner is not None:
            return self.preconditioner.shape[0]
        return self.basis.shape[1] if self.basis is not None else self.reader.shape[0]

    def to_row_space(self, gram_z: torch.Tensor) -> torch.Tensor:
        """K_u = D⁻¹ K_z D⁻¹ (shape (ρ, ρ)): undo the preconditioner (public post-processing)."""
        if self.preconditioner is None:
            return gram_z
        d_inv = torch.linalg.inv(self.preconditioner)
        k = d_inv @ gram_z.to(d_inv.dtype) @ d_inv
        return 0.5 * (k + k.T)


def _stacked_weight(model: nn.Module, group: LayerGroup) -> tuple[torch.Tensor, torch.Tensor | None]:
    mods = dict(model.named_modules())
    ws, bs = [], []
    for name in group.members:
        m = mods.get(name)
        if not isinstance(m, nn.Linear):
            raise ValueError(f"group {group.name!r}: the model has no nn.Linear named {name!r}")
        ws.append(m.weight.detach().to(torch.float64))
        bs.append(None if m.bias is None else m.bias.detach().to(torch.float64))
    bias = None if any(b is None for b in bs) else torch.cat(bs)
    return torch.cat(ws), bias


def coordinates_for(model: nn.Module, group: LayerGroup, *, prior: torch.Tensor | None = None,
                    prior_ridge: float = 0.1, route: str = "auto") -> Coordinates:
    """The coordinates of ``group``'s statistic (see the module docstring).

    Parameters
    ----------
    model : nn.Module
    group : LayerGroup
    prior : Tensor of shape (ρ, ρ), optional
        A public Gram K₀ in row-space coordinates (e.g. ``collect_statistics(..., clip=None)``
        on public or synthetic input); gives D = (K₀/κ + λI)^{-1/2}, κ = tr K₀/ρ.
    prior_ridge : float, default 0.1
        λ > 0: how much of the identity is kept in D⁻² (the prior's limit is data-free SVD as λ → ∞).
    route : {"auto", "input", "output"}
        "auto" reads single down-projections (d_out < d_in, well conditioned) from their output.
    """
    check_choice(route, "route", ("auto", "input", "output"))
    w, _ = _stacked_weight(model, group)  # shape: (Σ d_out, d_in)
    d_in, rho = group.in_features, group.dim
    basis = None
    p = s = None
    if rho < d_in:
        p, s, qt = torch.linalg.svd(w, full_matrices=False)
        basis = qt.T.contiguous()  # shape: (d_in, ρ)
    precond = None
    if prior is not None:
        prior = prior.to(torch.float64)
        if prior.shape != (rho, rho):
            raise ValueError(f"prior for group {group.name!r} must have shape {(rho, rho)}, got {tuple(prior.shape)}")
        lam = check_positive(prior_ridge, "prior_ridge")
        kappa = float(torch.trace(prior)) / rho
        if not kappa > 0:
            raise ValueError(f"prior for group {group.name!r} has trace {kappa * rho}; it must be a nonzero PSD Gram")
        evals, evecs = torch.linalg.eigh(0.5 * (prior + prior.T) / kappa)
        precond = (evecs * (evals.clamp(min=0.0) + lam).rsqrt()) @ evecs.T
    use_output = False
    if route != "input" and len(group.members) == 1 and group.stacked_out < d_in:
        cond = float(s[0] / s[-1]) if s is not None and float(s[-1]) > 0 else math.inf
        use_output = cond <= _MAX_OUTPUT_ROUTE_CONDITION
        if route == "output" and not use_output:
            raise ValueError(f"route='output' for {group.name!r} needs a well-conditioned W (s_max/s_min = {cond:.3g})")
    elif route == "output":
        raise ValueError(f"route='output' needs a single layer with d_out < d_in; {group.name!r} is not one")
    if use_output:
        reader = p.T / s[:, None]  # shape: (ρ, d_out): u = S⁻¹Pᵀ(y − b)
        if precond is not None:
            reader = precond @ reader
    else:
        reader = None if basis is None else basis.T  # shape: (ρ, d_in)
        if precond is not None:
            reader = precond if reader is None else precond @ reader
    return Coordinates(basis, precond, "output" if use_output else "input",
                       None if reader is None else reader.contiguous())


@dataclass(eq=False)
class GroupStatistic:
    """The raw (non-private) clipped Gram of one group.

    Attributes
    ----------
    group : LayerGroup
    coordinates : Coordinates
    gram : Tensor of shape (ρ, ρ), float64
        K_z = Σ_e c_e Σ_t z_t z_tᵀ (c_e the per-example scale; c_e = 1 without clipping).
    n_examples : int
        Examples seen (non-private).
    n_clipped : int
        Examples scaled down (for ``clip=C``; every nonzero one for "normalize").
    clip : float or None
        C, or ``None`` for an unclipped (analysis-only, unreleasable) statistic.
    sensitivity : float or None
        Frobenius sensitivity of ``gram`` for the neighbour relation (``None`` without clipping).
    """

    group: LayerGroup
    coordinates: Coordinates
    gram: torch.Tensor
    n_examples: int = 0
    n_clipped: int = 0
    clip: float | None = None
    sensitivity: float | None = None

    def row_space_gram(self) -> torch.Tensor:
        """K_u = D⁻¹ K_z D⁻¹ of shape (ρ, ρ) (non-private)."""
        return self.coordinates.to_row_space(self.gram)


@dataclass(eq=False)
class ActivationStatistics:
    """Per-group statistics from one pass over a corpus (non-private; see the module docstring).

    Attributes
    ----------
    groups : dict of str to GroupStatistic
    clip : float, "normalize" or None
    neighbour : str
    """

    groups: dict
    clip: object
    neighbour: str

    def __getitem__(self, name: str) -> GroupStatistic:
        return self.groups[name]

    def __iter__(self):
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)


class _Collector:
    def __init__(self, model, groups, coords, clip, normalize, matmul_dtype):
        self.model, self.groups, self.coords = model, groups, coords
        self.clip, self.normalize = clip, normalize
        self.matmul_dtype = matmul_dtype
        self.mask: torch.Tensor | None = None
        self.step = 0
        self.stats: dict[str, GroupStatistic] = {}
        self._seen: dict[str, tuple[int, torch.Tensor]] = {}
        self._bias: dict[str, torch.Tensor | None] = {}
        self._readers: dict = {}
        self._handles = []

    def install(self):
        mods = dict(self.model.named_modules())
        for g in self.groups:
            c = self.coords[g.name]
            dev = mods[g.members[0]].weight.device
            self.stats[g.name] = GroupStatistic(g, c, torch.zeros(g.dim, g.dim, dtype=torch.float64, device=dev))
            if c.route == "output":
                b = mods[g.members[0]].bias
                self._bias[g.name] = None if b is None else b.detach()
            for name in g.members:
                self._handles.append(mods[name].register_forward_hook(self._hook(g, name)))

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()

    def _hook(self, group: LayerGroup, member: str):
        def hook(module, inputs, output):
            x = inputs[0]
            seen = self._seen.get(group.name)
            if seen is not None and seen[0] == self.step:
                if seen[1] is not x:
                    raise ValueError(
                        f"{member!r} does not read the same input tensor as the rest of group {group.name!r} "
                        "(or a layer runs twice per batch); statistics need one input per group and example"
                    )
                return
            self._seen[group.name] = (self.step, x)
            c = self.coords[group.name]
            if c.route == "output":
                y = output.detach()
                b = self._bias[group.name]
                self._add(group, y if b is None else y - b)
            else:
                self._add(group, x.detach())
        return hook

    def _reader(self, name: str, a: torch.Tensor) -> torch.Tensor | None:
        reader = self.coords[name].reader
        if reader is None:
            return None
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        key = (name, dtype, a.device)
        if key not in self._readers:
            self._readers[key] = reader.to(device=a.device, dtype=dtype)
        return self._readers[key]

    def _add(self, group: LayerGroup, a: torch.Tensor) -> None:
        mask = self.mask  # shape: (B, T)
        if mask is None:  # no mask: every token counts; a 2-D input is one token per example
            if a.ndim == 2:
                a = a.unsqueeze(1)
            mask = torch.ones(a.shape[:-1], dtype=torch.bool, device=a.device)
        elif a.shape[:-1] != mask.shape:
            if a.ndim == 2 and a.shape[0] == mask.numel():
                a = a.reshape(*mask.shape, a.shape[-1])
            else:
                raise ValueError(
                    f"group {group.name!r} sees activations of shape {tuple(a.shape)}, which do not match the "
                    f"mask of shape {tuple(mask.shape)} (batch, tokens)"
                )
        st = self.stats[group.name]
        reader = self._reader(group.name, a)
        if a.dtype != torch.float64:
            a = a.to(torch.float32)
        z = a if reader is None else a @ reader.T  # shape: (B, T, ρ)
        valid = mask.to(device=z.device, dtype=torch.bool)
        z = z * valid.unsqueeze(-1)
        n = z.shape[0]
        if self.clip is not None:
            zd = z.to(torch.float64)
            if zd.shape[1] <= zd.shape[2]:  # ‖Z Zᵀ‖_F = ‖Zᵀ Z‖_F: use the smaller side
                fro = torch.linalg.matrix_norm(zd @ zd.transpose(1, 2))
            else:
                fro = torch.linalg.matrix_norm(zd.transpose(1, 2) @ zd)
            target = self.clip * _CLIP_MARGIN
            safe = torch.where(fro > 0, fro, torch.ones_like(fro))
            if self.normalize:
                scale = torch.where(fro > 0, target / safe, torch.zeros_like(fro))
                st.n_clipped += int((fro > 0).sum())
            else:
                scale = torch.where(fro > target, target / safe, torch.ones_like(fro))
                st.n_clipped += int((fro > target).sum())
            z = z * scale.sqrt().to(z.dtype)[:, None, None]
        rows = z[valid]  # shape: (tokens, ρ), padding dropped
        if self.matmul_dtype == torch.float64:
            rows = rows.to(torch.float64)
        batch_gram = (rows.T @ rows).to(torch.float64)
        if not math.isfinite(float(batch_gram.sum())):  # a NaN/Inf activation reaches the sum
            raise ValueError(f"non-finite activations reached group {group.name!r}")
        st.gram.add_(batch_gram)
        st.n_examples += n


def _default_forward(model: nn.Module, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(batch)


def collect_statistics(
    model: nn.Module,
    batches: Iterable[Mapping],
    groups: Sequence[LayerGroup],
    *,
    clip: float | str | None = "normalize",
    neighbour: str = "add_remove",
    prior: "ActivationStatistics | Mapping[str, torch.Tensor] | None" = None,
    prior_ridge: float = 0.1,
    route: str = "auto",
    mask_key: str | None = "attention_mask",
    forward: Callable[[nn.Module, object], object] | None = None,
    matmul_dtype: torch.dtype = torch.float32,
    total: int | None = None,
    show_progress: bool = False,
) -> ActivationStatistics:
    """One pass of ``model`` over ``batches``, accumulating each group's clipped Gram.

    Parameters
    ----------
    model : nn.Module
        Run in inference mode; forward hooks are removed afterwards, even on error.
    batches : iterable of mapping
        Model inputs; each row of a batch is one example (the privacy unit).
        ``batch[mask_key]`` (shape (B, T), nonzero = real token) marks the tokens that count;
        padding never enters a Gram.
    groups : sequence of LayerGroup
        From :func:`find_groups` or an :class:`Adapter`.
    clip : float, "normalize" or None, default "normalize"
        C > 0: scale each example so ‖S_e‖_F ≤ C. "normalize": scale each nonzero example to
        ‖S_e‖_F = 1 (C = 1). ``None``: no clipping, token-weighted Gram (for public data or
        non-private analysis; such a statistic cannot be released).
    neighbour : {"add_remove", "replace"}
        Neighbour relation for the sensitivity: C, or √2·C.
    prior : ActivationStatistics or mapping of str to Tensor, optional
        Public prior Grams in row-space coordinates, one per group (see :func:`coordinates_for`).
        Must come from public or synthetic input, never from the private corpus.
    prior_ridge : float, default 0.1
        λ of the preconditioner.
    route : {"auto", "input", "output"}
    mask_key : str or None, default "attention_mask"
        ``None``: no mask, every token of every row counts.
    forward : callable, optional
        ``forward(model, batch)``; default ``model(**batch)``.
    matmul_dtype : torch.float32 or torch.float64
        Precision of the per-batch Gram products (sums are float64 either way).
    total : int, optional
        Number of batches, for the progress bar.
    show_progress : bool, default False

    Returns
    -------
    ActivationStatistics
    """
    if clip is None:
        c, normalize = None, False
    elif clip == "normalize":
        c, normalize = 1.0, True
    elif isinstance(clip, str):
        raise ValueError(f"clip must be a positive number, 'normalize' or None, got {clip!r}")
    else:
        c, normalize = check_positive(clip, "clip"), False
    check_choice(neighbour, "neighbour", NEIGHBOURS)
    if matmul_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"matmul_dtype must be torch.float32 or torch.float64, got {matmul_dtype!r}")
    groups = tuple(groups)
    if not groups:
        raise ValueError("groups is empty: nothing to collect")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"group names must be unique, got {names}")
    priors = {}
    if prior is not None:
        for g in groups:
            if isinstance(prior, ActivationStatistics):
                if g.name not in prior.groups:
                    raise ValueError(f"the prior has no statistic for group {g.name!r}")
                priors[g.name] = prior[g.name].row_space_gram()
            else:
                if g.name not in prior:
                    raise ValueError(f"the prior has no Gram for group {g.name!r}")
                priors[g.name] = torch.as_tensor(prior[g.name])
    coords = {g.name: coordinates_for(model, g, prior=priors.get(g.name), prior_ridge=prior_ridge, route=route)
              for g in groups}
    col = _Collector(model, groups, coords, c, normalize, matmul_dtype)
    run = forward or _default_forward
    col.install()
    try:
        with torch.inference_mode():
            for batch in progress(batches, total=total or 0, desc="statistics", enabled=show_progress):
                if mask_key is None:
                    mask = None
                else:
                    if not isinstance(batch, Mapping) or mask_key not in batch:
                        raise ValueError(f"batch has no {mask_key!r} entry (pass mask_key=None if every token counts)")
                    mask = torch.as_tensor(batch[mask_key])
                    if mask.ndim != 2:
                        raise ValueError(f"{mask_key!r} must have shape (batch, tokens), got {tuple(mask.shape)}")
                col.mask = mask
                col.step += 1
                run(model, batch)
    finally:
        col.remove()
    sens = None
    if c is not None:
        sens = c if neighbour == "add_remove" else math.sqrt(2.0) * c
    for st in col.stats.values():
        st.clip, st.sensitivity = c, sens
    return ActivationStatistics(col.stats, "normalize" if normalize else c, neighbour)

