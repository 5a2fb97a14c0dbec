"""``LowRankLinear``: y = U (V x) + b as two thin linears, in-place replacement, save and load.

A rank-r factorisation Ŵ = U V (U of shape (d_out, r), V of shape (r, d_in)) of a linear
layer's weight costs r(d_in + d_out) parameters instead of d_in·d_out. Members of a
shared-input group compressed jointly (Peng et al., arXiv:2402.16319) share one ``down``
module (V), which is stored once.

Files (:func:`save_compressed`) are a JSON description plus an ``.npz`` of tensors, read
back with ``allow_pickle=False``: no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_bytes

__all__ = ["LowRankLinear", "replace_linears", "save_compressed", "load_compressed", "count_parameters"]

_FORMAT = "dplowrank.compressed_model"
_FORMAT_VERSION = 1
_CONFIG = "compression.json"
_WEIGHTS = "weights.npz"


class LowRankLinear(nn.Module):
    """A linear layer stored as two thin ones: x ↦ up(down(x)), down without bias.

    Parameters
    ----------
    in_features, out_features : int
    rank : int
        r ≥ 1, the inner dimension.
    bias : bool, default True
        Whether ``up`` has a bias (the original layer's bias is kept there).
    down : nn.Linear, optional
        A ``Linear(in_features, rank, bias=False)`` to use (and share) instead of a new one.
    device, dtype : optional
        For the new parameters.

    Attributes
    ----------
    down : nn.Linear
        V, weight of shape (rank, in_features).
    up : nn.Linear
        U, weight of shape (out_features, rank), and the bias.

    Examples
    --------
    >>> lin = nn.Linear(8, 6)
    >>> low = LowRankLinear.from_linear(lin, 6)      # full rank: the same map
    >>> x = torch.randn(3, 8)
    >>> bool(torch.allclose(low(x), lin(x), atol=1e-5))
    True
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = True,
                 down: nn.Linear | None = None, device=None, dtype=None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if down is None:
            down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        elif not isinstance(down, nn.Linear) or down.bias is not None or tuple(down.weight.shape) != (rank, in_features):
            raise ValueError(
                f"down must be nn.Linear({in_features}, {rank}, bias=False), got {down!r}"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = down
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(cls, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None = None, *,
                     down: nn.Linear | None = None, dtype: torch.dtype | None = None) -> "LowRankLinear":
        """The layer x ↦ left @ (right @ x) + bias.

        Parameters
        ----------
        left : Tensor of shape (out_features, rank)
        right : Tensor of shape (rank, in_features)
            Ignored when ``down`` (which then holds it) is given.
        bias : Tensor of shape (out_features,), optional
        down : nn.Linear, optional
            A shared down-projection already holding ``right``.
        dtype : torch.dtype, optional
            Parameter dtype (default: ``left``'s).
        """
        if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
            raise ValueError(f"left (out, r) and right (r, in) do not chain: {tuple(left.shape)}, {tuple(right.shape)}")
        dtype = dtype or left.dtype
        out_f, r = left.shape
        layer = cls(right.shape[1], out_f, r, bias=bias is not None, down=down, device=left.device, dtype=dtype)
        with torch.no_grad():
            if down is None:
                layer.down.weight.copy_(right)
            layer.up.weight.copy_(left)
            if bias is not None:
                layer.up.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """Truncated SVD of ``linear.weight`` at ``rank`` (data-free), bias kept."""
        w = linear.weight.detach().to(torch.float64)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = min(rank, s.shape[0])
        return cls.from_factors((u[:, :r] * s[:r]).to(linear.weight.dtype), vh[:r].to(linear.weight.dtype),
                               None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        """Ŵ = U V, Tensor of shape (out_features, in_features)."""
        return self.up.weight @ self.down.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.up.bias is not None}"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    mod = model
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def replace_linears(model: nn.Module, layers: Mapping[str, nn.Module]) -> nn.Module:
    """Replace the modules named in ``layers`` (``{name: new module}``) in place; return ``model``.

    Raises ``ValueError`` (and changes nothing) when a name is not an ``nn.Linear`` (or
    :class:`LowRankLinear`) of ``model`` or a replacement's shape differs.
    """
    mods = dict(model.named_modules())
    for name, new in layers.items():
        old = mods.get(name)
        if not isinstance(old, (nn.Linear, LowRankLinear)):
            raise ValueError(f"{name!r} is not a linear layer of the model (found {type(old).__name__})")
        shape = (getattr(new, "in_features", None), getattr(new, "out_features", None))
        if shape != (old.in_features, old.out_features):
            raise ValueError(f"replacement for {name!r} maps {shape}, the layer maps {(old.in_features, old.out_features)}")
    for name, new in layers.items():
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, new)
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters of ``model`` (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _layout(model: nn.Module) -> dict:
    layers = {}
    down_owner: dict[int, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LowRankLinear):
            entry = {"in_features": mod.in_features, "out_features": mod.out_features, "rank": mod.rank,
                     "bias": mod.up.bias is not None}
            key = id(mod.down)
            if key in down_owner:
                entry["shares_down_with"] = down_owner[key]
            else:
                down_owner[key] = name
            layers[name] = entry
    return layers


def save_compressed(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping | None = None) -> Path:
    """Write a model with :class:`LowRankLinear` layers to the directory ``path``.

    ``compression.json`` records each low-rank layer (shapes, rank, shared down-projections)
    and ``metadata`` (e.g. the privacy cost; JSON-serialisable); ``weights.npz`` holds the
    whole state dict (a shared down-projection once). Load with :func:`load_compressed` into
    a fresh instance of the original architecture.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = _layout(model)
    skip = {f"{n}.down.weight" for n, e in layers.items() if "shares_down_with" in e}
    arrays, dtypes = {}, {}
    for key, t in model.state_dict().items():
        if key in skip:
            continue
        dtypes[key] = str(t.dtype).replace("torch.", "")
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        arrays[key] = t.numpy()
    config = {"format": _FORMAT, "version": _FORMAT_VERSION, "layers": layers, "dtypes": dtypes,
              "metadata": dict(metadata or {})}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path / _WEIGHTS, buf.getvalue())
    atomic_write_bytes(path / _CONFIG, json.dumps(config, indent=1, sort_keys=True).encode())
    return path


def load_compressed(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_compressed` into ``model`` (the original architecture).

    The named linears of ``model`` are replaced by :class:`LowRankLinear` of the saved
    shapes (with shared down-projections re-tied) and the saved state dict is loaded
    strictly. Returns ``model`` (modified in place); its metadata is ``model.compression_metadata``.
    """
    path = Path(path)
    try:
        config = json.loads((path / _CONFIG).read_text())
        with np.load(path / _WEIGHTS, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a readable compressed model: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a dplowrank compressed model")
    if config.get("version") != _FORMAT_VERSION:
        raise ValueError(f"unsupported compressed-model version {config.get('version')!r}")
    layers = config["layers"]
    mods = dict(model.named_modules())
    new: dict[str, LowRankLinear] = {}
    owners_first = sorted(layers.items(), key=lambda item: "shares_down_with" in item[1])
    for name, e in owners_first:
        old = mods.get(name)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"the model has no nn.Linear named {name!r} to hold a saved low-rank layer")
        owner = e.get("shares_down_with")
        if owner is not None and owner not in new:
            raise ValueError(f"layer {name!r} shares the down-projection of {owner!r}, which the file does not hold")
        down = None if owner is None else new[owner].down
        new[name] = LowRankLinear(e["in_features"], e["out_features"], e["rank"], bias=e["bias"], down=down,
                                  device=old.weight.device, dtype=old.weight.dtype)
    state = {}
    for key, arr in arrays.items():
        dt_name = config["dtypes"].get(key, str(arr.dtype))
        dt = getattr(torch, dt_name, None) if isinstance(dt_name, str) else None
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"{os.fspath(path)!r}: entry {key!r} has an unknown dtype {dt_name!r}")
        state[key] = torch.from_numpy(arr).to(dt)
    for name, e in layers.items():
        if "shares_down_with" in e:
            state[f"{name}.down.weight"] = state[f"{e['shares_down_with']}.down.weight"]
    originals = {name: mods[name] for name in new}
    replace_linears(model, new)
    # Every key and shape is checked before anything is copied: a file that does not fit
    # leaves the model exactly as it was.
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        replace_linears(model, originals)
        raise ValueError(
            f"{os.fspath(path)!r} does not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, other shapes {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)
    model.compression_metadata = config.get("metadata", {})
    return model
