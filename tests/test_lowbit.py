"""Quantisation, LPLR and its baselines, importance-weighted factors, private first-order
importance (LPAF) and quantised storage inside compress_model. Small matrices and models only."""

import array
import collections
import functools
import itertools
import math
import operator
import queue
import random
import threading
import types
import weakref
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dplowrank as dl
from dplowrank.accounting import PrivacyBudget
from dplowrank.compress import (
    LowRankLinear,
    QuantizedLinear,
    collect_importance,
    compress_model,
    denoise_importance,
    dsvd,
    find_groups,
    load_compressed,
    lplr,
    lsvd,
    mixed_rank_finetune,
    naive_quantize,
    pack_codes,
    prune_mask,
    quantize,
    rank_for_budget,
    release_statistics,
    save_compressed,
    unpack_codes,
    weighted_error,
    weighted_factors,
)

from . import guard_helpers
from .conftest import padded_batches


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def _decaying(n, d, seed, power=1.0):
    """A matrix with singular values i^-power and random singular vectors."""
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(n, min(n, d), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, min(n, d), generator=g, dtype=torch.float64))
    s = torch.arange(1, min(n, d) + 1, dtype=torch.float64) ** -power
    return (u * s) @ v.T


# ---- the quantiser ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 32), n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_packing_round_trips_and_uses_exactly_n_times_b_bits(bits, n, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**bits, size=n, dtype=np.uint64)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == (n * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(packed, n, bits), codes)


@pytest.mark.parametrize("granularity", ["tensor", "row", "column"])
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 12, 32])
def test_codes_stay_below_two_to_the_b_and_the_bit_count_is_exact(bits, granularity):
    x = torch.randn(23, 17, generator=_gen(bits), dtype=torch.float64) * 3
    q = quantize(x, bits, granularity=granularity)
    codes = q.codes()
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    assert len(torch.unique(codes)) <= 2**bits
    groups = {"tensor": 1, "row": 23, "column": 17}[granularity]
    assert q.nbits == 23 * 17 * bits + 64 * groups
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == math.ceil(23 * 17 * bits / 8)
    # every dequantised value is one of the group's 2^B points, and within half a step of x
    step = q.step.double().max()
    assert float((q.dequantize() - x).abs().max()) <= 0.5 * float(step) * (1 + 1e-6) + 1e-6


def test_quantisation_error_falls_with_bits_and_dither_is_unbiased():
    x = torch.randn(40, 30, generator=_gen(1), dtype=torch.float64)
    errs = [_rel(quantize(x, b).dequantize(), x) for b in range(1, 17)]
    assert all(a >= b for a, b in itertools.pairwise(errs))
    assert _rel(quantize(x, 32).dequantize(), x) < 1e-6
    g = _gen(2)
    mean = sum(quantize(x, 2, dither=True, generator=g).dequantize() for _ in range(400)) / 400
    nearest = quantize(x, 2).dequantize()
    assert _rel(mean, x) < 0.25 * _rel(nearest, x)  # unbiased: averages converge to x, rounding does not
    a = quantize(x, 3, dither=True, generator=_gen(5)).codes()
    assert torch.equal(a, quantize(x, 3, dither=True, generator=_gen(5)).codes())


def test_quantiser_refuses_bad_input_by_name():
    x = torch.randn(3, 3)
    for bad, exc in ((0, ValueError), (33, ValueError), (2.0, TypeError)):
        with pytest.raises(exc, match="bits"):
            quantize(x, bad)
    with pytest.raises(ValueError, match="granularity"):
        quantize(x, 4, granularity="block")
    with pytest.raises(ValueError, match="non-finite"):
        quantize(torch.tensor([[1.0, math.nan]]), 4)


# ---- LPLR and the baselines ------------------------------------------------------------------


@pytest.mark.parametrize("sketch", ["gaussian", "sparse"])
def test_lplr_at_32_bits_recovers_an_exactly_low_rank_matrix(sketch):
    g = _gen(3)
    a = torch.randn(60, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 40, generator=g, dtype=torch.float64)
    for m in (5, 8, 20):
        f = lplr(a, m, bits=32, sketch=sketch, generator=_gen(m))
        assert _rel(f.dense(), a) < 1e-6
    assert _rel(lsvd(a, 5, bits=32).dense(), a) < 1e-6
    assert _rel(dsvd(a, 5, bits=32).dense(), a) < 1e-6


def test_lplr_error_falls_with_bits_and_with_sketch_size_on_average():
    a = _decaying(120, 80, seed=4, power=1.5)

    def mean_error(**kw):
        return np.mean([_rel(lplr(a, generator=_gen(s), **kw).dense(), a) for s in range(6)])

    by_bits = [mean_error(rank=20, bits=b) for b in (2, 3, 4, 6, 8, 16)]
    assert all(x >= y for x, y in itertools.pairwise(by_bits))
    by_size = [mean_error(rank=m, bits=12) for m in (4, 8, 16, 32, 64)]
    assert all(x >= y for x, y in itertools.pairwise(by_size))
    with_power = np.mean([_rel(lplr(a, 16, bits=16, power_iters=2, generator=_gen(s)).dense(), a) for s in range(6)])
    assert with_power <= mean_error(rank=16, bits=16)


@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (2, 4)])
@pytest.mark.parametrize("bpe", [0.5, 1, 2])
def test_the_rank_for_a_budget_stores_exactly_within_it(bpe, bits):
    n, d = 96, 64
    m = rank_for_budget((n, d), bpe, bits)
    a = _decaying(n, d, seed=5)
    for f in (lplr(a, m, bits=bits, generator=_gen(0)), dsvd(a, m, bits=bits), lsvd(a, m, bits=bits)):
        per_rank = n * bits[0] + d * bits[1] + 128
        assert f.nbits == m * per_rank  # the exact count: codes and one scale pair per column / row
        assert f.nbits <= bpe * n * d < f.nbits + per_rank or m == min(n, d)
        stored = 8 * (f.left.packed.numel() + f.right.packed.numel()) + 64 * (f.left.step.numel() + f.right.step.numel())
        assert f.nbits <= stored < f.nbits + 16  # the bytes really written (two partial bytes at most)
    with pytest.raises(ValueError, match="bits_per_entry"):
        rank_for_budget((n, d), 0.01, 8)


