"""Privacy events: immutable records of what was released, apart from how it is priced.

The classes mirror dp_accounting's ``DpEvent`` family (``GaussianDpEvent``,
``PoissonSampledDpEvent``, ``SelfComposedDpEvent``, ``ComposedDpEvent``) so that the
bridge in :mod:`dplowrank.accounting.bridges` is a one-to-one translation. Each event has
a JSON form (``to_dict`` / :func:`event_from_dict`) that round-trips exactly; reading an
unknown or malformed form raises ``ValueError`` rather than guessing.

The JSON form is standard JSON (RFC 8259, no ``Infinity`` or ``NaN`` tokens): the one
non-finite value an event can hold, the noise multiplier ``math.inf`` of a release that
reveals nothing, is written as the string ``"inf"``.

Neighbour relation. A noise multiplier means something only for a stated neighbour
relation: z = σ/Δ with Δ the sensitivity under "add_remove" (one record added or removed) or
under "replace" (one record changed). The two guarantees do not compose into either one, so
every event records its relation (``neighbour``; ``None`` when the caller declared a
sensitivity without naming one, and vouches for it), composite events refuse to mix
"add_remove" with "replace", and :meth:`GaussianEvent.for_replace` converts an add/remove
event explicitly. Poisson-subsampled events are add/remove events (the subsampling
amplification bound used for them is proved for that relation).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import cast

__all__ = [
    "GaussianEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "ComposedEvent",
    "PrivacyEvent",
    "EVENT_NEIGHBOURS",
    "EVENT_TYPES",
    "event_from_dict",
    "neighbour_of",
]

#: The relations an event can be stated for (``None``: unspecified, vouched for by the caller).
EVENT_NEIGHBOURS = ("add_remove", "replace")

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


def _check_neighbour(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in EVENT_NEIGHBOURS):
        raise ValueError(f"neighbour must be one of {EVENT_NEIGHBOURS} or None, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """One release of the Gaussian mechanism with noise multiplier z = σ/Δ.

    The event is μ-GDP with μ = 1/z exactly (Dong, Roth & Su 2019, arXiv:1905.02383,
    Thm 2.7), for the neighbour relation Δ was computed for. It mirrors
    ``dp_accounting.GaussianDpEvent(noise_multiplier)`` (where the relation is set on the
    accountant). The complex Hermitian mechanism is recorded with the noise multiplier of
    its real isotropic part, which carries all the information about the data (see
    ``ComplexGaussianMechanism``).

    Parameters
    ----------
    noise_multiplier : float
        z = σ/Δ > 0 (``math.inf`` for a release that reveals nothing, serialised as
        ``"inf"``). A z so small that μ² = 1/z² overflows is accepted and priced at
        ε = ∞ (nothing is hidden), never an ``OverflowError``.
    neighbour : {"add_remove", "replace"} or None, default None
        The relation Δ is a sensitivity for; ``None``: not stated (the caller vouches that
        it matches the events it is composed with).
    """

    noise_multiplier: float
    neighbour: str | None = None

    def __post_init__(self) -> None:
        z = _real("noise_multiplier", self.noise_multiplier)
        if z <= 0:
            raise ValueError(f"noise_multiplier must be > 0 (or inf), got {self.noise_multiplier!r}")
        object.__setattr__(self, "noise_multiplier", z)
        _check_neighbour(self.neighbour)

    @property
    def mu(self) -> float:
        """The GDP parameter μ = Δ/σ = 1/z."""
        return 0.0 if math.isinf(self.noise_multiplier) else 1.0 / self.noise_multiplier

    def for_replace(self, sensitivity_ratio: float = 2.0) -> GaussianEvent:
        """This add/remove event restated for the replace relation.

        Replacing a record is removing one and adding another, so a replace-neighbour
        sensitivity is at most ``sensitivity_ratio`` × the add/remove one: 2 in general
        (triangle inequality), √2 for a Gram of rows clipped to one norm
        (``dplowrank.gram_sensitivity``). The event's μ grows by that ratio:
        z' = z / ratio. Only add/remove (or unstated) events convert: a replace guarantee
        implies nothing about adding or removing a record.
        """
        if self.neighbour == "replace":
            return self
        r = _real("sensitivity_ratio", sensitivity_ratio)
        if not 1.0 <= r < math.inf:
            raise ValueError(f"sensitivity_ratio must be in [1, inf), got {sensitivity_ratio!r}")
        # z/r rounded down: the restated μ is never below the true one
        z = self.noise_multiplier / r
        if not math.isinf(z) and z * r > self.noise_multiplier:
            z = math.nextafter(z, 0.0)
        return GaussianEvent(z, "replace")

    def to_dict(self) -> dict:
        """A JSON-ready dict that :func:`event_from_dict` reads back exactly."""
        z = self.noise_multiplier
        return {"type": "gaussian", "noise_multiplier": _INF if math.isinf(z) else z, "neighbour": self.neighbour}


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
    event: GaussianEvent

    def __post_init__(self) -> None:
        q = _real("sampling_probability", self.sampling_probability)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"sampling_probability must lie in [0, 1], got {self.sampling_probability!r}")
        if not isinstance(self.event, GaussianEvent):
            raise TypeError(
                f"PoissonSampledEvent prices Gaussian inner events only, got {type(self.event).__name__}"
            )
        if self.event.neighbour == "replace":
            raise ValueError(
                "a Poisson-subsampled event is an add/remove event (its amplification bound is proved "
                "for that relation); its inner GaussianEvent cannot be stated for 'replace'"
            )
        object.__setattr__(self, "sampling_probability", q)

    @property
    def neighbour(self) -> str:
        """Always "add_remove" (see the module docstring)."""
        return "add_remove"

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

    event: PrivacyEvent
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, numbers.Integral) or self.count < 0:
            raise ValueError(f"count must be an integer >= 0, got {self.count!r}")
        _check_event(self.event)
        object.__setattr__(self, "count", int(self.count))

    @property
    def neighbour(self) -> str | None:
        return neighbour_of(self.event)

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
        neighbour_of(self)  # refuses a mix of add/remove and replace

    @property
    def neighbour(self) -> str | None:
        return neighbour_of(self)

    def to_dict(self) -> dict:
        return {"type": "composed", "events": [e.to_dict() for e in self.events]}


PrivacyEvent = GaussianEvent | PoissonSampledEvent | SelfComposedEvent | ComposedEvent
EVENT_TYPES = (GaussianEvent, PoissonSampledEvent, SelfComposedEvent, ComposedEvent)


def _check_event(e: object) -> None:
    if not isinstance(e, EVENT_TYPES):
        raise TypeError(f"not a privacy event: {e!r} of type {type(e).__name__}")


def neighbour_of(event: PrivacyEvent) -> str | None:
    """The neighbour relation of an event: the one its stated leaves share, or ``None``.

    Raises ``ValueError`` when it holds both "add_remove" and "replace" events: their
    guarantees do not compose into either; convert with :meth:`GaussianEvent.for_replace`.
    """
    found: set[str] = set()
    stack = [event]
    while stack:
        e = stack.pop()
        if isinstance(e, GaussianEvent):
            if e.neighbour is not None:
                found.add(e.neighbour)
        elif isinstance(e, PoissonSampledEvent):
            found.add("add_remove")
        elif isinstance(e, SelfComposedEvent):
            stack.append(e.event)
        elif isinstance(e, ComposedEvent):
            stack.extend(e.events)
    if len(found) > 1:
        raise ValueError(
            "cannot compose add_remove and replace events: their guarantees are for different "
            "neighbour relations; restate the add/remove ones with GaussianEvent.for_replace() first"
        )
    return found.pop() if found else None


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
        For an unknown type, a missing or ill-typed field (a Gaussian event's
        ``"neighbour"`` is required; ``null`` means not stated), or nesting deeper than
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
            return GaussianEvent(math.inf if z == _INF else z, obj["neighbour"])  # required: null = unstated
        if kind == "poisson_sampled":
            # cast: the constructor refuses (TypeError) an inner event that is not Gaussian
            inner = cast(GaussianEvent, _from_dict(obj["event"], depth + 1))
            return PoissonSampledEvent(obj["sampling_probability"], inner)
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
