"""Evaluation of a compressed model (analysis tools: they read held-out data and are not private)."""

from __future__ import annotations

import math

import torch

from ._compress import CompressionResult
from ._stats import ActivationStatistics

__all__ = ["output_errors", "embedding_agreement"]


def output_errors(result: CompressionResult, heldout: ActivationStatistics) -> dict[str, float]:
    """Relative output error ‖(W − Ŵ)X‖²_F / ‖WX‖²_F of every compressed layer on held-out inputs.

    Parameters
    ----------
    result : CompressionResult
    heldout : ActivationStatistics
        Unclipped statistics (``clip=None``) of the *original* model on held-out examples,
        for the same groups (collect them before compressing).

    Returns
    -------
    dict of str to float
        By module name. Non-private: for evaluation only.
    """
    out = {}
    for g in result.groups:
        if g.name not in heldout.groups:
            raise ValueError(f"the held-out statistics have no entry for group {g.name!r}")
        st = heldout[g.name]
        k = st.row_space_gram()  # shape: (ρ, ρ)
        q = st.coordinates.basis
        for n in g.members:
            w = result.originals[n].weight.detach().to(torch.float64)
            w_hat = result.layers[n].dense_weight().detach().to(torch.float64)
            diff, ref = w - w_hat, w
            if q is not None:
                diff, ref = diff @ q, ref @ q
            num = torch.sum((diff @ k) * diff)
            den = torch.sum((ref @ k) * ref)
            out[n] = float(num / den) if float(den) > 0 else float("nan")
    return out


def embedding_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How close the compressed model's embeddings are to the original's on the same texts.

    Parameters
    ----------
    reference, candidate : Tensor of shape (n, d)
        Embeddings of the same n ≥ 2 texts by the original and the compressed model.

    Returns
    -------
    dict
        ``cosine``: mean cosine similarity of paired embeddings; ``neighbour_agreement``:
        fraction of texts whose nearest other text (by cosine) is the same under both models.
    """
    a = torch.as_tensor(reference, dtype=torch.float64)
    b = torch.as_tensor(candidate, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"reference and candidate must both have shape (n >= 2, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-300)
    b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-300)
    cos = float((a * b).sum(1).mean())
    sa, sb = a @ a.T, b @ b.T
    sa.fill_diagonal_(-math.inf)
    sb.fill_diagonal_(-math.inf)
    agree = float((sa.argmax(1) == sb.argmax(1)).to(torch.float64).mean())
    return {"cosine": cos, "neighbour_agreement": agree}

