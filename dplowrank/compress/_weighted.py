"""Importance-weighted (sparsity-aware) low-rank factors and mixed-rank fine-tuning (LPAF).

LPAF (Ren & Zhu, "Low-rank prune-and-factorize for language model compression",
arXiv:2306.14152) observes that first-order pruning leaves weights of low rank, initialises
the factors with a *sparsity-aware* SVD that weighs each weight by its importance, and
recovers with *mixed-rank* fine-tuning. The paper's body was not available to this project;
what is implemented is our formulation of those three steps, stated precisely:

* **Pruning** (optional, ``sparsity``): the fraction of weights with the lowest importance
  get weight 0 (they are free to take any value in the factorisation: "pruned").
* **Weighted factorisation**: minimise Σ_ij Ω_ij (W_ij − (UV)_ij)² over rank r, with
  Ω = importance / max(importance) ∈ [0, 1]. It has no closed form (Srebro & Jaakkola,
  "Weighted low-rank approximations", ICML 2003), so

  1. the *separable* problem with Ω ≈ a·bᵀ (a, b the row and column sums of Ω, the best
     rank-one fit of a non-negative Ω up to scale) is solved exactly: with D_a = diag(√a),
     D_b = diag(√b), the optimum is D_a⁻¹·SVD_r(D_a W D_b)·D_b⁻¹ (Eckart–Young in the
     weighted norm);
  2. Srebro & Jaakkola's EM steps X ← SVD_r(Ω ⊙ W + (1 − Ω) ⊙ X) refine it; each step does
     not increase the weighted error (their §3); the start is the better of the separable
     solution and, separately, the plain SVD (the better result of the two is kept);
  3. alternating weighted least squares (each row of U, then each column of V, exactly)
     finishes the descent, which EM alone makes slowly when most weights are small.
     Every step is kept only if it lowers the weighted error, so the result is never worse
     than the plain SVD in the weighted norm.

* **Mixed-rank fine-tuning** (:class:`MixedRankLinear`, :func:`mixed_rank_finetune`): each
  factorised layer runs its dense original with probability p (annealed linearly from
  ``p_start`` to 0) and its factors otherwise, so early steps train the factors inside a
  network that is still mostly dense. Fine-tuning on a *private* corpus is not private by
  itself: use DP-SGD (opacus) and compose its cost with the releases
  (:mod:`dplowrank.accounting`), or fine-tune on public text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .._random import resolve_generator
from .._validation import check_int, check_positive

__all__ = ["weighted_factors", "weighted_error", "prune_mask", "MixedRankLinear", "mixed_rank_finetune"]


def _check_pair(weight: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError("weight must be a Tensor of shape (d_out, d_in)")
    if not isinstance(importance, torch.Tensor) or importance.shape != weight.shape:
        raise ValueError(f"importance must be a Tensor of the weight's shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    imp = importance.detach().to(device=w.device, dtype=torch.float64)
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise ValueError("importance must be finite and non-negative")
    return w, imp


def prune_mask(importance: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for the weights kept: all but the ``sparsity`` fraction with the lowest importance."""
    s = check_positive(sparsity, "sparsity", allow_zero=True)
    if s >= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    flat = importance.reshape(-1)
    drop = int(s * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        keep[torch.argsort(flat)[:drop]] = False
    return keep.view(importance.shape)


def weighted_error(weight: torch.Tensor, approx: torch.Tensor, importance: torch.Tensor) -> float:
    """Σ Ω_ij (W − Ŵ)²_ij with Ω = importance (the objective of :func:`weighted_factors`, unnormalised)."""
    w, imp = _check_pair(weight, importance)
    return float((imp * (w - approx.to(w)) ** 2).sum())


def _svd_r(x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return u[:, :r] * s[:r], vh[:r]


def weighted_factors(weight: torch.Tensor, rank: int, importance: torch.Tensor, *, iters: int = 20,
                     als: int | None = None, sparsity: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (left (d_out, r), right (r, d_in)) minimising the importance-weighted error.

    Parameters
    ----------
    weight : Tensor of shape (d_out, d_in)
    rank : int
    importance : Tensor of shape (d_out, d_in)
        Non-negative scores (e.g. :func:`collect_importance` or a released, denoised one).
        Constant importance gives the plain truncated SVD.
    iters : int, default 20
        EM refinement steps (0: the separable closed form only).
    als : int, optional
        Alternating weighted least-squares steps after EM (each row of U, then each column
        of V, solved exactly; cost 2·d_out·d_in·r² per step). Each step is kept only if it
        lowers the weighted error. Default: 10 when d_out·d_in·r² ≤ 10⁹ (a few seconds on
        two cores), else 0 (EM only).
    sparsity : float in [0, 1), default 0
        Prune this fraction of the least important weights first (weight 0).

    Returns
    -------
    (left, right) : float64 Tensors
    """
    w, imp = _check_pair(weight, importance)
    r = check_int(rank, "rank", low=1, high=min(w.shape))
    n_iter = check_int(iters, "iters", low=0, high=1000)
    if sparsity:
        imp = imp * prune_mask(imp, sparsity)
    top = float(imp.max())
    if top <= 0.0:  # no information: the data-free factorisation
        return _svd_r(w, r)
    omega = imp / top
    a, b = omega.sum(dim=1), omega.sum(dim=0)
    # rows or columns with no weight at all: a tiny floor keeps D invertible (their values are free)
    tiny = 1e-12 * float(omega.sum()) / omega.numel()
    da, db = (a + tiny).sqrt(), (b / float(b.sum()) * omega.shape[1] + tiny).sqrt()
    left, right = _svd_r(da[:, None] * w * db[None, :], r)
    starts = [(left / da[:, None], right / db[None, :]), _svd_r(w, r)]
    n_als = (10 if w.shape[0] * w.shape[1] * r * r <= 1e9 else 0) if als is None else \
        check_int(als, "als", low=0, high=1000)
    results = [_descend(w, omega, f, r, n_iter, n_als) for f in starts]
    return min(results, key=lambda item: item[1])[0]


def _descend(w, omega, start, r, n_iter, n_als):
    """EM, then alternating least squares, from ``start``; returns (factors, weighted error)."""
    def error(f):
        return float((omega * (w - f[0] @ f[1]) ** 2).sum())

    best, err = start, error(start)
    x = best[0] @ best[1]
    for _ in range(n_iter):
        cand = _svd_r(omega * w + (1.0 - omega) * x, r)
        cand_err = error(cand)
        if cand_err >= err:
            break
        best, err, x = cand, cand_err, cand[0] @ cand[1]
    left, right = best
    for _ in range(n_als):
        left = _weighted_rows(w, omega, right)  # each row of U: a weighted least squares
        right = _weighted_rows(w.T, omega.T, left.T).T  # each column of V likewise
        cand_err = error((left, right))
        if cand_err < err:
            best, done = (left, right), cand_err >= err * (1.0 - 1e-9)
            err = cand_err
            if done:
                break
        else:
            break
    return best, err


def _weighted_rows(w: torch.Tensor, omega: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """argmin_U Σ_ij Ω_ij (W − U R)²_ij row by row: (R diag(Ω_i) Rᵀ) u_i = R diag(Ω_i) w_i."""
    r = right.shape[0]
    out = torch.empty(w.shape[0], r, dtype=w.dtype)
    ridge = 1e-12 * float((right * right).sum()) / max(r, 1)
    rows = max(1, 2**24 // max(1, r * w.shape[1]))  # bounded scratch: rows × r × d entries
    eye = torch.eye(r, dtype=w.dtype)
    for i0 in range(0, w.shape[0], rows):
        om = omega[i0:i0 + rows]  # shape: (b, d)
        weighted = om[:, None, :] * right[None]  # shape: (b, r, d)
        gram = weighted @ right.T + ridge * eye  # shape: (b, r, r)
        rhs = (weighted @ w[i0:i0 + rows, :, None]).squeeze(-1)
        out[i0:i0 + rows] = torch.linalg.solve(gram, rhs)
    return out


class MixedRankLinear(nn.Module):
    """A factorised layer that runs its dense original with probability ``p`` while training.

    Parameters
    ----------
    low_rank : nn.Module
        The factorised layer (e.g. :class:`LowRankLinear`), trained.
    dense : nn.Linear
        The original layer, frozen.
    generator : torch.Generator, optional
        CPU source of the coin flips (default: seeded from the OS).

    Notes
    -----
    In eval mode, or with ``p = 0``, it is exactly ``low_rank``.
    """

    def __init__(self, low_rank: nn.Module, dense: nn.Linear, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.low_rank, self.dense = low_rank, dense
        for prm in self.dense.parameters():
            prm.requires_grad_(False)
        self.p = 0.0
        self._gen, _ = resolve_generator(generator, "cpu")
        self.in_features, self.out_features = dense.in_features, dense.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0.0 and float(torch.rand((), generator=self._gen)) < self.p:
            return self.dense(x)
        return self.low_rank(x)


def mixed_rank_finetune(model: nn.Module, layers: dict, originals: dict, batches: Iterable, *,
                        loss: Callable[[nn.Module, object], torch.Tensor], steps: int, lr: float = 1e-4,
                        p_start: float = 0.5, generator: torch.Generator | None = None) -> list[float]:
    """Fine-tune the factorised ``layers`` of ``model`` with mixed-rank training; return the losses.

    ``layers`` / ``originals``: the new and the replaced modules by name (as in
    :class:`CompressionResult`). Each step draws the next batch (cycling), computes
    ``loss(model, batch)`` (a scalar or per-example losses, averaged), and takes an Adam step
    on the factors only; the dense path's probability falls linearly from ``p_start`` to 0
    over ``steps``. The model is left in eval mode with ``layers`` in place.
    Not private by itself (see the module docstring).
    """
    n = check_int(steps, "steps", low=1)
    check_positive(lr, "lr")
    p0 = check_positive(p_start, "p_start", allow_zero=True)
    if p0 > 1.0:
        raise ValueError(f"p_start must lie in [0, 1], got {p_start!r}")
    data = list(batches)
    if not data:
        raise ValueError("batches is empty")
    for name in layers:
        if not isinstance(originals.get(name), nn.Linear):
            raise ValueError(f"originals[{name!r}] must be the replaced nn.Linear")
    gen, _ = resolve_generator(generator, "cpu")
    mixed = {name: MixedRankLinear(layers[name], originals[name], generator=gen) for name in layers}
    _swap(model, mixed)
    frozen = {p: p.requires_grad for p in model.parameters()}
    params = [p for m in layers.values() for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=float(lr))
    history = []
    try:
        model.train()
        for step in range(n):
            p_dense = p0 * (1.0 - step / n)
            for m in mixed.values():
                m.p = p_dense
            value = loss(model, data[step % len(data)])
            value = value.mean() if value.ndim else value
            if value.requires_grad:  # every layer may have taken its dense path this step
                opt.zero_grad()
                value.backward()
                opt.step()
            history.append(float(value.detach()))
    finally:
        model.eval()
        _swap(model, layers)
        for prm, flag in frozen.items():
            prm.requires_grad_(flag)
    return history


def _swap(model: nn.Module, layers: dict) -> None:
    for name, new in layers.items():
        *path, leaf = name.split(".")
        parent = model
        for part in path:
            parent = getattr(parent, part)
        setattr(parent, leaf, new)