def test_factors_multiply_without_forming_the_matrix_and_seeds_reproduce():
    a = _decaying(50, 30, seed=6)
    f = lplr(a, 10, bits=(6, 5), sketch="sparse", power_iters=1, generator=_gen(9))
    x = torch.randn(30, 4, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(f.matmul(x), f.dense() @ x)
    again = lplr(a, 10, bits=(6, 5), sketch="sparse", power_iters=1, generator=_gen(9))
    assert torch.equal(f.left.packed, again.left.packed) and torch.equal(f.right.packed, again.right.packed)
    assert f.bits_per_entry == pytest.approx(f.nbits / (50 * 30))


def test_lplr_beats_direct_svd_quantisation_at_low_precision():
    """The paper's regime (arXiv:2310.11028): 2-bit factors at 1–2 bits per entry (at 8 bits the SVD's
    better subspace wins; benchmarks/bench_lplr.py measures both)."""
    a = _decaying(200, 120, seed=7, power=1.0)
    for bpe, b in ((1, 2), (2, 2), (2, 3)):
        m = rank_for_budget(a.shape, bpe, b)
        lp = np.mean([_rel(lplr(a, m, bits=b, generator=_gen(s)).dense(), a) for s in range(3)])
        assert lp < _rel(dsvd(a, m, bits=b).dense(), a)
        assert lp < _rel(naive_quantize(a, bpe).dequantize(), a)


# ---- importance-weighted factors -------------------------------------------------------------


def test_weighted_factors_lower_the_weighted_error_and_approach_the_brute_force_optimum():
    from scipy.optimize import minimize

    for seed in range(4):
        g = _gen(seed)
        w = torch.randn(5, 4, generator=g, dtype=torch.float64)
        imp = torch.rand(5, 4, generator=g, dtype=torch.float64) ** 3
        left, right = weighted_factors(w, 1, imp)
        ours = weighted_error(w, left @ right, imp)
        u, s, vh = torch.linalg.svd(w)
        assert ours <= weighted_error(w, (u[:, :1] * s[:1]) @ vh[:1], imp) + 1e-12
        # brute force: a general optimiser from many random starts over (u, v)
        wn, om = w.numpy(), imp.numpy()

        def f(z):
            return float((om * (wn - np.outer(z[:5], z[5:])) ** 2).sum())

        rng = np.random.default_rng(seed)
        best = min(minimize(f, rng.normal(size=9), method="BFGS").fun for _ in range(40))
        # weighted low rank is not convex (Srebro & Jaakkola 2003): local minima are possible;
        # measured here the worst of these four is 16% above the global optimum
        assert ours <= 1.25 * best + 1e-9
        assert ours <= weighted_error(w, torch.outer(*[t.reshape(-1) for t in weighted_factors(w, 1, imp, iters=0, als=0)]), imp) + 1e-12


def test_constant_importance_is_the_plain_svd_and_pruning_drops_the_least_important():
    w = torch.randn(12, 9, generator=_gen(3), dtype=torch.float64)
    left, right = weighted_factors(w, 3, torch.full_like(w, 2.5))
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(left @ right, (u[:, :3] * s[:3]) @ vh[:3])
    imp = torch.arange(108, dtype=torch.float64).reshape(12, 9)
    keep = prune_mask(imp, 0.25)
    assert int((~keep).sum()) == 27 and bool((imp[~keep] < imp[keep].min()).all())
    with pytest.raises(ValueError, match="importance"):
        weighted_factors(w, 2, -torch.ones_like(w))


# ---- private first-order importance ----------------------------------------------------------


class Tiny(nn.Module):
    """Per-token MLP (no mixing across tokens or examples)."""

    def __init__(self, gen, vocab=30, d=6, h=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.8)

    def forward(self, input_ids, attention_mask):
        h = self.down(torch.tanh(self.up(self.emb(input_ids))))
        return h * attention_mask[..., None]


PROBE = torch.linspace(-1, 1, 6, dtype=torch.float32)


def probe_loss(model, batch):
    """One loss per example: a fixed projection of its pooled output."""
    out = model(**batch)
    return (out.sum(dim=1) @ PROBE.to(out.dtype))


def _examples(gen, n, max_len=6, vocab=30):
    out = []
    for _ in range(n):
        t = int(torch.randint(1, max_len + 1, (1,), generator=gen))
        ids = torch.randint(1, vocab, (1, t), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _tiny(seed=0, dtype=torch.float32):
    model = Tiny(_gen(seed)).to(dtype)
    return model, find_groups(model, ["up", "down"])


def test_unclipped_importance_is_the_sum_of_per_example_first_order_scores():
    model, groups = _tiny(dtype=torch.float64)
    examples = _examples(_gen(1), 9)
    stats = collect_importance(model, padded_batches(examples, 4), groups, loss=probe_loss, clip=None)
    # reference: one backward per example through autograd's own weight gradient
    ref = {n: torch.zeros_like(m.weight) for n, m in (("up", model.up), ("down", model.down))}
    for ex in examples:
        model.zero_grad()
        probe_loss(model, ex).sum().backward()
        for n, m in (("up", model.up), ("down", model.down)):
            ref[n] += (m.weight * m.weight.grad).abs().detach()
    model.zero_grad()
    for n in ref:
        torch.testing.assert_close(stats.scores[n], ref[n], rtol=1e-10, atol=1e-12)
    assert stats.n_examples == 9 and stats.sensitivity is None
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    assert "entries" in repr(stats) and str(float(stats.scores["up"][0, 0])) not in repr(stats)


def test_clipped_importance_has_its_sensitivity_exactly_even_for_adversarial_examples():
    model, groups = _tiny(seed=2)
    examples = _examples(_gen(3), 14)
    with torch.no_grad():
        model.emb.weight[5].mul_(1e4)  # an adversarial token
    examples.append({"input_ids": torch.full((1, 50), 5), "attention_mask": torch.ones(1, 50, dtype=torch.long)})
    for clip in (0.05, 1.0, "normalize"):
        c = 1.0 if clip == "normalize" else clip
        for ex in examples[-4:]:
            alone = collect_importance(model, [ex], groups, loss=probe_loss, clip=clip)
            norm = math.sqrt(sum(float((s * s).sum()) for s in alone.scores.values()))
            assert norm <= c
            assert all(bool((s >= 0).all()) for s in alone.scores.values())
    # neighbouring corpora differ by exactly the dropped example's contribution, whatever the batching
    drop = 14
    kw = dict(loss=probe_loss, clip=0.7)
    full = collect_importance(model, padded_batches(examples, 4), groups, **kw)
    rest = collect_importance(model, padded_batches(examples[:drop] + examples[drop + 1:], 3), groups, **kw)
    alone = collect_importance(model, [examples[drop]], groups, **kw)
    for n in full.scores:
        assert torch.equal(full.scores[n] - rest.scores[n], alone.scores[n])
    assert full.sensitivity == 0.7
    assert collect_importance(model, padded_batches(examples, 5), groups, clip=2.0, neighbour="replace",
                              loss=probe_loss).sensitivity == pytest.approx(2.0 * math.sqrt(2.0))


def test_a_loss_that_mixes_examples_is_refused():
    model, groups = _tiny()

    def batch_mean_loss(model, batch):
        out = model(**batch).sum(dim=1) @ PROBE
        return out * out.mean()  # each example's loss depends on the others

    with pytest.raises(ValueError, match="changes with the other examples"):
        collect_importance(model, padded_batches(_examples(_gen(4), 8), 4), groups, loss=batch_mean_loss, isolate=False)
    with pytest.raises(ValueError, match="shape"):
        collect_importance(model, padded_batches(_examples(_gen(4), 8), 4), groups, loss=lambda m, b: probe_loss(m, b).sum())


def test_private_importance_tends_to_the_raw_scores_and_its_noise_has_the_calibrated_scale():
    model, groups = _tiny(seed=5)
    batches = padded_batches(_examples(_gen(6), 40), 8)
    raw = collect_importance(model, batches, groups, loss=probe_loss, clip=1.0)
    huge = release_statistics(importance=raw, epsilon=1e9, delta=1e-6, generator=_gen(0))
    tiny = huge.importance.noise_scale
    assert tiny < 1e-4
    for n, s in raw.scores.items():  # ε → ∞: the release is the raw scores up to σ → 0
        torch.testing.assert_close(huge.importance.scores[n], s, rtol=0, atol=6 * tiny)
        torch.testing.assert_close(huge.importance.denoised()[n], s, rtol=0, atol=6 * tiny)
    priv = release_statistics(importance=raw, epsilon=1.0, delta=1e-6, generator=_gen(1))
    sigma = priv.importance.noise_scale
    assert priv.spent_epsilon() == pytest.approx(1.0, rel=1e-6)
    assert sigma == pytest.approx(dl.calibrate_noise(1.0, epsilon=1.0, delta=1e-6).noise_scale, rel=1e-9)
    noise = torch.cat([(priv.importance.scores[n] - s).reshape(-1) for n, s in raw.scores.items()])
    # chi-square on the sample variance of 120 draws, loose (two-sided p ≈ 1e-4)
    ratio = float((noise ** 2).mean()) / sigma**2
    assert 0.55 < ratio < 1.6
    assert priv.randomness == "seeded" and not priv.for_publication
    secure = release_statistics(importance=raw, epsilon=1.0, delta=1e-6)
    assert secure.randomness == "secure"


def test_denoised_importance_falls_back_to_the_prior_when_there_is_no_signal():
    noise = torch.randn(30, 20, generator=_gen(7), dtype=torch.float64)
    flat = denoise_importance(0.01 + noise, 1.0)
    assert float(flat.std()) < 1e-12  # exactly constant: the weighted factors are the plain SVD
    prior = torch.rand(30, 20, generator=_gen(8), dtype=torch.float64)
    shaped = denoise_importance(3 * prior + noise, 1.0, prior=prior)
    assert torch.allclose(shaped / shaped.mean(), prior / prior.mean(), atol=1e-9)
    signal = torch.rand(30, 20, generator=_gen(9), dtype=torch.float64) * 50
    est = denoise_importance(signal + noise, 1.0)
    assert _rel(est, signal) < _rel((signal + noise).clamp(min=0), signal) * 1.01


def test_one_plan_prices_grams_and_importance_together_and_charges_the_budget_once(tmp_path):
    model, groups = _tiny(seed=9)
    batches = padded_batches(_examples(_gen(10), 24), 6)
    stats = dl.collect_statistics(model, batches, groups, clip="normalize")
    imp = collect_importance(model, batches, groups, loss=probe_loss)
    budget = PrivacyBudget(4.0, 1e-6)
    priv = release_statistics(stats, importance=imp, epsilon=3.0, delta=1e-6, generator=_gen(2),
                              budget=budget, weights={"importance": 2.0})
    assert len(budget.events) == 1 and budget.spent_epsilon() == pytest.approx(3.0, rel=1e-6)
    assert priv.spent_epsilon() == pytest.approx(3.0, rel=1e-6)
    assert len(priv.accountant.events) == 3  # two Grams and the importance
    with pytest.raises(dl.BudgetExceededError):
        release_statistics(stats, importance=imp, epsilon=3.0, delta=1e-6, generator=_gen(2), budget=budget)
    assert len(budget.events) == 1
    # LPAF from the private release, quantised storage, save and load
    res = compress_model(model, groups, statistics=priv, factorization="importance", bits_per_parameter=8.0,
                         bits=(8, 8))
    assert res.method == "private" and res.privacy_status == "private"
    assert res.epsilon() == pytest.approx(3.0, rel=1e-6)
    assert "importance factors" in res.table()
    out = padded_batches(_examples(_gen(11), 4), 4)[0]
    before = model(**out)
    save_compressed(model, tmp_path / "m", metadata=res.metadata())
    fresh, _ = _tiny(seed=9)
    load_compressed(fresh, tmp_path / "m")
    torch.testing.assert_close(fresh(**out), before)
    assert isinstance(fresh.up.down, QuantizedLinear)


# ---- quantised storage inside compress_model -------------------------------------------------


class Shared(nn.Module):
    def __init__(self, gen, d=16, h=24):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        return self.down(torch.relu(self.up(x))) + self.q(x) * self.k(x) + self.v(x)


@pytest.mark.parametrize("joint", [False, True])
def test_quantised_factors_fit_the_bit_budget_and_survive_save_and_load(tmp_path, joint):
    model = Shared(_gen(12))
    groups = find_groups(model, [r"q|k|v", "up", "down"], shared=[r"(?P<group>)(q|k|v)"])
    x = torch.randn(7, 16, generator=_gen(13))
    dense = model(x)
    res = compress_model(model, groups, bits_per_parameter=6.0, bits=(4, 6), joint=joint)
    assert res.bits == (4, 6) and res.bits_after <= 6.0 * res.parameters_before
    assert res.bits_per_parameter == pytest.approx(res.bits_after / res.parameters_before)
    stored = sum(m.nbits for n, m in res.layers.items() if not (joint and n in ("k", "v")))
    if joint:
        stored -= 0  # members of a joint group share their down-projection: counted once below
        stored = res.layers["q"].down.nbits + sum(res.layers[n].up.nbits for n in ("q", "k", "v")) + \
            res.layers["up"].nbits + res.layers["down"].nbits
    assert stored == res.bits_after
    if joint:
        assert res.layers["q"].down is res.layers["k"].down
    low = model(x)
    assert _rel(low, dense) < 1.0
    save_compressed(model, tmp_path / "q", metadata=res.metadata())
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "q" / "factors.safetensors")
    codes = sum(t.nbytes for k, t in stored.items() if k.endswith(".packed"))
    scales = sum(t.nbytes for k, t in stored.items() if k.endswith((".offset", ".step")))
    fresh = Shared(_gen(99))
    load_compressed(fresh, tmp_path / "q")
    torch.testing.assert_close(fresh(x), low)
    assert fresh.compression_metadata["bits"] == [4, 6]
    if joint:
        assert fresh.q.down is fresh.k.down
    # the file holds the packed codes (each layer's last byte may be partial) and the float32 scales
    assert res.bits_after <= 8 * (codes + scales) < res.bits_after + 8 * 2 * len(res.layers)


def _correlated_inputs(seed, n=3000, d=48, k=6):
    """Inputs with a few strong correlated directions and BERT-like outlier dimensions."""
    g = _gen(seed)
    mix = torch.randn(k, d, generator=_gen(7), dtype=torch.float64)  # one distribution for every seed
    z = torch.randn(n, k, generator=g, dtype=torch.float64) @ mix
    x = z + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :2] *= 20.0
    return x


