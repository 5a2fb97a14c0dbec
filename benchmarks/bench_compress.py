"""Private compression of all-MiniLM-L6-v2: held-out quality and time of every method.

The private corpus is English prose from the standard library's docstrings
(:func:`dplowrank.demo.datasets.stdlib_sentences`): 8,000 training sentences, 1,000 held out.
For the FFN layers (12 linears) and for all linear layers (q/k/v sharing one input, the
attention output, the FFN: 24 linears in 18 groups) at parameter ratios 0.6 and 0.4:

* ``svd``            data-free truncated SVD
* ``joint_svd``      data-free joint rank-k of shared-input groups (Peng et al., arXiv:2402.16319)
* ``public_prior``   whitened with the Gram of random token sequences (data-free, public)
* ``nonprivate``     whitened with the unclipped training Gram (reference: NOT private)
* ``private``        the library's default private path: per-example clipped Grams collected
                     with the tokenizer (so the random-token Gram is the public preconditioner),
                     released at total ε ∈ {1, 4, 16}, δ = 1e-6, noise-aware (spike) estimate,
                     whitened factorisation
* ``private_noprior`` the same with ``prior=None`` (no public preconditioner)

Columns: mean cosine between the compressed and the original sentence embeddings of the
held-out sentences, nearest-neighbour agreement among them, the mean relative output error
of the compressed layers on held-out activations, and the seconds spent releasing and
factorising. The statistics pass (per-example clipping of every group) is timed against a
plain forward pass over the same batches. Noise is drawn from a seeded generator so the
table is reproducible (a published model would use the OS-seeded default).

Usage: python benchmarks/bench_compress.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _machine import machine  # benchmarks/ is on sys.path when run as a script

from dplowrank.demo.minilm import run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 training / 300 held-out sentences, FFN, ratio 0.6")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-heldout", type=int, default=None)
    ap.add_argument("--ratios", type=float, nargs="+", default=None)
    ap.add_argument("--scopes", nargs="+", choices=["ffn", "attention", "all"], default=None)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows and timings here")
    args = ap.parse_args()
    print(machine())
    quick = args.quick
    n_train = args.n_train or (2000 if quick else 8000)
    n_heldout = args.n_heldout or (300 if quick else 1000)
    ratios = args.ratios or ([0.6] if quick else [0.6, 0.4])
    scopes = args.scopes or (["ffn"] if quick else ["ffn", "all"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MiniLM-L6, {n_train} training / "
          f"{n_heldout} held-out sentences; scopes {scopes}, ratios {ratios}, epsilons {args.epsilons}")
    t0 = time.perf_counter()
    out = run_demo(epsilons=args.epsilons, ratios=ratios, scopes=scopes, n_train=n_train, n_heldout=n_heldout,
                   delta=args.delta, seed=args.seed, log=lambda s: print(s, flush=True))
    total = time.perf_counter() - t0
    t = out["timings"]
    print()
    print(out["table"])
    print()
    print(f"statistics pass ({'all' if 'all' in scopes else scopes[0]} layers, per-example clipping) "
          f"{t['statistics']:.1f} s vs plain forward {t['forward']:.1f} s: {t['statistics'] / t['forward']:.2f}x")
    print(f"whole run {total:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": out["rows"], "timings": t, "total_seconds": total}, fh, indent=1)


if __name__ == "__main__":
    main()
