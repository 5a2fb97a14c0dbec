"""First-order importance of weights, one privacy unit per example (non-private until released).

The first-order (Taylor) importance of a weight w for a loss L is |w·∂L/∂w|: the first-order
change of L when w is set to 0. LPAF (Ren & Zhu, arXiv:2306.14152) prunes by it and shows
that the surviving weights expose low rank; its factorisation weighs the reconstruction of
each weight by it (:func:`dplowrank.compress.weighted_factors`). Here it is accumulated over
the examples of a corpus,

    I = Σ_e c_e·|W ⊙ G_e|,   G_e = ∂L_e/∂W = Σ_t δ_{e,t} x_{e,t}ᵀ (per example),

where c_e scales example e's contribution (over all target layers together) to Frobenius norm
≤ C (``clip=C``) or = 1 (``clip="normalize"``). Every contribution is entrywise non-negative,
so ⟨I_a, I_b⟩ ≥ 0 and the sensitivity of the sum is C under add/remove and √2·C under replace
(:func:`dplowrank.mechanisms.contribution_sensitivity`), as for the activation Grams.

The sensitivity holds for the *computed* sum, by the same arithmetic as the Grams
(:mod:`._stats`): each example's gradient is formed from its own activations and output
gradients only (an einsum per example, never a product over the batch's tokens); its norm is
bounded in float64 from the values that are actually added; it is scaled to C·(1 − 2⁻¹⁶) when
clipped and rounded to a grid g = 2^(t − k) with k = ⌈log₂ √P⌉ + 17 (P entries in all), so the
rounding moves it by at most 2⁻¹⁷·C; and the float64 sums of the integer multiples of g are
exact in any order. By default every example runs alone, trimmed to its own tokens
(``isolate=True``), so its contribution cannot depend on any other example (not even through
the padded length of its batch); gradients are taken with ``torch.autograd.grad``, which leaves
no ``.grad`` behind. The model runs in eval mode, its state put back before every pass, and one
collection at a time may run on a model.

The loss must be a sum of per-example terms: ``loss(model, batch)`` returns a Tensor of shape
(B,), one loss per example, each depending on that example only (no in-batch negatives, no
batch mean). Nothing in this module is private; scores become publishable only through
:func:`dplowrank.compress.release_statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._progress import progress
from .._validation import check_choice
from ..mechanisms import NEIGHBOURS, clip_factors, contribution_sensitivity
from ._collector import _CLIP_MARGIN, OwnerThread, _grid_for
from ._guard import StateGuard
from ._isolation import (
    _check_layout,
    _close_per_example,
    _slice_batch,
    batch_layout,
    examples_alone,
    exclusive,
)
from ._stats import _check_clip
from ._targets import LayerGroup

__all__ = ["ImportanceStatistics", "collect_importance", "importance_matrix"]

#: Per-example contributions are formed for at most this many weight entries at a time.
_CHUNK_ENTRIES = 2**22


@dataclass(eq=False, repr=False)
class ImportanceStatistics:
    """Accumulated first-order importance of the target layers' weights (non-private).

    Attributes
    ----------
    scores : dict of str to Tensor, float64
        Each layer's scores by module name (entrywise ≥ 0): I of shape (d_out, d_in) for
        ``granularity="entry"``; its row sums followed by its column sums, shape
        (d_out + d_in,), for ``"marginal"``.
    groups : tuple of LayerGroup
    clip : float, "normalize" or None
    sensitivity : float or None
        L2 sensitivity of all scores together (``None`` without clipping: unreleasable).
    neighbour : str
    public : bool
        Declared by the caller: the corpus was public.
    n_examples : int
        Examples seen (non-private).
    granularity : {"entry", "marginal"}
    """

    scores: dict
    groups: tuple
    clip: object
    sensitivity: float | None
    neighbour: str
    public: bool = False
    n_examples: int = 0
    granularity: str = "entry"

    @property
    def entries(self) -> int:
        """P, the number of scores (weights of all target layers)."""
        return sum(int(s.numel()) for s in self.scores.values())

    def matrix(self, name: str) -> torch.Tensor:
        """Layer ``name``'s importance as a (d_out, d_in) matrix (for ``"marginal"``: the separable
        a·bᵀ/Σa of its row sums a and column sums b, which has exactly those sums)."""
        return importance_matrix(self.scores[name], self.granularity, self.shapes[name])

    @property
    def shapes(self) -> dict:
        return {n: s for g in self.groups for n, s in zip(g.members, ((d, g.in_features) for d in g.out_features))}

    def __repr__(self) -> str:
        # the scores and the count are raw private statistics: a repr ends up in logs
        return (f"ImportanceStatistics({len(self.scores)} layers, {self.entries} entries, clip={self.clip!r}, "
                f"sensitivity={self.sensitivity}, public={self.public})")


GRANULARITIES = ("entry", "marginal")


def importance_matrix(scores: torch.Tensor, granularity: str, shape: tuple[int, int]) -> torch.Tensor:
    """Scores as a (d_out, d_in) matrix: as they are, or the separable a·bᵀ/Σa from the marginals."""
    if granularity == "entry":
        return scores
    d_out, _ = shape
    rows, cols = scores[:d_out].clamp(min=0.0), scores[d_out:].clamp(min=0.0)
    total = float(rows.sum())
    return torch.outer(rows, cols) / total if total > 0 else torch.ones(shape, dtype=scores.dtype)


class _Tape:
    """Forward hooks keep each target's input; tensor hooks keep the gradient of its output."""

    def __init__(self, mods: dict[str, nn.Linear]) -> None:
        self.mods = mods
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.owner = OwnerThread()
        self.guard: StateGuard | None = None  # puts the model's state back before every forward pass
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in mods.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.owner.check()  # another thread's forward pass is not one of the corpus's examples
            self.inputs[name] = inputs[0].detach()
            if output.requires_grad:
                output.register_hook(lambda g: self.grads.__setitem__(name, g.detach()))
        return hook

    def clear(self) -> None:
        self.inputs.clear()
        self.grads.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.clear()


