"""Plots of the diagnostics (needs matplotlib: ``pip install 'dplowrank[plots]'``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_spectrum", "plot_error_vs_epsilon", "plot_gap_repulsion"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'dplowrank[plots]'") from exc
    return plt


def _save(fig, path, width_px: int, height_px: int, dpi: int) -> Path:
    import io

    from .._files import atomic_write_bytes

    fig.set_size_inches(width_px / dpi, height_px / dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


_THRESHOLD_STYLE = {"mangoubi_vishnoi": ("tab:purple", "--"), "re_analyze_gauss": ("tab:orange", "-.")}


def plot_spectrum(report, path: str | os.PathLike, *, width_px: int = 900, height_px: int = 540,
                  dpi: int = 100) -> Path:
    """The released spectrum with Weyl intervals, the noise edge and the gap thresholds, as PNG.

    Both gap thresholds are drawn in their own colour and style; the one of the theorem that
    covers the release (and decides the certified k) is the thick line; the recommended k
    (the signal rank: eigenvalues above the noise edge) and the certified k are vertical lines.

    Parameters
    ----------
    report : GapReport
        From :func:`dplowrank.diagnose` (post-processing of a release: free).
    path : str or PathLike
        Output PNG (written atomically), ``width_px`` × ``height_px`` pixels.
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2)
    i = np.arange(1, len(report.spectrum) + 1)
    ax1.errorbar(i, report.spectrum, yerr=report.noise_bound, fmt="o", ms=4, capsize=3,
                 label="released eigenvalue ± B (Weyl)")
    ax1.axhline(report.noise_edge, color="tab:red", ls="--", label="noise edge c√dσ")
    ax1.axhline(-report.noise_edge, color="tab:red", ls="--")
    ax1.set_xlabel("index i")
    ax1.set_ylabel("eigenvalue")
    ax1.set_title(f"spectrum (d={report.d}, {report.noise_shape})")
    ax1.legend(fontsize=7)
    if len(report.gaps):
        j = np.arange(1, len(report.gaps) + 1)
        ax2.bar(j, report.gaps_in_edges, color="tab:blue", alpha=0.7, label="gap / edge")
        lo = report.gap_intervals[:, 0] / report.noise_edge
        ax2.plot(j, lo, "k_", ms=10, label="gap lower bound / edge")
        for c in report.conditions:
            if c.status == "no condition":
                continue
            color, ls = _THRESHOLD_STYLE[c.theorem]
            used = c.theorem == report.certified_by
            role = "decides certified k" if used else "other mechanism, comparison"
            label = f"{c.theorem} threshold ({role})"
            ax2.axhline(c.threshold / report.noise_edge, color=color, ls=ls, lw=2.2 if used else 1.0,
                        alpha=1.0 if used else 0.6, label=label)
        ax2.axvline(report.recommended_k + 0.5, color="tab:green",
                    label=f"recommended k = {report.recommended_k} (noise edge)")
        ax2.axvline(report.certified_k + 0.5, color="tab:gray", ls=":",
                    label=f"certified k = {report.certified_k} ({report.certified_by})")
        tops = [float(np.max(report.gaps_in_edges))]
        tops += [c.threshold / report.noise_edge for c in report.conditions if c.status != "no condition"]
        ax2.set_ylim(top=1.6 * max(tops))  # room for the legend above the bars
        ax2.set_xlabel("gap i (λ_i − λ_{i+1})")
        ax2.set_ylabel("in units of the noise edge")
        ax2.legend(fontsize=7)
    ax2.set_title("gaps")
    fig.tight_layout()
    out = _save(fig, path, width_px, height_px, dpi)
    plt.close(fig)
    return out


def plot_error_vs_epsilon(
    epsilons: Sequence[float],
    errors: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    ylabel: str = "relative Frobenius error",
    title: str | None = None,
    width_px: int = 800,
    height_px: int = 500,
    dpi: int = 100,
) -> Path:
    """Error against ε, one line per mechanism (``errors[name][i]`` at ``epsilons[i]``), as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots()
    for name, errs in errors.items():
        ax.loglog(epsilons, errs, "o-", label=name)
    ax.set_xlabel("ε")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = _save(fig, path, width_px, height_px, dpi)
    plt.close(fig)
    return out


def plot_gap_repulsion(
    result,
    path: str | os.PathLike,
    *,
    bins: int = 30,
    width_px: int = 800,
    height_px: int = 500,
    dpi: int = 100,
) -> Path:
    """Histograms of the unfolded smallest top-k gap under real and complex noise, as PNG.

    Parameters
    ----------
    result : RepulsionResult
        From :func:`dplowrank.gap_repulsion` (an analysis tool: it takes the true matrix).
    path : str or PathLike
        Output PNG (written atomically), ``width_px`` × ``height_px`` pixels.

    Near s = 0 the real (β = 1) density rises like s and the complex (β = 2) one like s²:
    the complex histogram starts lower, which is the repulsion the complex mechanism uses.
    """
    plt = _pyplot()
    fig, ax = plt.subplots()
    top = float(max(result.real_gaps.max(), result.complex_gaps.max()))
    edges = np.linspace(0.0, top, bins + 1)
    p_r, p_c = result.small_gap_probability(0.25)
    ax.hist(result.real_gaps, bins=edges, density=True, alpha=0.5, color="tab:blue",
            label=f"real (GOE, β = 1): P(s < 0.25) = {p_r:.3f}")
    ax.hist(result.complex_gaps, bins=edges, density=True, alpha=0.5, color="tab:red",
            label=f"complex (GUE, β = 2): P(s < 0.25) = {p_c:.3f}")
    ax.set_xlabel("smallest top-k gap / its mean (s)")
    ax.set_ylabel("density")
    ax.set_title(f"level repulsion, k = {result.k}, {len(result.real_gaps)} draws each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path, width_px, height_px, dpi)
    plt.close(fig)
    return out
