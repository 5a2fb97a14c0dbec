"""Conversion of user arrays to tensors, in one place."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor", "as_device", "InexactIntegerError"]


class InexactIntegerError(ValueError):
    """Integer input that float64 cannot hold exactly (see :func:`as_tensor`'s ``exact``)."""


def as_device(device: torch.device | str | None) -> torch.device | None:
    """Parse ``device`` (``None`` passes through)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    return dev


def check_dense(t: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse tensors without values to compute on: sparse layouts and the meta device."""
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device: it has no values")
    return t


def as_tensor(x: object, name: str, *, allow_complex: bool = False, exact: bool = False) -> torch.Tensor:
    """Return ``x`` (numpy array, torch tensor or nested sequence) as a floating tensor.

    Integer and boolean input becomes float64; complex input raises ``TypeError`` unless
    ``allow_complex``; anything else that is not numeric raises ``TypeError``. No copy is
    made when ``x`` already is a floating tensor. ``exact``: refuse integers beyond 2⁵³ in
    magnitude, which float64 would round (for a private matrix that is about to get its
    noise, where rounding first would change its sensitivity).
    """
    if isinstance(x, torch.Tensor):
        t = check_dense(x, name)
    elif isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind not in "biufc":
            raise TypeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
        # np.ascontiguousarray would turn a 0-d array into shape (1,): keep the shape as given
        t = torch.from_numpy(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
    else:
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
        )
    if t.is_complex():
        if not allow_complex:
            raise TypeError(f"{name} must be real, got complex dtype {t.dtype}")
        return t
    if not t.is_floating_point():
        exotic = t.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32)
        if exact and t.numel() and exotic and (
            bool((t.abs() > 2**53).any()) or bool((t == torch.iinfo(t.dtype).min).any())
        ):
            raise InexactIntegerError(
                f"{name} holds integers beyond 2**53 in magnitude, which float64 cannot represent "
                "exactly; scale it down (and its sensitivity with it)"
            )
        return t.to(torch.float64)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.to(torch.float32)
    return t
