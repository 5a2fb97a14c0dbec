"""Keeping examples apart: layouts refused up front, the model's state checked, and the
batch-independence probe (see :mod:`._stats`)."""

from __future__ import annotations

import math

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


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` (what ``state_dict`` would save), by name."""
    out = {f"param:{n}": p for n, p in model.named_parameters(remove_duplicate=False)}
    out.update({f"buffer:{n}": b for n, b in model.named_buffers(remove_duplicate=False)})
    return out


def _state(model: nn.Module) -> dict[str, object]:
    """A copy of every parameter and buffer, and of every public module attribute that could
    carry data from one forward pass to the next (tensors, numbers, strings, and tuples or
    lists of them): a range observer or a recurrent state kept as a plain attribute would
    otherwise carry one example into the next example's contribution."""
    out: dict[str, object] = {name: t.detach().clone() for name, t in _tensors(model).items()}
    out.update(_attributes(model))
    return out


_PLAIN = (int, float, bool, str, bytes, type(None))


def _attributes(model: nn.Module) -> dict[str, object]:
    """``attr:<module>.<name>`` → a copy of each public plain attribute of every module."""
    out: dict[str, object] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for key, v in vars(m).items():
            if key.startswith("_") or key == "training":
                continue
            name = f"attr:{mname}.{key}" if mname else f"attr:{key}"
            if isinstance(v, torch.Tensor):
                out[name] = v.detach().clone()
            elif isinstance(v, _PLAIN):
                out[name] = v
            elif isinstance(v, (tuple, list)) and all(isinstance(x, (torch.Tensor, *_PLAIN)) for x in v):
                out[name] = tuple(x.detach().clone() if isinstance(x, torch.Tensor) else x for x in v)
    return out


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _same(a, b.detach())
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
                and all(_same_value(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


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
    changed += [name.split(":", 1)[1] for name in before if name not in now and not name.startswith("attr:")]
    attrs = _attributes(model)
    moved = [name for name in set(attrs) | {n for n in before if n.startswith("attr:")}
             if name not in before or name not in attrs or not _same_value(before[name], attrs[name])]
    if moved:
        _restore_attributes(model, before, moved)
        raise ValueError(
            f"the model changed its attributes {sorted(n.split(':', 1)[1] for n in moved)[:5]} while computing "
            "statistics: state kept from one forward pass to the next (an observer, a recurrent state) would "
            "carry one example into another's contribution. They were restored; statistics need a model whose "
            "forward pass keeps no state"
        )
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


def _restore_attributes(model: nn.Module, before: dict[str, object], names) -> None:
    """Put back (or delete) the attributes ``names`` as they were in ``before``."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in names:
        path = name.split(":", 1)[1]
        mname, _, key = path.rpartition(".")
        m = modules.get(mname)
        if m is None:
            continue
        if name in before:
            v = before[name]
            object.__setattr__(m, key, list(v) if isinstance(getattr(m, key, None), list) else v)
        elif key in vars(m):
            delattr(m, key)


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
