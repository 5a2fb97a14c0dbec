"""``LowRankLinear``: y = U (V x) + b as two thin linears, in-place replacement, save and load.

A rank-r factorisation Ŵ = U V (U of shape (d_out, r), V of shape (r, d_in)) of a linear
layer's weight costs r(d_in + d_out) parameters instead of d_in·d_out. Members of a
shared-input group compressed jointly (Peng et al., arXiv:2402.16319) share one ``down``
module (V), which is stored once.

Files (:func:`save_compressed`, format 3) are a JSON description plus a ``safetensors`` file
holding only the compressed layers' tensors (float factors, or packed codes with their offsets
and steps, and the biases): the rest of the model is the user's own copy of the original
architecture, onto which :func:`load_compressed` puts the factors. The description records
the SHA-256 of the factors and of the model's other weights (so a mismatched pair, or a base
model that is not the one the factors were computed for, is refused) and is sealed with
:func:`dplowrank._files.seal` (HMAC-SHA256 with ``key=``). No arbitrary object is ever
unpickled. Format 2 (the whole state dict in an ``.npz``) is still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._files import atomic_write_files, check_key, seal, verify
from ._quantize import GRANULARITIES, Quantized

__all__ = ["QuantizedLinear", "LowRankLinear", "replace_linears", "save_compressed", "load_compressed", "count_parameters"]

_FORMAT = "dplowrank.compressed_model"
# 3: the compressed layers only, in safetensors, sealed; 2 added quantised factors
# (QuantizedLinear) to 1's whole state dict in an .npz. 1 and 2 are still read.
_FORMAT_VERSION = 3
_READ_VERSIONS = (1, 2, 3)
_CONFIG = "compression.json"
_FACTORS = "factors.safetensors"
_WEIGHTS = "weights.npz"  # formats 1 and 2


class QuantizedLinear(nn.Module):
    """A linear map whose weight is stored as B-bit codes (:class:`Quantized`): x ↦ Q(W)x + b.

    The packed codes, offsets and steps are buffers (saved and loaded with the state dict);
    the weight is dequantised on first use and cached (post-processing of public or released
    factors; the packing is a storage format, products run in floating point).

    Parameters
    ----------
    quantized : Quantized of shape (out_features, in_features)
    bias : Tensor of shape (out_features,), optional
    dtype : torch.dtype, default torch.float32
        Of the dequantised weight and the bias.
    """

    #: The dequantised weight is a data-free cache (a function of the codes): the collectors'
    #: state guard leaves it alone instead of dropping it before every example.
    _guard_exempt = ("_weight",)
    packed: torch.Tensor  # buffers, registered in __init__
    offset: torch.Tensor
    step: torch.Tensor

    def __init__(self, quantized: Quantized, bias: torch.Tensor | None = None, *,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(v) for v in quantized.shape)
        self.bits, self.granularity, self.dtype = quantized.bits, quantized.granularity, dtype
        self.register_buffer("packed", quantized.packed.clone())
        self.register_buffer("offset", quantized.offset.clone())
        self.register_buffer("step", quantized.step.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype).clone(), requires_grad=False)
        self._weight: torch.Tensor | None = None
        self._register_load_state_dict_pre_hook(lambda *args, **kw: setattr(self, "_weight", None))

    @classmethod
    def empty(cls, out_features: int, in_features: int, bits: int, granularity: str, *, bias: bool,
              dtype: torch.dtype = torch.float32) -> QuantizedLinear:
        """A layer of the given layout with zero codes (to load a state dict into)."""
        groups = {"tensor": 1, "row": out_features, "column": in_features}[granularity]
        q = Quantized(torch.zeros((out_features * in_features * bits + 7) // 8, dtype=torch.uint8),
                      torch.zeros(groups), torch.ones(groups), (out_features, in_features), bits, granularity)
        return cls(q, torch.zeros(out_features) if bias else None, dtype=dtype)

    @property
    def quantized(self) -> Quantized:
        return Quantized(self.packed, self.offset, self.step, (self.out_features, self.in_features),
                         self.bits, self.granularity)

    @property
    def nbits(self) -> int:
        """Exact storage of the weight in bits (the bias excluded)."""
        return self.quantized.nbits

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight, Tensor of shape (out_features, in_features)."""
        if self._weight is None or self._weight.device != self.packed.device:
            self._weight = self.quantized.dequantize(self.dtype, device=self.packed.device)
        return self._weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"granularity={self.granularity!r}, bias={self.bias is not None}")


