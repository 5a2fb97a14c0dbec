"""The library's one generator policy.

Every random draw in dplowrank takes an explicit :class:`torch.Generator`. When the
caller gives none, a generator is created for the target device and seeded with 64
bits from the operating system's secure source (:func:`secrets.randbits`), so the
noise cannot be predicted from anything in the process. A caller-supplied generator
makes a release reproducible; the release records which of the two was used.
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["resolve_generator"]

#: The two ways a release can get its randomness (recorded on the release).
OS_SEEDED = "os_seeded"
USER_GENERATOR = "user_generator"


def _device_key(device: torch.device) -> tuple[str, int]:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return device.type, (index or 0)


def resolve_generator(
    generator: torch.Generator | None, device: torch.device | str
) -> tuple[torch.Generator, str]:
    """Return a generator for ``device`` and how it was obtained.

    Parameters
    ----------
    generator : torch.Generator or None
        The caller's generator. It must live on ``device``.
    device : torch.device or str
        Where the draws happen.

    Returns
    -------
    generator : torch.Generator
    source : {"user_generator", "os_seeded"}
    """
    device = torch.device(device)
    if generator is None:
        gen = torch.Generator(device=device)
        gen.manual_seed(secrets.randbits(64))
        return gen, OS_SEEDED
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if _device_key(torch.device(generator.device)) != _device_key(device):
        raise ValueError(
            f"generator lives on {generator.device} but the draws happen on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )
    return generator, USER_GENERATOR
