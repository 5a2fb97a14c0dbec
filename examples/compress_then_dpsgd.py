"""Private compression with dplowrank, then DP-SGD with opacus, priced as one pipeline.

1. Release the Gram of the first layer's inputs privately (rows clipped to a domain bound).
2. Replace the first linear layer W by its rank-r projection W V Vᵀ onto the released
   eigenvectors (two thin linears): post-processing of the release, free.
3. Fine-tune with DP-SGD (opacus, Poisson sampling), on the same data.
4. One PrivacyAccountant holds both: ε for the whole pipeline.

Randomness: the release draws secure noise (AES-256-CTR keyed from the OS; no generator is
passed). opacus draws DP-SGD's noise and Poisson samples from a torch generator: its
``secure_mode=True`` needs the ``torchcsprng`` package, which is not installable with current
torch, so this example seeds opacus' generators from the OS (unpredictable, but Mersenne
Twister, not a cryptographic generator; subsampling amplification assumes the sample stays
secret). Passing ``seed`` makes everything reproducible for tests: nothing from such a run is
fit to publish (``release_for_publication`` says so).

Run: python examples/compress_then_dpsgd.py
"""

from __future__ import annotations

import torch
from torch import nn


def run(*, epochs: int = 2, rank: int = 12, seed: int | None = None, delta: float = 1e-5) -> dict:
    import secrets
    import warnings

    from opacus import PrivacyEngine
    from sklearn.datasets import load_digits

    import dplowrank as dl
    from dplowrank.accounting import bridges

    def generator() -> torch.Generator:  # OS-seeded unless a test asks for reproducibility
        return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)  # rows have norm ≤ 8 by the domain
    y = torch.tensor(digits.target)
    with torch.random.fork_rng():  # the (public) initial weights; the global generator is left alone
        torch.manual_seed(secrets.randbits(63) if seed is None else seed)
        model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))

    # 1. the private release (ε = 1 for the statistics of the first layer's inputs): secure noise
    source = None if seed is None else dl.SecureNormalSource.from_seed(seed)
    release = dl.release_rank_k(x, rank, epsilon=1.0, delta=delta, row_norm=8.0, generator=source)

    # 2. compress: W ↦ (W V) Vᵀ, a 64 → rank → 48 factorisation (public W, private V)
    v = release.eigenvectors.to(torch.float32)  # shape: (64, rank)
    first = model[0]
    down = nn.Linear(64, rank, bias=False)
    up = nn.Linear(rank, 48)
    with torch.no_grad():
        down.weight.copy_(v.T)
        up.weight.copy_(first.weight @ v)
        up.bias.copy_(first.bias)
    model = nn.Sequential(down, up, *list(model)[1:])

    # 3. DP-SGD with opacus
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns that secure_mode is off (see the docstring)
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            noise_generator=generator(),
        )
        loader.batch_sampler.generator = generator()  # Poisson sampling from an OS-seeded generator
        for _ in range(epochs):
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()

    # 4. one accountant for the whole pipeline
    acc = dl.PrivacyAccountant([release])
    acc.add(bridges.from_opacus(engine.accountant))
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return {
        "release_epsilon": release.epsilon,
        "release_for_publication": release.for_publication,
        "dpsgd_epsilon_opacus": engine.accountant.get_epsilon(delta),
        "total_epsilon": acc.epsilon(delta),  # "auto": the PLD when dp_accounting is installed
        "total_epsilon_rdp": acc.epsilon(delta, method="rdp"),
        "methods": acc.valid_methods(),
        "train_accuracy": accuracy,
        "delta": delta,
        "opacus_history": list(engine.accountant.history),
    }


if __name__ == "__main__":
    out = run()
    for key, value in out.items():
        print(f"{key:>22}: {value}")
