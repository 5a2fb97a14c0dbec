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

That sensitivity holds for the *computed* matrix, not just in exact arithmetic, because:

* **One example, one contribution.** Each example's S_e is formed from its own tokens only
  (a batched product per example, never one product over the batch's tokens, whose rounding
  would mix examples), scaled by a factor computed from that S_e itself, and rounded entry by
  entry to a fixed grid g = 2^(t − k) (2^t ≥ C, k = ⌈log₂ ρ⌉ + 17 bits) with a margin
  (target C·(1 − 2⁻¹⁶)) that covers the rounding (ρg/2 ≤ 2⁻¹⁷·C in Frobenius norm) and the
  float32 arithmetic (a relative 2⁻²³): every rounded contribution has ‖S_e‖_F ≤ C. The norm
  bound is taken after dividing S_e by a power of two near its largest entry, so tiny
  activations cannot underflow it. Under the replace relation the products are float64 and
  each scale also keeps ‖S_a − S_b‖_F ≤ √2·C although rounded contributions are only nearly
  PSD (see ``_Collector._round_to_grid``).
* **Exact sums.** Rounded contributions are integer multiples of g whose partial sums stay below
  2⁵³·g for up to 2^(51 − k) examples (2²⁵ at ρ = 384), so their float64 sum is exact, in any
  order and batching: a neighbouring corpus changes K by exactly one rounded S_e. A group
  refuses a batch that would exceed that count.