def _per_example(tape: _Tape, b: int) -> dict[str, torch.Tensor]:
    """|W ⊙ G_e| for every target, Tensors of shape (B, d_out, d_in) (the model's dtype, ≥ float32)."""
    out = {}
    for name, mod in tape.mods.items():
        x, g = tape.inputs.get(name), tape.grads.get(name)
        if x is None or g is None:
            raise ValueError(f"layer {name!r} did not take part in the loss of this batch (no gradient reached it)")
        if x.shape[0] != b or g.shape[0] != b:
            raise ValueError(
                f"layer {name!r} does not see the batch's {b} examples on the first axis of its activations: "
                "importance needs them there"
            )
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, g = x.to(dt).reshape(b, -1, x.shape[-1]), g.to(dt).reshape(b, -1, g.shape[-1])
        grad = torch.einsum("bto,bti->boi", g, x)  # one gradient per example, from its own tokens
        out[name] = grad.mul_(mod.weight.detach().to(dt)).abs_()
    return out


def _backward(model, run_loss, batch, b: int, tape: _Tape) -> dict[str, torch.Tensor]:
    """Per-example contributions of one batch. ``torch.autograd.grad`` (not ``backward``) writes
    no ``.grad`` anywhere: no private gradient is left on the model or on modules outside it."""
    tape.clear()
    if tape.guard is not None:
        tape.guard.reset()
    losses = run_loss(model, batch)
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (b,):
        raise ValueError(
            f"loss(model, batch) must return a Tensor of shape ({b},): one loss per example, each depending "
            "on that example only"
        )
    weights = [m.weight for m in tape.mods.values()]
    if not losses.requires_grad:
        raise ValueError("the loss does not depend on the target layers (no gradient reaches them)")
    torch.autograd.grad(losses.sum(), weights, allow_unused=True)
    return _per_example(tape, b)


def _contributions(model, loss, batch, b, tape, isolate, mask_key) -> dict[str, torch.Tensor]:
    if not isolate:
        return _backward(model, loss, batch, b, tape)
    parts = [_backward(model, loss, one, 1, tape) for one in examples_alone(batch, mask_key, b)]
    return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}


