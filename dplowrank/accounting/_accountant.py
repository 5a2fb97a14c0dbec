"""Composition of privacy events: exact GDP, zCDP and RDP, and the accountant that holds them.

Methods (all give valid upper bounds; "auto" takes the smallest valid one):

* ``"gdp"`` — exact for Gaussian releases without subsampling: μ-GDP composes as
  μ = √(Σ μᵢ²) (Dong, Roth & Su 2019, arXiv:1905.02383, Cor. 3.3), converted with the exact
  δ(ε) curve of Balle & Wang (2018, Thm 8). Nothing tighter exists for these events.
* ``"zcdp"`` — ρ = Σ μᵢ²/2 (Bun & Steinke 2016, arXiv:1605.02065, Lemma 2.3), converted with
  Canonne, Kamath & Steinke (2020, arXiv:2004.00010, Prop. 12) optimised over all α > 1.
  Gaussian releases without subsampling only.
* ``"rdp"`` — Rényi DP summed over a grid of orders (opacus' grid by default), covering
  Poisson-subsampled Gaussian steps (Mironov, Talwar & Zhang 2019), converted with the
  same Prop. 12 as opacus does.
* ``"pld"`` — the privacy-loss distribution of the whole composition, by Google's
  dp_accounting (pessimistic, connect-the-dots discretisation: Doroshenko, Ghazi, Kamath,
  Kumar & Manurangsi 2022, arXiv:2207.04380; Koskela, Jälkö & Honkela 2020). Offered when
  dp_accounting is installed; "auto" uses it for Poisson-subsampled records, where it is
  tighter than RDP (GDP is exact, and faster, for records without subsampling). Its δ is
  padded by the same relative 1e-7 as the GDP curve plus an absolute 1e-15 per composed step
  (dp_accounting's FFT self-composition loses accuracy in proportion to the step count; see
  ``PLD_PAD_PER_STEP``), ε(δ) uses it only for δ ≥ 100 times that pad, and a record it cannot price
  (dp_accounting missing or failing, an astronomically long run) leaves "auto" on RDP.

Degenerate events are priced first and explicitly (as dp_accounting does): a Gaussian with
z = ∞ and a Poisson-sampled step with q = 0 cost nothing; a step with q = 1 is the plain
Gaussian release. A z so small that μ² = 1/z² overflows in floating point costs ε = ∞.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .._validation import check_choice, check_delta, check_positive
from ..privacy import (
    DEFAULT_ORDERS,
    DELTA_SAFETY,
    EVENT_TYPES,
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    count_as_float,
    gaussian_rdp,
    gdp_delta,
    gdp_epsilon,
    neighbour_of,
    pad_delta,
    rdp_to_delta,
    rdp_to_epsilon,
    sampled_gaussian_rdp,
    sum_mu2,
    zcdp_delta,
    zcdp_epsilon,
)

__all__ = ["METHODS", "PrivacyAccountant", "as_event"]

METHODS = ("auto", "gdp", "zcdp", "rdp", "pld")

#: dp_accounting's discretisation of the privacy loss (its default); the pessimistic rounding
#: keeps the bound valid at any interval, a finer one is tighter and slower.
PLD_INTERVAL = 1e-4
#: Longest self-composition handed to dp_accounting (its FFT grows with the count).
_PLD_MAX_COUNT = 10**7
#: Absolute error allowed for per composed step in a PLD's δ. dp_accounting composes n steps
#: as ifft(fft(p)ⁿ), which multiplies rounding error by about n, and then cuts the far tail as
#: if it were below 1e-15: an independent audit (tilted squaring, a rigorous optimistic lower
#: bound, a saddlepoint estimate) measured δ errors of 1.6e-12 at n = 10⁵ (q = 0.01, z = 1),
#: 6e-12 at n = 10⁶ and 1.6e-11 at n = 10⁷. The PLD's δ is padded by n·1e-15 (6–600× those
#: errors), and ε(δ) uses the PLD only for δ ≥ 100 times that pad; below, "auto" prices by RDP.
PLD_PAD_PER_STEP = 1e-15


def pld_installed() -> bool:
    """Whether dp_accounting (the ``accounting`` extra) can be imported for the "pld" method."""
    try:
        return importlib.util.find_spec("dp_accounting") is not None
    except (ImportError, ValueError):  # pragma: no cover - a broken installation
        return False


@functools.lru_cache(maxsize=64)
def _gaussian_pld(mu: float, interval: float):
    """PLD of a μ-GDP Gaussian release (z = 1/μ): Gaussian releases compose exactly into one."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.from_gaussian_mechanism(standard_deviation=1.0 / mu, value_discretization_interval=interval)