class LowRankLinear(nn.Module):
    """A linear layer stored as two thin ones: x ↦ up(down(x)), down without bias.

    Parameters
    ----------
    in_features, out_features : int
    rank : int
        r ≥ 1, the inner dimension.
    bias : bool, default True
        Whether ``up`` has a bias (the original layer's bias is kept there).
    down : nn.Linear or QuantizedLinear, optional
        A ``Linear(in_features, rank, bias=False)`` (or its quantised form) to use (and share)
        instead of a new one.
    up : nn.Linear or QuantizedLinear, optional
        The second map (rank → out_features), with a bias when ``bias``.
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
                 down: nn.Linear | QuantizedLinear | None = None, up: nn.Linear | QuantizedLinear | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if down is None:
            down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        elif not _maps(down, in_features, rank) or down.bias is not None:
            raise ValueError(
                f"down must be nn.Linear({in_features}, {rank}, bias=False) or a QuantizedLinear of that shape, got {down!r}"
            )
        if up is None:
            up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)
        elif not _maps(up, rank, out_features) or (up.bias is not None) != bias:
            raise ValueError(f"up must map {rank} to {out_features} features (bias={bias}), got {up!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down: nn.Linear | QuantizedLinear = down
        self.up: nn.Linear | QuantizedLinear = up

    @classmethod
    def from_factors(cls, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None = None, *,
                     down: nn.Linear | None = None, dtype: torch.dtype | None = None) -> LowRankLinear:
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
            if bias is not None and layer.up.bias is not None:
                layer.up.bias.copy_(bias)
        return layer

    @classmethod
    def from_quantized(cls, left: Quantized, right: Quantized | None, bias: torch.Tensor | None = None, *,
                       down: QuantizedLinear | None = None, dtype: torch.dtype = torch.float32) -> LowRankLinear:
        """The layer x ↦ Q(left)·(Q(right)·x) + bias with both factors stored as codes.

        ``right`` is ignored when a shared quantised ``down`` is given.
        """
        if down is None:
            if right is None:
                raise ValueError("from_quantized needs the right factor unless a shared down is given")
            down = QuantizedLinear(right, dtype=dtype)
        up = QuantizedLinear(left, bias, dtype=dtype)
        return cls(down.in_features, up.out_features, up.in_features, bias=bias is not None, down=down, up=up)

    @property
    def nbits(self) -> int:
        """Storage of the factors in bits: codes and scales when quantised, else 8·bytes of the
        parameters (a shared down-projection counted here too)."""
        return sum(_module_bits(m) for m in (self.down, self.up))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
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


def _maps(m: object, d_in: int, d_out: int) -> bool:
    """Whether ``m`` is an nn.Linear or QuantizedLinear from d_in to d_out features."""
    return isinstance(m, (nn.Linear, QuantizedLinear)) and (m.in_features, m.out_features) == (d_in, d_out)


def _module_bits(m: nn.Linear | QuantizedLinear) -> int:
    if isinstance(m, QuantizedLinear):
        return m.nbits
    return 8 * m.weight.numel() * m.weight.element_size()


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
            entry: dict[str, object] = {"in_features": mod.in_features, "out_features": mod.out_features,
                                        "rank": mod.rank, "bias": mod.up.bias is not None}
            quantized = {part: {"bits": m.bits, "granularity": m.granularity}
                         for part, m in (("down", mod.down), ("up", mod.up)) if isinstance(m, QuantizedLinear)}
            if quantized:
                entry["quantized"] = quantized
            key = id(mod.down)
            if key in down_owner:
                entry["shares_down_with"] = down_owner[key]
            else:
                down_owner[key] = name
            layers[name] = entry
    return layers


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - safetensors comes with the compress extra
        raise ImportError("saving and loading compressed models needs safetensors: "
                          "pip install 'dplowrank[compress]'") from exc
    return safetensors.torch


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _base_digest(model: nn.Module, layers: Mapping[str, object]) -> tuple[str, int]:
    """SHA-256 of ``model``'s state outside the named layers (name, dtype, shape and bytes of
    each entry, in key order), and the number of entries: the base the factors belong to."""
    prefixes = tuple(f"{name}." for name in layers)
    h, n = hashlib.sha256(), 0
    for key, t in sorted(model.state_dict().items()):
        if key.startswith(prefixes):
            continue
        t = t.detach().cpu().contiguous()
        h.update(_canonical({"key": key, "dtype": str(t.dtype), "shape": list(t.shape)}))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        n += 1
    return h.hexdigest(), n


def save_compressed(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping | None = None,
                    key: bytes | None = None) -> Path:
    """Write the :class:`LowRankLinear` layers of ``model`` to the directory ``path``.

    ``factors.safetensors`` holds the compressed layers' tensors only (a shared
    down-projection once): float factors, or packed codes, offsets and steps for quantised
    ones, and the biases. ``compression.json`` records each layer (shapes, rank, bits, shared
    down-projections), ``metadata`` (e.g. the privacy cost; JSON-serialisable), the SHA-256
    of the factors and of the rest of the model (its *base*), sealed with a SHA-256 digest and,
    with ``key``, an HMAC-SHA256 that nobody without the key can forge. Load with
    :func:`load_compressed` onto a fresh instance of the original model (the same weights).

    Both files are serialised before anything is written, so bad ``metadata`` (``TypeError``)
    or a ``path`` that is a file (``ValueError``) leaves the disk untouched. They are then
    written to temporary files and renamed into place, the config last; a crash between the
    two renames leaves a pair whose checksums disagree, which :func:`load_compressed` refuses.
    A ``weights.npz`` left by an older save in ``path`` is removed once the new pair is in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (or None), got {type(metadata).__name__}")
    key = check_key(key)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{os.fspath(path)!r} is a file; save_compressed writes a directory")
    layers = _layout(model)
    mods = dict(model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in layers.items():
        for k, t in mods[name].state_dict().items():
            if "shares_down_with" in entry and k.startswith("down."):
                continue  # stored once, under the owner's name
            tensors[f"{name}.{k}"] = t.detach().cpu().contiguous().clone()
    factors = _safetensors().save(tensors, metadata={"format": _FORMAT, "version": str(_FORMAT_VERSION)})
    base, n_base = _base_digest(model, layers)
    body = {"format": _FORMAT, "version": _FORMAT_VERSION, "layers": layers, "metadata": dict(metadata or {}),
            "factors_sha256": hashlib.sha256(factors).hexdigest(), "base_sha256": base, "base_entries": n_base}
    try:
        config = {**body, "integrity": seal(_canonical(body), key)}
        text = json.dumps(config, indent=1, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_files({path / _FACTORS: factors, path / _CONFIG: text})
    try:
        (path / _WEIGHTS).unlink()  # an older format's weights, now stale
    except FileNotFoundError:
        pass
    return path


def _check_config(config: object, where: str) -> dict:
    """Check the schema of a ``compression.json``; ``ValueError`` names the file and the field."""
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"{where!r} is not a dplowrank compressed model")
    if config.get("version") not in _READ_VERSIONS:
        raise ValueError(f"unsupported compressed-model version {config.get('version')!r} in {where!r}")

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{where!r} has an invalid compression.json: field {field!r} {why}")

    layers, dtypes = config.get("layers"), config.get("dtypes")
    if not isinstance(layers, dict):
        raise bad("layers", f"must be an object, got {layers!r:.80}")
    for name, e in layers.items():
        if not isinstance(e, dict):
            raise bad(f"layers.{name}", f"must be an object, got {e!r:.80}")
        for key in ("in_features", "out_features", "rank"):
            v = e.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f"layers.{name}.{key}", f"must be a positive integer, got {v!r:.80}")
        if not isinstance(e.get("bias"), bool):
            raise bad(f"layers.{name}.bias", f"must be a bool, got {e.get('bias')!r:.80}")
        quantized = e.get("quantized", {})
        if not isinstance(quantized, dict) or set(quantized) - {"up", "down"} or not all(
                isinstance(q, dict) and isinstance(q.get("bits"), int) and not isinstance(q.get("bits"), bool)
                and 1 <= q["bits"] <= 32 and q.get("granularity") in GRANULARITIES for q in quantized.values()):
            raise bad(f"layers.{name}.quantized", f"must map up/down to bits (1-32) and a granularity, got {quantized!r:.80}")
        owner = e.get("shares_down_with")
        if owner is not None and (not isinstance(owner, str) or owner not in layers or owner == name):
            raise bad(f"layers.{name}.shares_down_with", f"must name another saved layer, got {owner!r:.80}")
        if owner is not None and "shares_down_with" in layers[owner]:
            raise bad(f"layers.{name}.shares_down_with", f"names {owner!r}, which itself shares another's")
    if config["version"] < 3 and (not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values())):
        raise bad("dtypes", f"must be an object of str, got {dtypes!r:.80}")
    if not isinstance(config.get("metadata", {}), dict):
        raise bad("metadata", f"must be an object, got {config.get('metadata')!r:.80}")
    digests = ("weights_sha256",) if config["version"] < 3 else ("factors_sha256", "base_sha256")
    for field in digests:
        digest = config.get(field)
        if (digest is not None or config["version"] >= 3) and not isinstance(digest, str):
            raise bad(field, f"must be a str, got {digest!r:.80}")
    if config["version"] >= 3 and not isinstance(config.get("integrity"), dict):
        raise bad("integrity", f"must be an object, got {config.get('integrity')!r:.80}")
    return config


