"""Which linear layers to compress, and which of them read the same input.

A :class:`LayerGroup` is the unit of statistics and of release: one ``nn.Linear``, or several
that read the same input tensor (q/k/v of an attention block; gate/up of a LLaMA-style MLP),
which therefore share one activation Gram and one private release. An :class:`Adapter` names
the layers of a model family by regular expressions on module names, so any ``nn.Module``
works; :data:`BERT` and :data:`LLAMA` are ready-made.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = ["LayerGroup", "Adapter", "BERT", "LLAMA", "find_groups"]


@dataclass(frozen=True)
class LayerGroup:
    """Linear layers that read the same input x; their weights stack to W (Σ d_out × d_in).

    Attributes
    ----------
    name : str
        The group's name: the shared prefix for a shared-input group, else the module name.
    members : tuple of str
        Module names (as in ``model.named_modules()``), in a fixed order.
    in_features : int
        d_in, common to every member.
    out_features : tuple of int
        d_out of each member.
    """

    name: str
    members: tuple[str, ...]
    in_features: int
    out_features: tuple[int, ...]

    @property
    def stacked_out(self) -> int:
        """Σ d_out over the members."""
        return sum(self.out_features)

    @property
    def dim(self) -> int:
        """ρ = min(d_in, Σ d_out): the dimension of the group's statistic and release."""
        return min(self.in_features, self.stacked_out)

    @property
    def parameters(self) -> int:
        """Weight parameters of the dense members (biases excluded)."""
        return self.in_features * self.stacked_out

    def to_dict(self) -> dict:
        return {"name": self.name, "members": list(self.members), "in_features": self.in_features,
                "out_features": list(self.out_features)}


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    if isinstance(patterns, (bytes, bytearray)) or not isinstance(patterns, Iterable):
        raise TypeError(f"{what} must be a str or a sequence of str, got {type(patterns).__name__}")
    out = []
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{what} patterns must be str, got {p!r} of type {type(p).__name__}")
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {exc}") from exc
    return out


def find_groups(
    model: nn.Module,
    include: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    shared: Sequence[str] = (),
) -> tuple[LayerGroup, ...]:
    """The ``nn.Linear`` modules of ``model`` whose names match, grouped by shared input.

    Parameters
    ----------
    model : nn.Module
    include : sequence of str
        Regular expressions; a module is a target when its full name matches one of them
        (``re.fullmatch``) and it is an ``nn.Linear``.
    exclude : sequence of str, optional
        Regular expressions of names to leave out.
    shared : sequence of str, optional
        Regular expressions with a named capture ``group``: targets whose names match one
        with the same captured text read the same input and form one :class:`LayerGroup`
        named by the capture. That they really share their input is checked when
        statistics are collected.

    Returns
    -------
    tuple of LayerGroup
        In the order of ``model.named_modules()``.

    Raises
    ------
    ValueError
        When no module matches, a matched module is not an ``nn.Linear``, a pattern is not a
        valid regular expression, or the members of a shared group disagree on ``in_features``.
    TypeError
        When ``model`` is not an ``nn.Module`` or a pattern is not a str.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    sha = _compile(shared, "shared")
    for p in sha:
        if "group" not in p.groupindex:
            raise ValueError(f"shared pattern {p.pattern!r} needs a named capture (?P<group>...)")
    order: list[str] = []
    members: dict[str, list[tuple[str, nn.Linear]]] = {}
    for name, mod in model.named_modules():
        if not name or not any(p.fullmatch(name) for p in inc) or any(p.fullmatch(name) for p in exc):
            continue
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"module {name!r} matches {list(include)!r} but is a {type(mod).__name__}, not nn.Linear")
        key = name
        for p in sha:
            m = p.fullmatch(name)
            if m is not None:
                key = m.group("group")
                break
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append((name, mod))
    if not order:
        raise ValueError(f"no nn.Linear module of {type(model).__name__} matches {list(include)!r}")
    groups = []
    for key in order:
        mods = members[key]
        d_in = {m.in_features for _, m in mods}
        if len(d_in) != 1:
            raise ValueError(
                f"shared-input group {key!r} mixes in_features {sorted(d_in)}: "
                + ", ".join(f"{n} ({m.in_features})" for n, m in mods)
            )
        groups.append(LayerGroup(key, tuple(n for n, _ in mods), d_in.pop(), tuple(m.out_features for _, m in mods)))
    return tuple(groups)


@dataclass(frozen=True)
class Adapter:
    """Module-name rules of a model family: what to compress (by scope) and what shares input.

    Attributes
    ----------
    name : str
    scopes : mapping of str to tuple of str
        Scope name (e.g. ``"ffn"``, ``"attention"``, ``"all"``) to ``include`` patterns.
    shared : tuple of str
        ``shared`` patterns for :func:`find_groups`.
    exclude : tuple of str
        Names never compressed (e.g. a pooler unused by sentence embeddings).
    """

    name: str
    scopes: Mapping[str, tuple[str, ...]]
    shared: tuple[str, ...] = ()
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def groups(self, model: nn.Module, scope: str = "all") -> tuple[LayerGroup, ...]:
        """:func:`find_groups` with this adapter's rules for ``scope``."""
        if scope not in self.scopes:
            raise ValueError(f"scope must be one of {sorted(self.scopes)} for the {self.name} adapter, got {scope!r}")
        return find_groups(model, self.scopes[scope], exclude=self.exclude, shared=self.shared)


_BERT_FFN = (r"(.*\.)?layer\.\d+\.intermediate\.dense", r"(.*\.)?layer\.\d+\.output\.dense")
_BERT_ATT = (r"(.*\.)?attention\.self\.(query|key|value)", r"(.*\.)?attention\.output\.dense")

#: BERT-style encoders (Hugging Face ``BertModel``, sentence-transformers' MiniLM): q/k/v share
#: one input; ``ffn`` is intermediate.dense + output.dense of every layer.
BERT = Adapter(
    "bert",
    scopes={"ffn": _BERT_FFN, "attention": _BERT_ATT, "all": _BERT_ATT + _BERT_FFN},
    shared=(r"(?P<group>(.*\.)?attention\.self)\.(query|key|value)",),
    exclude=(r"(.*\.)?pooler\..*",),
)

_LLAMA_FFN = (r"(.*\.)?mlp\.(gate|up|down)_proj",)
_LLAMA_ATT = (r"(.*\.)?self_attn\.(q|k|v|o)_proj",)

#: LLaMA-style decoders (q/k/v/o_proj, gate/up/down_proj): q/k/v share one input, gate/up another.
LLAMA = Adapter(
    "llama",
    scopes={"ffn": _LLAMA_FFN, "attention": _LLAMA_ATT, "all": _LLAMA_ATT + _LLAMA_FFN},
    shared=(r"(?P<group>(.*\.)?self_attn)\.(q|k|v)_proj", r"(?P<group>(.*\.)?mlp)\.(gate|up)_proj"),
)
