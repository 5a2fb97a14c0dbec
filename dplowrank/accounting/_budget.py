"""A privacy budget that releases consult before any noise is drawn, and that survives restarts."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from .._io import atomic_write_bytes
from .._validation import check_choice, check_delta, check_epsilon
from ._accountant import METHODS, PrivacyAccountant, as_event
from ._events import PrivacyEvent, event_from_dict
from ._rdp import DEFAULT_ORDERS

__all__ = ["BudgetExceededError", "PrivacyBudget"]

_FORMAT = "dplowrank.PrivacyBudget"
_VERSION = 1


class BudgetExceededError(ValueError):
    """A release would take the total privacy cost past the budget; nothing was charged."""


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class PrivacyBudget:
    """A total (ε, δ) with a ledger of what has been spent.

    :meth:`spend` (called by :func:`dplowrank.release_rank_k` with ``budget=``) prices the
    ledger plus the new event *before* any noise is drawn and refuses, charging nothing,
    when the total would exceed ε at δ. The check compares δ(ε_budget) of the composition
    with δ_budget, which is exact for Gaussian releases (no bisection tolerance can let a
    release slip over). With ``path``, the ledger is written atomically after every charge
    and a restarted process resumes it with :meth:`load`.

    Parameters
    ----------
    epsilon : float
        Total ε > 0.
    delta : float
        Total δ in (0, 1).
    method : {"auto", "gdp", "zcdp", "rdp"}, default "auto"
        How the ledger is priced (see :class:`PrivacyAccountant`).
    path : str or PathLike, optional
        Where the ledger lives. It must not exist yet (resume an existing one with
        :meth:`load`, so a budget is never silently reset).
    orders : sequence of float, optional
        RDP orders.

    Examples
    --------
    >>> budget = PrivacyBudget(epsilon=2.0, delta=1e-6)
    >>> budget.spend(GaussianEvent(4.0))
    >>> budget.spent_epsilon() < 2.0
    True
    """

    def __init__(
        self,
        epsilon: float,
        delta: float,
        *,
        method: str = "auto",
        path: str | os.PathLike | None = None,
        orders=DEFAULT_ORDERS,
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta)
        self.method = check_choice(method, "method", METHODS)
        self._acc = PrivacyAccountant(orders=orders)
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.exists():
            raise FileExistsError(
                f"a budget ledger already exists at {str(self.path)!r}; resume it with "
                "PrivacyBudget.load(path) instead of starting a fresh one"
            )

    # ---- pricing ---------------------------------------------------------------------------
    @property
    def accountant(self) -> PrivacyAccountant:
        """A copy of the ledger as an accountant."""
        return self._acc.copy()

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return self._acc.events

    def spent_epsilon(self) -> float:
        """ε(δ_budget) of everything charged so far."""
        return self._acc.epsilon(self.delta, self.method)

    def _within(self, acc: PrivacyAccountant) -> bool:
        return len(acc) == 0 or acc.delta(self.epsilon, self.method) <= self.delta

    def can_afford(self, release_or_event: object, count: int = 1) -> bool:
        """Whether charging the event would keep the total within the budget."""
        trial = self._acc.copy().add(as_event(release_or_event), count)
        return self._within(trial)

    def spend(self, release_or_event: object, count: int = 1) -> None:
        """Charge an event, or raise :class:`BudgetExceededError` and charge nothing.

        With a ``path`` the new ledger is on disk before this returns; if writing fails the
        charge is not made in memory either (and the caller must not release).
        """
        event = as_event(release_or_event)
        trial = self._acc.copy().add(event, count)
        if not self._within(trial):
            raise BudgetExceededError(
                f"this release would bring the total to epsilon={trial.epsilon(self.delta, self.method):.10g} "
                f"at delta={self.delta:g}, over the budget epsilon={self.epsilon:g} "
                f"(spent so far: {self.spent_epsilon():.10g}); nothing was charged"
            )
        if self.path is not None:
            self._write(self.path, trial)
        self._acc = trial

    def remaining_mu(self) -> float | None:
        """The GDP μ a further Gaussian release may still use (``None`` if the ledger is not pure Gaussian).

        Releases whose μ's satisfy Σ μᵢ² ≤ remaining_mu()² fit in the budget.
        """
        from ..mechanisms._calibration import gdp_delta, gdp_mu

        spent = self._acc.mu()
        if spent is None or self.method in ("zcdp", "rdp"):
            return None
        total = gdp_mu(self.epsilon, self.delta)
        rem2 = total * total - spent * spent
        if rem2 <= 0:
            return 0.0
        rem = math.sqrt(rem2)
        while rem > 0 and gdp_delta(math.sqrt(spent * spent + rem * rem), self.epsilon) > self.delta:
            rem = math.nextafter(rem, 0.0)
        return rem

    # ---- persistence -----------------------------------------------------------------------
    def _payload(self, acc: PrivacyAccountant) -> dict:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "method": self.method,
            "orders": list(acc.orders),
            "events": [e.to_dict() for e in acc.events],
        }

    def _write(self, path: Path, acc: PrivacyAccountant) -> None:
        payload = self._payload(acc)
        doc = {"ledger": payload, "sha256": _digest(payload)}
        atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the ledger atomically (to ``path``, default the budget's own path) and return the path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path: pass save(path) or create the budget with path=")
        self._write(target, self._acc)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrivacyBudget":
        """Resume a ledger written by :meth:`save` or by a budget with ``path``.

        A missing file raises ``FileNotFoundError``; a damaged, truncated or tampered one
        raises ``ValueError``. Neither ever yields a fresh (empty) budget.
        """
        path = Path(path)
        raw = path.read_bytes()
        try:
            doc = json.loads(raw)
            payload, digest = doc["ledger"], doc["sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the budget ledger {str(path)!r} is damaged or not a ledger: {exc}") from exc
        if not isinstance(payload, dict) or _digest(payload) != digest:
            raise ValueError(f"the budget ledger {str(path)!r} failed its checksum: it is corrupted")
        if payload.get("format") != _FORMAT or payload.get("version") != _VERSION:
            raise ValueError(f"{str(path)!r} is not a version-{_VERSION} dplowrank budget ledger")
        budget = cls.__new__(cls)
        budget.epsilon = check_epsilon(payload["epsilon"])
        budget.delta = check_delta(payload["delta"])
        budget.method = check_choice(payload["method"], "method", METHODS)
        budget._acc = PrivacyAccountant([event_from_dict(e) for e in payload["events"]],
                                        orders=payload["orders"])
        budget.path = path
        return budget

    def __repr__(self) -> str:
        return (f"PrivacyBudget(epsilon={self.epsilon:g}, delta={self.delta:g}, "
                f"spent={self.spent_epsilon():.6g}, events={len(self._acc)})")
