"""A module of the tests package that model code calls into: its global is state the guard must
reach through the code that uses it (the fifth audit's sibling-module case)."""

import torch

_WORKSPACE = {}


def smooth(x: torch.Tensor) -> torch.Tensor:
    prev = _WORKSPACE.get("h")
    _WORKSPACE["h"] = x.detach().mean(dim=(0, 1))
    return x if prev is None else x + prev

_LAZY = {}  # reached only through an import inside a forward pass
