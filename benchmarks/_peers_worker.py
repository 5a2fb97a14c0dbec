"""Fit diffprivlib's and OpenDP's PCA on rows from an .npz file; run by bench_pca_peers.py.

Runs in the peers' own environment (``.peers/``: diffprivlib 0.6 needs scikit-learn < 1.6,
older than ours). Input: an .npz with ``train`` (n, d), ``data_norm``, ``k``, ``epsilons``,
``seeds``. Output (stdout): JSON, for each peer, epsilon and seed, the fitted components,
explained variances, mean and wall time.
"""

import json
import os
import signal
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")  # diffprivlib warns about bounds it is given

#: A fit that runs longer is abandoned and reported as timed out: diffprivlib's Bingham
#: sampler (rejection sampling) sometimes runs for many minutes on a single draw.
TIME_LIMIT_S = int(os.environ.get("PEERS_TIME_LIMIT_S", "10"))


class _Timeout(Exception):
    pass


_fired = []


def _alarm(signum, frame):
    _fired.append(True)
    raise _Timeout


def _timed(fit):
    signal.signal(signal.SIGALRM, _alarm)
    _fired.clear()
    signal.alarm(TIME_LIMIT_S)
    t = time.perf_counter()
    try:
        return fit(), time.perf_counter() - t
    except Exception:  # OpenDP re-raises the timeout from inside its native code as its own error
        if not _fired:
            raise
        return None, time.perf_counter() - t
    finally:
        signal.alarm(0)


def main(path: str) -> None:
    import diffprivlib.models as dpl
    import opendp.prelude as dp
    from opendp.extras.sklearn.decomposition import PCA as OpenDPPCA

    # OpenDP's PCA is gated behind these flags: "idealized-numerics" because its floating-point
    # arithmetic is not proven private, "honest-but-curious" for its Python post-processing.
    dp.enable_features("contrib", "idealized-numerics", "honest-but-curious")
    f = np.load(path)
    x, c, k = f["train"], float(f["data_norm"]), int(f["k"])
    n, d = x.shape
    out = []
    for eps in f["epsilons"].tolist():
        for seed in f["seeds"].tolist():
            # diffprivlib: ε-DP; half of ε for the mean (needs the feature bounds), half for the covariance
            m, sec = _timed(lambda: dpl.PCA(k, epsilon=eps, data_norm=c, bounds=(float(x.min()), float(x.max())),
                                            random_state=seed).fit(x))
            out.append(_row("diffprivlib", eps, seed, m, sec))
            # OpenDP: ε-DP with the row count public (n_samples), i.e. neighbours differ by one replaced row
            m, sec = _timed(lambda: OpenDPPCA(epsilon=eps, row_norm=c, n_samples=n, n_features=d,
                                              n_components=k).fit(x))
            out.append(_row("opendp", eps, seed, m, sec))
    json.dump(out, sys.stdout)


def _row(name, eps, seed, m, seconds):
    if m is None:
        return {"peer": name, "epsilon": eps, "seed": seed, "seconds": seconds, "timeout": True}
    ev = getattr(m, "explained_variance_", None)
    return {"peer": name, "epsilon": eps, "seed": seed, "seconds": seconds,
            "components": np.asarray(m.components_, dtype=float).tolist(),
            "explained_variance": None if ev is None else np.asarray(ev, dtype=float).tolist(),
            "mean": np.asarray(m.mean_, dtype=float).tolist()}


if __name__ == "__main__":
    main(sys.argv[1])
