import hashlib
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# Without a GPU, Triton kernels (dplowrank._chacha_triton) run in Triton's interpreter (numpy on
# the CPU). Triton reads this when it is imported, so it is set before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="module")
def interpreted():
    """Triton kernels, in Triton's interpreter where there is no GPU (TRITON_INTERPRET=1 is set
    above, before Triton is imported)."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"


def assert_standard_normal(z: np.ndarray) -> None:
    """Moments, KS and the |Z| > 3 tail of ``z`` (float64, shape (n,)) match N(0, 1), each test at
    6 standard errors (KS at p > 1e-3)."""
    import math

    from scipy import stats

    n = z.size
    assert abs(z.mean()) < 6 / math.sqrt(n)
    assert abs(z.var() - 1) < 6 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 6 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 6 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # tails: P(|Z| > 3) matches 2Φ(−3)
    tail = np.mean(np.abs(z) > 3)
    assert abs(tail - 2 * stats.norm.sf(3)) < 6 * math.sqrt(2 * stats.norm.sf(3) / n)


def spiked_rows(n: int, d: int, k: int, *, seed: int = 0, strength: float = 4.0) -> np.ndarray:
    """Rows whose Gram has k clear spikes: x = U diag(s) z + 0.2·noise, norms ~ a few."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(d, k)))
    s = np.linspace(strength, strength / 2, k)
    z = rng.normal(size=(n, k))
    return (z * s) @ u.T / np.sqrt(k) + 0.2 * rng.normal(size=(n, d)) / np.sqrt(d)


def best_rank_k(m: torch.Tensor, k: int) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    top = v[:, -k:]
    return (top * w[-k:]) @ top.T


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(12345)


def grid_rows(x: np.ndarray, row_norm: float, max_rows: int = 2**25) -> tuple[np.ndarray, float]:
    """An independent reference for GramAccumulator's rows: clip, round to the grid, check exactly.

    Returns (q, g): integer rows q (int64, shape (n, d)) with ‖q·g‖ ≤ C exactly, and g. The
    grid is g = 2^(t − p), 2^t the least power of two ≥ C, p = ⌊(53 − ⌈log₂ max_rows⌉)/2⌋;
    rows are scaled to C·(1 − 2⁻⁴⁰) when longer than C, rounded half to even, and truncated
    toward zero where rounding leaves them longer than C (checked with Python integers).
    """
    import math
    from fractions import Fraction

    p = (53 - (max_rows - 1).bit_length()) // 2
    t = math.ceil(math.log2(row_norm))
    while 2.0**t < row_norm:
        t += 1
    while 2.0 ** (t - 1) >= row_norm:
        t -= 1
    g = 2.0 ** (t - p)
    limit = math.floor(Fraction(row_norm / g) ** 2)
    out = []
    for row in np.asarray(x, dtype=np.float64).reshape(len(x), -1):
        top = np.abs(row).max()
        if top > 0:
            unit = row / top
            norm = np.linalg.norm(unit)
            if top > row_norm / norm:
                row = unit * (row_norm * (1 - 2.0**-40) / norm)
        q = np.round(row / g)
        if sum(int(v) ** 2 for v in q) > limit:
            q = np.trunc(row / g)
        assert sum(int(v) ** 2 for v in q) <= limit
        out.append(q.astype(np.int64))
    return np.array(out).reshape(len(x), -1), g


def exact_gram(q: np.ndarray, g: float) -> np.ndarray:
    """Σ qqᵀ·g² computed with Python integers, then scaled by g² (exact when below 2⁵³·g²)."""
    qi = q.astype(object)
    m = qi.T.dot(qi)
    assert all(abs(int(v)) < 2**53 for v in m.flat)
    return m.astype(np.float64) * (g * g)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def release_file_digest(meta: dict, data: dict) -> str:
    """The SHA-256 a release file's integrity field holds for ``meta`` and its arrays ``data``
    (name → ndarray), written independently of the library, as a forger would: metadata, then
    each array's dtype, shape and bytes, hashed, and the hash hashed again."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in ("eigenvalues", "eigenvectors", "spectrum", "hermitian_eigenvalues", "hermitian_eigenvectors"):
        if name in data:
            a = data[name]
            h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode() + np.ascontiguousarray(a).tobytes())
    return hashlib.sha256(h.digest()).hexdigest()


def padded_batches(examples, size):
    """Right-padded batches of ``size`` examples (each example a dict of (1, T) ``input_ids``
    and ``attention_mask``)."""
    out = []
    for i in range(0, len(examples), size):
        part = examples[i:i + size]
        t = max(e["input_ids"].shape[1] for e in part)
        ids = torch.zeros(len(part), t, dtype=torch.long)
        mask = torch.zeros(len(part), t, dtype=torch.long)
        for j, e in enumerate(part):
            n = e["input_ids"].shape[1]
            ids[j, :n], mask[j, :n] = e["input_ids"][0], e["attention_mask"][0]
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