@pytest.mark.parametrize("granularity", ["row", "column", "tensor"])
def test_activation_aware_rounding_keeps_the_codes_and_lowers_the_output_error(granularity):
    """GPTQ-style rounding (arXiv:2210.17323) uses the same scale groups and bit count as
    rounding to nearest, and lowers ‖(Q(W) − W)·x‖ over the inputs whose Gram it was given
    (averaged over seeds; GPTQ is not optimal for every matrix)."""
    ratios = []
    for seed in range(6):
        x = _correlated_inputs(seed)
        h = x.T @ x / x.shape[0]
        w = torch.randn(20, x.shape[1], generator=_gen(100 + seed), dtype=torch.float64)
        for bits in (2, 4):
            near = quantize(w, bits, granularity=granularity)
            aware = quantize(w, bits, granularity=granularity, hessian=h)
            assert aware.nbits == near.nbits and torch.equal(aware.offset, near.offset)
            assert torch.equal(aware.step, near.step) and int(aware.codes().max()) < 2**bits
            err = lambda q: float(((q.dequantize() - w) @ x.T).norm())  # noqa: E731
            ratios.append(err(aware) / err(near))
    assert sum(ratios) / len(ratios) < 0.8 and max(ratios) < 1.0


def test_activation_aware_rounding_with_uncorrelated_inputs_is_rounding_to_nearest():
    """With H diagonal there is nothing to compensate: GPTQ's feedback is zero and the codes
    are those of rounding to nearest, entry for entry."""
    w = torch.randn(9, 13, generator=_gen(110), dtype=torch.float64)
    h = torch.diag(torch.rand(13, generator=_gen(111), dtype=torch.float64) + 0.1)
    for bits in (1, 3, 8):
        assert torch.equal(quantize(w, bits, granularity="row", hessian=h).codes(),
                           quantize(w, bits, granularity="row").codes())
    with pytest.raises(ValueError, match="hessian"):
        quantize(w, 4, hessian=torch.eye(12))
    with pytest.raises(ValueError, match="dither"):
        quantize(w, 4, hessian=h, dither=True)
    with pytest.raises(ValueError, match="hessian has non-finite"):
        quantize(w, 4, hessian=torch.full((13, 13), float("nan")))
    indefinite = -torch.eye(13, dtype=torch.float64)  # a noisy Gram can be indefinite: damped, not refused
    assert quantize(w, 4, hessian=indefinite + 2 * torch.ones(13, 13, dtype=torch.float64)).nbits > 0


