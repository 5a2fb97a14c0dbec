"""Bridges to Google's dp_accounting and to opacus (optional extras, imported on use only).

* :func:`to_dp_accounting` turns dplowrank events into ``dp_accounting.DpEvent`` objects, so
  any dp_accounting accountant (PLD, RDP) can price them.
* :func:`from_dp_accounting` reads such events back.
* :func:`from_opacus` turns an opacus accountant's history of DP-SGD steps into events, so
  private compression with dplowrank followed by DP-SGD with opacus gets one ε.
* :func:`pld_epsilon` prices events with dp_accounting's privacy-loss-distribution accountant,
  the tightest option for subsampled steps.

The core package never imports these libraries; only calling these functions does.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

from ..privacy import ComposedEvent, GaussianEvent, PoissonSampledEvent, PrivacyEvent, SelfComposedEvent, neighbour_of
from ._accountant import PrivacyAccountant, as_event

__all__ = ["to_dp_accounting", "from_dp_accounting", "from_opacus", "pld_epsilon"]


def _dpa():
    try:
        import dp_accounting
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("this bridge needs dp_accounting: pip install 'dplowrank[accounting]'") from exc
    return dp_accounting


def _events_of(obj: Any) -> PrivacyEvent:
    if isinstance(obj, PrivacyAccountant):
        return obj.composed_event()
    return as_event(obj)


def to_dp_accounting(obj: Any):
    """The ``dp_accounting.DpEvent`` of an event, a release or a whole :class:`PrivacyAccountant`.

    dp_accounting's events carry no neighbour relation (its accountants take one):
    price the result with ``neighboring_relation`` set to ``neighbour_of`` the events, as
    :func:`pld_epsilon` does."""
    dpa = _dpa()

    def conv(e: PrivacyEvent):
        if isinstance(e, GaussianEvent):
            return dpa.GaussianDpEvent(e.noise_multiplier)
        if isinstance(e, PoissonSampledEvent):
            return dpa.PoissonSampledDpEvent(e.sampling_probability, conv(e.event))
        if isinstance(e, SelfComposedEvent):
            return dpa.SelfComposedDpEvent(conv(e.event), e.count)
        return dpa.ComposedDpEvent([conv(x) for x in e.events])

    return conv(_events_of(obj))


def from_dp_accounting(event: Any, neighbour: str | None) -> PrivacyEvent:
    """Read a ``dp_accounting.DpEvent`` built from Gaussian, Poisson-sampled and composed events.

    dp_accounting's events do not say which neighbour relation their noise multipliers are
    for (its accountants do), so ``neighbour`` is required: "add_remove" or "replace" states
    it on the Gaussian events (Poisson-sampled steps are add/remove events in any case), and
    ``None`` deliberately leaves it unstated (such events compose with either relation: the
    caller vouches for them).
    """
    dpa = _dpa()
    if isinstance(event, dpa.GaussianDpEvent):
        return GaussianEvent(event.noise_multiplier, neighbour)
    if isinstance(event, dpa.PoissonSampledDpEvent):
        # cast: the constructor refuses (TypeError) an inner event that is not Gaussian
        inner = cast(GaussianEvent, from_dp_accounting(event.event, neighbour))
        return PoissonSampledEvent(event.sampling_probability, inner)
    if isinstance(event, dpa.SelfComposedDpEvent):
        return SelfComposedEvent(from_dp_accounting(event.event, neighbour), event.count)
    if isinstance(event, dpa.ComposedDpEvent):
        return ComposedEvent(tuple(from_dp_accounting(e, neighbour) for e in event.events))
    raise ValueError(f"dplowrank cannot price the dp_accounting event {event!r}")


def from_opacus(accountant: Any) -> ComposedEvent:
    """Events for the DP-SGD steps recorded by an opacus accountant.

    opacus accountants (RDP, PRV, GDP) keep ``history`` as a list of
    ``(noise_multiplier, sample_rate, num_steps)``; each entry becomes ``num_steps``
    Poisson-sampled Gaussian steps (plain Gaussian releases when the sample rate is 1).

    Parameters
    ----------
    accountant : opacus.accountants.IAccountant
        Anything with such a ``history``.

    Returns
    -------
    ComposedEvent

    Raises
    ------
    TypeError
        If ``accountant`` has no ``history``.
    ValueError
        For an entry that is not a triple, or whose step count is not a whole number
        ≥ 0 (a fractional count is refused, never truncated).
    """
    history = getattr(accountant, "history", None)
    if history is None:
        raise TypeError(f"expected an opacus accountant with a .history, got {type(accountant).__name__}")
    out = []
    for entry in history:
        try:
            z, q, steps = entry
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unexpected opacus history entry {entry!r}") from exc
        z, q = float(z), float(q)
        # opacus accounts DP-SGD under add/remove neighbours (Poisson sampling)
        step = GaussianEvent(z, "add_remove") if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(z, "add_remove"))
        out.append(SelfComposedEvent(step, _step_count(steps, entry)))
    return ComposedEvent(tuple(out))


def _step_count(steps: object, entry: object) -> int:
    """``steps`` as an int if it is a whole number ≥ 0 (``numpy.int64``, ``500.0``), else ``ValueError``."""
    # an Integral is taken before math.isfinite, which overflows on a huge int
    if not isinstance(steps, bool) and (
        isinstance(steps, numbers.Integral)
        or (isinstance(steps, numbers.Real) and math.isfinite(steps) and float(steps).is_integer())
    ):
        # typeshed's numbers.Real has no __int__; float, the numpy floats and Fraction all convert exactly here
        n = int(steps)  # type: ignore[call-overload]
    else:
        raise ValueError(f"the number of steps must be a whole number, got {steps!r} in opacus history entry {entry!r}")
    if n < 0:
        raise ValueError(f"the number of steps must be >= 0, got {steps!r} in opacus history entry {entry!r}")
    return n


def pld_epsilon(obj: Any, delta: float, *, value_discretization_interval: float = 1e-4) -> float:
    """ε(δ) of an event / release / accountant by dp_accounting's PLD accountant."""
    _dpa()  # a clear ImportError without the extra
    from dp_accounting.pld import pld_privacy_accountant

    # A Gaussian event's z is relative to the sensitivity of its own relation, and its privacy
    # loss is that of N(0, z²) against N(1, z²) for either relation; subsampled events are
    # add/remove only (PoissonSampledEvent). dp_accounting's default relation therefore prices
    # every event as stated (its REPLACE_ONE would re-derive a replace bound for z itself).
    neighbour_of(_events_of(obj))  # a mix of relations is refused
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=value_discretization_interval)
    acc.compose(to_dp_accounting(obj))
    return float(acc.get_epsilon(delta))
