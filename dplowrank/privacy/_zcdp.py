"""zCDP → (ε, δ): the conversion of Canonne, Kamath & Steinke (2020, arXiv:2004.00010, Prop. 12).

ρ-zCDP is (α, αρ)-RDP for every α > 1 (Bun & Steinke 2016, arXiv:1605.02065, Def. 1.1), and
Prop. 12 turns each order into an (ε, δ) pair; both functions optimise over α = 1 + e^t on a
grid of t, then refine around the best grid point (keeping the grid value if the refinement
is worse, so the result is never above the grid's).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["zcdp_delta", "zcdp_epsilon"]


def zcdp_epsilon(rho: float, delta: float) -> float:
    if rho == 0.0:
        return 0.0
    if math.isinf(rho):
        return math.inf
    log_delta = math.log(delta)

    def eps(log_am1: float) -> float:  # α = 1 + e^t, minimised over t
        a = 1.0 + math.exp(log_am1)
        return a * rho + math.log1p(-1.0 / a) - (log_delta + math.log(a)) / (a - 1.0)

    ts = np.linspace(-12, 14, 261)
    vals = [eps(t) for t in ts]
    i = int(np.argmin(vals))
    res = minimize_scalar(eps, bounds=(ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]), method="bounded",
                          options={"xatol": 1e-10})
    return max(0.0, min(vals[i], float(res.fun)))


def zcdp_delta(rho: float, epsilon: float) -> float:
    if rho == 0.0:
        return 0.0
    if math.isinf(rho):
        return 1.0

    def log_delta(log_am1: float) -> float:
        a = 1.0 + math.exp(log_am1)
        return (a - 1.0) * (a * rho - epsilon) + (a - 1.0) * math.log1p(-1.0 / a) - math.log(a)

    ts = np.linspace(-12, 14, 261)
    vals = [log_delta(t) for t in ts]
    i = int(np.argmin(vals))
    res = minimize_scalar(log_delta, bounds=(ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]),
                          method="bounded", options={"xatol": 1e-10})
    return float(min(1.0, math.exp(min(0.0, vals[i], float(res.fun)))))