def test_compress_model_rounds_quantised_factors_with_the_groups_gram():
    """``rounding="activation"`` (the default with Gram statistics) keeps the bit count and
    lowers the held-out output error of the compressed layer against rounding to nearest."""
    x = _correlated_inputs(120, d=24)
    held = _correlated_inputs(121, d=24)
    lin = nn.Linear(24, 32).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 24, generator=_gen(122), dtype=torch.float64))
    model = nn.Sequential(lin)
    groups = find_groups(model, ["0"])
    stats = dl.collect_statistics(model, [x[i:i + 500] for i in range(0, 3000, 500)], groups, clip=None,
                                  mask_key=None, examples=lambda b: b.shape[0], check_independence=False,
                                  isolate=False)
    dense = model(held).detach()
    errs = {}
    for rounding in ("nearest", "activation", "auto"):
        res = compress_model(model, groups, bits_per_parameter=3.0, bits=3, statistics=stats, rounding=rounding)
        errs[rounding] = (float((model(held) - dense).norm()), res.bits_after)
        res.undo(model)
    assert errs["auto"] == errs["activation"]
    assert errs["activation"][1] == errs["nearest"][1]
    assert errs["activation"][0] < 0.9 * errs["nearest"][0]
    with pytest.raises(ValueError, match="rounding"):
        compress_model(model, groups, bits_per_parameter=3.0, rounding="gptq", statistics=stats)
    with pytest.raises(ValueError, match="needs Gram statistics"):
        compress_model(model, groups, bits_per_parameter=3.0, rounding="activation")


def test_quantised_storage_and_lpaf_arguments_are_checked_before_anything_changes():
    model = Shared(_gen(14))
    groups = find_groups(model, ["up", "down"])
    originals = (model.up, model.down)
    for kw, exc, word in (
        (dict(ratio=0.5, bits_per_parameter=4.0), ValueError, "exactly one"),
        (dict(), ValueError, "exactly one"),
        (dict(bits_per_parameter=40.0), ValueError, "bits_per_parameter"),
        (dict(bits_per_parameter=4.0, bits=0), ValueError, "bits"),
        (dict(ratio=0.5, factorization="lpaf"), ValueError, "factorization"),
        (dict(ratio=0.5, factorization="importance", joint=True), ValueError, "joint"),
    ):
        with pytest.raises(exc, match=word):
            compress_model(model, groups, **kw)
    assert (model.up, model.down) == originals