def collect_importance(
    model: nn.Module,
    batches: Iterable[Mapping],
    groups: Sequence[LayerGroup],
    *,
    loss: Callable[[nn.Module, object], torch.Tensor],
    clip: float | str | None = "normalize",
    neighbour: str = "add_remove",
    examples: Callable[[object], int] | None = None,
    mask_key: str | None = "attention_mask",
    total: int | None = None,
    show_progress: bool = False,
    public: bool = False,
    check_independence: bool = True,
    granularity: str = "entry",
    isolate: bool = True,
) -> ImportanceStatistics:
    """Accumulate per-example clipped first-order importance |W ⊙ ∂L_e/∂W| of the target layers.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (training flags restored afterwards); its parameters and buffers
        must be left untouched. Gradients are taken with respect to the target weights only.
    batches : iterable
        Model inputs; each row of a batch is one example (the privacy unit).
    groups : sequence of LayerGroup
        The target layers (every member of every group).
    loss : callable
        ``loss(model, batch) -> Tensor of shape (B,)``: one loss per example, each depending
        on its own example only (see the module docstring).
    clip : float, "normalize" or None, default "normalize"
        C: each example's contribution over all targets scaled to Frobenius norm ≤ C;
        "normalize": to exactly 1; ``None``: unclipped (not releasable).
    neighbour : {"add_remove", "replace"}
    examples : callable, optional
        ``examples(batch) -> int``; default the mask's first axis, else the common first axis.
    mask_key : str or None, default "attention_mask"
        The batch's (B, T) token mask: it counts the examples and, with ``isolate``, trims each
        one to its own tokens (a batch without it is refused). ``None``: every token counts
        (unpadded batches); padding is otherwise excluded by the loss itself.
    total : int, optional
        Number of batches for the progress bar.
    show_progress : bool, default False
    public : bool, default False
        Declare the corpus public (never for a private corpus).
    check_independence : bool, default True
        The batch-independence probe on the first batch of every size ≥ 2: batched, it checks
        that examples stay apart; isolated (only without a mask), that the rows split off are
        the examples.
    granularity : {"entry", "marginal"}, default "entry"
        "entry": one score per weight (LPAF's elementwise importance). "marginal": each
        example's |W ⊙ G_e| is summed over its columns and over its rows first, and those
        d_out + d_in sums per layer are clipped and accumulated instead: far fewer numbers
        to release (for MiniLM's FFN 23,040 instead of 7,077,888), so far less noise for the
        same ε; the factorisation then uses the separable weights a·bᵀ, for which it is exact.

    isolate : bool, default True
        Run every example alone, trimmed to its own tokens (batches must be right-padded):
        its contribution is then a function of that example only, bit for bit, whatever else
        the corpus holds. ``False`` runs whole batches (faster), where an example's float32
        activations can change in their last bits with its batch-mates' padded length, and
        grid-rounded entries with them: the sensitivity then holds up to that drift (about
        8e-4·C at 16,384 examples, measured by this project's audit); the independence probe runs
        on both halves.

    Returns
    -------
    ImportanceStatistics
    """
    c, normalize = _check_clip(clip)
    check_choice(neighbour, "neighbour", NEIGHBOURS)
    check_choice(granularity, "granularity", GRANULARITIES)
    if not callable(loss):
        raise TypeError(f"loss must be a callable (model, batch) -> per-example losses, got {type(loss).__name__}")
    if not isinstance(public, bool):
        raise TypeError(f"public must be a bool, got {public!r}")
    groups = tuple(groups)
    if not groups:
        raise ValueError("groups is empty: nothing to collect")
    all_mods = dict(model.named_modules())
    mods = {n: all_mods[n] for g in groups for n in g.members}
    marginal = granularity == "marginal"
    shapes = {n: ((sum(m.weight.shape),) if marginal else tuple(m.weight.shape)) for n, m in mods.items()}
    entries = sum(math.prod(sh) for sh in shapes.values())
    grid, limit = _grid_for(c, math.isqrt(entries - 1) + 1) if c is not None else (None, None)
    totals = {n: torch.zeros(shapes[n], dtype=torch.float64, device=m.weight.device) for n, m in mods.items()}
    if not isinstance(isolate, bool):
        raise TypeError(f"isolate must be a bool, got {isolate!r}")
    _check_layout(model)
    with exclusive(model):
        return _collect(model, batches, groups, mods, loss, c, normalize, neighbour, examples, mask_key, total,
                        show_progress, public, check_independence, granularity, isolate, totals,
                        grid, limit)


