"""The forward hooks that form each example's clipped, grid-rounded contribution and sum them exactly.

The arithmetic that makes the sensitivity hold for the computed matrix (one contribution per
example, a norm bound after a power-of-two scaling, rounding to a grid with a margin, exact
sums) is explained in :mod:`._stats`.
"""

from __future__ import annotations

import math
import threading

import torch

from ..mechanisms import clip_factors
from ._statistic import GroupStatistic
from ._targets import LayerGroup

__all__ = []

#: Per-example scales aim at C·(1 − 2⁻¹⁶): the grid rounding (≤ 2⁻¹⁷·C) and float32
#: arithmetic (≤ 2⁻²³ relative) cannot push a rounded contribution above C.
_CLIP_MARGIN = 1.0 - 2.0**-16
#: Grid bits beyond ⌈log₂ ρ⌉: ρ·g/2 ≤ 2⁻¹⁷·2^t (see the module docstring).
_GRID_EXTRA_BITS = 17
#: Per-example ρ×ρ contributions are formed this many entries at a time (4 MB in float32:
#: the chunk stays in cache through its five passes; 7 examples at ρ = 384).
_CHUNK_ENTRIES = 2**20
#: Targets of the per-example scaling, as fractions of C: the grid rounding (≤ 2⁻¹⁷·C) and
#: float32 arithmetic (≤ 2⁻²³) fit under the add/remove margin; the replace relation also
#: needs room for contributions that are not exactly PSD (see _Collector._round_to_grid).
_CLIP_MARGIN_REPLACE = 1.0 - 2.0**-14


def _grid_for(clip: float, rho: int) -> tuple[float, int]:
    """(g, most examples) of a group's exact sums: g = 2^(t − k), 2^t ≥ C, k = ⌈log₂ ρ⌉ + 17.

    Each rounded entry is at most 2^k + 1 units, so 2^(51 − k) examples keep every partial sum,
    and the sum of a total and its transpose, below 2⁵³ units (symmetrised totals are halves
    of units: below 2⁵³ half-units)."""
    m, e = math.frexp(clip)
    top = e - 1 if m == 0.5 else e
    k = (rho - 1).bit_length() + _GRID_EXTRA_BITS
    return math.ldexp(1.0, top - k), 2 ** (51 - k)


class OwnerThread:
    """The thread that installed a collection's hooks: a forward pass from any other thread
    (a server answering requests with the same model, ``nn.DataParallel`` replicas) must not
    be recorded as one of the corpus's examples, and is refused in that thread."""

    def __init__(self) -> None:
        self.ident = threading.get_ident()

    def check(self) -> None:
        if threading.get_ident() != self.ident:
            raise RuntimeError("a forward pass from another thread reached a statistics or importance collection's "
                               "hooks; run nothing else on this model until the collection has finished")


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
        self.guard = None  # a StateGuard while a collection runs: the state put back before each pass

    def install(self):
        self.owner = OwnerThread()  # only this thread's forward passes are the corpus's examples
        mods = dict(self.model.named_modules())
        for g in self.groups:
            c = self.coords[g.name]
            dev = mods[g.members[0]].weight.device
            st = GroupStatistic(g, c, torch.zeros(g.dim, g.dim, dtype=torch.float64, device=dev))
            if self.clip is not None:
                st.grid, self._limits[g.name] = _grid_for(self.clip, g.dim)
                st.max_examples = self._limits[g.name]
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
            self.owner.check()
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
            f"group {group.name!r} sees activations whose (examples, tokens) axes do not match the mask's "
            f"({a.ndim} axes; the lengths are not shown: they are private)"
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
        grid = st.grid
        if grid is None:  # set with the clipping norm when the statistic was made
            raise ValueError(f"group {group.name!r} has no rounding grid")
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
            clipped += self._round_to_grid(a, scale, bound, grid, zc, tokens)
            for e in range(a.shape[0]):  # f64 += f32 per example: exact, and fast (no cast pass)
                total.add_(a[e])
        # Symmetrise the batch's total: (Σ q_e + Σ q_eᵀ)/2 = Σ (q_e + q_eᵀ)/2, exact (integers below
        # 2⁵² units, then a halving), and (q + qᵀ)/2 is never longer than q in Frobenius norm, nor
        # farther from a PSD matrix: every bound on q_e holds for what is added.
        total = total.add_(total.T.clone()).mul_(0.5)
        st.gram.add_(total.mul_(grid))  # exact: multiples of g/2 below 2⁵³·g/2
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
        c, over = clip_factors(norm, target, target, normalize=self.normalize)
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
