"""Row-space coordinates of a group of linears: what the statistic of a group is a Gram of.

For a group reading one input x with stacked weight W = P S Qᵀ (thin SVD, ρ = min(d_in, Σ d_out)),
u = Qᵀx read from the input, or u = S⁻¹Pᵀ(y − b) from a single down-projection's output;
optionally preconditioned by a public prior (see :mod:`._stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_choice, check_positive
from ._targets import LayerGroup

__all__ = ["Coordinates", "coordinates_for"]


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
        if self.basis is not None:
            return self.basis.shape[1]
        if self.reader is None:
            raise ValueError("coordinates need a basis or a reader")
        return self.reader.shape[0]

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
        A public Gram K₀ in row-space coordinates (e.g. ``collect_statistics(..., clip=None, public=True)``
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
        if p is None or s is None:  # use_output is only set from a computed SVD
            raise ValueError(f"route='output' for {group.name!r} needs the SVD of its weight")
        reader = p.T / s[:, None]  # shape: (ρ, d_out): u = S⁻¹Pᵀ(y − b)
        if precond is not None:
            reader = precond @ reader
    else:
        reader = None if basis is None else basis.T  # shape: (ρ, d_in)
        if precond is not None:
            reader = precond if reader is None else precond @ reader
    return Coordinates(basis, precond, "output" if use_output else "input",
                       None if reader is None else reader.contiguous())
