"""LPLR against its baselines at equal bits per entry (the shape of arXiv:2310.11028's claim).

For budgets of 1, 2 and 4 bits per entry, the relative Frobenius error ‖Â − A‖_F / ‖A‖_F of

* LPLR (Gaussian sketch, quantise the sketch first, least squares, quantise; mean of 3 seeds),
* LSVD (LPLR with the sketch replaced by U_kΣ_k),
* DSVD (the SVD factors U_k and Σ_kV_kᵀ quantised directly),
* NQ (the matrix itself quantised, per row, at the budget's bits),

where the factor methods use (B1, B2) bits for the left and right factor, (B1, B2) ∈ {(2, 2),
(2, 4), (4, 4), (4, 8), (8, 8)} (the paper quantises the two factors separately), and the largest
rank whose codes and scales fit the budget exactly (``rank_for_budget``). Matrices: (a) a 1000 × 500 synthetic
matrix with singular values i^-1 (slow decay, as in the paper's synthetic experiments), (b)
every linear weight of all-MiniLM-L6-v2 (36 matrices; errors averaged), (c) the MiniLM
sentence embeddings of 2,000 standard-library docstring sentences (2000 × 384).

Usage: python benchmarks/bench_lplr.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _machine import machine  # benchmarks/ is on sys.path when run as a script

from dplowrank.compress import dsvd, lplr, lsvd, naive_quantize, rank_for_budget

BUDGETS = (1, 2, 4)
BITS = ((2, 2), (2, 4), (4, 4), (4, 8), (8, 8))  # (B1, B2): left and right factor


def _rel(b, a):
    return float(torch.linalg.matrix_norm(b - a) / torch.linalg.matrix_norm(a))


def errors(a: torch.Tensor, seeds: int = 3) -> dict:
    """{(budget, method, B): error} and {(budget, "nq", budget): error}."""
    out = {}
    for bpe in BUDGETS:
        for b in BITS:
            try:
                m = rank_for_budget(a.shape, bpe, b)
            except ValueError:
                continue
            out[(bpe, "lplr", b)] = float(np.mean([_rel(lplr(a, m, bits=b, generator=torch.Generator().manual_seed(s)).dense(), a)
                                                   for s in range(seeds)]))
            out[(bpe, "lsvd", b)] = _rel(lsvd(a, m, bits=b).dense(), a)
            out[(bpe, "dsvd", b)] = _rel(dsvd(a, m, bits=b).dense(), a)
        out[(bpe, "nq", bpe)] = _rel(naive_quantize(a, bpe).dequantize(), a)
    return out


def table(name: str, errs: dict) -> str:
    lines = [f"\n({name}) relative Frobenius error at equal bits per entry (lower is better)",
             f"{'bits/entry':>10} {'B1,B2':>6} {'LPLR':>8} {'LSVD':>8} {'DSVD':>8} {'NQ':>8}   best"]
    for bpe in BUDGETS:
        nq = errs[(bpe, "nq", bpe)]
        for b in BITS:
            if (bpe, "lplr", b) not in errs:
                continue
            row = {m: errs[(bpe, m, b)] for m in ("lplr", "lsvd", "dsvd")}
            best = min(list(row.items()) + [("nq", nq)], key=lambda kv: kv[1])[0]
            lines.append(f"{bpe:>10} {f'{b[0]},{b[1]}':>6} {row['lplr']:>8.4f} {row['lsvd']:>8.4f} {row['dsvd']:>8.4f} {nq:>8.4f}   {best}")
        best_of = {m: min(errs[(bpe, m, b)] for b in BITS if (bpe, m, b) in errs) for m in ("lplr", "lsvd", "dsvd")}
        lines.append(f"{bpe:>10} {'any':>6} {best_of['lplr']:>8.4f} {best_of['lsvd']:>8.4f} {best_of['dsvd']:>8.4f} "
                     f"{nq:>8.4f}   (each method at its best B1,B2)")
    return "\n".join(lines)


def synthetic(n=1000, d=500, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (u * torch.arange(1, d + 1, dtype=torch.float64).reciprocal()) @ v.T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="synthetic matrix only, 400 x 200")
    args = ap.parse_args()
    print(machine())
    t0 = time.perf_counter()
    a = synthetic(400, 200) if args.quick else synthetic()
    print(table(f"a: synthetic {tuple(a.shape)}, singular values 1/i", errors(a)))
    if not args.quick:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from dplowrank.demo.datasets import stdlib_sentences
        from dplowrank.demo.minilm import encode, encoder, load_minilm

        st_model = load_minilm()
        weights = [m.weight.detach().double() for n, m in encoder(st_model).named_modules()
                   if isinstance(m, torch.nn.Linear) and "pooler" not in n]
        per = [errors(w, seeds=1) for w in weights]
        mean = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        print(table(f"b: every linear weight of MiniLM-L6 ({len(weights)} matrices, mean error; LPLR one seed)", mean))
        emb = encode(st_model, stdlib_sentences(2000, seed=0)).double()
        print(table(f"c: MiniLM embeddings of 2000 docstring sentences {tuple(emb.shape)}", errors(emb)))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
