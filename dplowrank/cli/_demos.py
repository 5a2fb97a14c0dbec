"""The demos on bundled data: ``demo`` (digits releases), ``spectrum`` (one release's
diagnostics and PNG) and ``compress`` without ``--corpus`` (MiniLM on standard-library text)."""

from __future__ import annotations

import time

import torch

from ..release import release_rank_k


def _digits_rows() -> tuple[torch.Tensor, float, str]:
    """scikit-learn's digits (1797 × 64), pixels scaled from [0, 16] to [0, 1].

    Every row then has norm ≤ √64 = 8 by the data's *domain*, so row_norm = 8 is a public
    bound that clips nothing and is not taken from the data.
    """
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().data / 16.0)
    return x, 8.0, "scikit-learn digits (n=1797, d=64), pixels/16, row_norm=8 (domain bound)"


def demo(k: int, epsilons: list[float], delta: float, repeats: int) -> str:
    """Release rank-k at several ε with each mechanism and tabulate utility against the optimum."""
    x, row_norm, label = _digits_rows()
    # Non-private analysis quantities (the truth the releases are compared with).
    m = x.T @ x
    evals, evecs = torch.linalg.eigh(m)
    top = evecs[:, -k:]
    m_k = (top * evals[-k:]) @ top.T
    best_captured = float(evals[-k:].sum())
    configs = [
        ("gaussian", "isotropic"),
        ("gaussian", "upper_triangular"),
        ("complex", "isotropic"),
    ]
    lines = [
        f"dplowrank demo: private rank-{k} approximation of the Gram of {label}",
        f"delta = {delta:g}; each row averages {repeats} releases with secure noise (AES-256-CTR, key from os.urandom).",
        "captured = tr(V^T M V) / tr(V_k^T M V_k) (1 = optimal); error = ||M^_k - M_k||_F / ||M_k||_F",
        "(captured and error compare with the true Gram: analysis only, not private)",
        "",
        f"{'mechanism':<10} {'shape':<17} {'epsilon':>8} {'sigma':>10} {'captured':>9} {'error':>8} {'ms':>7}",
    ]
    for eps in epsilons:
        for mech, shape in configs:
            cap = err = sec = 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = release_rank_k(x, k, epsilon=eps, delta=delta, row_norm=row_norm,
                                   mechanism=mech, noise_shape=shape)
                sec += time.perf_counter() - t0
                v = r.eigenvectors
                cap += float(torch.trace(v.T @ m @ v)) / best_captured
                err += float(torch.linalg.matrix_norm(r.to_dense() - m_k) / torch.linalg.matrix_norm(m_k))
            shape_label = "hermitian" if mech == "complex" else shape
            lines.append(
                f"{mech:<10} {shape_label:<17} {eps:>8g} {r.noise_scale:>10.4g} {cap / repeats:>9.4f} "
                f"{err / repeats:>8.4f} {1e3 * sec / repeats:>7.2f}"
            )
    return "\n".join(lines)


def spectrum(k: int, epsilon: float, delta: float, out: str, seed: int | None, mechanism: str) -> str:
    """Release rank-k of the digits Gram, print its diagnostics and write the spectrum PNG."""
    from ..diagnostics.plots import plot_spectrum

    x, row_norm, label = _digits_rows()
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    r = release_rank_k(x, k, epsilon=epsilon, delta=delta, row_norm=row_norm, mechanism=mechanism, generator=gen)
    report = r.diagnose()
    path = plot_spectrum(report, out)
    return f"{label}\n{report.table()}\n\nwrote {path}"


def compress(epsilon: float, ratio: float, scope: str, delta: float, n_train: int, n_heldout: int,
             seed: int | None, prior: bool, save: str | None, reference: bool = False,
             bits: list[int] | None = None, bits_per_parameter: float | None = None) -> str:
    """Compress all-MiniLM-L6-v2 privately from standard-library docstring sentences; the table.

    The private corpus is released exactly once (with the public prior unless ``prior`` is
    False), so the ε printed is the whole cost; the optional non-private reference is marked.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a package: never go online
    from ..demo.minilm import run_demo

    private = "private" if prior else "private_noprior"
    methods = ("svd", "public_prior") + (("nonprivate",) if reference else ()) + (private,)
    if bits and bits_per_parameter is None:
        raise ValueError("--bits needs --bits-per-parameter (the storage budget)")
    pair = None if not bits else (bits[0], bits[-1])
    out = run_demo(epsilons=[epsilon], ratios=[ratio], scopes=[scope], n_train=n_train, n_heldout=n_heldout,
                   delta=delta, methods=methods, seed=seed, time_forward=False, save_dir=save,
                   log=lambda line: print(line, flush=True), bits=pair, bits_per_parameter=bits_per_parameter)
    source = "a seeded generator (reproducible, not for publication)" if seed is not None else \
        "the secure default (AES-256-CTR, key from os.urandom)"
    spent = next(r["spent_epsilon"] for r in out["rows"] if r["method"] == private)
    storage = (f"parameter ratio {ratio:g}" if bits_per_parameter is None else
               f"{bits_per_parameter:g} bits per parameter, factors of {pair or (8, 8)} bits (LPLR); "
               f"achieved {out['rows'][-1]['bits_per_parameter']:.3f}")
    lines = ["", f"MiniLM-L6 ({scope} layers), {storage}; private corpus: {n_train} "
             f"docstring sentences, {n_heldout} held out; noise from {source}", out["table"],
             f"privacy spent on the private corpus: one release ({private}), ({spent:.4g}, {delta:g})-DP in total"]
    if reference:
        lines.append("the 'nonprivate' row is computed from the raw corpus: a reference, NOT private")
    if out["saved"]:
        lines.append(f"compressed model ({private}) saved to {out['saved']}")
    return "\n".join(lines)