def load_compressed(model: nn.Module, path: str | os.PathLike, *, key: bytes | None = None,
                    check_base: bool = True) -> nn.Module:
    """Put a model saved by :func:`save_compressed` onto ``model`` (the original architecture).

    ``model`` is a fresh instance of the model that was compressed, with its original weights
    (e.g. ``SentenceTransformer(...)`` of the same checkpoint): its named linears are replaced
    by :class:`LowRankLinear` of the saved shapes (shared down-projections re-tied) holding
    the saved factors. Returns ``model`` (modified in place); its metadata is
    ``model.compression_metadata``. Files of format 2 (the whole state dict) are still read.

    Parameters
    ----------
    model : nn.Module
    path : str or PathLike
        The directory written by :func:`save_compressed`.
    key : bytes, optional
        The key the model was saved with; required for a file saved with one, refused for one
        saved without (it was never authenticated).
    check_base : bool, default True
        Refuse a ``model`` whose weights outside the compressed layers differ from those the
        file was saved from (another checkpoint, another dtype): the factors were computed for
        those. Pass ``False`` to load onto a different base knowingly.

    Returns
    -------
    nn.Module
        ``model``, modified in place.

    Raises
    ------
    TypeError
        When ``model`` is not an ``nn.Module``.
    ValueError
        Naming the directory, when the files are missing, damaged, altered (checksum or
        HMAC), do not belong together (the factors' SHA-256 differs from the one in the
        config: e.g. a save interrupted between its two renames) or do not fit ``model``;
        the model is then left as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    key = check_key(key)
    path = Path(path)
    where = os.fspath(path)
    try:
        config = json.loads((path / _CONFIG).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{where!r} is not a readable compressed model: {exc}") from exc
    config = _check_config(config, where)
    if config["version"] >= 3:
        return _load_factors(model, path, config, key, check_base)
    if key is not None:
        raise ValueError(f"{where!r} carries no HMAC: it was written without a key (format "
                         f"{config['version']}); refusing to trust it with key=")
    try:
        weights = (path / _WEIGHTS).read_bytes()
    except OSError as exc:
        raise ValueError(f"{where!r} is not a readable compressed model: {exc}") from exc
    digest = config.get("weights_sha256")
    if digest is not None and hashlib.sha256(weights).hexdigest() != digest:
        raise ValueError(
            f"{where!r}: {_WEIGHTS} does not match {_CONFIG} (SHA-256 differs): the pair comes from "
            "two different saves (an interrupted save_compressed?) or was altered"
        )
    try:
        with np.load(io.BytesIO(weights), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # bad zip, truncation, pickled objects: one error
        raise ValueError(f"{where!r} has unreadable weights: {exc}") from exc
    layers = config["layers"]
    mods = dict(model.named_modules())
    new = _empty_layers(mods, layers)
    state = {}
    for entry, arr in arrays.items():
        dt_name = config["dtypes"].get(entry, str(arr.dtype))
        dt = getattr(torch, dt_name, None)
        if not isinstance(dt, torch.dtype) or arr.dtype.kind not in "biufc":
            raise ValueError(f"{where!r}: entry {entry!r} has an unknown dtype {dt_name!r} (stored as {arr.dtype})")
        state[entry] = torch.from_numpy(arr).to(dt)
    for name, e in layers.items():
        if "shares_down_with" in e:
            prefix = f"{e['shares_down_with']}.down."
            srcs = [k for k in state if k.startswith(prefix)]
            if not srcs:
                raise ValueError(f"{where!r}: the weights lack {prefix!r}*, which {name!r} shares")
            for src in srcs:
                state[f"{name}.down.{src[len(prefix):]}"] = state[src]
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
            f"{where!r} does not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, other shapes {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)
    model.compression_metadata = config.get("metadata", {})
    return model


def _empty_layers(mods: Mapping[str, nn.Module], layers: Mapping[str, dict]) -> dict[str, LowRankLinear]:
    """A :class:`LowRankLinear` of each saved layout, on the device and dtype of the linear it replaces."""
    new: dict[str, LowRankLinear] = {}
    owners_first = sorted(layers.items(), key=lambda item: "shares_down_with" in item[1])
    for name, e in owners_first:
        old = mods.get(name)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"the model has no nn.Linear named {name!r} to hold a saved low-rank layer")
        owner = e.get("shares_down_with")
        q = e.get("quantized", {})
        dev, dt = old.weight.device, old.weight.dtype
        down = new[owner].down if owner is not None else (
            QuantizedLinear.empty(e["rank"], e["in_features"], q["down"]["bits"], q["down"]["granularity"],
                                  bias=False, dtype=dt).to(dev) if "down" in q else None)
        up = QuantizedLinear.empty(e["out_features"], e["rank"], q["up"]["bits"], q["up"]["granularity"],
                                   bias=e["bias"], dtype=dt).to(dev) if "up" in q else None
        new[name] = LowRankLinear(e["in_features"], e["out_features"], e["rank"], bias=e["bias"], down=down,
                                  up=up, device=dev, dtype=dt)
    return new


def _load_factors(model: nn.Module, path: Path, config: dict, key: bytes | None, check_base: bool) -> nn.Module:
    """Format 3: check the seal, the factors' digest and the base, then swap the layers in."""
    where = os.fspath(path)
    body = {k: v for k, v in config.items() if k != "integrity"}
    verify(_canonical(body), config["integrity"], key, f"{where!r} ({_CONFIG})")
    try:
        factors = (path / _FACTORS).read_bytes()
    except OSError as exc:
        raise ValueError(f"{where!r} is not a readable compressed model: {exc}") from exc
    if hashlib.sha256(factors).hexdigest() != config["factors_sha256"]:
        raise ValueError(
            f"{where!r}: {_FACTORS} does not match {_CONFIG} (SHA-256 differs): the pair comes from "
            "two different saves (an interrupted save_compressed?) or was altered"
        )
    try:
        tensors = _safetensors().load(factors)
    except Exception as exc:  # a malformed header or truncated data: one error
        raise ValueError(f"{where!r} has unreadable factors: {exc}") from exc
    layers = config["layers"]
    mods = dict(model.named_modules())
    new = _empty_layers(mods, layers)
    for name, layer in new.items():
        shape, old = (layer.in_features, layer.out_features), mods[name]
        if shape != (old.in_features, old.out_features):
            raise ValueError(f"replacement for {name!r} maps {shape}, the layer maps {(old.in_features, old.out_features)}")
    if check_base:
        base, n_base = _base_digest(model, layers)
        if base != config["base_sha256"]:
            raise ValueError(
                f"{where!r} does not fit this model: its {n_base} weights and buffers outside the compressed "
                "layers differ from those of the model it was saved from (another checkpoint, dtype or "
                "architecture), for which the factors were computed. Load it onto a fresh instance of the "
                "original model, or pass check_base=False to load it onto this one knowingly"
            )
    # Each new layer takes its own entries strictly (keys and shapes) before the model is
    # touched: a file that does not fit leaves the model exactly as it was.
    for name, e in layers.items():
        mine = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        owner = e.get("shares_down_with")
        if owner is not None:
            shared = {k: v for k, v in tensors.items() if k.startswith(f"{owner}.down.")}
            if not shared:
                raise ValueError(f"{where!r}: the factors lack {owner!r}.down.*, which {name!r} shares")
            mine.update({k[len(owner) + 1:]: v for k, v in shared.items()})
        expected = new[name].state_dict()
        missing, unexpected = sorted(set(expected) - set(mine)), sorted(set(mine) - set(expected))
        shapes = sorted(k for k in set(expected) & set(mine) if tuple(expected[k].shape) != tuple(mine[k].shape))
        if missing or unexpected or shapes:
            raise ValueError(
                f"{where!r} does not fit this model: layer {name!r} misses {missing[:5]}, has unexpected "
                f"{unexpected[:5]}, other shapes {shapes[:5]}"
            )
        new[name].load_state_dict(mine, strict=True)
    prefixes = tuple(f"{name}." for name in layers)
    stray = sorted(k for k in tensors if not k.startswith(prefixes))
    if stray:
        raise ValueError(f"{where!r} does not fit this model: unexpected entries {stray[:5]}")
    replace_linears(model, new)
    model.compression_metadata = config.get("metadata", {})
    return model
