"""A privacy budget that releases consult before any noise is drawn, and that survives restarts.

Atomic spending (DESIGN.md, invariant 7). Check, charge and persist happen under one lock:
threads sharing a budget object take turns on its own (re-entrant) lock, and processes that
share one ledger file also take turns on an exclusive :class:`filelock.FileLock` of a lock
file next to the ledger (``<ledger>.lock``) while they re-read the ledger, price the new event
and write the result. So two threads or processes can never both spend the same remaining
budget. On POSIX the lock is an advisory ``flock`` (on Windows, ``LockFileEx``): it does not
protect a ledger on a network file system that ignores it, nor one edited by other programs.
The lock file is created on first use (mode from the umask, empty) and never removed: deleting
it while another process waits on it would let a third lock a new file of the same name, so
two processes would hold "the" lock at once. It is safe to delete only when no process is
using the ledger.

Integrity: a ledger carries a SHA-256 checksum, which catches corruption but not tampering
(see :mod:`dplowrank._integrity`); with ``key=`` it also carries an HMAC that nobody without
the key can forge, and an edited ledger (events deleted, ε raised) is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from .._files import atomic_write_bytes, check_directory, check_key, seal, verify
from .._validation import check_choice, check_delta, check_epsilon
from ..privacy import DEFAULT_ORDERS, PrivacyEvent, event_from_dict, gdp_delta, gdp_mu, nudge
from ._accountant import METHODS, PrivacyAccountant, as_event

__all__ = ["BudgetExceededError", "PrivacyBudget"]

_FORMAT = "dplowrank.PrivacyBudget"
_VERSION = 2


class BudgetExceededError(ValueError):
    """A release would take the total privacy cost past the budget; nothing was charged."""


def _clip(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class PrivacyBudget:
    """A total (ε, δ) with a ledger of what has been spent.

    :meth:`spend` (called by :func:`dplowrank.release_rank_k` with ``budget=``) prices the
    ledger plus the new event *before* any noise is drawn and refuses, charging nothing,
    when the total would exceed ε at δ. The check compares δ(ε_budget) of the composition
    with δ_budget, which is exact for Gaussian releases (no bisection tolerance can let a
    release slip over). With ``path``, the ledger is written atomically after every charge
    and a restarted process resumes it with :meth:`load`; processes sharing the file take
    turns under a file lock, and each spend first adopts what the others have charged.

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
    key : bytes, optional
        Secret of at least 16 bytes (e.g. ``secrets.token_bytes(32)``, stored apart from the
        ledger): the ledger is then authenticated with HMAC-SHA256 and :meth:`load` refuses
        any edit. Without a key the ledger's checksum detects corruption only.

    Examples
    --------
    >>> from dplowrank.accounting import GaussianEvent
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
        key: bytes | None = None,
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta)
        self.method = check_choice(method, "method", METHODS)
        self._acc = PrivacyAccountant(orders=orders)
        self._key = check_key(key)
        self._thread_lock = threading.RLock()
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.is_dir():
            raise ValueError(f"the budget ledger path {str(self.path)!r} is a directory; give a file path")
        if self.path is not None and self.path.exists():
            raise FileExistsError(
                f"a budget ledger already exists at {str(self.path)!r}; resume it with "
                "PrivacyBudget.load(path) instead of starting a fresh one"
            )

    # ---- pricing ---------------------------------------------------------------------------
    @property
    def accountant(self) -> PrivacyAccountant:
        """A copy of the ledger as an accountant."""
        with self._thread_lock:
            return self._acc.copy()

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        with self._thread_lock:
            return self._acc.events

    def spent_epsilon(self) -> float:
        """ε(δ_budget) of everything charged so far."""
        with self._thread_lock:
            acc = self._acc
        return acc.epsilon(self.delta, self.method)

    def _within(self, acc: PrivacyAccountant) -> bool:
        return len(acc) == 0 or acc.delta(self.epsilon, self.method) <= self.delta

    def can_afford(self, release_or_event: object, count: int = 1) -> bool:
        """Whether charging the event would keep the total within the budget.

        With a ``path``, what other processes have charged to the ledger is adopted first.
        """
        event = as_event(release_or_event)
        with self._locked():
            self._refresh()
            trial = self._acc.copy().add(event, count)
            return self._within(trial)

    def spend(self, release_or_event: object, count: int = 1) -> None:
        """Charge an event, or raise :class:`BudgetExceededError` and charge nothing.

        With a ``path`` the ledger is locked, re-read (adopting charges made by other
        processes), priced with the new event and rewritten before this returns; if writing
        fails the charge is not made in memory either (and the caller must not release).
        """
        event = as_event(release_or_event)
        with self._locked():
            self._refresh()
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

    # ---- sharing a ledger between processes --------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this budget's thread lock, then the file lock ``<ledger>.lock`` (with a path).

        The thread lock comes first, so the threads of one process queue there and one at a
        time takes the file lock. A fresh ``FileLock`` per call: nothing of it outlives the
        call, so a forked child never inherits a held lock. Its file is left in place on
        release (see the module's note).
        """
        with self._thread_lock:
            if self.path is None:
                yield
                return
            check_directory(self.path)  # FileLock would create a missing directory
            with FileLock(self.path.with_name(self.path.name + ".lock")):
                yield

    def _refresh(self) -> None:
        """Adopt what other processes charged to the ledger on disk (call with the lock held).

        The file must be this budget's ledger: the same ε, δ, method and orders, and a
        ledger that extends the events held here. Anything else raises ``ValueError``
        (and a ledger that disappeared after charges ``FileNotFoundError``).
        """
        if self.path is None:
            return
        if not self.path.exists():
            if len(self._acc):
                raise FileNotFoundError(
                    f"the budget ledger {str(self.path)!r} has disappeared after charges were written to it"
                )
            return
        disk = type(self).load(self.path, key=self._key)
        mine, theirs = self._acc.events, disk._acc.events
        if ((disk.epsilon, disk.delta, disk.method, disk._acc.orders)
                != (self.epsilon, self.delta, self.method, self._acc.orders)):
            raise ValueError(
                f"the budget ledger {str(self.path)!r} now holds a different budget "
                f"(epsilon={disk.epsilon!r}, delta={disk.delta!r}, method={disk.method!r}); refusing to spend"
            )
        if theirs[: len(mine)] != mine:
            raise ValueError(
                f"the budget ledger {str(self.path)!r} no longer extends the {len(mine)} events charged "
                "by this budget; refusing to spend"
            )
        self._acc = disk._acc

    def remaining_mu(self) -> float | None:
        """The GDP μ a further Gaussian release may still use (``None`` if the ledger is not pure Gaussian).

        Releases whose μ's satisfy Σ μᵢ² ≤ remaining_mu()² fit in the budget.
        """
        with self._thread_lock:
            spent = self._acc.mu()
        if spent is None or self.method in ("zcdp", "rdp", "pld"):
            return None
        total = gdp_mu(self.epsilon, self.delta)
        rem2 = total * total - spent * spent
        if rem2 <= 0:
            return 0.0
        return nudge(lambda r: gdp_delta(math.sqrt(spent * spent + r * r), self.epsilon) <= self.delta,
                     math.sqrt(rem2), -1.0, limit=0.0)

    def plan_dpsgd(self, sample_rate: float, steps: int, *, max_noise: float = 1e4) -> float:
        """The smallest DP-SGD noise multiplier z that the rest of the budget affords.

        ``steps`` Poisson-subsampled Gaussian steps (``PoissonSampledEvent(sample_rate,
        GaussianEvent(z))``, the event of opacus' DP-SGD) are priced together with everything
        already charged, by this budget's own method. Nothing is charged: :meth:`spend` the
        plan before training, so that nobody else spends the same remainder.

        RDP brackets z first, to 1e-4 relative (microseconds per price); a budget priced by
        "auto" or "pld" then refines below it with the PLD (never looser than RDP), to 1e-3
        relative (~0.5 s per price). z is rounded up: the answer always fits.

        Parameters
        ----------
        sample_rate : float
            Poisson sampling probability q in (0, 1] (opacus: 1 / batches per epoch).
        steps : int
            Number of optimiser steps, ≥ 1.
        max_noise : float
            Largest z considered.

        Returns
        -------
        float
            z ≥ 0.01.

        Raises
        ------
        ValueError
            For a bad ``sample_rate`` or ``steps``, or when not even ``max_noise`` fits.
        """
        from ..privacy import GaussianEvent, PoissonSampledEvent

        q = float(sample_rate)
        if not (0.0 < q <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        max_noise = float(max_noise)
        if not (max_noise >= 0.01 and math.isfinite(max_noise)):
            raise ValueError(f"max_noise must be finite and at least 0.01, got {max_noise!r}")
        with self._locked():
            self._refresh()
            base = self._acc.copy()

        def fits(z: float, method: str) -> bool:
            trial = base.copy().add(PoissonSampledEvent(q, GaussianEvent(z)), count=steps)
            return trial.delta(self.epsilon, method) <= self.delta

        def bisect(lo: float, hi: float, method: str, tol: float) -> float:
            while hi / lo > 1.0 + tol:
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if fits(mid, method) else (mid, hi)
            return hi

        coarse = "rdp" if self.method in ("auto", "pld") else self.method
        lo, hi = 0.0, 0.01  # lo: the last z that did not fit (0: none tried)
        while not fits(hi, coarse) and hi < max_noise:
            lo, hi = hi, min(2.0 * hi, max_noise)
        if lo > 0.0 and fits(hi, coarse):
            hi = bisect(lo, hi, coarse, 1e-4)
        if coarse == self.method:
            if not fits(hi, coarse):
                raise ValueError(f"no noise multiplier up to {max_noise:g} fits {steps} steps at sample rate {q:g} "
                                 "in what is left of the budget")
            return hi
        if not fits(hi, self.method):  # RDP fits nowhere up to max_noise, and neither does the PLD
            raise ValueError(f"no noise multiplier up to {max_noise:g} fits {steps} steps at sample rate {q:g} "
                             "in what is left of the budget")
        lo = hi / 1.5
        while lo >= 0.01 and fits(lo, self.method):
            hi, lo = lo, lo / 1.5
        if lo < 0.01:
            return hi
        return bisect(lo, hi, self.method, 1e-3)

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
        # allow_nan=False: the ledger is standard JSON (events spell an infinite z "inf").
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        doc = {"ledger": payload, "integrity": seal(body, self._key)}
        atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode())

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the ledger atomically (to ``path``, default the budget's own path) and return the path.

        Saving to the budget's own path first adopts what other processes charged to it.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path: pass save(path) or create the budget with path=")
        if self.path is not None and target == self.path:
            with self._locked():  # never overwrite what another process charged meanwhile
                self._refresh()
                self._write(target, self._acc)
        else:
            with self._thread_lock:
                self._write(target, self._acc)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, key: bytes | None = None) -> PrivacyBudget:
        """Resume a ledger written by :meth:`save` or by a budget with ``path``.

        Parameters
        ----------
        path : str or PathLike
            The ledger file.
        key : bytes, optional
            The key the ledger was written with. A ledger written with a key needs it (and
            any edit is refused); one written without a key is checked for corruption only,
            and loading it with a key is refused (it was never authenticated).

        Returns
        -------
        PrivacyBudget
            The budget with every charge in the ledger; later spends write to ``path``.

        Raises
        ------
        FileNotFoundError
            If there is no file at ``path``.
        ValueError
            If ``path`` is a directory, or the file is damaged, truncated, tampered with,
            not a ledger, or a ledger whose fields are missing or invalid. The message
            names the file. A ledger never loads as a fresh (empty) budget.
        """
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"the budget ledger path {str(path)!r} is a directory, not a ledger file")
        key = check_key(key)
        raw = path.read_bytes()
        try:
            return cls._parse(raw, path, key)
        except FileNotFoundError:  # pragma: no cover - _parse reads nothing from disk
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
            if isinstance(exc, ValueError) and str(path) in str(exc):
                raise
            raise ValueError(
                f"the budget ledger {str(path)!r} is damaged or not a ledger: {type(exc).__name__}: {_clip(exc)}"
            ) from exc

    @classmethod
    def _parse(cls, raw: bytes, path: Path, key: bytes | None) -> PrivacyBudget:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        payload = doc["ledger"]
        if not isinstance(payload, dict):
            raise ValueError(f"'ledger' must be an object, got {type(payload).__name__}")
        if "integrity" not in doc and "sha256" in doc:
            raise ValueError(
                f"{str(path)!r} is a version-1 dplowrank budget ledger (events without their neighbour "
                f"relation); this dplowrank reads version {_VERSION}"
            )
        integrity = doc["integrity"]
        if not isinstance(integrity, dict):
            raise ValueError(f"'integrity' must be an object, got {type(integrity).__name__}")
        verify(_canonical(payload), integrity, key, f"the budget ledger {str(path)!r}")
        if payload.get("format") != _FORMAT or payload.get("version") != _VERSION:
            raise ValueError(f"{str(path)!r} is not a version-{_VERSION} dplowrank budget ledger")
        events = payload["events"]
        if not isinstance(events, list):
            raise ValueError(f"'events' must be a list, got {type(events).__name__}")
        orders = payload["orders"]
        if not isinstance(orders, list):
            raise ValueError(f"'orders' must be a list, got {type(orders).__name__}")
        budget = cls.__new__(cls)
        budget.epsilon = check_epsilon(payload["epsilon"])
        budget.delta = check_delta(payload["delta"])
        budget.method = check_choice(payload["method"], "method", METHODS)
        budget._acc = PrivacyAccountant([event_from_dict(e) for e in events], orders=orders)
        budget._key = key
        budget._thread_lock = threading.RLock()
        budget.path = path
        return budget

    def __repr__(self) -> str:
        return (f"PrivacyBudget(epsilon={self.epsilon:g}, delta={self.delta:g}, "
                f"spent={self.spent_epsilon():.6g}, events={len(self._acc)})")