@functools.lru_cache(maxsize=64)
def _sampled_pld(q: float, z: float, count: int, interval: float):
    """PLD of ``count`` Poisson-subsampled Gaussian steps (add/remove neighbours)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    step = pld.from_gaussian_mechanism(standard_deviation=z, sampling_prob=q, value_discretization_interval=interval)
    return step.self_compose(count) if count > 1 else step


def as_event(obj: object) -> PrivacyEvent:
    """The privacy event of an event, a release (``privacy_event``) or a mechanism (``event``)."""
    if isinstance(obj, EVENT_TYPES):
        return obj
    for attr in ("privacy_event", "event"):
        inner = getattr(obj, attr, None)
        if isinstance(inner, EVENT_TYPES):
            return inner
    raise TypeError(f"not a privacy event, release or mechanism: {obj!r} of type {type(obj).__name__}")


def _offered(value: float | None, method: str) -> float:
    """μ or ρ of a method that :meth:`PrivacyAccountant._resolve` offered: never ``None`` then."""
    if value is None:  # pragma: no cover - _resolve offers gdp and zcdp only for Gaussian-only records
        raise RuntimeError(f"method {method!r} was offered for a record it cannot price")
    return value


def _leaves(event: PrivacyEvent, count: int = 1) -> Iterable[tuple[GaussianEvent | PoissonSampledEvent, int]]:
    """(Gaussian or Poisson-sampled event, multiplicity) pairs of a composition.

    Zero-cost leaves (z = ∞, q = 0, count 0) are left out and a step with q = 1 is
    replaced by its Gaussian, so what remains is priced by the methods valid for it.
    """
    if isinstance(event, GaussianEvent):
        if count and not math.isinf(event.noise_multiplier):
            yield event, count
    elif isinstance(event, PoissonSampledEvent):
        q = event.sampling_probability
        if q == 1.0:
            yield from _leaves(event.event, count)
        elif q > 0.0 and count and not math.isinf(event.event.noise_multiplier):
            yield event, count
    elif isinstance(event, SelfComposedEvent):
        yield from _leaves(event.event, count * event.count)
    elif isinstance(event, ComposedEvent):
        for e in event.events:
            yield from _leaves(e, count)
    else:  # pragma: no cover - _check_event rejects these earlier
        raise TypeError(f"not a privacy event: {event!r}")


class PrivacyAccountant:
    """The privacy cost of a sequence of releases, priced by the tightest valid method.

    Parameters
    ----------
    events : iterable, optional
        Initial events (or releases / mechanisms, whose ``privacy_event`` is taken).
    orders : sequence of float, optional
        RDP orders (default: opacus' ``DEFAULT_ALPHAS`` grid).

    Notes
    -----
    Events of different neighbour relations ("add_remove" and "replace") are refused:
    :meth:`add` raises ``ValueError`` and records nothing (restate add/remove events with
    :meth:`GaussianEvent.for_replace`). Events with no stated relation compose with either.

    Examples
    --------
    >>> acc = PrivacyAccountant()
    >>> for _ in range(10):
    ...     _ = acc.add(GaussianEvent(3.0))
    >>> round(acc.epsilon(1e-5), 4), round(acc.epsilon(1e-5, method="rdp"), 4)
    (4.653, 5.0239)
    """

    def __init__(self, events: Iterable[object] = (), *, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        orders = tuple(float(a) for a in orders)
        if not orders or any(not (a > 1.0) or math.isinf(a) for a in orders):
            raise ValueError(f"RDP orders must be finite and > 1, got {orders!r}")
        self._orders = orders
        self._events: list[PrivacyEvent] = []
        self._neighbour: str | None = None
        for e in events:
            self.add(e)

    # ---- recording --------------------------------------------------------------------
    def add(self, release_or_event: object, count: int = 1) -> PrivacyAccountant:
        """Record ``count`` applications of an event (or of a release's ``privacy_event``)."""
        event = as_event(release_or_event)
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        count = int(count)
        new = event if count == 1 else SelfComposedEvent(event, count)
        relation = neighbour_of(new)
        if relation is not None and self._neighbour not in (None, relation):
            raise ValueError(
                f"cannot compose a {relation!r} event with the {self._neighbour!r} events recorded: their "
                "guarantees are for different neighbour relations; restate the add/remove ones with "
                "GaussianEvent.for_replace() first"
            )
        self._events.append(new)
        self._neighbour = self._neighbour or relation
        return self

    @property
    def neighbour(self) -> str | None:
        """The neighbour relation of the recorded events (``None`` if none states one)."""
        return self._neighbour

    def copy(self) -> PrivacyAccountant:
        return PrivacyAccountant(self._events, orders=self._orders)

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return tuple(self._events)

    @property
    def orders(self) -> tuple[float, ...]:
        return self._orders

    def composed_event(self) -> ComposedEvent:
        """All recorded events as one ``ComposedEvent``."""
        return ComposedEvent(tuple(self._events))

    # ---- per-method quantities --------------------------------------------------------
    def _free(self) -> bool:
        """Whether nothing recorded costs anything (no events, or only z = ∞, q = 0, count 0)."""
        return next(iter(_leaves(self.composed_event())), None) is None

    def _gaussian_only(self) -> bool:
        return all(isinstance(e, GaussianEvent) for e, _ in _leaves(self.composed_event()))

    def mu(self) -> float | None:
        """Total GDP μ = √(Σ μᵢ²), or ``None`` when a subsampled event makes GDP inexact.

        ``inf`` when the sum overflows (a release with almost no noise): ε is then ∞.
        """
        if not self._gaussian_only():
            return None
        # every leaf is a GaussianEvent here (checked above)
        return math.sqrt(sum_mu2((e.mu, n) for e, n in _leaves(self.composed_event()) if isinstance(e, GaussianEvent)))

    def rho(self) -> float | None:
        """Total zCDP ρ = Σ μᵢ²/2, or ``None`` for subsampled events."""
        mu = self.mu()
        return None if mu is None else 0.5 * mu * mu

    def rdp(self, orders: Sequence[float] | None = None) -> np.ndarray:
        """Total RDP ε(α) at ``orders`` (default: the accountant's grid)."""
        a = np.asarray(self._orders if orders is None else orders, dtype=float)
        total = np.zeros_like(a)
        for e, n in _leaves(self.composed_event()):
            if isinstance(e, GaussianEvent):
                r = gaussian_rdp(e.noise_multiplier, a)
            else:
                r = sampled_gaussian_rdp(e.sampling_probability, e.event.noise_multiplier, a)
            with np.errstate(over="ignore", invalid="ignore"):
                total += np.where(r > 0.0, count_as_float(n) * r, 0.0)  # never ∞·0
        return total

    def valid_methods(self) -> tuple[str, ...]:
        """The methods "auto" takes the smallest of for the recorded events.

        Records without subsampling: ("gdp", "zcdp", "rdp") — GDP is exact for them.
        With Poisson-subsampled steps: ("rdp", "pld"), or ("rdp",) without dp_accounting.
        ``method="pld"`` may still be asked for explicitly on a record without subsampling.
        """
        if self._gaussian_only():
            return ("gdp", "zcdp", "rdp")
        return ("rdp", "pld") if pld_installed() else ("rdp",)

    def pld(self):
        """The record's privacy-loss distribution (a dp_accounting ``PrivacyLossDistribution``).

        Gaussian releases are merged into one exact μ-GDP Gaussian first, and Poisson-sampled
        steps with the same (q, z) into one self-composition. Cached per (q, z, count).

        Raises
        ------
        ImportError
            Without dp_accounting (``pip install 'dplowrank[accounting]'``).
        ValueError
            For a self-composition longer than dp_accounting can take here (10⁷ steps), or
            a μ too large to discretise.
        """
        if not pld_installed():
            raise ImportError("method='pld' needs dp_accounting: pip install 'dplowrank[accounting]'")
        from dp_accounting.pld import privacy_loss_distribution as pld

        mu2: list[tuple[float, int]] = []
        steps: Counter[tuple[float, float]] = Counter()
        for e, n in _leaves(self.composed_event()):
            if isinstance(e, GaussianEvent):
                mu2.append((e.mu, n))
            else:
                steps[(e.sampling_probability, e.event.noise_multiplier)] += n
        out = pld.identity(value_discretization_interval=PLD_INTERVAL)
        if mu2:
            mu = math.sqrt(sum_mu2(mu2))
            if not math.isfinite(mu) or mu > 1e6:
                raise ValueError(f"a total μ of {mu:g} is beyond what the PLD discretisation can take")
            out = out.compose(_gaussian_pld(mu, PLD_INTERVAL))
        for (q, z), n in sorted(steps.items()):
            if n > _PLD_MAX_COUNT:
                raise ValueError(f"{n} Poisson-sampled steps exceed the {_PLD_MAX_COUNT} the PLD method takes here")
            out = out.compose(_sampled_pld(q, z, n, PLD_INTERVAL))
        return out

    def _pld_pad(self) -> float:
        """The absolute padding of the PLD's δ: :data:`PLD_PAD_PER_STEP` per composed step."""
        steps = sum(n for e, n in _leaves(self.composed_event()) if isinstance(e, PoissonSampledEvent))
        return PLD_PAD_PER_STEP * (1 + steps)

    def _pld_or_none(self, strict: bool):
        """:meth:`pld`, or ``None`` when "auto" must fall back to the other methods.

        numpy's overflow, invalid and divide-by-zero are errors inside dp_accounting here (an
        extreme z would otherwise give a warning and a meaningless distribution).
        """
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                return self.pld()
        except (ImportError, ValueError, OverflowError, MemoryError, FloatingPointError):
            if strict:
                raise
            return None

    # ---- conversions -------------------------------------------------------------------
    def _resolve(self, method: str) -> tuple[str, ...]:
        check_choice(method, "method", METHODS)
        valid = self.valid_methods()
        if method == "auto":
            return valid
        if method == "pld":
            if not pld_installed():
                raise ValueError("method='pld' needs dp_accounting: pip install 'dplowrank[accounting]'")
            return (method,)
        if method not in valid:
            raise ValueError(
                f"method={method!r} cannot price Poisson-subsampled events; use 'rdp', 'pld' or 'auto'"
            )
        return (method,)

    def epsilon(self, delta: float, method: str = "auto") -> float:
        """ε such that everything recorded is (ε, δ)-DP.

        Parameters
        ----------
        delta : float
            δ in (0, 1).
        method : {"auto", "gdp", "zcdp", "rdp", "pld"}
            "auto" returns the smallest ε over :meth:`valid_methods`.
        """
        delta = check_delta(delta)
        methods = self._resolve(method)
        if self._free():
            return 0.0
        out = math.inf
        for m in methods:
            if m == "gdp":
                out = min(out, gdp_epsilon(_offered(self.mu(), m), delta))
            elif m == "zcdp":
                out = min(out, zcdp_epsilon(_offered(self.rho(), m), delta))
            elif m == "pld":
                pad = self._pld_pad()
                if delta < 100.0 * pad:  # below the PLD's numerical accuracy: priced by the others
                    if method == "pld":
                        raise ValueError(
                            f"delta={delta:g} is below what the PLD of this record resolves (100 × {pad:.3g}, its "
                            "numerical error bound); use method='rdp' or 'auto'"
                        )
                    continue
                loss = self._pld_or_none(strict=method == "pld")
                if loss is not None:
                    # ε at (δ − pad)/(1 + 1e-7): the padded δ(ε) of this ε is then at most δ
                    out = min(out, float(loss.get_epsilon_for_delta((delta - pad) / DELTA_SAFETY)))
            else:
                out = min(out, rdp_to_epsilon(self.rdp(), self._orders, delta)[0])
        return out

    def delta(self, epsilon: float, method: str = "auto") -> float:
        """δ such that everything recorded is (ε, δ)-DP ("auto": the smallest valid one)."""
        epsilon = check_positive(epsilon, "epsilon", allow_zero=True)
        methods = self._resolve(method)
        if self._free():
            return 0.0
        out = 1.0
        for m in methods:
            if m == "gdp":
                out = min(out, gdp_delta(_offered(self.mu(), m), epsilon))
            elif m == "zcdp":
                out = min(out, zcdp_delta(_offered(self.rho(), m), epsilon))
            elif m == "pld":
                pad = self._pld_pad()
                if pad >= out:  # the PLD's error bound alone exceeds what RDP already gives
                    continue
                loss = self._pld_or_none(strict=method == "pld")
                if loss is not None:
                    out = min(out, pad_delta(float(loss.get_delta_for_epsilon(epsilon))) + pad)
            else:
                out = min(out, rdp_to_delta(self.rdp(), self._orders, epsilon)[0])
        return out

    def report(self, delta: float) -> dict[str, float]:
        """ε(δ) by every method of :meth:`valid_methods`, e.g. ``{"gdp": 4.65, "zcdp": 4.9, "rdp": 5.02}``."""
        return {m: self.epsilon(delta, method=m) for m in self.valid_methods()}

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"PrivacyAccountant({len(self._events)} events, methods={self.valid_methods()})"
