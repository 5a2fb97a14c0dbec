"""Refusing allocations that cannot fit, before they are attempted (one place)."""

from __future__ import annotations

import torch

__all__ = ["InsufficientMemoryError", "available_bytes", "check_allocation"]


class InsufficientMemoryError(ValueError):
    """The requested work needs more memory than the device has available; nothing was done."""


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (``None`` when it cannot be told)."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):  # pragma: no cover - no CUDA
            return None
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:  # pragma: no cover - not Linux
            return None
    return None


def _fmt(nbytes: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def check_allocation(nbytes: int, device: torch.device, what: str) -> None:
    """Raise :class:`InsufficientMemoryError` (naming the estimate) if ``nbytes`` cannot fit."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise InsufficientMemoryError(
            f"{what} needs about {_fmt(nbytes)} on {device}, but only {_fmt(free)} "
            "is available; nothing was allocated or charged"
        )
