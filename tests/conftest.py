import numpy as np
import pytest
import torch

from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci")


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


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