def test_mixed_rank_finetuning_recovers_and_leaves_the_factors_in_place():
    gen = _gen(15)
    teacher = Shared(gen)
    model = Shared(_gen(15))
    groups = find_groups(model, ["up", "down"])
    res = compress_model(model, groups, ratio=0.3)
    xs = [torch.randn(32, 16, generator=gen) for _ in range(4)]
    batches = [(x, teacher(x).detach()) for x in xs]

    def loss(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    with torch.no_grad():
        start = float(sum(loss(model, b) for b in batches))
    history = mixed_rank_finetune(model, res.layers, res.originals, batches, loss=loss, steps=120, lr=3e-3,
                                  generator=_gen(1))
    assert len(history) == 120
    with torch.no_grad():
        assert float(sum(loss(model, b) for b in batches)) < 0.8 * start
    assert isinstance(model.up, LowRankLinear) and not model.training


def test_marginal_importance_releases_row_and_column_sums_with_the_same_guarantees():
    model, groups = _tiny(seed=16, dtype=torch.float64)
    examples = _examples(_gen(17), 12)
    entry = collect_importance(model, padded_batches(examples, 4), groups, loss=probe_loss, clip=None)
    marg = collect_importance(model, padded_batches(examples, 4), groups, loss=probe_loss, clip=None, granularity="marginal")
    for n, s in entry.scores.items():
        d_out = s.shape[0]
        torch.testing.assert_close(marg.scores[n][:d_out], s.sum(dim=1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(marg.scores[n][d_out:], s.sum(dim=0), rtol=1e-10, atol=1e-12)
        sep = marg.matrix(n)
        torch.testing.assert_close(sep.sum(dim=1), s.sum(dim=1)) and torch.testing.assert_close(sep.sum(dim=0), s.sum(dim=0))
    assert marg.entries == sum(s.shape[0] + s.shape[1] for s in entry.scores.values())
    # clipped: every example's marginal vector (all layers) within C, neighbours differ by one contribution
    kw = dict(loss=probe_loss, clip=0.3, granularity="marginal")
    full = collect_importance(model, padded_batches(examples, 5), groups, **kw)
    rest = collect_importance(model, padded_batches(examples[1:], 4), groups, **kw)
    alone = collect_importance(model, [examples[0]], groups, **kw)
    assert math.sqrt(sum(float((s * s).sum()) for s in alone.scores.values())) <= 0.3
    for n in full.scores:
        assert torch.equal(full.scores[n] - rest.scores[n], alone.scores[n])
    # the separable weights make the closed form exact: no iterative refinement beats it
    w = model.up.weight.detach()
    imp = full.matrix("up")
    closed = weighted_factors(w, 2, imp, iters=0, als=0)
    refined = weighted_factors(w, 2, imp, iters=50, als=50)
    assert weighted_error(w, closed[0] @ closed[1], imp) <= weighted_error(w, refined[0] @ refined[1], imp) * (1 + 1e-9)
    priv = release_statistics(importance=full, epsilon=1e9, delta=1e-6, generator=_gen(3))
    for n in full.scores:
        torch.testing.assert_close(priv.importance.denoised()[n], full.matrix(n), rtol=1e-3, atol=1e-6)
    res = compress_model(model, groups, ratio=0.5, factorization="importance", statistics=priv)
    assert res.method == "private" and res.epsilon() == pytest.approx(1e9, rel=1e-6)


def test_bad_arguments_of_the_new_compressors_are_named_and_change_nothing():
    a = torch.randn(8, 6, dtype=torch.float64)
    for call, word in (
        (lambda: lplr(a, 0), "rank"), (lambda: lplr(a, 7), "rank"), (lambda: lplr(a, 3, bits=(8, 0)), r"bits\[1\]"),
        (lambda: lplr(a, 3, sketch="hadamard"), "sketch"), (lambda: lplr(a, 3, power_iters=-1), "power_iters"),
        (lambda: lplr(torch.randn(3), 1), "a must"), (lambda: dsvd(a, 3, bits=40), "bits"),
        (lambda: weighted_factors(a, 2, torch.ones(3, 3)), "importance"),
        (lambda: weighted_factors(a, 2, torch.ones_like(a), sparsity=1.0), "sparsity"),
        (lambda: rank_for_budget((8, 6), -1.0), "bits_per_entry"),
    ):
        with pytest.raises((ValueError, TypeError), match=word):
            call()
    model, groups = _tiny()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batches = padded_batches(_examples(_gen(20), 4), 4)
    for kw, word in ((dict(clip=-1.0), "clip"), (dict(neighbour="swap"), "neighbour"),
                     (dict(granularity="row"), "granularity"), (dict(loss=None), "loss")):
        with pytest.raises((ValueError, TypeError), match=word):
            collect_importance(model, batches, groups, **{"loss": probe_loss, **kw})
    with pytest.raises(ValueError, match="nothing to release"):
        release_statistics(epsilon=1.0, delta=1e-6)
    named = nn.Sequential(OrderedDict([("importance", nn.Linear(4, 4))]))
    g = find_groups(named, ["importance"])
    x = torch.randn(5, 3, 4, generator=_gen(47))
    st = dl.collect_statistics(named, [x], g, mask_key=None)
    imp = collect_importance(named, [x], g, loss=lambda m, b: m(b).sum(dim=(1, 2)), mask_key=None)
    with pytest.raises(ValueError, match="named 'importance'"):
        release_statistics(st, importance=imp, epsilon=1.0, delta=1e-6)
    raw = collect_importance(model, batches, groups, loss=probe_loss, clip=None)
    with pytest.raises(ValueError, match="without clipping"):
        release_statistics(importance=raw, epsilon=1.0, delta=1e-6)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


class Attn(nn.Module):
    """Embedding → a transformer layer (masked attention mixes tokens, never examples) → up/down."""

    def __init__(self, gen, vocab=30, d=6, h=12):
        super().__init__()
        with torch.random.fork_rng():  # the layers' own initialisation, from gen, global RNG untouched
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            self.emb = nn.Embedding(vocab, d)
            self.block = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
            self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, input_ids, attention_mask):
        x = self.block(self.emb(input_ids), src_key_padding_mask=~attention_mask.bool())
        return self.down(torch.tanh(self.up(x))) * attention_mask[..., None]


def test_isolated_examples_make_neighbours_differ_by_exactly_one_contribution_despite_padding():
    """Batched float32 activations drift in their last bits with the batch's padded length (found
    by this change's audit: 1.00012-1.00077·C at 16,384 examples); each example run alone cannot."""
    model = Attn(_gen(30))
    groups = find_groups(model, ["up", "down"])
    examples = _examples(_gen(31), 20, max_len=5)
    long = {"input_ids": torch.randint(1, 30, (1, 40), generator=_gen(32)), "attention_mask": torch.ones(1, 40, dtype=torch.long)}
    kw = dict(loss=probe_loss, clip=0.5)
    full = collect_importance(model, padded_batches(examples + [long], 7), groups, **kw)
    rest = collect_importance(model, padded_batches(examples, 3), groups, **kw)
    alone = collect_importance(model, [long], groups, **kw)
    for n in full.scores:
        assert torch.equal(full.scores[n] - rest.scores[n], alone.scores[n])
    assert math.sqrt(sum(float((s * s).sum()) for s in alone.scores.values())) <= 0.5
    # the Gram collector runs each example alone by default too
    skw = dict(clip=0.5, matmul_dtype=torch.float32)
    g_full = dl.collect_statistics(model, padded_batches(examples + [long], 7), groups, **skw)
    g_rest = dl.collect_statistics(model, padded_batches(examples, 3), groups, **skw)
    g_alone = dl.collect_statistics(model, [long], groups, **skw)
    for g in groups:
        assert torch.equal(g_full[g.name].gram - g_rest[g.name].gram, g_alone[g.name].gram)
        assert float(torch.linalg.matrix_norm(g_alone[g.name].gram)) <= 0.5


def test_the_batched_probe_catches_one_way_and_faint_mixing():
    model, groups = _tiny(seed=33)
    batches = padded_batches(_examples(_gen(34), 16), 8)

    def causal(model, batch):  # each example's loss reads the one before it
        pooled = model(**batch).sum(dim=1)
        prev = torch.cat([torch.zeros_like(pooled[:1]), pooled[:-1]]).detach()
        return pooled @ PROBE + 3.0 * (pooled * prev).sum(dim=1)

    def faint(model, batch):  # a batch-mean term 2e-4 as large
        pooled = model(**batch).sum(dim=1)
        return pooled @ PROBE + 2e-4 * (pooled * pooled.mean(dim=0).detach()).sum(dim=1) * 1e3

    for loss in (causal, faint):
        with pytest.raises(ValueError, match="changes with the other examples"):
            collect_importance(model, batches, groups, loss=loss, isolate=False)
    # run alone (the default), an example cannot see any other: nothing to mix
    iso = collect_importance(model, batches, groups, loss=causal)
    per = [collect_importance(model, [e], groups, loss=causal) for e in _examples(_gen(34), 16)]
    for n in iso.scores:
        assert torch.equal(iso.scores[n], sum(p.scores[n] for p in per))


def test_one_collection_per_model_at_a_time_and_no_gradient_left_behind():
    model, groups = _tiny(seed=35)
    batches = padded_batches(_examples(_gen(36), 6), 3)
    head = nn.Linear(6, 1)  # outside the model, used by the loss
    model.up.weight.grad = torch.full_like(model.up.weight, 7.0)  # the caller's own gradient
    # the guard puts containers the loss can reach back before every pass: the flag lives in
    # an object of the standard library, which it does not walk
    nested = threading.Event()

    def loss(m, batch):
        if not nested.is_set():
            nested.set()
            for call in (lambda: collect_importance(model, batches, groups, loss=probe_loss),
                         lambda: dl.collect_statistics(model, batches, groups)):
                with pytest.raises(ValueError, match="another statistics or importance collection"):
                    call()
        return head(model(**batch).sum(dim=1)).squeeze(-1)

    collect_importance(model, batches, groups, loss=loss)
    assert nested.is_set()
    assert head.weight.grad is None and head.bias.grad is None  # no private gradient left outside
    assert torch.equal(model.up.weight.grad, torch.full_like(model.up.weight, 7.0))  # and the caller's kept
    assert model.down.weight.grad is None
    collect_importance(model, batches, groups, loss=probe_loss)  # the model is free again


class _SeqFirst(nn.Module):
    """Takes ids of shape (T, B) and mixes context along the first axis (not the examples')."""

    def __init__(self, gen):
        super().__init__()
        self.emb, self.up = nn.Embedding(30, 6), nn.Linear(6, 6)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(30, 6, generator=gen))

    def forward(self, ids):
        h = self.emb(ids)
        return self.up(h + h.cumsum(dim=0))  # shape: (T, B, 6)


def test_isolation_refuses_what_it_cannot_split_and_rows_that_are_not_examples():
    """Found by this change's second audit: numpy/list entries were passed whole to every
    'isolated' example (each counted B times: 5.54·C between neighbours), importance batches
    without their mask ran untrimmed, and a sequence-first model passed once the probe was off."""
    model, groups = _tiny(seed=40)
    batch = padded_batches(_examples(_gen(41), 4), 4)[0]
    as_numpy = {k: v.numpy() for k, v in batch.items()}
    fwd = dict(forward=lambda m, b: m(**{k: torch.as_tensor(v) for k, v in b.items()}))
    with pytest.raises(ValueError, match="batch entry 'input_ids' is a ndarray"):
        dl.collect_statistics(model, [as_numpy], groups, **fwd)
    as_lists = {k: v.tolist() for k, v in batch.items()}
    with pytest.raises(ValueError, match="is a list"):
        dl.collect_statistics(model, [as_lists], groups, **fwd)
    with pytest.raises(ValueError, match="is a ndarray"):
        collect_importance(model, [as_numpy], groups,
                           loss=lambda m, b: probe_loss(m, {k: torch.as_tensor(v) for k, v in b.items()}))
    # a tuple batch for importance: its mask is not under mask_key, so nothing would be trimmed
    with pytest.raises(ValueError, match="no 'attention_mask' entry"):
        collect_importance(model, [(batch["input_ids"], batch["attention_mask"])], groups,
                           loss=lambda m, b: probe_loss(m, {"input_ids": b[0], "attention_mask": b[1]}))
    # rows that are token positions, not examples: the probe runs on unmasked isolated batches
    seq = _SeqFirst(_gen(42))
    ids = torch.randint(1, 30, (7, 3), generator=_gen(43))  # shape: (T, B)
    with pytest.raises(ValueError, match="change with the other examples"):
        dl.collect_statistics(seq, [ids], find_groups(seq, ["up"]), mask_key=None)
    with pytest.raises(ValueError, match="changes with the other examples"):
        collect_importance(seq, [ids], find_groups(seq, ["up"]), mask_key=None,
                           loss=lambda m, b: m(b).sum(dim=(1, 2)))  # one loss per row of the first axis


class _FaintIntoSmall(nn.Module):
    def forward(self, x):
        return x + 1e-6 * x.sum(dim=0, keepdim=True)


def test_the_statistics_probe_scales_by_each_examples_own_activations():
    """The Gram probe compared with the batch's largest activation: faint mixing into small
    examples beside one 1e4 times larger passed (1.035·C between neighbours, second audit)."""
    model = nn.Sequential(_FaintIntoSmall(), nn.Linear(4, 4))
    x = torch.randn(4, 3, 4, generator=_gen(44))
    x[0] *= 1e4
    with pytest.raises(ValueError, match="change with the other examples"):
        dl.collect_statistics(model, [x], find_groups(model, ["1"]), mask_key=None, isolate=False)


def test_no_collection_on_a_wrapper_of_a_model_being_collected_and_no_foreign_thread_recorded():
    model, groups = _tiny(seed=45)
    wrapper = nn.Sequential(model)
    batches = padded_batches(_examples(_gen(46), 4), 2)
    outcome = queue.Queue()  # not put back by the guard (see the test above)

    def other_thread():
        try:  # a plain forward pass on the model from another thread, mid-collection
            model(**batches[0])
            outcome.put(("forward", "ran"))
        except RuntimeError as e:
            outcome.put(("forward", str(e)))
        try:
            collect_importance(wrapper, batches, find_groups(wrapper, ["0.up"]), loss=probe_loss)
            outcome.put(("wrapper", "ran"))
        except ValueError as e:
            outcome.put(("wrapper", str(e)))

    def loss(m, batch):
        if outcome.empty():
            t = threading.Thread(target=other_thread)
            t.start()
            t.join()
        return probe_loss(m, batch)

    alone = collect_importance(model, batches, groups, loss=probe_loss)
    got = collect_importance(model, batches, groups, loss=loss)
    said = dict(outcome.queue)
    assert "another thread" in said["forward"]
    assert "another statistics or importance collection" in said["wrapper"]
    for n in alone.scores:
        assert torch.equal(got.scores[n], alone.scores[n])


_CARRIED = {}  # a global that a forward pass writes (the guard walks the globals of model code)


class _Kept:
    """A plain object of the model's own code holding state."""

    def __init__(self):
        self.t = None


class _Stateful(nn.Module):
    """Adds state left by earlier forward passes to its input, then keeps its own input there:
    each ``where`` is one place a forward pass can hide state (the fourth audit's list)."""

    carried = None  # a class attribute

    def __init__(self, where):
        super().__init__()
        self.where = where
        self.absmax = 0.0
        self._hidden = None
        self.cache = {}
        self.queue = collections.deque(maxlen=2)
        self.array = np.zeros(6)
        self.kept = _Kept()
        self.acc = torch.zeros(6)  # a plain tensor attribute, written in place
        object.__setattr__(self, "side", nn.Module())  # an unregistered module
        self.side.last = None
        memo = []
        self.remember = lambda v: (memo.append(v), memo[0])[1]  # a closure
        self.gen = torch.Generator().manual_seed(3)
        self.rnd = random.Random(4)
        self.nprng = np.random.default_rng(5)
        self.plain = torch.zeros(6)  # written through .data or through numpy (no version counter)
        self.outputs = _Output()  # a dict subclass with fields
        self.keyed = {}
        self.factory = collections.defaultdict(list)
        self.ns = types.SimpleNamespace(last=None)
        self.part = functools.partial(_stash, {})
        self.bits = np.zeros(6, dtype=np.float32)
        self.flag = torch.zeros(1)
        self.cache = {}
        self.lru_order = collections.OrderedDict([(1, None), (2, None)])
        self.conv = _ObservingConv(6, 6, 1)
        self.steps = _Steps()
        self.carr = array.array("d", [0.0] * 6)
        _WEAK_KEEP["box"] = _WEAK.setdefault("box", _Kept())

    def observe_step(self, v):  # named only in a string
        prev, _FRAMEWORK["h"] = _FRAMEWORK.get("h"), v
        return prev

    @staticmethod
    def _static_step(v):
        prev, _STATIC["h"] = _STATIC.get("h"), v
        return prev

    @property
    def stashed(self):
        return _PROPERTY.get("h")

    @stashed.setter
    def stashed(self, v):
        _PROPERTY["h"] = v

    def forward(self, x, memo=[]):  # noqa: B006 (a mutable default, on purpose)
        v = x.detach().mean(dim=(0, 1))  # shape: (6,)
        w = self.where
        if w == "float":
            prev, self.absmax = self.absmax, float(v.abs().max())
            return x * (1.0 + prev)
        if w == "underscore":
            prev, self._hidden = self._hidden, v
        elif w == "dict":
            prev, self.cache["h"] = self.cache.get("h"), v
        elif w == "deque":
            prev = self.queue[-1] if self.queue else None
            self.queue.append(v)
        elif w == "numpy":
            prev = torch.as_tensor(self.array.copy(), dtype=x.dtype)
            self.array[:] = v.double().numpy()
        elif w == "object":
            prev, self.kept.t = self.kept.t, v
        elif w == "tensor":
            prev = self.acc.clone()
            self.acc.copy_(v)
        elif w == "unregistered":
            prev, self.side.last = self.side.last, v
        elif w == "global":
            prev, _CARRIED["h"] = _CARRIED.get("h"), v
        elif w == "class":
            prev, type(self).carried = type(self).carried, v
        elif w == "closure":
            prev = self.remember(v)
        elif w == "rng_global":  # F.dropout defaults to training=True: it draws in eval mode too
            return torch.nn.functional.dropout(x, 0.5)
        elif w == "generator":
            return x * torch.rand(x.shape, generator=self.gen)
        elif w == "pyrandom":
            return x * self.rnd.random()
        elif w == "nprandom":
            return x * float(self.nprng.random())
        elif w == "data_write":
            prev = self.plain.clone()
            self.plain.data.copy_(v)
        elif w == "numpy_write":
            prev = self.plain.clone()
            self.plain.numpy()[:] = v.numpy()
        elif w == "sibling":
            return guard_helpers.smooth(x)
        elif w == "dict_subclass":
            prev, self.outputs.last = getattr(self.outputs, "last", None), v
        elif w == "dict_key":
            old = next(iter(self.keyed), None)
            prev = None if old is None else old.t
            self.keyed.clear()
            self.keyed[_Kept()] = 1
            next(iter(self.keyed)).t = v
        elif w == "tensor_attr":
            prev, self.flag.carried = getattr(self.flag, "carried", None), v
        elif w == "default_factory":
            prev = self.factory.default_factory()
            prev = prev if isinstance(prev, torch.Tensor) else None
            self.factory.default_factory = lambda v=v: v
        elif w == "namespace":
            prev, self.ns.last = self.ns.last, v
        elif w == "partial":
            prev = self.part(v)
        elif w == "nan_payload":  # one float32 hidden in a NaN's payload bits
            word = self.bits.view(np.uint32)
            prev = None if word[0] == 0 else torch.tensor([float(np.uint32(word[0] & 0x3FFFFF))] * 6)
            word[0] = np.uint32(0x7FC00000 | (int(v.abs().sum() * 1000) & 0x3FFFFF))
        elif w == "staticmethod":
            prev = self._static_step(v)
        elif w == "property":
            prev = self.stashed
            self.stashed = v
        elif w == "fn_attr":
            prev = _memo_step(v)
        elif w == "lazy_import":
            from .guard_helpers import _LAZY

            prev, _LAZY["h"] = _LAZY.get("h"), v
        elif w == "od_order":  # an LRU's order: which entry is oldest says which example came first
            od = self.lru_order
            od.move_to_end(next(iter(od)))
            prev = v * 0 + float(next(iter(od)))
        elif w == "lru_cache":
            prev = _cached_workspace(6).clone()
            _cached_workspace(6).copy_(v)
            prev = prev if prev.any() else None
        elif w == "carray":
            prev = torch.tensor(list(self.carr), dtype=x.dtype) if any(self.carr) else None
            self.carr[:] = array.array("d", v.double().tolist())
        elif w == "weak":
            box = _WEAK.get("box")
            prev = box.t
            box.t = v
        elif w == "override":  # torch's Conv1d.forward calls the override, which walked code never names
            self.conv(x.detach().transpose(1, 2))
            prev = _FRAMEWORK.pop("prev", None)
        elif w == "dunder":
            prev = v * _Scaler()
        elif w == "iterator":
            prev = next(self.steps)
            self.steps.last = v
        elif w == "methodcaller":
            prev = operator.methodcaller("observe_step", v)(self)
        elif w == "requires_grad":
            prev = x.new_ones(6) if self.flag.requires_grad else None
            self.flag.requires_grad_(bool(v.sum() > 0))
        else:  # a mutable default argument
            prev = memo[-1] if memo else None
            memo.append(v)
        return x if prev is None else x + prev


_STATIC, _PROPERTY, _FRAMEWORK = {}, {}, {}  # globals reached through a staticmethod, a property, ...


class _ObservingConv(nn.Conv1d):
    def _conv_forward(self, input, weight, bias):  # called by torch's own forward
        _FRAMEWORK["prev"] = _FRAMEWORK.get("last")
        _FRAMEWORK["last"] = input.detach().mean(dim=(0, 2))
        return super()._conv_forward(input, weight, bias)


class _Scaler:
    def __rmul__(self, v):  # an operator: named by no code
        prev, _FRAMEWORK["scale"] = _FRAMEWORK.get("scale"), v
        return prev


class _Steps:
    def __init__(self):
        self.last = None

    def __next__(self):
        return _FRAMEWORK.get("step") if self.last is None else self.last
_WEAK, _WEAK_KEEP = weakref.WeakValueDictionary(), {}


def _memo_step(v):
    prev = getattr(_memo_step, "memo", None)
    _memo_step.memo = v  # a memo kept on the function
    return prev


@functools.cache
def _cached_workspace(n):
    return torch.zeros(n)


_PLACES = ("float", "underscore", "dict", "deque", "numpy", "object", "tensor", "unregistered", "global", "class",
           "closure", "default", "rng_global", "generator", "pyrandom", "nprandom", "data_write", "numpy_write",
           "sibling", "dict_subclass", "dict_key", "tensor_attr", "default_factory", "namespace", "partial",
           "nan_payload", "requires_grad", "staticmethod", "property", "fn_attr", "lazy_import", "od_order",
           "lru_cache", "carray", "weak", "override", "dunder", "iterator", "methodcaller")


class _Output(dict):
    """A dict with fields (like transformers' ModelOutput)."""


def _stash(store, v):
    prev = store.get("h")
    store["h"] = v
    return prev


@pytest.mark.parametrize("where", _PLACES)
def test_state_a_forward_pass_keeps_is_put_back_before_every_example(where):
    """Found by this change's third and fourth audits: an observer kept as a plain float moved a
    released Gram by 45.8·C; once attributes were checked at the end of the collection, state in a
    dict, a deque, a numpy array, an object, an underscore attribute, an unregistered module, a
    global, a class attribute, a closure or a default argument still moved it by 33–39·C; the
    fifth audit got 1.3–8.4·C through random generators (F.dropout's default training=True draws
    in eval mode), ``.data`` and numpy writes to plain tensors, a global of a sibling module,
    container subclasses' fields, dict keys, tensor attributes, ``default_factory``,
    SimpleNamespace and partial objects, a NaN payload and a ``requires_grad`` flag; the sixth
    1.5–7.2·C through globals used by a staticmethod or a property, a memo on a function, a
    lazy import, an OrderedDict's order, an lru_cache, an ``array.array`` and a
    WeakValueDictionary; the seventh 1.1–7.2·C through a method only torch calls (an override),
    an operator dunder, an iterator's ``__next__`` and a method named in a string. Each
    example must now meet the model as it was before the collection: the statistics of a batch
    equal the sum of each example's collected alone, and the state is as it was afterwards."""
    examples = _examples(_gen(50), 4)
    model, _ = _tiny(seed=51)
    extra = _Stateful(where)
    model.up = nn.Sequential(extra, model.up)
    groups = find_groups(model, ["up.1", "down"])
    with pytest.warns(UserWarning, match="put back before every forward pass"):
        together = dl.collect_statistics(model, padded_batches(examples, 4), groups)
    with pytest.warns(UserWarning, match="put back"):
        imp = collect_importance(model, padded_batches(examples, 4), groups, loss=probe_loss)
    alone = [dl.collect_statistics(model, [e], groups) for e in examples]
    imp_alone = [collect_importance(model, [e], groups, loss=probe_loss) for e in examples]
    for name in ("up.1", "down"):
        assert torch.equal(together[name].gram, sum(a[name].gram for a in alone))
    for n in imp.scores:
        assert torch.equal(imp.scores[n], sum(a.scores[n] for a in imp_alone))
    # and nothing is left behind
    assert not extra.plain.any() and not extra.bits.view(np.uint32).any() and not extra.flag.requires_grad
    assert "h" not in guard_helpers._WORKSPACE and not hasattr(extra.flag, "carried")
    assert extra.absmax == 0.0 and extra._hidden is None and extra.cache == {} and len(extra.queue) == 0
    assert not extra.array.any() and extra.kept.t is None and not extra.acc.any() and extra.side.last is None
    assert "h" not in _CARRIED and _Stateful.carried is None and extra.remember(0) == 0
    assert not _STATIC and not _PROPERTY and not hasattr(_memo_step, "memo") and list(extra.lru_order) == [1, 2]
    assert not _FRAMEWORK and extra.steps.last is None
    assert not any(extra.carr) and _WEAK["box"].t is None and _cached_workspace.cache_info().currsize == 0
    assert _Stateful.forward.__defaults__[0] == []


_SEEN_BATCHES = []  # written by the corpus reader, used by no model code: the guard leaves it alone


class _Keyed(nn.Module):
    """State in a data dict keyed by private values, and a buffer written through ``.data``."""

    def __init__(self):
        super().__init__()
        self.by_user = {}
        self.register_buffer("running", torch.zeros(6))
        with torch.inference_mode():
            self.cache = torch.zeros(6)  # an inference tensor (made under inference_mode), updated in place

    def forward(self, x):
        self.by_user["alice.smith@example.com"] = x.detach().sum()
        with torch.inference_mode():
            self.cache.add_(1.0)
        return x


def test_the_guard_names_no_private_key_leaves_the_reader_alone_and_cleans_up_after_errors():
    """Fifth audit: a warning named the keys of a data dict (e-mail addresses); globals of the
    caller's script were rolled back wholesale (a reader in a global served the same batch again);
    an inference tensor updated in place crashed the restore; a ``.data`` write to a buffer
    survived a collection that stopped with an error; a global forward hook registered during a
    pass ran in every later one."""
    examples = _examples(_gen(60), 8)
    model, _ = _tiny(seed=61)
    keyed = _Keyed()
    model.up = nn.Sequential(keyed, model.up)
    groups = find_groups(model, ["up.1"])

    def reader():
        for b in padded_batches(examples, 4):
            _SEEN_BATCHES.append(1)
            yield b

    _SEEN_BATCHES.clear()
    with pytest.warns(UserWarning) as caught:
        dl.collect_statistics(model, reader(), groups)
    assert len(_SEEN_BATCHES) == 2  # each batch read once
    assert not any("alice" in str(w.message) for w in caught)
    assert keyed.by_user == {} and not keyed.cache.any()

    class Boom(RuntimeError):
        pass

    def failing(m, batch):
        keyed.running.data.add_(batch["input_ids"].double().mean())  # no version counter moves
        if batch["input_ids"].shape[0] == 1 and int(batch["input_ids"][0, 0]) == int(examples[3]["input_ids"][0, 0]):
            raise Boom()
        return m(**batch)

    with pytest.raises(Boom):
        dl.collect_statistics(model, padded_batches(examples, 4), groups, forward=failing)
    assert not keyed.running.any()  # put back although the collection stopped early

    def hooking(m, batch):
        if not torch.nn.modules.module._global_forward_hooks:
            torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: None)
        return m(**batch)

    with pytest.warns(UserWarning, match="_global_forward_hooks"):
        dl.collect_statistics(model, padded_batches(examples, 4), groups, forward=hooking)
    assert not torch.nn.modules.module._global_forward_hooks


