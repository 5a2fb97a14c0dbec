"""MiniLM end to end at ~2 and ~4 bits per parameter (LPLR-quantised factors), and LPAF.

all-MiniLM-L6-v2's FFN linears (12 matrices) are compressed from 2,000 standard-library
docstring sentences (the private corpus) and measured on 300 held-out ones (mean cosine of
the compressed and original sentence embeddings, nearest-neighbour agreement):

1. Storage at 2 and 4 bits per dense parameter with 8-bit factor codes (``bits_per_parameter``;
   one private row with 4-bit codes, twice the rank),
   for the FFN and for all 36 linears (q/k/v sharing one statistic),
   for the data-free SVD, the non-private whitened factorisation (raw corpus: a reference, NOT
   private) and the private one at ε = 4 (δ = 1e-6, one release of the corpus, seeded noise).
2. LPAF: importance-weighted factors from private first-order importance at ε = 4 (per weight,
   and the row/column marginals: ``granularity="marginal"``) against the
   plain (private) whitened factorisation at the same parameter count (ratio 0.6), with the
   data-free SVD and the non-private importance as references. The per-example loss is half
   the squared norm of a public random projection of the example's mean-pooled embedding: its
   first-order importance measures how much each weight moves the embedding.

Usage: python benchmarks/bench_lowbit_minilm.py [--n-train N] [--n-heldout N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _machine import machine  # benchmarks/ is on sys.path when run as a script

from dplowrank.compress import (
    BERT,
    ActivationStatistics,
    collect_importance,
    collect_statistics,
    compress_model,
    embedding_agreement,
    release_statistics,
)


def _subset(stats, groups):
    return ActivationStatistics({g.name: stats[g.name] for g in groups}, stats.clip, stats.neighbour, stats.public)


def probe_loss(seed: int, width: int = 32):
    """Half the squared norm of a public random projection (384 → ``width``) of each example's
    mean-pooled embedding: a per-example loss whose gradient says how much each weight moves
    the embedding in those directions (the same for an example alone or in any batch)."""
    proj = torch.randn(384, width, generator=torch.Generator().manual_seed(seed)) / 384 ** 0.5

    def loss(model, batch):
        h = model(**batch).last_hidden_state  # shape: (B, T, 384)
        mask = batch["attention_mask"].to(h.dtype)[..., None]
        pooled = (h * mask).sum(dim=1) / mask.sum(dim=1)
        return 0.5 * ((pooled @ proj.to(h.dtype)) ** 2).sum(dim=1)

    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-heldout", type=int, default=300)
    ap.add_argument("--epsilon", type=float, default=4.0)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dplowrank.demo.datasets import stdlib_sentences
    from dplowrank.demo.minilm import encode, encoder, load_minilm, token_batches

    print(machine())
    t0 = time.perf_counter()
    st_model = load_minilm()
    enc, tok = encoder(st_model), st_model.tokenizer
    texts = stdlib_sentences(args.n_train + args.n_heldout, seed=0)
    train, held = texts[:args.n_train], texts[args.n_train:]
    train_b = token_batches(tok, train, batch_size=32)
    reference = encode(st_model, held)
    all_groups = BERT.groups(enc, "all")
    groups = BERT.groups(enc, "ffn")
    eps, delta = args.epsilon, 1e-6
    raw_all = collect_statistics(enc, train_b, all_groups, clip=None)
    clipped_all = collect_statistics(enc, train_b, all_groups, clip="normalize")
    print(f"statistics (all {len(all_groups)} groups, unclipped and clipped): {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    imp_raw = collect_importance(enc, train_b, groups, loss=probe_loss(1), clip=None)
    imp = collect_importance(enc, train_b, groups, loss=probe_loss(1), clip="normalize")
    imp_marg = collect_importance(enc, train_b, groups, loss=probe_loss(1), clip="normalize", granularity="marginal")
    print(f"importance (FFN; three passes, forward + backward): {time.perf_counter() - t1:.0f} s")
    gen = torch.Generator().manual_seed(0)
    private = {scope: release_statistics(_subset(clipped_all, BERT.groups(enc, scope)), epsilon=eps, delta=delta,
                                         generator=gen) for scope in ("ffn", "all")}
    raw = {scope: _subset(raw_all, BERT.groups(enc, scope)) for scope in ("ffn", "all")}
    private_imp = release_statistics(importance=imp, epsilon=eps, delta=delta, generator=gen)
    private_marg = release_statistics(importance=imp_marg, epsilon=eps, delta=delta, generator=gen)
    private_gram = private["ffn"]

    def measure(label, privacy, scope="ffn", **kw):
        t = time.perf_counter()
        res = compress_model(enc, BERT.groups(enc, scope), **kw)
        agree = embedding_agreement(reference, encode(st_model, held))
        res.undo(enc)
        print(f"{label:<40} {privacy:<16} {res.ratio:>6.3f} {res.bits_per_parameter:>7.3f} {agree['cosine']:>7.4f} "
              f"{agree['neighbour_agreement']:>7.3f} {time.perf_counter() - t:>6.1f}")

    head = f"{'method':<40} {'privacy':<16} {'ratio':>6} {'bits/p':>7} {'cosine':>7} {'NN agr':>7} {'s':>6}"
    for scope in ("ffn", "all"):
        print(f"\n1. {scope} at ~2 and ~4 bits per parameter, 8-bit LPLR factors; {args.n_train} train / "
              f"{args.n_heldout} held out")
        print(head)
        for bpp in (2.0, 4.0):
            measure(f"svd, {bpp:g} bits", "data-free", scope, bits_per_parameter=bpp)
            measure(f"whitened, {bpp:g} bits", "NOT PRIVATE", scope, bits_per_parameter=bpp, statistics=raw[scope])
            measure(f"private whitened, {bpp:g} bits", f"eps={eps:g}", scope, bits_per_parameter=bpp,
                    statistics=private[scope])
            measure(f"private whitened, {bpp:g} bits, 4-bit codes", f"eps={eps:g}", scope, bits_per_parameter=bpp,
                    bits=4, statistics=private[scope])
        measure("private whitened, float factors", f"eps={eps:g}", scope, ratio=0.25, statistics=private[scope])
    print("\n2. LPAF (importance-weighted factors) at ratio 0.6, float factors")
    print(head)
    measure("svd", "data-free", ratio=0.6)
    measure("importance-weighted (raw)", "NOT PRIVATE", ratio=0.6, factorization="importance", importance=imp_raw)
    measure("importance-weighted (private)", f"eps={eps:g}", ratio=0.6, factorization="importance",
            statistics=private_imp)
    measure("marginal importance (private)", f"eps={eps:g}", ratio=0.6, factorization="importance",
            statistics=private_marg)
    measure("whitened (private)", f"eps={eps:g}", ratio=0.6, statistics=private_gram)
    measure("marginal importance (private), 4 bits", f"eps={eps:g}", bits_per_parameter=4.0,
            factorization="importance", statistics=private_marg)
    print(f"\nnoise: seeded generator (reproducible, not for publication); each private row is one release of "
          f"the corpus at (eps={eps:g}, delta={delta:g}); total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
