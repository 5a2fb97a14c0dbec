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

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .._progress import progress
from .._validation import check_choice, check_positive
from ..mechanisms import NEIGHBOURS, contribution_sensitivity
from ._collector import _Collector
from ._coordinates import Coordinates, coordinates_for
from ._guard import StateGuard
from ._isolation import _check_layout, _probe, batch_layout, examples_alone, exclusive
from ._statistic import ActivationStatistics, GroupStatistic
from ._targets import LayerGroup

__all__ = ["Coordinates", "GroupStatistic", "ActivationStatistics", "collect_statistics", "coordinates_for"]


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
    prior: ActivationStatistics | Mapping[str, torch.Tensor] | str | None = "auto",
    prior_ridge: float = 0.1,
    tokenizer: object = None,
    route: str = "auto",
    mask_key: str | None = "attention_mask",
    forward: Callable[[nn.Module, object], object] | None = None,
    matmul_dtype: torch.dtype = torch.float32,
    total: int | None = None,
    show_progress: bool = False,
    examples: Callable[[object], int] | None = None,
    public: bool = False,
    check_independence: bool = True,
    isolate: bool = True,
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
    prior : "auto", ActivationStatistics, mapping of str to Tensor, or None, default "auto"
        "auto": with a ``tokenizer``, the data-free random-token prior
        (:func:`random_token_batches`, 256 sequences of 24 tokens, fixed seed: public), so the
        release measures what the prior does not know and a noise-limited release falls back
        to the prior's whitening instead of the plain SVD; without a tokenizer (non-text
        models), no prior. ``None``: no prior. Otherwise:
        public prior Grams in row-space coordinates, one per group (see :func:`coordinates_for`).
        Must come from public or synthetic input, never from the private corpus: statistics
        must have been collected with ``public=True`` (others are refused); a mapping of
        tensors is the caller's declaration that they are public. The prior ships with the
        release (as its preconditioner).
    prior_ridge : float, default 0.1
        λ of the preconditioner.
    tokenizer : Hugging Face tokenizer, optional
        For ``prior="auto"``: the model's tokenizer, from which random token sequences are
        drawn (its vocabulary and special tokens only; no corpus). The prior's pass uses
        ``forward``, ``mask_key`` and ``route`` as given here, in whole batches (public input:
        nothing to isolate).
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
        only for a model whose examples are known to stay apart. With ``isolate`` it runs only
        on batches without a mask, where it checks that the rows split off are the examples.
    isolate : bool, default True
        Run every example alone, trimmed to its own tokens (right-padded batches; a batch
        without a mask is split by rows): its contribution is then a function of that example
        only, bit for bit: every forward pass starts from the model's state as it was before
        the collection (module, class and global namespaces and what they hold are put back
        before each pass, with a warning naming what a pass changed; see
        docs/threat_model.md for what it cannot reach). ``False`` runs whole batches (faster), where an example's float32
        activations can change in their last bits with its batch-mates' padded length, and
        its grid-rounded contribution with them: the sensitivity then holds up to that drift
        (about 1e-5·C measured by this project's audit).

    Returns
    -------
    ActivationStatistics
    """
    c, normalize = _check_clip(clip)
    check_choice(neighbour, "neighbour", NEIGHBOURS)
    if matmul_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"matmul_dtype must be torch.float32 or torch.float64, got {matmul_dtype!r}")
    groups = tuple(groups)
    if not groups:
        raise ValueError("groups is empty: nothing to collect")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"group names must be unique, got {names}")
    if isinstance(prior, str):
        check_choice(prior, "prior", ("auto",))
        prior = None if tokenizer is None else collect_statistics(
            model, random_token_batches(tokenizer), groups, clip=None, prior=None, route=route,
            mask_key=mask_key, forward=forward, public=True, check_independence=False, isolate=False)
    elif tokenizer is not None:
        raise ValueError("tokenizer= is used only with prior='auto' (it builds the prior)")
    priors = _priors(prior, groups)
    coords = {g.name: coordinates_for(model, g, prior=priors.get(g.name), prior_ridge=prior_ridge, route=route)
              for g in groups}
    if not isinstance(public, bool):
        raise TypeError(f"public must be a bool, got {public!r}")
    if examples is not None and not callable(examples):
        raise TypeError(f"examples must be a callable batch -> int, got {type(examples).__name__}")
    if not isinstance(isolate, bool):
        raise TypeError(f"isolate must be a bool, got {isolate!r}")
    _check_layout(model)
    col = _Collector(model, groups, coords, c, normalize, matmul_dtype, neighbour)
    run = forward or _default_forward
    modes = {m: m.training for m in model.modules()}
    probed: set[int] = set()  # the batch sizes probed so far
    with exclusive(model):  # one collection per model at a time: hooks record every forward pass
        _run(col, run, model, batches, total, show_progress, mask_key, examples, check_independence, probed,
             modes, isolate)
    sens = None
    if c is not None:
        sens = contribution_sensitivity(c, neighbour)  # rounded up
    for st in col.stats.values():
        st.clip, st.sensitivity = c, sens
    return ActivationStatistics(col.stats, "normalize" if normalize else c, neighbour, public)


def _run(col, run, model, batches, total, show_progress, mask_key, examples, check_independence, probed,
         modes, isolate) -> None:
    """The pass over the corpus with the hooks installed (removed, and training flags restored,
    always). Every forward pass starts from the model's state as it was before the first one
    (:class:`._guard.StateGuard`): nothing one example leaves behind reaches the next."""
    col.install()
    guard = None
    try:
        model.eval()  # batch normalisation on running statistics, no dropout: examples stay apart
        guard = col.guard = StateGuard(model, (run,))
        with torch.inference_mode():
            for batch in progress(batches, total=total or 0, desc="statistics", enabled=show_progress):
                mask, b = batch_layout(batch, mask_key, examples)
                # batched, the probe checks that examples stay apart; isolated without a mask, that
                # the rows split off are the examples (a sequence-first model would fail it)
                if check_independence and b >= 2 and b not in probed and (not isolate or mask is None):
                    _probe(col, run, model, batch, mask, b)
                    probed.add(b)
                if isolate:  # each example alone, trimmed to its own tokens: nothing to mix
                    for one in examples_alone(batch, mask_key, b):
                        col.mask = None if mask is None else torch.as_tensor(one[mask_key])
                        col.examples = 1
                        col.step += 1
                        guard.reset()
                        run(model, one)
                    continue
                col.mask, col.examples = mask, b
                col.step += 1
                guard.reset()
                run(model, batch)
        guard.close()
        guard = None
    finally:
        if guard is not None:  # an error: put the state back, say nothing more
            guard.restore()
        col.remove()
        for m, training in modes.items():
            m.training = training


def _check_clip(clip: object) -> tuple[float | None, bool]:
    """(C, normalise) from ``collect_statistics``' ``clip``."""
    if clip is None:
        return None, False
    if clip == "normalize":
        return 1.0, True
    if isinstance(clip, str):
        raise ValueError(f"clip must be a positive number, 'normalize' or None, got {clip!r}")
    c = check_positive(clip, "clip")
    if not 1e-150 <= c <= 1e150:
        raise ValueError(f"clip={clip!r} is outside the range in which the sums are exact (1e-150 to 1e150)")
    return c, False


def random_token_batches(tokenizer, *, n: int = 256, length: int = 24, batch_size: int = 64,
                         generator: torch.Generator | None = None) -> list[dict]:
    """Random token sequences ([CLS] w₁ … w_L [SEP], wᵢ uniform over ordinary word pieces).

    They depend only on the tokenizer and ``generator`` (default: a fixed seed, so the prior is
    reproducible), never on any corpus, so statistics of a model on them are public: the
    data-free prior of :func:`collect_statistics` (``prior="auto"``), at no privacy cost.

    Parameters
    ----------
    tokenizer : Hugging Face tokenizer
        Needs ``vocab_size``, ``all_special_ids``, ``cls_token_id`` and ``sep_token_id``.
    n, length, batch_size : int
        Number of sequences, tokens between [CLS] and [SEP], sequences per batch.
    generator : torch.Generator, optional

    Returns
    -------
    list of dict
        Batches with ``input_ids``, ``attention_mask`` (all ones) and ``token_type_ids``,
        each of shape (batch, length + 2).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(12345)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.vocab_size
    # BERT vocabularies start with [PAD], [unused*] and special tokens: skip the first 1000 ids.
    low = 1000 if vocab > 2000 else 0
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        ids = torch.randint(low, vocab, (b, length + 2), generator=generator)
        for s in special:
            ids[ids == s] = low
        ids[:, 0] = tokenizer.cls_token_id
        ids[:, -1] = tokenizer.sep_token_id
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.zeros_like(ids)})
    return out


def _priors(prior, groups) -> dict[str, torch.Tensor]:
    """Each group's public prior Gram (row-space coordinates); a statistic must be declared public."""
    priors: dict[str, torch.Tensor] = {}
    if prior is None:
        return priors
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
    return priors
