"""The library's one randomness policy.

Every random draw in dplowrank takes an explicit source. Privacy noise
(:func:`resolve_noise_source`) comes, when the caller gives nothing, from a
:class:`~dplowrank._secure.SecureNormalSource` (AES-256-CTR keyed from ``os.urandom`` by the
library): the release is marked ``"secure"``. Anything the caller could reproduce (a
:class:`torch.Generator`, a source built from a caller's key or seed) marks it ``"seeded"``:
not for publication.
Randomness that does not protect anything (the eigensolver's starting block, the analysis
tools) uses a :class:`torch.Generator` (:func:`resolve_generator`), seeded from the OS's
secure source when none is given.
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["resolve_generator", "resolve_noise_source"]

#: How a release got its noise (recorded on the release).
SECURE = "secure"
SEEDED = "seeded"
#: How a torch.Generator was obtained by resolve_generator.
OS_SEEDED = "os_seeded"
USER_GENERATOR = "user_generator"


def device_key(device: torch.device) -> tuple[str, int]:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return device.type, (index or 0)


def resolve_generator(
    generator: object, device: torch.device | str
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
            f"generator must be a torch.Generator, a SecureNormalSource or None, got {type(generator).__name__}"
        )
    if device_key(torch.device(generator.device)) != device_key(device):
        raise ValueError(
            f"generator lives on {generator.device} but the draws happen on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )
    return generator, USER_GENERATOR


def resolve_noise_source(generator: object, device: torch.device | str):
    """The noise source, the solver's generator and the label of a release.

    Parameters
    ----------
    generator : None, torch.Generator or SecureNormalSource
    device : torch.device or str

    Returns
    -------
    noise : torch.Generator or SecureNormalSource
        What the mechanism draws its noise from.
    solver : torch.Generator
        For the eigensolver's random start (not privacy-relevant): the caller's generator
        when one was given, seeded from a seeded source's key
        (:meth:`~dplowrank._secure.SecureNormalSource.solver_seed`), so that the whole
        release is reproducible, and seeded from the OS otherwise.
    label : {"secure", "seeded"}
    """
    from ._secure import SecureNormalSource

    if generator is None:
        return SecureNormalSource(), resolve_generator(None, device)[0], SECURE
    if isinstance(generator, SecureNormalSource):
        if generator.secure:  # the library drew its key from the OS (never a caller's key)
            return generator, resolve_generator(None, device)[0], SECURE
        # A seeded source makes the whole release reproducible: the solver's start comes
        # from the same key (a reserved keystream, disjoint from the noise streams).
        solver = torch.Generator(device=torch.device(device))
        solver.manual_seed(generator.solver_seed())
        return generator, solver, SEEDED
    gen, _ = resolve_generator(generator, device)
    return gen, gen, SEEDED
