"""Keeping examples apart: layouts refused up front, batches split into examples, and the
batch-independence probe (see :mod:`._stats`; the model's state is put back by :mod:`._guard`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # annotations only
    from ._collector import _Collector

__all__ = []

_ACTIVE: set[int] = set()  # ids of every module inside a model being collected
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def exclusive(model: nn.Module):
    """One statistics or importance collection at a time per module: each installs hooks that
    record every forward pass through its targets, so two at once (two threads, or one on a
    model and one on a wrapper around it) would record each other's batches. Every module
    inside ``model`` is claimed, so any overlap is refused."""
    ids = {id(m) for m in model.modules()}
    with _ACTIVE_LOCK:
        if ids & _ACTIVE:
            raise ValueError("another statistics or importance collection is running on this model (or on one "
                             "that shares its modules); its hooks would record this one's batches (run them one "
                             "after the other)")
        _ACTIVE.update(ids)
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.difference_update(ids)


#: Tolerance of the batch-independence probe, relative to the largest activation. On this
#: project's CPU, MiniLM's activations of a half batch run alone are bit-identical to theirs in
#: the whole batch; 1e-5 leaves room for BLAS kernels that block differently by batch size.
_PROBE_RTOL = 1e-5
#: Modules whose batch_first=False means activations of shape (T, B, d) inside them.
#: (nn.Transformer*Layer hold an nn.MultiheadAttention built with their batch_first.)
_SEQUENCE_FIRST = (nn.MultiheadAttention, nn.RNNBase, nn.Transformer)


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


_NOT_SPLIT = (np.ndarray, list, tuple, Mapping)  # containers isolation cannot split generically
#: What an isolated example may receive whole from its batch: values that cannot hold examples.
_WHOLE = (str, bytes, int, float, bool, type(None), torch.dtype, torch.device)
_NOT_TENSORS = ("isolate=True splits batches whose per-example values are torch tensors; {} is a {} "
                "(convert it with torch.as_tensor, e.g. a tokenizer's return_tensors='pt')")


def _slice_batch(batch: object, mask: torch.Tensor | None, b: int, part: slice, strict: bool = False):
    """The examples ``part`` of ``batch`` (its tensors with first axis ``b``), or None if it
    cannot be sliced generically. ``strict``: refuse arrays and lists inside the batch (they
    would be passed whole, every example with the whole batch)."""
    if strict and isinstance(batch, np.ndarray):
        raise ValueError(_NOT_TENSORS.format("the batch", type(batch).__name__))
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0 or batch.shape[0] != b:
            raise ValueError(f"the batch tensor has shape {tuple(batch.shape)}, but the batch has {b} examples: "
                             "statistics need them on the first axis")
        return batch[part]
    if isinstance(batch, (tuple, list)):
        parts = []
        for i, v in enumerate(batch):
            if strict and not (isinstance(v, _WHOLE) or (isinstance(v, torch.Tensor) and v.ndim >= 1)):
                raise ValueError(_NOT_TENSORS.format(f"batch item {i}", type(v).__name__))
            parts.append(_slice_batch(v, mask, b, part) if isinstance(v, torch.Tensor) else v)
        return type(batch)(parts)
    if isinstance(batch, Mapping):
        out = {}
        for key, v in batch.items():
            if strict and not (isinstance(v, _WHOLE) or (isinstance(v, torch.Tensor) and v.ndim >= 1)):
                # an allowlist: any other object (a dataclass, a deque, a 0-d tensor) could hold
                # the whole batch and would reach every "isolated" example
                raise ValueError(_NOT_TENSORS.format(f"batch entry {key!r}", type(v).__name__))
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


def examples_alone(batch, mask_key: str | None, b: int):
    """Each example of ``batch`` as a batch of one, trimmed to its own tokens (right padding)."""
    mask = batch.get(mask_key) if (mask_key is not None and isinstance(batch, Mapping)) else None
    mask = None if mask is None else torch.as_tensor(mask)
    for i in range(b):
        part = _slice_batch(batch, mask, b, slice(i, i + 1), strict=True)
        if part is None:
            raise ValueError("isolate=True needs batches that are tensors, tuples or mappings of tensors (examples first)")
        if mask is None:
            yield part
            continue
        if torch.as_tensor(part[mask_key]).shape[0] != 1:
            raise ValueError(f"{mask_key!r} did not split into one row per example")
        keep = mask[i].bool()
        n = int(keep.sum())
        if not bool(keep[:n].all()):
            raise ValueError("isolate=True trims padding from the right: pass right-padded batches (or isolate=False)")
        t = mask.shape[1]
        yield {k: (v[:, :n] if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[1] == t else v)
               for k, v in part.items()}


def _check_layout(model: nn.Module) -> None:
    """Refuse modules known to put the sequence first (their linears see (T, B, d))."""
    for name, m in model.named_modules():
        if isinstance(m, _SEQUENCE_FIRST) and not getattr(m, "batch_first", True):
            raise ValueError(
                f"module {name or type(m).__name__!r} ({type(m).__name__}) has batch_first=False: its "
                "activations put the sequence first and would mix examples; build it with batch_first=True"
            )


def check_unmasked(batch: object, mask_key: str | None) -> None:
    """With ``mask_key=None``, refuse a mapping batch that carries a mask under another name:
    its padding would enter the statistics (a right-padded batch moved a Gram by 2.65·C)."""
    if mask_key is None and isinstance(batch, Mapping):
        masks = [k for k in batch if isinstance(k, str) and "mask" in k.lower()]
        if masks:
            raise ValueError(
                f"mask_key=None, but the batch has {masks[0]!r}: padding would count as tokens. Pass "
                f"mask_key={masks[0]!r} (or remove the entry if every token really counts)"
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
        col.guard.reset()
        run(model, inputs)
        outs.append(col.capture)
    col.capture = None
    for name, whole in outs[0].items():
        for (sl, _), alone in zip(parts, (outs[1].get(name), outs[2].get(name))):
            ref = whole[sl]
            if alone is None or alone.shape != ref.shape or not _close_per_example(alone, ref):
                raise ValueError(
                    f"group {name!r}: an example's activations change with the other examples in its batch "
                    "(a layer mixes examples, e.g. batch statistics or a sequence-first layout); its "
                    "contribution would not be bounded by the clipping norm. Use a model that processes "
                    "examples independently (eval mode, batch_first=True)"
                )


def _close_per_example(alone: torch.Tensor, ref: torch.Tensor) -> bool:
    """Every example of ``alone`` within ``_PROBE_RTOL`` of its own largest entry in ``ref``
    (a batch-wide scale would let faint mixing into small examples pass beside a large one)."""
    if ref.numel() == 0:
        return True
    dims = tuple(range(1, ref.ndim))
    err = (alone - ref).abs().amax(dim=dims) if dims else (alone - ref).abs()
    scale = ref.abs().amax(dim=dims) if dims else ref.abs()
    return bool((err <= _PROBE_RTOL * scale + 1e-30).all())


def batch_layout(batch, mask_key: str | None, examples) -> tuple[torch.Tensor | None, int]:
    """A batch's token mask (shape (B, T), or ``None``) and its number of examples B (both
    collectors: the mask must have one row per example)."""
    check_unmasked(batch, mask_key)
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
    return mask, b