def _collect(model, batches, groups, mods, loss, c, normalize, neighbour, examples, mask_key, total, show_progress,
             public, check_independence, granularity, isolate, totals, grid, limit) -> ImportanceStatistics:
    marginal = granularity == "marginal"
    modes = {m: m.training for m in model.modules()}
    flags = {m.weight: m.weight.requires_grad for m in mods.values()}
    tape = _Tape(mods)
    seen, probed = 0, set()
    try:
        model.eval()
        for m in mods.values():
            m.weight.requires_grad_(True)
        tape.guard = StateGuard(model, (loss,))
        with torch.enable_grad():
            for batch in progress(batches, total=total or 0, desc="importance", enabled=show_progress):
                b = batch_layout(batch, mask_key, examples)[1]
                contrib = _contributions(model, loss, batch, b, tape, isolate, mask_key)
                if check_independence and b >= 2 and b not in probed and (not isolate or mask_key is None):
                    _probe(model, loss, batch, b, tape, contrib, mask_key)
                    probed.add(b)
                if marginal:  # row sums then column sums of each example's |W ⊙ G_e|
                    contrib = {n: torch.cat([v.sum(dim=2), v.sum(dim=1)], dim=1) for n, v in contrib.items()}
                if limit is not None and seen + b > limit:
                    raise ValueError(f"the importance sums hold at most {limit} examples; split the corpus")
                _accumulate(totals, contrib, b, c, normalize, grid)
                seen += b
        tape.guard.close()
        tape.guard = None
    finally:
        if tape.guard is not None:  # an error: put the state back, say nothing more
            tape.guard.restore()
        tape.remove()
        for m, training in modes.items():
            m.training = training
        for w, flag in flags.items():
            w.requires_grad_(flag)
    sens = contribution_sensitivity(c, neighbour) if c is not None else None
    return ImportanceStatistics(totals, groups, "normalize" if normalize else c, sens, neighbour, public, seen,
                                granularity)


def _probe(model, loss, batch, b, tape, contrib, mask_key) -> None:
    """Each half of the batch run alone must give every example the contribution it has in
    ``contrib`` (the whole batch's, or with ``isolate`` each example's own), to 1e-5 of that
    example's own largest entry (each example is clipped on its own, so faint mixing must be
    small relative to it). With ``isolate`` it checks the layout: a first axis that is not the
    examples' (a sequence-first model) makes the halves differ from the rows run one by one."""
    h = (b + 1) // 2
    mask = batch.get(mask_key) if (mask_key is not None and isinstance(batch, Mapping)) else None
    for sl, n in ((slice(0, h), h), (slice(h, b), b - h)):
        part = _slice_batch(batch, None if mask is None else torch.as_tensor(mask), b, sl)
        if part is None:
            raise ValueError("cannot check that examples stay apart: pass batches that are tensors or mappings of tensors")
        alone = _backward(model, loss, part, n, tape)
        for name, whole in contrib.items():
            if not _close_per_example(alone[name], whole[sl]):
                raise ValueError(
                    f"layer {name!r}: an example's gradient changes with the other examples in its batch (a layer "
                    "or the loss mixes examples); its contribution would not be bounded by the clipping norm"
                )


def _accumulate(totals, contrib, b, c, normalize, grid) -> None:
    """Scale each example's contribution (all layers together) and add it exactly (see the module docstring)."""
    if c is None:
        for name, v in contrib.items():
            totals[name].add_(v.sum(dim=0).to(torch.float64))
        return
    fro2 = torch.zeros(b, dtype=torch.float64, device=next(iter(contrib.values())).device)
    entries = 0
    for v in contrib.values():
        w = v.reshape(b, -1)
        entries += w.shape[1]
        for e0 in range(0, w.shape[1], _CHUNK_ENTRIES):
            part = w[:, e0:e0 + _CHUNK_ENTRIES].to(torch.float64)  # exact; squares of float32 are exact
            fro2 += (part * part).sum(dim=1)
    if not bool(torch.isfinite(fro2).all()):
        raise ValueError("non-finite gradients reached the importance scores")
    gamma = entries * 2.0**-53 / (1.0 - entries * 2.0**-53)
    bound = torch.sqrt(fro2 * (1.0 + 2.0 * gamma)) * (1.0 + 2.0**-40)  # ≥ each example's norm
    target = c * _CLIP_MARGIN
    factors, _ = clip_factors(bound, target, target, normalize=normalize)
    scale = (factors / grid).to(torch.float64)  # shape: (b,)
    for name, v in contrib.items():
        units = v.to(torch.float64).mul_(scale.view(-1, *([1] * (v.ndim - 1)))).round_()  # integers ≤ 2^k each
        totals[name].add_(units.sum(dim=0).mul_(grid))  # exact: multiples of g, far below 2⁵³·g