class _Counted(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.ticks = itertools.count()
        self.sched = self._schedule()
        next(self.sched)

    def _schedule(self):
        total = 0.0
        while True:
            total += yield total

    def forward(self, x):
        if self.kind == "count":
            next(self.ticks)
        else:
            self.sched.send(float(x.detach().sum()))
        return x


@pytest.mark.parametrize("kind", ["count", "generator"])
def test_state_that_cannot_be_put_back_is_refused(kind):
    """A generator's frame or an itertools counter holds state the guard cannot restore (sixth
    audit: 1.55–3.47·C): a collection whose forward pass advances one is refused."""
    model, _ = _tiny(seed=62)
    model.up = nn.Sequential(_Counted(kind), model.up)
    with pytest.raises(ValueError, match="cannot be put back"):
        dl.collect_statistics(model, padded_batches(_examples(_gen(63), 4), 4), find_groups(model, ["up.1"]))


def test_a_guarded_collection_refuses_a_changed_parameter_at_once_and_puts_it_back():
    """Parameters and buffers are not a cache: a forward pass that writes them is refused (the
    change would be saved with the model), at the first pass that does, not at the end."""
    calls = queue.SimpleQueue()  # a counter the guard does not put back

    class Ema(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(6))

        def forward(self, x):
            calls.put(1)
            self.mean.mul_(0.5).add_(0.5 * x.detach().mean(dim=(0, 1)))
            return x

    model, _ = _tiny(seed=54)
    model.up = nn.Sequential(Ema(), model.up)
    groups = find_groups(model, ["up.1"])
    with pytest.raises(ValueError, match=r"changed its state \['up.0.mean'\]"):
        dl.collect_statistics(model, padded_batches(_examples(_gen(55), 8), 4), groups, check_independence=False)
    assert calls.qsize() == 1 and torch.equal(model.up[0].mean, torch.zeros(6))


class _Holder:
    """A container isolation does not know: it would reach every example whole."""

    def __init__(self, t):
        self.t = t


def test_isolation_passes_only_plain_values_whole_and_mask_key_none_needs_no_mask():
    """Third audit: unknown containers reached every 'isolated' example (4.56·C under replace);
    mask_key=None on right-padded batches counted padding (2.65·C)."""
    model, groups = _tiny(seed=52)
    batch = padded_batches(_examples(_gen(53), 4), 4)[0]
    fwd = dict(forward=lambda m, b: m(**{k: v for k, v in b.items() if k not in ("extra", "flag")}))
    with pytest.raises(ValueError, match="batch entry 'extra' is a _Holder"):
        dl.collect_statistics(model, [dict(batch, extra=_Holder(batch["input_ids"]))], groups, **fwd)
    with pytest.raises(ValueError, match="batch entry 'extra' is a Tensor|batch entry 'extra'"):
        dl.collect_statistics(model, [dict(batch, extra=torch.tensor(3.0))], groups, **fwd)  # 0-d
    dl.collect_statistics(model, [dict(batch, extra="a name", flag=True)], groups, **fwd)  # plain values pass
    with pytest.raises(ValueError, match="mask_key=None, but the batch has 'attention_mask'"):
        dl.collect_statistics(model, [batch], groups, mask_key=None)
    renamed = {"input_ids": batch["input_ids"], "input_mask": batch["attention_mask"]}
    with pytest.raises(ValueError, match="'input_mask'"):
        collect_importance(model, [renamed], groups, mask_key=None,
                           loss=lambda m, b: probe_loss(m, {"input_ids": b["input_ids"],
                                                            "attention_mask": b["input_mask"]}))
