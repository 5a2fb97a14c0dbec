"""Privacy events: immutable records of what was released, apart from how it is priced.

The classes mirror dp_accounting's ``DpEvent`` family (``GaussianDpEvent``,
``PoissonSampledDpEvent``, ``SelfComposedDpEvent``, ``ComposedDpEvent``) so that the
bridge in :mod:`dplowrank.accounting.bridges` is a one-to-one translation. Each event has
a JSON form (``to_dict`` / :func:`event_from_dict`) that round-trips exactly; reading an
unknown or malformed form raises ``ValueError`` rather than guessing.

The JSON form is standard JSON (RFC 8259, no ``Infinity`` or ``NaN`` tokens): the one
non-finite value an event can hold, the noise multiplier ``math.inf`` of a release that
reveals nothing, is written as the string ``"inf"``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Union

__all__ = [
    "GaussianEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "ComposedEvent",
    "PrivacyEvent",
    "event_from_dict",
]

#: Serialised events nest at most this deep (a guard against hostile files, far above any real plan).
_MAX_DEPTH = 100

#: How ``math.inf`` is spelled in the JSON form (standard JSON has no infinity).
_INF = "inf"


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """One release of the Gaussian mechanism with noise multiplier z = σ/Δ.

    The event is μ-GDP with μ = 1/z exactly (Dong, Roth & Su 2019, arXiv:1905.02383,
    Thm 2.7). It mirrors ``dp_accounting.GaussianDpEvent(noise_multiplier)``. The complex
    Hermitian mechanism is recorded with the noise multiplier of its real isotropic part,
    which carries all the information about the data (see ``ComplexGaussianMechanism``).

    Parameters
    ----------
    noise_multiplier : float
        z = σ/Δ > 0 (``math.inf`` for a release that reveals nothing, serialised as
        ``"inf"``). A z so small that μ² = 1/z² overflows is accepted and priced at
        ε = ∞ (nothing is hidden), never an ``OverflowError``.
    """

    noise_multiplier: float

    def __post_init__(self) -> None:
        z = _real("noise_multiplier", self.noise_multiplier)
        if z <= 0:
            raise ValueError(f"noise_multiplier must be > 0 (or inf), got {self.noise_multiplier!r}")
        object.__setattr__(self, "noise_multiplier", z)

    @property
    def mu(self) -> float:
        """The GDP parameter μ = Δ/σ = 1/z."""
        return 0.0 if math.isinf(self.noise_multiplier) else 1.0 / self.noise_multiplier

    def to_dict(self) -> dict:
        """A JSON-ready dict that :func:`event_from_dict` reads back exactly."""
        z = self.noise_multiplier
        return {"type": "gaussian", "noise_multiplier": _INF if math.isinf(z) else z}


@dataclass(frozen=True, slots=True)
class PoissonSampledEvent:
    """``event`` applied to a Poisson subsample: each record is kept with probability q.

    One DP-SGD step is ``PoissonSampledEvent(q, GaussianEvent(z))``. Mirrors
    ``dp_accounting.PoissonSampledDpEvent``; only Gaussian inner events are priced.
    The accountant prices q = 1 as the plain Gaussian release and q = 0 as nothing
    (so GDP and zCDP stay available for them).

    Parameters
    ----------
    sampling_probability : float
        q in [0, 1], the probability that each record is in the subsample.
    event : GaussianEvent
        The mechanism run on the subsample.
    """

    sampling_probability: float
    event: "GaussianEvent"

    def __post_init__(self) -> None:
        q = _real("sampling_probability", self.sampling_probability)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"sampling_probability must lie in [0, 1], got {self.sampling_probability!r}")
        if not isinstance(self.event, GaussianEvent):
            raise TypeError(
                f"PoissonSampledEvent prices Gaussian inner events only, got {type(self.event).__name__}"
            )
        object.__setattr__(self, "sampling_probability", q)

    def to_dict(self) -> dict:
        return {"type": "poisson_sampled", "sampling_probability": self.sampling_probability,
                "event": self.event.to_dict()}


@dataclass(frozen=True, slots=True)
class SelfComposedEvent:
    """``event`` composed with itself ``count`` times (mirrors ``SelfComposedDpEvent``).

    Parameters
    ----------
    event : PrivacyEvent
        The repeated event.
    count : int
        How many times, ≥ 0 (any integral type, e.g. ``numpy.int64``).
    """

    event: "PrivacyEvent"
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, numbers.Integral) or self.count < 0:
            raise ValueError(f"count must be an integer >= 0, got {self.count!r}")
        _check_event(self.event)
        object.__setattr__(self, "count", int(self.count))

    def to_dict(self) -> dict:
        return {"type": "self_composed", "count": self.count, "event": self.event.to_dict()}


@dataclass(frozen=True, slots=True)
class ComposedEvent:
    """Several events composed (mirrors ``ComposedDpEvent``).

    Parameters
    ----------
    events : iterable of PrivacyEvent
        Stored as a tuple.
    """

    events: tuple

    def __post_init__(self) -> None:
        events = tuple(self.events)
        for e in events:
            _check_event(e)
        object.__setattr__(self, "events", events)

    def to_dict(self) -> dict:
        return {"type": "composed", "events": [e.to_dict() for e in self.events]}


PrivacyEvent = Union[GaussianEvent, PoissonSampledEvent, SelfComposedEvent, ComposedEvent]
_EVENT_TYPES = (GaussianEvent, PoissonSampledEvent, SelfComposedEvent, ComposedEvent)


def _check_event(e: object) -> None:
    if not isinstance(e, _EVENT_TYPES):
        raise TypeError(f"not a privacy event: {e!r} of type {type(e).__name__}")


def event_from_dict(obj: object) -> PrivacyEvent:
    """Rebuild an event written by ``to_dict``.

    Parameters
    ----------
    obj : dict
        A serialised event (as parsed from JSON).

    Returns
    -------
    PrivacyEvent

    Raises
    ------
    ValueError
        For an unknown type, a missing or ill-typed field, or nesting deeper than
        100 levels.
    """
    return _from_dict(obj, 0)


def _from_dict(obj: object, depth: int) -> PrivacyEvent:
    if depth > _MAX_DEPTH:
        raise ValueError(f"serialised privacy event nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(obj, dict) or "type" not in obj:
        raise ValueError(f"not a serialised privacy event: {_short(obj)}")
    kind = obj["type"]
    try:
        if kind == "gaussian":
            z = obj["noise_multiplier"]
            return GaussianEvent(math.inf if z == _INF else z)
        if kind == "poisson_sampled":
            return PoissonSampledEvent(obj["sampling_probability"], _from_dict(obj["event"], depth + 1))
        if kind == "self_composed":
            return SelfComposedEvent(_from_dict(obj["event"], depth + 1), obj["count"])
        if kind == "composed":
            if not isinstance(obj["events"], list):
                raise ValueError(f"'events' must be a list, got {_short(obj['events'])}")
            return ComposedEvent(tuple(_from_dict(e, depth + 1) for e in obj["events"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed privacy event {_short(obj)}: {exc}") from exc
    raise ValueError(f"unknown privacy event type {_short(kind)}")


def _short(obj: object, limit: int = 200) -> str:
    """``repr(obj)`` cut to ``limit`` characters (error messages about hostile input stay short)."""
    try:
        text = repr(obj)
    except RecursionError:
        return f"<{type(obj).__name__} nested too deep to show>"
    return text if len(text) <= limit else text[:limit] + "..."