* **Examples stay apart.** The model runs in eval mode (batch normalisation then uses its
  running statistics instead of the batch's, and dropout is off), its parameters and buffers
  are checked to be untouched (a layer that updates its state from the data would ship private
  values inside the model), every hooked activation must have the batch's examples on its
  first axis (``examples``), and on the first batch of every batch size (two or more
  examples) each half of the batch, run alone, must give the activations it has inside the
  whole batch (a layer that mixes examples, or a sequence-first layout, fails this; the probe
  is a heuristic, not a proof). Known sequence-first modules
  (``nn.MultiheadAttention``, RNNs and ``nn.Transformer`` with ``batch_first=False``, and the
  ``nn.Transformer*Layer`` built on them) are refused up front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._progress import progress
from .._validation import check_choice, check_positive
from ..mechanisms._sensitivity import NEIGHBOURS, times_sqrt2
from ._targets import LayerGroup

__all__ = ["Coordinates", "GroupStatistic", "ActivationStatistics", "collect_statistics", "coordinates_for"]

#: Per-example scales aim at C·(1 − 2⁻¹⁶): the grid rounding (≤ 2⁻¹⁷·C) and float32
#: arithmetic (≤ 2⁻²³ relative) cannot push a rounded contribution above C.
_CLIP_MARGIN = 1.0 - 2.0**-16
#: Grid bits beyond ⌈log₂ ρ⌉: ρ·g/2 ≤ 2⁻¹⁷·2^t (see the module docstring).
_GRID_EXTRA_BITS = 17
#: Per-example ρ×ρ contributions are formed this many entries at a time (4 MB in float32:
#: the chunk stays in cache through its five passes; 7 examples at ρ = 384).
_CHUNK_ENTRIES = 2**20
#: Tolerance of the batch-independence probe, relative to the largest activation. On this
#: project's CPU, MiniLM's activations of a half batch run alone are bit-identical to theirs in
#: the whole batch; 1e-5 leaves room for BLAS kernels that block differently by batch size.
_PROBE_RTOL = 1e-5
#: Targets of the per-example scaling, as fractions of C: the grid rounding (≤ 2⁻¹⁷·C) and
#: float32 arithmetic (≤ 2⁻²³) fit under the add/remove margin; the replace relation also
#: needs room for contributions that are not exactly PSD (see _Collector._round_to_grid).
_CLIP_MARGIN_REPLACE = 1.0 - 2.0**-14
#: Modules whose batch_first=False means activations of shape (T, B, d) inside them.
#: (nn.Transformer*Layer hold an nn.MultiheadAttention built with their batch_first.)
_SEQUENCE_FIRST = (nn.MultiheadAttention, nn.RNNBase, nn.Transformer)

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
        reader = p.T / s[:, None]  # shape: (ρ, d_out): u = S⁻¹Pᵀ(y − b)
        if precond is not None:
            reader = precond @ reader
    else:
        reader = None if basis is None else basis.T  # shape: (ρ, d_in)
        if precond is not None:
            reader = precond if reader is None else precond @ reader
    return Coordinates(basis, precond, "output" if use_output else "input",
                       None if reader is None else reader.contiguous())


@dataclass(eq=False, repr=False)
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
    grid : float or None
        The grid step g of the exact sums (clipped statistics only; see the module docstring).
    """

    group: LayerGroup
    coordinates: Coordinates
    gram: torch.Tensor
    n_examples: int = 0
    n_clipped: int = 0
    clip: float | None = None
    sensitivity: float | None = None
    grid: float | None = None

    def row_space_gram(self) -> torch.Tensor:
        """K_u = D⁻¹ K_z D⁻¹ of shape (ρ, ρ) (non-private)."""
        return self.coordinates.to_row_space(self.gram)

    def __repr__(self) -> str:
        # the Gram and the counts are raw private statistics: a repr ends up in logs
        return f"GroupStatistic(group={self.group.name!r}, dim={self.group.dim}, clip={self.clip}, " \
               f"sensitivity={self.sensitivity})"


@dataclass(eq=False, repr=False)
class ActivationStatistics:
    """Per-group statistics from one pass over a corpus (non-private; see the module docstring).

    Attributes
    ----------
    groups : dict of str to GroupStatistic
    clip : float, "normalize" or None
    neighbour : str
    public : bool
        Declared by the caller of :func:`collect_statistics`: the corpus was public (or
        synthetic). A model factorised from statistics that are not public is *not private*
        (:attr:`dplowrank.compress.CompressionResult.privacy_status`).
    """

    groups: dict
    clip: object
    neighbour: str
    public: bool = False

    def __getitem__(self, name: str) -> GroupStatistic:
        return self.groups[name]

    def __iter__(self):
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return (f"ActivationStatistics({len(self.groups)} groups, clip={self.clip!r}, "
                f"neighbour={self.neighbour!r}, public={self.public})")


def _grid_for(clip: float, rho: int) -> tuple[float, int]:
    """(g, most examples) of a group's exact sums: g = 2^(t − k), 2^t ≥ C, k = ⌈log₂ ρ⌉ + 17.

    Each rounded entry is at most 2^k + 1 units, so 2^(51 − k) examples keep every partial sum,
    and the sum of a total and its transpose, below 2⁵³ units (symmetrised totals are halves
    of units: below 2⁵³ half-units)."""
    m, e = math.frexp(clip)
    top = e - 1 if m == 0.5 else e
    k = (rho - 1).bit_length() + _GRID_EXTRA_BITS
    return math.ldexp(1.0, top - k), 2 ** (51 - k)


class _Collector:
    def __init__(self, model, groups, coords, clip, normalize, matmul_dtype, neighbour="add_remove"):
        self.model, self.groups, self.coords = model, groups, coords
        self.clip, self.normalize = clip, normalize
        self.matmul_dtype = matmul_dtype
        self.replace = neighbour == "replace"
        self.mask: torch.Tensor | None = None
        self.examples: int = 0  # the current batch's example count (its first axis)
        self.step = 0
        self.stats: dict[str, GroupStatistic] = {}
        self._seen: dict[str, tuple[int, torch.Tensor]] = {}
        self._bias: dict[str, torch.Tensor | None] = {}
        self._readers: dict = {}
        self._handles = []
        self._limits: dict[str, int] = {}
        self.capture: dict[str, torch.Tensor] | None = None  # the probe's activations

    def install(self):
        mods = dict(self.model.named_modules())
        for g in self.groups:
            c = self.coords[g.name]
            dev = mods[g.members[0]].weight.device
            st = GroupStatistic(g, c, torch.zeros(g.dim, g.dim, dtype=torch.float64, device=dev))
            if self.clip is not None:
                st.grid, self._limits[g.name] = _grid_for(self.clip, g.dim)
            self.stats[g.name] = st
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
                a = y if b is None else y - b
            else:
                a = x.detach()
            a = self._by_example(group, a)
            if self.capture is not None:
                self.capture[group.name] = a.float().clone()
                return
            self._add(group, a)
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

    def _by_example(self, group: LayerGroup, a: torch.Tensor) -> torch.Tensor:
        """The activations as (B, T, d) with the batch's B examples on the first axis, or an error."""
        b, mask = self.examples, self.mask
        if mask is None:
            if a.ndim == 2:
                a = a.unsqueeze(1)  # one token per example
            if a.ndim != 3 or a.shape[0] != b:
                raise ValueError(
                    f"group {group.name!r} sees activations of shape {tuple(a.shape)}, but the batch has {b} "
                    "examples: statistics need them on the first axis, shape (examples, tokens, features) "
                    "(a sequence-first layout would mix examples; pass examples= if the count is read wrongly)"
                )
            return a
        if a.shape[:-1] == mask.shape:
            return a
        if a.ndim == 2 and a.shape[0] == mask.numel():  # flattened (B·T, d), example-major
            return a.reshape(*mask.shape, a.shape[-1])
        raise ValueError(
            f"group {group.name!r} sees activations of shape {tuple(a.shape)}, which do not match the "
            f"mask of shape {tuple(mask.shape)} (examples, tokens)"
        )

    def _add(self, group: LayerGroup, a: torch.Tensor) -> None:
        mask = self.mask  # shape: (B, T)
        if mask is None:
            mask = torch.ones(a.shape[:-1], dtype=torch.bool, device=a.device)
        st = self.stats[group.name]
        reader = self._reader(group.name, a)
        if a.dtype != torch.float64:
            a = a.to(torch.float32)
        z = a if reader is None else a @ reader.T  # shape: (B, T, ρ)
        valid = mask.to(device=z.device, dtype=torch.bool)
        # padding is *replaced* by zeros (a NaN or Inf there times 0 would be NaN and poison the
        # example's norm, which used to switch its clipping off)
        z = torch.where(valid.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))
        n = z.shape[0]
        if self.clip is None:  # analysis only (unreleasable): one product over the batch's tokens
            rows = z[valid]  # shape: (tokens, ρ), padding dropped
            if self.matmul_dtype == torch.float64:
                rows = rows.to(torch.float64)
            batch_gram = (rows.T @ rows).to(torch.float64)
            if not math.isfinite(float(batch_gram.sum())):  # a NaN/Inf activation reaches the sum
                raise ValueError(f"non-finite activations reached group {group.name!r}")
            st.gram.add_(batch_gram)
            st.n_examples += n
            return
        if st.n_examples + n > self._limits[group.name]:
            raise ValueError(
                f"group {group.name!r} has reached the most examples its exact sums hold "
                f"({self._limits[group.name]}); split the corpus over several releases"
            )
        if self.matmul_dtype == torch.float64 or self.replace:
            # replace needs a bound on how far each computed S_e is from PSD: float64 products
            # (never TF32 or bfloat16, whatever the matmul precision setting) keep it tiny
            z = z.to(torch.float64)
        total = torch.zeros(z.shape[-1], z.shape[-1], dtype=torch.float64, device=z.device)
        chunk = max(1, _CHUNK_ENTRIES // (z.shape[-1] ** 2))
        clipped = 0
        for e0 in range(0, n, chunk):
            zc = z[e0:e0 + chunk]
            a, scale, bound = _contributions(zc)
            if not bool(torch.isfinite(bound).all()) and zc.dtype != torch.float64:
                a, scale, bound = _contributions(zc.to(torch.float64))  # float32 overflowed: redo in float64
            if not bool(torch.isfinite(bound).all()):
                raise ValueError(f"non-finite activations reached group {group.name!r}")
            tokens = (valid[e0:e0 + chunk].sum(dim=1) if valid.ndim == 2 else None)
            clipped += self._round_to_grid(a, scale, bound, st.grid, zc, tokens)
            for e in range(a.shape[0]):  # f64 += f32 per example: exact, and fast (no cast pass)
                total.add_(a[e])
        # Symmetrise the batch's total: (Σ q_e + Σ q_eᵀ)/2 = Σ (q_e + q_eᵀ)/2, exact (integers below
        # 2⁵² units, then a halving), and (q + qᵀ)/2 is never longer than q in Frobenius norm, nor
        # farther from a PSD matrix: every bound on q_e holds for what is added.
        total = total.add_(total.T.clone()).mul_(0.5)
        st.gram.add_(total.mul_(st.grid))  # exact: multiples of g/2 below 2⁵³·g/2
        st.n_examples += n
        st.n_clipped += clipped

    def _round_to_grid(self, a: torch.Tensor, scale: torch.Tensor, bound: torch.Tensor, grid: float,
                       zc: torch.Tensor, tokens: torch.Tensor | None) -> int:
        """Scale each contribution and round it to the grid, in place; return how many were scaled down.

        ``a`` (shape (e, ρ, ρ)) holds S_e/``scale`` (S_e = Z_eᵀ Z_e as computed; ``scale`` a
        power of two, float64) and ``bound`` ≥ ‖a‖_F, so ‖S_e‖_F ≤ scale·bound. ``tokens``: each
        example's token count. The target t is C·(1 − 2⁻¹⁶) (or C·(1 − 2⁻¹⁴)
        under replace); each example is multiplied by f = c/grid with c = t/(scale·bound) (when
        clipped or normalised) and rounded: the rounded integers, times the grid, have
        Frobenius norm ≤ t·(1 + 2⁻²³) + ρ·grid/2 ≤ C.

        Replace: ‖q_a − q_b‖²_F = ‖q_a‖² + ‖q_b‖² − 2⟨q_a, q_b⟩ ≤ 2C² needs ⟨q_a, q_b⟩ ≥ 0, which
        holds for PSD contributions; a rounded one is q = P + e with P = c·Z_eᵀZ_e (exact, PSD)
        and ‖e‖ ≤ ν = ρ·grid/2 + c·γ_T·tr(Z_eᵀZ_e) (grid rounding; float64 products, Higham
        2002, §3.1) + 2⁻⁵⁰·t, so ⟨q_a, q_b⟩ ≥ −‖P_a‖ν − ν‖P_b‖ − ν² ≥ −2tν − 3ν² (‖P‖ ≤ t + ν)
        and ‖q_a − q_b‖² ≤ 2t² + 4tν + 6ν². Each example's scale is lowered until that is ≤ 2C²
        (a relative 2⁻¹⁵ suffices unless T·tr is astronomically large).
        """
        target = self.clip * (_CLIP_MARGIN_REPLACE if self.replace else _CLIP_MARGIN)
        norm = scale * bound  # ≥ ‖S_e‖_F, float64, shape (e,)
        nonzero = norm > 0
        safe = torch.where(nonzero, norm, torch.ones_like(norm))
        if self.normalize:
            c = torch.where(nonzero, target / safe, torch.zeros_like(norm))
            clipped = int(nonzero.sum())
        else:
            over = norm > target
            c = torch.where(over, target / safe, torch.ones_like(norm))
            clipped = int(over.sum())
        if self.replace and nonzero.any():
            rho = a.shape[-1]
            # each example's own token count (padding adds exact zeros to the dot products)
            t_len = (tokens if tokens is not None else torch.full((a.shape[0],), zc.shape[1]))
            t_len = t_len.to(device=norm.device, dtype=torch.float64).clamp(min=1.0)
            u = 2.0**-53  # the products are float64 under replace (see _add)
            gamma = t_len * u / (1.0 - t_len * u)
            trace = (zc.to(torch.float64) ** 2).sum(dim=(1, 2))  # tr(Z_eᵀ Z_e) ≥ 0
            cap = float(self.clip)
            nu = rho * grid / 2 + c * gamma * trace + 2.0**-50 * target
            t = c * norm * (1.0 + 2.0**-23) + rho * grid / 2  # ≥ the rounded contribution's norm
            excess = 2 * t * t + 4 * t * nu + 6 * nu * nu > 2 * cap * cap * (1.0 - 2.0**-30)
            if bool(excess.any()):
                # largest t' with 2t'² + 4t'ν + 6ν² ≤ 2C²(1 − 2⁻³⁰): t' = −ν + √(C²(1 − 2⁻³⁰) − 2ν²)
                t_max = -nu + torch.sqrt((cap * cap * (1.0 - 2.0**-30) - 2 * nu * nu).clamp(min=0.0))
                room = ((t_max - rho * grid / 2) / (1.0 + 2.0**-23)).clamp(min=0.0) * (1.0 - 2.0**-40)
                c = torch.where(excess, torch.minimum(c, room / safe), c)
        # S_e = a·scale, so the integers are round(S_e·c/grid) = round(a·(scale·c/grid))
        f = (scale * c / grid).to(a.dtype)
        a.mul_(f[:, None, None]).round_()
        return clipped


def _gamma(n: int, dtype: torch.dtype) -> float:
    """γ_n = n·u/(1 − n·u): the relative error bound of a sum of n terms (Higham 2002, §3.1)."""
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    return n * u / (1.0 - n * u)


def _contributions(zc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each example's contribution, scaled by a power of two, and an upper bound on its norm.

    From zc of shape (e, T, ρ): a = P/2^s (shape (e, ρ, ρ)) with P = Z_eᵀ Z_e as computed and
    2^s > max|P| a power of two (exact scaling; entries of a in (−1, 1)), or 2^s = 1 when every
    example's largest entry lies in [2⁻⁴⁰, 2⁴⁰] (the squares are safe as they are), the scale
    2^s (shape (e,), float64; P = a·scale), and ``bound`` ≥ ‖a‖_F (shape (e,), float64).

    The matrix product may round however it likes (even in TF32 or bfloat16 where a user
    allows it, and not symmetrically: the batch's rounded total is symmetrised exactly in
    ``_add``, which does not increase any contribution's norm): the bound is computed from the
    entries that are actually rounded and added. Dividing by
    the power of two first keeps the squares from underflowing (squares of entries near 1e-23
    vanish in float32 and made the bound 0, which "normalize" then divided by). Row sums of
    squares carry a relative error at most γ_{ρ+1} (positive terms); squares below the
    smallest normal number add at most ρ²·2⁻¹⁴⁹ (float32) in all; the sum over rows is float64.
    """
    a = torch.bmm(zc.transpose(1, 2), zc)  # P, not necessarily symmetric (see _add)
    e, rho = a.shape[0], a.shape[-1]
    top = a.reshape(e, -1).abs().amax(dim=1).to(torch.float64)  # shape: (e,)
    if bool(((top >= 2.0**-40) & (top <= 2.0**40)).all()):
        # squares in [2⁻⁸⁰, 2⁸⁰]·(few) neither underflow nor overflow in float32: no scaling pass
        power = torch.ones_like(top)
    else:
        _, exp = torch.frexp(torch.where(top > 0, top, torch.ones_like(top)))
        power = torch.ldexp(torch.ones_like(top), exp.to(torch.int64))  # 2^s > top
        power = torch.where(torch.isfinite(top), power, top)
        a.div_(power.to(a.dtype)[:, None, None])  # exact: a power of two (entries of a in (−1, 1))
    rows = (a * a).sum(dim=2)  # shape: (e, ρ)
    fro2 = rows.to(torch.float64).sum(dim=1)
    tiny = rho * rho * (2.0**-149 if a.dtype == torch.float32 else 2.0**-1074)
    slack = (1.0 + 2.0 * _gamma(rho + 1, a.dtype)) * (1.0 + 2.0**-40)
    bound = torch.sqrt((fro2 + tiny) * slack)  # ≥ ‖a‖_F
    return a, power, bound


def _examples_in(batch: object, mask: torch.Tensor | None) -> int:
    """The number of examples in ``batch``: the mask's first axis, else the common first axis
    of the batch's tensors (a ``ValueError`` when they disagree: pass ``examples=``)."""
    if mask is not None:
        return int(mask.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        sizes = {int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim >= 1}
        if len(sizes) == 1:
            return sizes.pop()
    raise ValueError(
        "cannot tell how many examples this batch holds (no mask, and its tensors do not share one "
        "first axis); pass examples=callable(batch) -> int"
    )


def _slice_batch(batch: object, mask: torch.Tensor | None, b: int, part: slice):
    """The examples ``part`` of ``batch`` (its tensors with first axis ``b``), or None if it
    cannot be sliced generically."""
    if isinstance(batch, torch.Tensor):
        return batch[part]
    if isinstance(batch, Mapping):
        out = {}
        for key, v in batch.items():
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == b:
                out[key] = v[part]
            elif isinstance(v, torch.Tensor) and v.ndim >= 1:
                raise ValueError(
                    f"batch entry {key!r} has shape {tuple(v.shape)}, but the batch has {b} examples: "
                    "statistics need them on the first axis (a sequence-first layout would mix examples)"
                )
            else:
                out[key] = v
        return type(batch)(out) if isinstance(batch, dict) else out
    return None


def _check_layout(model: nn.Module) -> None:
    """Refuse modules known to put the sequence first (their linears see (T, B, d))."""
    for name, m in model.named_modules():
        if isinstance(m, _SEQUENCE_FIRST) and not getattr(m, "batch_first", True):
            raise ValueError(
                f"module {name or type(m).__name__!r} ({type(m).__name__}) has batch_first=False: its "
                "activations put the sequence first and would mix examples; build it with batch_first=True"
            )


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` (what ``state_dict`` would save), by name."""
    out = {f"param:{n}": p for n, p in model.named_parameters(remove_duplicate=False)}
    out.update({f"buffer:{n}": b for n, b in model.named_buffers(remove_duplicate=False)})
    return out


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer."""
    return {name: t.detach().clone() for name, t in _tensors(model).items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal in shape, dtype and every value (NaN equal to NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(a, b)


def _check_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Restore and refuse if the forward pass changed a parameter or buffer (it would carry
    private data into the saved model: running statistics, an exponential moving average)."""
    now = _tensors(model)
    changed = [name.split(":", 1)[1] for name, t in now.items()
               if name not in before or not _same(before[name], t.detach())]
    changed += [name.split(":", 1)[1] for name in before if name not in now]
    if changed:
        with torch.no_grad():
            for name, t in now.items():
                if name in before and before[name].shape == t.shape:
                    t.copy_(before[name])
        raise ValueError(
            f"the model changed its state {changed[:5]} while computing statistics (in eval mode); "
            "it would carry private data into the saved model. It was restored; statistics need a "
            "model whose forward pass leaves its parameters and buffers alone"
        )


def _probe(col: _Collector, run, model: nn.Module, batch: object, mask: torch.Tensor | None, b: int) -> None:
    """Check on one batch (B ≥ 2) that each example's hooked activations do not depend on the others.

    The first ⌈B/2⌉ examples and the rest are each run alone and their activations compared
    with theirs inside the whole batch (to a relative 1e-5): a layer that mixes examples (batch
    statistics, a sequence-first layout, a cumulative sum over the batch, token routing with a
    batch-wide capacity) makes them differ. A heuristic, not a proof: it sees only the batches
    it probes (every new batch size is probed), and mixing far below the tolerance, or mixing
    that only an unusual example triggers, passes; the model processing examples independently
    is the caller's responsibility (docs/threat_model.md).
    """
    h = (b + 1) // 2
    parts = [(slice(0, h), h), (slice(h, b), b - h)]
    sliced = [_slice_batch(batch, mask, b, sl) for sl, _ in parts]
    if any(p is None for p in sliced):
        raise ValueError(
            "cannot check that examples stay apart: the batch is not a tensor or a mapping of tensors "
            "with the examples on their first axis; pass such batches (and forward=) instead"
        )
    runs = [(batch, b, mask)] + [(p, n, None if mask is None else mask[sl]) for p, (sl, n) in zip(sliced, parts)]
    outs = []
    for inputs, n, m in runs:
        col.capture, col.mask, col.examples = {}, m, n
        col.step += 1
        run(model, inputs)
        outs.append(col.capture)
    col.capture = None
    for name, whole in outs[0].items():
        for (sl, _), alone in zip(parts, (outs[1].get(name), outs[2].get(name))):
            ref = whole[sl]
            scale = float(whole.abs().max()) if whole.numel() else 0.0
            if alone is None or alone.shape != ref.shape or \
                    float((alone - ref).abs().max()) > _PROBE_RTOL * scale + 1e-30:
                raise ValueError(
                    f"group {name!r}: an example's activations change with the other examples in its batch "
                    "(a layer mixes examples, e.g. batch statistics or a sequence-first layout); its "
                    "contribution would not be bounded by the clipping norm. Use a model that processes "
                    "examples independently (eval mode, batch_first=True)"
                )


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
    examples: Callable[[object], int] | None = None,
    public: bool = False,
    check_independence: bool = True,
) -> ActivationStatistics:
    """One pass of ``model`` over ``batches``, accumulating each group's clipped Gram.

    Parameters
    ----------
    model : nn.Module
        Run in inference and eval mode (its training flags are restored afterwards); forward
        hooks are removed afterwards, even on error. Its parameters and buffers must be left
        untouched by the forward pass, and modules that put the sequence first
        (``batch_first=False``) are refused (see the module docstring).
    batches : iterable of mapping
        Model inputs; each row of a batch is one example (the privacy unit): every hooked
        activation must have the batch's examples on its first axis.
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
        Must come from public or synthetic input, never from the private corpus: statistics
        must have been collected with ``public=True`` (others are refused); a mapping of
        tensors is the caller's declaration that they are public. The prior ships with the
        release (as its preconditioner).
    prior_ridge : float, default 0.1
        λ of the preconditioner.
    route : {"auto", "input", "output"}
    mask_key : str or None, default "attention_mask"
        ``None``: no mask, every token of every row counts.
    forward : callable, optional
        ``forward(model, batch)``; default ``model(**batch)``.
    matmul_dtype : torch.float32 or torch.float64
        Precision of the per-example Gram products (the sums are exact either way).
    total : int, optional
        Number of batches, for the progress bar.
    show_progress : bool, default False
        A progress bar over batches (it shows batch counts only).
    examples : callable, optional
        ``examples(batch) -> int``, the number of examples in a batch; default: the mask's
        first axis, else the common first axis of the batch's tensors.
    public : bool, default False
        Declare that ``batches`` are public or synthetic (e.g. a prior): models factorised
        from these statistics are then reported as using no private data. Never set it for
        a private corpus.
    check_independence : bool, default True
        Run the batch-independence probe on the first batch of each batch size with two or
        more examples (one extra forward pass of a whole batch, in two halves). Switch it off
        only for a model whose examples are known to stay apart.

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
        if not 1e-150 <= c <= 1e150:
            raise ValueError(f"clip={clip!r} is outside the range in which the sums are exact (1e-150 to 1e150)")
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
                if not prior.public:
                    raise ValueError(
                        "the prior's statistics were not declared public: a prior ships inside the "
                        "release's coordinates (its preconditioner), so it must come from public or "
                        "synthetic input, collected with collect_statistics(..., public=True)"
                    )
                if g.name not in prior.groups:
                    raise ValueError(f"the prior has no statistic for group {g.name!r}")
                priors[g.name] = prior[g.name].row_space_gram()
            else:
                if g.name not in prior:
                    raise ValueError(f"the prior has no Gram for group {g.name!r}")
                priors[g.name] = torch.as_tensor(prior[g.name])
    coords = {g.name: coordinates_for(model, g, prior=priors.get(g.name), prior_ridge=prior_ridge, route=route)
              for g in groups}
    if not isinstance(public, bool):
        raise TypeError(f"public must be a bool, got {public!r}")
    if examples is not None and not callable(examples):
        raise TypeError(f"examples must be a callable batch -> int, got {type(examples).__name__}")
    _check_layout(model)
    col = _Collector(model, groups, coords, c, normalize, matmul_dtype, neighbour)
    run = forward or _default_forward
    modes = {m: m.training for m in model.modules()}
    state = _state(model)
    probed: set[int] = set()  # the batch sizes probed so far
    col.install()
    try:
        model.eval()  # batch normalisation on running statistics, no dropout: examples stay apart
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
                b = _examples_in(batch, mask) if examples is None else examples(batch)
                if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                    raise ValueError(f"examples(batch) must be a positive int, got {b!r}")
                if mask is not None and mask.shape[0] != b:
                    raise ValueError(f"the mask has {mask.shape[0]} rows but the batch holds {b} examples")
                if check_independence and b >= 2 and b not in probed:
                    _probe(col, run, model, batch, mask, b)
                    _check_state(model, state)
                    probed.add(b)
                col.mask, col.examples = mask, b
                col.step += 1
                run(model, batch)
        _check_state(model, state)
    finally:
        col.remove()
        for m, training in modes.items():
            m.training = training
    sens = None
    if c is not None:
        sens = c if neighbour == "add_remove" else times_sqrt2(c)  # rounded up
    for st in col.stats.values():
        st.clip, st.sensitivity = c, sens
    return ActivationStatistics(col.stats, "normalize" if normalize else c, neighbour, public)

