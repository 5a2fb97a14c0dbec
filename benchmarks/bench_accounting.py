"""Calibration speed: calibrate_plan over m releases, against dp_accounting pricing the same plan.

For m releases with equal shares and with weighted shares (weights uniform in [0.5, 2],
seeded), the table gives

  plan ms      time of ``calibrate_plan(eps, delta, ...)`` (best of --repeats; median in brackets)
  eps          the plan's ε at δ by the exact accountant (must be <= the target, and wastes ~nothing)
  delta ok     whether δ(ε_target) of the plan is <= δ (the never-overshoot check)
  RDP ms, PLD ms  time dp_accounting's RdpAccountant / PLDAccountant take to compute ε for the
               same composition (a ComposedDpEvent of the m GaussianDpEvents); the PLD's ε
  x RDP, x PLD the baseline time divided by the plan time

The baselines only *price* a given plan (one ε); calibrate_plan finds the noise scales, prices
the result and returns one ε per release. Without dp_accounting the baseline columns are blank.

Usage: python benchmarks/bench_accounting.py [--m 10 100 1000 10000] [--epsilon 1] [--delta 1e-6]
       [--repeats 7] [--max-pld-m 1000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
from _machine import machine  # benchmarks/ is on sys.path when run as a script

import dplowrank as dl


def _timed(fn, repeats: int):
    """(result, best seconds, median seconds) of ``repeats`` calls."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times), statistics.median(times)


def _baselines(plan, delta: float, *, pld: bool):
    """(RDP seconds, PLD seconds, PLD ε) of dp_accounting pricing the plan, or Nones."""
    try:
        import dp_accounting
        from dp_accounting.pld import pld_privacy_accountant
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError:
        return None, None, None
    from dplowrank.privacy import DEFAULT_ORDERS

    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(c.noise_multiplier) for c in plan])

    def rdp():
        acc = rdp_privacy_accountant.RdpAccountant(orders=list(DEFAULT_ORDERS))
        acc.compose(event)
        return acc.get_epsilon(delta)

    def pld_eps():
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        acc.compose(event)
        return acc.get_epsilon(delta)

    _, t_rdp, _ = _timed(rdp, 1)
    if not pld:
        return t_rdp, None, None
    eps_pld, t_pld, _ = _timed(pld_eps, 1)
    return t_rdp, t_pld, eps_pld


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-pld-m", type=int, default=1000, help="skip the PLD baseline above this m (slow)")
    args = ap.parse_args()
    print(machine())
    eps, delta = args.epsilon, args.delta
    print(f"calibrate_plan({eps:g}, {delta:g}, ...) on {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    hdr = (f"{'shares':<9} {'m':>6} {'plan ms':>17} {'eps':>16} {'delta ok':>8} {'RDP ms':>9} "
           f"{'x RDP':>7} {'PLD ms':>9} {'x PLD':>7} {'PLD eps':>8}")
    print(hdr)
    print("-" * len(hdr))
    dl.calibrate_plan(eps, delta, num_releases=10)  # warm-up (imports, caches)
    for m in args.m:
        weights = np.random.default_rng(m).uniform(0.5, 2.0, size=m).tolist()
        for label, kw in (("equal", {"num_releases": m}), ("weighted", {"weights": weights})):
            plan, best, med = _timed(lambda kw=kw: dl.calibrate_plan(eps, delta, **kw), args.repeats)
            acc = dl.PrivacyAccountant(plan)
            got, ok = acc.epsilon(delta), acc.delta(eps) <= delta
            t_rdp, t_pld, eps_pld = _baselines(plan, delta, pld=m <= args.max_pld_m)

            def cell(t, width):
                return f"{t * 1e3:>{width}.1f}" if t is not None else f"{'-':>{width}}"

            def ratio(t):
                return f"{t / best:>7.0f}" if t is not None else f"{'-':>7}"

            print(f"{label:<9} {m:>6} {best * 1e3:>8.2f} ({med * 1e3:>6.2f}) {got:>16.13f} {('yes' if ok else 'NO'):>8} "
                  f"{cell(t_rdp, 9)} {ratio(t_rdp)} {cell(t_pld, 9)} {ratio(t_pld)} "
                  f"{(f'{eps_pld:.4f}' if eps_pld is not None else '-'):>8}")
    print(f"\ntarget eps = {eps:g} at delta = {delta:g}; plan ms: best of {args.repeats} (median); baselines: "
          "one run each, dp_accounting pricing the plan's m GaussianDpEvents (PLD: value_discretization_interval=1e-4).")


if __name__ == "__main__":
    main()
