"""Private compression: whitened optimality, statistics (clipping, padding, routes), release,
noise-aware estimation, accounting, LowRankLinear and files. Small models only."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import dplowrank as dl
from dplowrank.compress import (
    LowRankLinear,
    Unit,
    allocate_ranks,
    collect_statistics,
    compress_model,
    count_parameters,
    denoise_gram,
    embedding_agreement,
    find_groups,
    load_compressed,
    output_errors,
    release_statistics,
    save_compressed,
    whitened_factors,
)
from dplowrank.privacy import gdp_epsilon

from .conftest import padded_batches


def _randn(*shape, gen, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _correlated_inputs(d, n, gen):
    """Columns x with a decaying, rotated covariance: whitening matters."""
    q, _ = torch.linalg.qr(_randn(d, d, gen=gen))
    scales = torch.logspace(0, -1.5, d, dtype=torch.float64)
    return (q * scales) @ _randn(d, n, gen=gen)  # shape: (d, n)


class Toy(nn.Module):
    """Token model without cross-token mixing: per-example contributions are checkable.

    q/k/v read the same input (one group); up (8 → 12) and down (12 → 8) form the FFN, down is a
    down-projection (d_out < d_in) read from its output by default.
    """

    def __init__(self, gen, vocab=40, d=8, h=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)

    def forward(self, input_ids, attention_mask=None):
        x = self.emb(input_ids)
        a = self.q(x) + self.k(x) + self.v(x)
        return self.down(torch.relu(self.up(x))) + a


TOY_PATTERNS = dict(include=[r"q|k|v", "up", "down"], shared=[r"(?P<group>)(q|k|v)"])


def _toy_groups(model):
    groups = find_groups(model, **TOY_PATTERNS)
    return {g.name: g for g in groups}, groups


def _batches(gen, n_batches=6, batch=5, max_len=7, vocab=40, pad_id=0, min_len=1, low=1):
    """Padded token batches: lengths in [min_len, max_len], ids in [low, vocab), then pad_id."""
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
        t = int(lengths.max())
        ids = torch.randint(low, vocab, (batch, t), generator=gen)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _unpadded_examples(batches):
    for b in batches:
        for ids, mask in zip(b["input_ids"], b["attention_mask"]):
            n = int(mask.sum())
            yield {"input_ids": ids[:n][None], "attention_mask": mask[:n][None]}


# ---- factorisation -------------------------------------------------------------------------


def test_whitened_attains_the_eckart_young_optimum_and_beats_random_candidates():
    gen = torch.Generator().manual_seed(0)
    d_out, d_in, n, r = 5, 4, 30, 2
    w, x = _randn(d_out, d_in, gen=gen), _correlated_inputs(d_in, n, gen)
    left, right = whitened_factors(w, r, gram=x @ x.T)
    err = torch.linalg.matrix_norm((w - left @ right) @ x)
    # X has full row rank, so {ŴX : rank Ŵ ≤ r} is every rank-r matrix in X's row space and the
    # minimum is the Eckart–Young tail of WX.
    s = torch.linalg.svdvals(w @ x)
    assert float(err) == pytest.approx(float(torch.sqrt(torch.sum(s[r:] ** 2))), rel=1e-10)
    # brute force: no random rank-r candidate, nor the data-free SVD, does better
    for _ in range(300):
        cand = _randn(d_out, r, gen=gen) @ _randn(r, d_in, gen=gen)
        # the best candidate with the same column space: least squares in the whitened metric
        a = cand @ torch.linalg.pinv(cand)  # projector onto the column space
        assert float(torch.linalg.matrix_norm((w - a @ w) @ x)) >= float(err) - 1e-10
    l2, r2 = whitened_factors(w, r)
    assert float(torch.linalg.matrix_norm((w - l2 @ r2) @ x)) >= float(err) - 1e-10


def test_whitened_is_optimal_among_all_rank_r_by_local_search():
    # gradient descent over arbitrary rank-r factorisations A Bᵀ never gets below the closed form
    gen = torch.Generator().manual_seed(1)
    w, x = _randn(4, 3, gen=gen), _correlated_inputs(3, 20, gen)
    left, right = whitened_factors(w, 1, gram=x @ x.T)
    best = float(torch.linalg.matrix_norm((w - left @ right) @ x)) ** 2
    for _ in range(5):
        a = _randn(4, 1, gen=gen).requires_grad_()
        b = _randn(1, 3, gen=gen).requires_grad_()
        opt = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.sum(((w - a @ b) @ x) ** 2)
            loss.backward()
            return loss

        opt.step(closure)
        assert float(closure().detach()) >= best - 1e-8


@given(st.integers(0, 10_000), st.integers(1, 3))
def test_whitened_never_worse_than_svd_on_its_own_data(seed, r):
    gen = torch.Generator().manual_seed(seed)
    w, x = _randn(5, 4, gen=gen), _correlated_inputs(4, 12, gen)
    lw, rw = whitened_factors(w, r, gram=x @ x.T)
    ls, rs = whitened_factors(w, r)
    assert float(torch.linalg.matrix_norm((w - lw @ rw) @ x)) <= float(torch.linalg.matrix_norm((w - ls @ rs) @ x)) + 1e-9


def test_row_space_gram_gives_the_same_factors_as_the_full_input_gram():
    # d_in > d_out: only Qᵀ G Q (Q spans W's row space) is needed
    gen = torch.Generator().manual_seed(2)
    w, x = _randn(3, 7, gen=gen), _correlated_inputs(7, 40, gen)
    g = x @ x.T
    q = torch.linalg.svd(w, full_matrices=False)[2].T  # shape: (7, 3)
    l1, r1 = whitened_factors(w, 2, gram=g)
    l2, r2 = whitened_factors(w, 2, gram=q.T @ g @ q, basis=q)
    torch.testing.assert_close(l1 @ r1, l2 @ r2, rtol=1e-10, atol=1e-10)


def test_joint_rank_k_reduces_to_svd_for_one_matrix_and_is_the_stacked_svd():
    gen = torch.Generator().manual_seed(3)
    w = _randn(6, 4, gen=gen)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    left, right = whitened_factors(w, 2)  # data-free
    torch.testing.assert_close(left @ right, (u[:, :2] * s[:2]) @ vh[:2], rtol=1e-10, atol=1e-10)
    # through compress_model: joint=True on a single layer is the truncated SVD too
    lin = nn.Linear(4, 6, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = nn.Sequential(lin)
    groups = find_groups(model, ["0"])
    res = compress_model(model, groups, ratio=0.45, joint=True)
    r = res.ranks["0"]
    torch.testing.assert_close(res.layers["0"].dense_weight(), (u[:, :r] * s[:r]) @ vh[:r], rtol=1e-10, atol=1e-10)
    # a shared-input group compressed jointly: the members' Ŵ stack to the stacked truncated SVD
    toy = Toy(torch.Generator().manual_seed(4)).double()
    by_name, groups = _toy_groups(toy)
    stacked = torch.cat([toy.q.weight, toy.k.weight, toy.v.weight]).detach().clone()
    res = compress_model(toy, [by_name[""]], ratio=0.5, joint=True)
    k = res.ranks["q"]
    assert res.ranks["k"] == res.ranks["v"] == k
    assert toy.q.down is toy.k.down is toy.v.down  # one shared down-projection
    u, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    got = torch.cat([toy.q.dense_weight(), toy.k.dense_weight(), toy.v.dense_weight()])
    torch.testing.assert_close(got, (u[:, :k] * s[:k]) @ vh[:k], rtol=1e-9, atol=1e-9)
    assert res.parameters_after == k * (8 + 24)


def test_low_rank_linear_equals_the_original_at_full_rank():
    gen = torch.Generator().manual_seed(5)
    for d_in, d_out in ((6, 9), (9, 6), (5, 5)):
        lin = nn.Linear(d_in, d_out)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(d_out, d_in, generator=gen))
            lin.bias.copy_(torch.randn(d_out, generator=gen))
        x = torch.randn(4, 3, d_in, generator=gen)
        full = LowRankLinear.from_linear(lin, min(d_in, d_out))
        torch.testing.assert_close(full(x), lin(x), rtol=1e-5, atol=1e-5)
        left, right = whitened_factors(lin.weight.detach(), min(d_in, d_out))
        low = LowRankLinear.from_factors(left.float(), right.float(), lin.bias.detach())
        torch.testing.assert_close(low(x), lin(x), rtol=1e-5, atol=1e-5)
    lin = nn.Linear(3, 2, bias=False)
    assert LowRankLinear.from_linear(lin, 2).up.bias is None


def test_rank_allocation_respects_the_budget():
    gen = torch.Generator().manual_seed(6)
    flat = Unit("flat", 64, 64, torch.ones(64, dtype=torch.float64))
    steep = Unit("steep", 64, 192, torch.logspace(0, -6, 64, dtype=torch.float64))
    units = [flat, steep, Unit("rand", 32, 48, torch.rand(32, generator=gen, dtype=torch.float64).sort(descending=True).values)]
    dense = sum(u.dense for u in units)
    for strategy in ("uniform", "energy"):
        for ratio in (0.2, 0.5, 0.8):
            ranks = allocate_ranks(units, ratio, strategy=strategy)
            assert sum(ranks[u.name] * u.cost for u in units) <= ratio * dense
            assert all(1 <= ranks[u.name] <= u.max_rank for u in units)
    # energy: a flat spectrum needs rank, a steep one does not
    ranks = allocate_ranks([flat, steep], 0.3, strategy="energy")
    assert ranks["flat"] > ranks["steep"]
    with pytest.raises(ValueError, match="ratio"):
        allocate_ranks(units, 1.5)
    with pytest.raises(ValueError, match="strategy"):
        allocate_ranks(units, 0.5, strategy="magic")


# ---- statistics ----------------------------------------------------------------------------


def _contributions(model, groups, examples, **kw):
    """Each example's contribution to each group's Gram, collected alone."""
    out = []
    for ex in examples:
        s = collect_statistics(model, [ex], groups, **kw)
        out.append({g.name: s[g.name].gram.clone() for g in groups})
    return out


def test_clipping_bounds_every_examples_frobenius_contribution_even_for_adversarial_inputs():
    gen = torch.Generator().manual_seed(7)
    model = Toy(gen)
    _, groups = _toy_groups(model)
    examples = list(_unpadded_examples(_batches(gen, n_batches=3)))
    # adversarial: very long sequences of the token with the largest embedding, scaled up
    with torch.no_grad():
        model.emb.weight[1].mul_(1e3)
    examples += [{"input_ids": torch.ones(1, 500, dtype=torch.long), "attention_mask": torch.ones(1, 500, dtype=torch.long)}]
    for clip in (0.01, 1.0, 50.0, "normalize"):
        c = 1.0 if clip == "normalize" else clip
        for contrib in _contributions(model, groups, examples, clip=clip):
            for gram in contrib.values():
                assert float(torch.linalg.matrix_norm(gram)) <= c
        stats = collect_statistics(model, _batches(gen), groups, clip=clip)
        assert all(s.sensitivity == c for s in stats)
    # normalisation: every nonzero example contributes exactly C (to the margin)
    for contrib in _contributions(model, groups, examples[:4], clip="normalize"):
        for gram in contrib.values():
            assert float(torch.linalg.matrix_norm(gram)) == pytest.approx(1.0, rel=1e-4)
    stats = collect_statistics(model, _batches(gen), groups, clip=2.0, neighbour="replace")
    assert all(s.sensitivity == pytest.approx(2.0 * math.sqrt(2.0)) for s in stats)


def test_batched_statistics_are_the_sum_of_per_example_contributions():
    gen = torch.Generator().manual_seed(8)
    model = Toy(gen).double()
    _, groups = _toy_groups(model)
    batches = _batches(gen)
    stats = collect_statistics(model, batches, groups, clip=3.0, matmul_dtype=torch.float64)
    parts = _contributions(model, groups, list(_unpadded_examples(batches)), clip=3.0, matmul_dtype=torch.float64)
    for g in groups:
        torch.testing.assert_close(stats[g.name].gram, sum(p[g.name] for p in parts), rtol=1e-10, atol=1e-10)
    assert stats[groups[0].name].n_examples == sum(len(b["input_ids"]) for b in batches)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_neighbouring_corpus_changes_each_gram_by_exactly_one_bounded_contribution(dtype):
    """The sums are exact: K(D) − K(D minus one example) is that example's rounded contribution,
    bit for bit, whatever the batching, and its norm is at most C. (A float32 product over a
    batch's tokens, as before, mixed the rounding of every example in the batch.)"""
    gen = torch.Generator().manual_seed(21)
    model = Toy(gen).to(dtype)
    _, groups = _toy_groups(model)
    examples = list(_unpadded_examples(_batches(gen, n_batches=8, batch=6)))
    drop = 17
    kw = dict(clip=0.8, matmul_dtype=dtype)
    full = collect_statistics(model, padded_batches(examples, 5), groups, **kw)
    rest = collect_statistics(model, padded_batches(examples[:drop] + examples[drop + 1:], 7), groups, **kw)
    alone = collect_statistics(model, [examples[drop]], groups, **kw)
    for g in groups:
        diff = full[g.name].gram - rest[g.name].gram
        assert torch.equal(diff, alone[g.name].gram)
        assert float(torch.linalg.matrix_norm(diff)) <= 0.8
    again = collect_statistics(model, padded_batches(examples[::-1], 3), groups, **kw)
    assert all(torch.equal(again[g.name].gram, full[g.name].gram) for g in groups)


def test_nan_or_inf_in_padding_cannot_switch_clipping_off():
    """Padding was zeroed by multiplying with the mask; NaN·0 is NaN, which made the example's
    norm NaN, its scale 1 (no clipping) and the Gram unbounded (‖K‖_F = 1.6e5 for C = 1)."""
    gen = torch.Generator().manual_seed(25)
    model = Toy(gen).double()
    _, groups = _toy_groups(model)
    batches = _batches(gen, n_batches=3, min_len=2)
    with torch.no_grad():
        model.emb.weight[1:].mul_(1e3)  # real tokens far above the clip
    clean = collect_statistics(model, batches, groups, clip=1.0)
    for poison in (float("nan"), float("inf")):
        with torch.no_grad():
            model.emb.weight[0].fill_(poison)  # the pad token's activations
        dirty = collect_statistics(model, batches, groups, clip=1.0)
        for g in groups:
            assert torch.equal(dirty[g.name].gram, clean[g.name].gram)
            assert float(torch.linalg.matrix_norm(dirty[g.name].gram)) <= 15.0  # 15 examples, C = 1
    with torch.no_grad():
        model.emb.weight[3].fill_(float("nan"))  # a NaN in a real token is refused
    with pytest.raises(ValueError, match="non-finite activations"):
        collect_statistics(model, [{"input_ids": torch.tensor([[3, 4]]), "attention_mask": torch.ones(1, 2)}],
                           groups, clip=1.0)


class _BatchNormMLP(nn.Module):
    def __init__(self, gen, d=6):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(d, d), nn.BatchNorm1d(d), nn.Linear(d, d)
        with torch.no_grad():
            for p in (self.fc1.weight, self.fc2.weight):
                p.copy_(torch.randn(p.shape, generator=gen))
            self.bn.running_mean.copy_(torch.randn(d, generator=gen))

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_a_model_in_training_mode_cannot_mix_examples_or_keep_private_buffers():
    """BatchNorm in training mode normalises with the batch's statistics: one outlier example
    moved every other example's contribution (‖K(D) − K(D')‖_F measured 16.8 against C = 1) and
    updated running buffers that ship with the model. Statistics now run in eval mode."""
    gen = torch.Generator().manual_seed(22)
    model = _BatchNormMLP(gen).train()
    groups = find_groups(model, ["fc2"])
    x = torch.randn(64, 6, generator=gen)
    x[0] *= 1e3  # the outlier example
    fwd = dict(mask_key=None, forward=lambda m, b: m(b["x"]), clip=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with_it = collect_statistics(model, [{"x": x}], groups, **fwd)
    without = collect_statistics(model, [{"x": x[1:]}], groups, **fwd)
    assert float(torch.linalg.matrix_norm(with_it["fc2"].gram - without["fc2"].gram)) <= 1.0
    assert model.training and model.bn.training  # the caller's modes are restored
    for k, v in model.state_dict().items():  # running_mean, running_var, num_batches_tracked
        assert torch.equal(v, before[k]), k


class _BatchMean(nn.Module):
    """A layer that subtracts the batch mean: it mixes examples in eval mode too."""

    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


class _Counter(nn.Module):
    """A layer that writes private data into a buffer in eval mode."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x):
        self.seen += x.detach().reshape(-1, 4).sum(0)
        return x


def test_layers_that_mix_examples_sequence_first_layouts_and_buffer_writes_are_refused():
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(6, 4, generator=gen)
    fwd = dict(mask_key=None, forward=lambda m, b: m(b["x"]))
    mixing = nn.Sequential(nn.Linear(4, 4), _BatchMean(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="change with the other examples"):
        collect_statistics(mixing, [{"x": x}], find_groups(mixing, ["2"]), isolate=False, **fwd)
    assert not mixing[2]._forward_hooks
    # run alone, an example cannot mix; without a mask the probe still runs (it checks that the
    # rows split off are the examples) and refuses the layer, unless switched off
    with pytest.raises(ValueError, match="change with the other examples"):
        collect_statistics(mixing, [{"x": x}], find_groups(mixing, ["2"]), **fwd)
    together = collect_statistics(mixing, [{"x": x}], find_groups(mixing, ["2"]), clip=None,
                                  check_independence=False, **fwd)["2"]
    apart = [collect_statistics(mixing, [{"x": x[i:i + 1]}], find_groups(mixing, ["2"]), clip=None,
                                isolate=False, **fwd)["2"] for i in range(6)]
    assert together.n_examples == 6
    torch.testing.assert_close(together.row_space_gram(), sum(a.row_space_gram() for a in apart))
    # a sequence-first transformer layer: its linears would see (T, B, d)
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=False)
    with pytest.raises(ValueError, match="batch_first=False"):
        collect_statistics(layer, [{"x": torch.randn(5, 3, 4)}], find_groups(layer, ["linear1"]), **fwd)
    ok_layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True)
    stats = collect_statistics(ok_layer, [{"x": torch.randn(3, 5, 4, generator=gen)}],
                               find_groups(ok_layer, ["linear1"]), **fwd)
    assert stats["linear1"].n_examples == 3
    # a layout whose first axis is not the batch's examples
    seq_first = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="but the batch has 3 examples"):
        collect_statistics(seq_first, [{"x": torch.randn(5, 3, 4)}], find_groups(seq_first, ["0"]),
                           mask_key=None, forward=lambda m, b: m(b["x"]), examples=lambda b: 3)
    writer = nn.Sequential(_Counter(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="changed its state"):
        collect_statistics(writer, [{"x": x}], find_groups(writer, ["1"]), **fwd)
    assert torch.equal(writer[0].seen, torch.zeros(4))  # restored


def test_public_statistics_are_declared_by_the_caller():
    gen = torch.Generator().manual_seed(24)
    model = Toy(gen)
    _, groups = _toy_groups(model)
    assert not collect_statistics(model, _batches(gen), groups, clip=None).public
    assert collect_statistics(model, _batches(gen), groups, clip=None, public=True).public
    with pytest.raises(TypeError, match="public must be a bool"):
        collect_statistics(model, _batches(gen), groups, public="yes")


def test_padding_does_not_enter_the_gram():
    gen = torch.Generator().manual_seed(9)
    model = Toy(gen).double()
    _, groups = _toy_groups(model)
    batches = _batches(gen)
    padded = collect_statistics(model, batches, groups, clip=None, matmul_dtype=torch.float64)
    unpadded = collect_statistics(model, list(_unpadded_examples(batches)), groups, clip=None,
                                  matmul_dtype=torch.float64)
    for g in groups:
        torch.testing.assert_close(padded[g.name].gram, unpadded[g.name].gram, rtol=1e-10, atol=1e-10)
    # the pad token's own activations are large here; without the mask the Gram would differ
    with torch.no_grad():
        model.emb.weight[0].fill_(100.0)
    masked = collect_statistics(model, batches, groups, clip=None, matmul_dtype=torch.float64)
    torch.testing.assert_close(masked[groups[0].name].gram, padded[groups[0].name].gram, rtol=1e-10, atol=1e-10)
    nomask = [{"input_ids": b["input_ids"]} for b in batches]
    unmasked = collect_statistics(model, nomask, groups, clip=None, mask_key=None)
    assert not torch.allclose(unmasked[groups[0].name].gram, padded[groups[0].name].gram)
    with pytest.raises(ValueError, match="attention_mask"):
        collect_statistics(model, nomask, groups, clip=None)


def test_output_route_equals_input_route_and_the_output_gram():
    gen = torch.Generator().manual_seed(10)
    model = Toy(gen).double()
    by_name, _ = _toy_groups(model)
    down = [by_name["down"]]  # 12 → 8: a down-projection
    batches = _batches(gen)
    via_out = collect_statistics(model, batches, down, clip=None, route="output", matmul_dtype=torch.float64)
    via_in = collect_statistics(model, batches, down, clip=None, route="input", matmul_dtype=torch.float64)
    auto = collect_statistics(model, batches, down, clip=None, matmul_dtype=torch.float64)
    assert via_out["down"].coordinates.route == auto["down"].coordinates.route == "output"
    assert via_in["down"].coordinates.route == "input"
    k_out, k_in = via_out["down"].row_space_gram(), via_in["down"].row_space_gram()
    torch.testing.assert_close(k_out, k_in, rtol=1e-8, atol=1e-8)
    # the same factors, and they are those of the output Gram Σ (y − b)(y − b)ᵀ = W G Wᵀ
    q = via_in["down"].coordinates.basis
    w = model.down.weight.detach()
    l1, r1 = whitened_factors(w, 3, gram=k_out, basis=q)
    l2, r2 = whitened_factors(w, 3, gram=k_in, basis=q)
    torch.testing.assert_close(l1 @ r1, l2 @ r2, rtol=1e-8, atol=1e-8)
    ys = []
    model.down.register_forward_hook(lambda m, i, o: ys.append((o - m.bias)[i[0].abs().sum(-1) >= 0]))
    with torch.no_grad():
        for ex in _unpadded_examples(batches):
            model(**ex)
    y = torch.cat([t.reshape(-1, 8) for t in ys])
    out_gram = y.T @ y
    torch.testing.assert_close(w @ q @ k_out @ q.T @ w.T, out_gram, rtol=1e-8, atol=1e-8)
    top = torch.linalg.eigh(out_gram)[1][:, -3:]
    torch.testing.assert_close(l1 @ r1, top @ top.T @ w, rtol=1e-7, atol=1e-7)
    # with clipping the two routes clip identically (u is the same vector)
    c_out = collect_statistics(model, batches, down, clip=0.5, route="output", matmul_dtype=torch.float64)
    c_in = collect_statistics(model, batches, down, clip=0.5, route="input", matmul_dtype=torch.float64)
    torch.testing.assert_close(c_out["down"].gram, c_in["down"].gram, rtol=1e-7, atol=1e-9)


def test_groups_must_really_share_their_input():
    gen = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))  # the second reads the first's output
    bad = find_groups(model, ["0", "1"], shared=[r"(?P<group>)(0|1)"])
    assert len(bad) == 1 and bad[0].members == ("0", "1")
    batch = [{"x": torch.randn(3, 5, 4, generator=gen)}]
    with pytest.raises(ValueError, match="same input"):
        collect_statistics(model, batch, bad, mask_key=None, forward=lambda m, b: m(b["x"]))
    # the hooks are gone after the error
    assert not model[0]._forward_hooks and not model[1]._forward_hooks
    ok = collect_statistics(model, batch, find_groups(model, ["0", "1"]), mask_key=None,
                            forward=lambda m, b: m(b["x"]))
    assert ok["0"].n_examples == 3


def test_bad_arguments_are_named():
    gen = torch.Generator().manual_seed(12)
    model = Toy(gen)
    _, groups = _toy_groups(model)
    with pytest.raises(ValueError, match="clip"):
        collect_statistics(model, [], groups, clip="huge")
    with pytest.raises(ValueError, match="clip"):
        collect_statistics(model, [], groups, clip=-1.0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_groups(model, ["nothing"])
    with pytest.raises(ValueError, match="not nn.Linear"):
        find_groups(model, ["emb"])
    with pytest.raises(ValueError, match="named capture"):
        find_groups(model, ["q"], shared=["(q)"])


# ---- release, estimation, accounting ----------------------------------------------------


def _toy_stats(seed=13, clip="normalize"):
    gen = torch.Generator().manual_seed(seed)
    model = Toy(gen).double()
    _, groups = _toy_groups(model)
    stats = collect_statistics(model, _batches(gen, n_batches=20, batch=10), groups, clip=clip,
                               matmul_dtype=torch.float64)
    return model, groups, stats


def test_whole_model_cost_is_the_gdp_sum_of_the_releases():
    _, groups, stats = _toy_stats()
    weights = {g.name: float(i + 1) for i, g in enumerate(groups)}
    for w in (None, weights):
        priv = release_statistics(stats, epsilon=2.0, delta=1e-6, weights=w, generator=torch.Generator().manual_seed(0))
        mus = [r.mu for r in priv.releases.values()]
        assert len(mus) == len(groups)
        total = math.sqrt(sum(m * m for m in mus))
        assert priv.accountant.mu() == pytest.approx(total, rel=1e-12)
        assert priv.spent_epsilon() == pytest.approx(gdp_epsilon(total, 1e-6), rel=1e-12)
        assert priv.spent_epsilon() <= 2.0 and priv.spent_epsilon() == pytest.approx(2.0, rel=1e-6)
        assert dl.PrivacyAccountant(priv.releases.values()).epsilon(1e-6) == pytest.approx(priv.spent_epsilon())
    # shares: μᵢ² ∝ weight
    mus = [priv.releases[g.name].mu for g in groups]
    assert mus[2] ** 2 / mus[0] ** 2 == pytest.approx(3.0, rel=1e-9)


def test_release_refuses_unclipped_statistics_and_an_unaffordable_budget_before_noise():
    _, _, raw = _toy_stats(clip=None)
    with pytest.raises(ValueError, match="clip=None"):
        release_statistics(raw, epsilon=1.0, delta=1e-6)
    _, _, stats = _toy_stats()
    budget = dl.PrivacyBudget(epsilon=1.0, delta=1e-6)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with pytest.raises(dl.BudgetExceededError):
        release_statistics(stats, epsilon=2.0, delta=1e-6, budget=budget, generator=gen)
    assert len(budget.events) == 0 and torch.equal(gen.get_state(), state)
    release_statistics(stats, epsilon=1.0, delta=1e-6, budget=budget, generator=gen)
    assert budget.spent_epsilon() <= 1.0
    with pytest.raises(ValueError, match="unknown groups"):
        release_statistics(stats, epsilon=1.0, delta=1e-6, weights={"nope": 1.0})


def test_vanishing_noise_equals_the_non_private_factorisation():
    _model, groups, stats = _toy_stats()
    reference = compress_model(Toy(torch.Generator().manual_seed(13)).double(), groups, ratio=0.5, statistics=stats)
    for estimator in ("spike", "ridge", "raw"):
        priv = release_statistics(stats, epsilon=1e7, delta=1e-6, generator=torch.Generator().manual_seed(1))
        for g in groups:
            rel = priv.releases[g.name]
            bound = dl.noise_norm_bound(rel.noise_shape, rel.dim, rel.noise_scale)  # ‖E‖₂ ≤ B w.h.p.
            diff = priv.row_space_gram(g.name, method=estimator) - stats[g.name].row_space_gram()
            assert float(torch.linalg.matrix_norm(diff, 2)) <= 2 * bound
            assert bound < 1e-3 * float(torch.linalg.matrix_norm(stats[g.name].gram, 2))
        fresh = Toy(torch.Generator().manual_seed(13)).double()
        res = compress_model(fresh, groups, ratio=0.5, statistics=priv, estimator=estimator)
        for name, layer in res.layers.items():
            torch.testing.assert_close(layer.dense_weight(), reference.layers[name].dense_weight(), rtol=1e-3, atol=1e-3)
        assert all(res.signal[g.name] == g.dim for g in groups)  # every direction is a spike


def test_overwhelming_noise_falls_back_exactly_to_the_data_free_factorisation():
    _, groups, stats = _toy_stats()
    priv = release_statistics(stats, epsilon=1e-4, delta=1e-6, generator=torch.Generator().manual_seed(2))
    for g in groups:
        k = denoise_gram(priv.releases[g.name])
        torch.testing.assert_close(k, k[0, 0] * torch.eye(g.dim, dtype=k.dtype), rtol=1e-12, atol=1e-12 * abs(float(k[0, 0])))
    private = compress_model(Toy(torch.Generator().manual_seed(13)).double(), groups, ratio=0.5, statistics=priv)
    svd = compress_model(Toy(torch.Generator().manual_seed(13)).double(), groups, ratio=0.5)
    assert private.signal and all(v == 0 for v in private.signal.values())
    for name in svd.layers:
        torch.testing.assert_close(private.layers[name].dense_weight(), svd.layers[name].dense_weight(), rtol=1e-9, atol=1e-9)


def test_spike_estimate_recovers_planted_directions_and_discards_the_bulk():
    gen = torch.Generator().manual_seed(3)
    d, sigma = 60, 1.0
    edge = dl.noise_edge("isotropic", d, sigma)
    u, _ = torch.linalg.qr(_randn(d, 3, gen=gen))
    theta = torch.tensor([6.0, 4.0, 0.2], dtype=torch.float64) * edge  # the last is below the edge
    m = (u * theta) @ u.T + 5.0 * torch.eye(d, dtype=torch.float64)
    rel = dl.release_rank_k(m, d, sensitivity=1.0, noise_scale=sigma, generator=gen, dtype=torch.float64)
    k = denoise_gram(rel)
    err_spike = torch.linalg.matrix_norm(k - m)
    err_raw = torch.linalg.matrix_norm(denoise_gram(rel, method="raw") - m)
    assert float(err_spike) < 0.5 * float(err_raw)
    top = torch.linalg.eigh(k)[1][:, -2:]
    assert float(torch.linalg.matrix_norm(top.T @ u[:, :2])) ** 2 > 1.9  # the two strong spikes
    assert torch.all(torch.linalg.eigvalsh(k) >= -1e-9)
    with pytest.raises(ValueError, match="whole spectrum"):
        denoise_gram(dl.release_rank_k(m, 3, sensitivity=1.0, noise_scale=sigma, generator=gen))


# ---- modules, files, evaluation ---------------------------------------------------------------


def test_save_and_load_roundtrip_without_pickle(tmp_path):
    gen = torch.Generator().manual_seed(14)
    model = Toy(gen)
    _, groups = _toy_groups(model)
    stats = collect_statistics(model, _batches(gen), groups)
    priv = release_statistics(stats, epsilon=3.0, delta=1e-6, generator=torch.Generator().manual_seed(0))
    res = compress_model(model, groups, ratio=0.5, statistics=priv, joint=True, allocation="energy")
    save_compressed(model, tmp_path / "m", metadata=res.metadata())
    save_compressed(model, tmp_path / "m2")
    fresh = Toy(torch.Generator().manual_seed(14))  # the original model, before compression
    load_compressed(fresh, tmp_path / "m")
    batch = _batches(gen, n_batches=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch), model(**batch))
    assert fresh.q.down is fresh.k.down is fresh.v.down
    assert count_parameters(fresh) == count_parameters(model)
    assert fresh.compression_metadata["privacy"]["epsilon"] == pytest.approx(res.epsilon())
    # only the compressed layers are stored (q/k/v's shared down-projection once), never the embedding
    from safetensors import safe_open

    with safe_open(tmp_path / "m" / "factors.safetensors", "pt") as f:
        stored = set(f.keys())
    assert stored == {f"{n}.up.{p}" for n in ("q", "k", "v", "up", "down") for p in ("weight", "bias")} | {
        "q.down.weight", "up.down.weight", "down.down.weight"}
    # the factors belong to their base: another embedding is refused unless asked for
    other = Toy(torch.Generator().manual_seed(99))
    with pytest.raises(ValueError, match="does not fit this model.*outside the compressed layers.*check_base"):
        load_compressed(other, tmp_path / "m")
    assert isinstance(other.q, nn.Linear)
    load_compressed(other, tmp_path / "m", check_base=False)
    assert other.q.down is other.k.down and torch.equal(other.up.up.weight, model.up.up.weight)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "compression.json").write_text('{"format": "other"}')
    np.savez(tmp_path / "bad" / "weights.npz", a=np.zeros(1))
    with pytest.raises(ValueError, match="not a dplowrank"):
        load_compressed(Toy(gen), tmp_path / "bad")
    # a file for another architecture leaves the model untouched
    for other, message in ((Toy(torch.Generator().manual_seed(5), h=10), "maps"),
                           (Toy(torch.Generator().manual_seed(5), vocab=50), "does not fit this model")):
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match=message):
            load_compressed(other, tmp_path / "m2")
        assert isinstance(other.q, nn.Linear) and isinstance(other.up, nn.Linear)
        assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_output_errors_and_embedding_agreement():
    gen = torch.Generator().manual_seed(15)
    model = Toy(gen).double()
    _, groups = _toy_groups(model)
    held_batches = _batches(gen)
    heldout = collect_statistics(model, held_batches, groups, clip=None, matmul_dtype=torch.float64)
    train = collect_statistics(model, _batches(gen, n_batches=20), groups, clip=None, matmul_dtype=torch.float64)
    res = compress_model(model, groups, ratio=0.4, statistics=train)
    errs = output_errors(res, heldout)
    assert set(errs) == {n for g in groups for n in g.members}
    assert all(0.0 <= e < 1.0 for e in errs.values())
    # ‖(W − Ŵ)X‖²_F / ‖WX‖²_F on the held-out inputs of `up` (the embeddings), computed directly
    with torch.no_grad():
        x = torch.cat([model.emb(ex["input_ids"])[0] for ex in _unpadded_examples(held_batches)]).T
        w, w_hat = res.originals["up"].weight, res.layers["up"].dense_weight()
        direct = torch.sum(((w - w_hat) @ x) ** 2) / torch.sum((w @ x) ** 2)
    assert errs["up"] == pytest.approx(float(direct), rel=1e-8)
    res.undo(model)
    assert isinstance(model.up, nn.Linear)
    a = _randn(10, 4, gen=gen)
    same = embedding_agreement(a, a)
    assert same["cosine"] == pytest.approx(1.0) and same["neighbour_agreement"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        embedding_agreement(a, a[:5])


def test_result_table_and_metadata_are_readable():
    _, groups, stats = _toy_stats()
    priv = release_statistics(stats, epsilon=1.0, delta=1e-6, generator=torch.Generator().manual_seed(0))
    res = compress_model(Toy(torch.Generator().manual_seed(13)).double(), groups, ratio=0.5, statistics=priv)
    text = res.table()
    assert "privacy" in text and "up" in text and "ratio" in text
    meta = res.metadata()
    assert meta["method"] == "private" and len(meta["privacy"]["events"]) == len(groups)
    assert res.parameters_after <= 0.5 * res.parameters_before
    with pytest.raises(TypeError, match="statistics"):
        compress_model(Toy(torch.Generator().manual_seed(1)), groups, ratio=0.5, statistics=object())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_pipeline_runs_on_cuda_and_matches_the_cpu():
    """Statistics, release (CUDA generator) and factorisation on the GPU: the raw statistics
    match the CPU's to float32 rounding, the release lives on the GPU, the compressed model runs
    there, and the whole-model ε is the plan's."""
    cpu_model = Toy(torch.Generator().manual_seed(21))
    gpu_model = Toy(torch.Generator().manual_seed(21)).cuda()
    batches = _batches(torch.Generator().manual_seed(22))
    _, groups = _toy_groups(cpu_model)
    cpu_stats = collect_statistics(cpu_model, batches, groups)
    gpu_batches = [{k: v.cuda() for k, v in b.items()} for b in batches]
    gpu_stats = collect_statistics(gpu_model, gpu_batches, groups)
    def input_space(st):  # Q K Qᵀ: free of the SVD's sign choices, which differ by device
        k, q = st.row_space_gram().cpu(), st.coordinates.basis
        return k if q is None else q.cpu() @ k @ q.cpu().T

    for stat in cpu_stats:
        torch.testing.assert_close(input_space(gpu_stats[stat.group.name]), input_space(stat), rtol=1e-4, atol=1e-5)
    priv = release_statistics(gpu_stats, epsilon=4.0, delta=1e-6,
                              generator=torch.Generator(device="cuda").manual_seed(0))
    assert all(r.device.startswith("cuda") for r in priv.releases.values())
    res = compress_model(gpu_model, groups, ratio=0.6, statistics=priv)
    with torch.no_grad():
        y = gpu_model(**gpu_batches[0])
    assert y.is_cuda and torch.isfinite(y).all()
    assert res.epsilon(1e-6) == pytest.approx(4.0, rel=1e-6)


def test_a_model_from_raw_statistics_is_reported_as_not_private():
    """compress_model with raw statistics reported ε = 0, like a data-free model: it is the
    opposite, a model with no guarantee at all. Only statistics declared public cost nothing."""
    gen = torch.Generator().manual_seed(26)
    model = Toy(gen)
    _, groups = _toy_groups(model)
    batches = _batches(gen)
    cases = {
        "data_free": None,
        "not_private": collect_statistics(model, batches, groups, clip=None),
        "public": collect_statistics(model, batches, groups, clip=None, public=True),
        "private": release_statistics(collect_statistics(model, batches, groups), epsilon=2.0, delta=1e-6),
    }
    for status, stats in cases.items():
        res = compress_model(model, groups, ratio=0.6, statistics=stats)
        meta = res.metadata()["privacy"]
        assert res.privacy_status == meta["status"] == status
        if status == "not_private":
            assert res.epsilon() == math.inf and meta["epsilon"] is None
            assert "NOT PRIVATE" in res.table()
        elif status == "private":
            assert res.epsilon() == pytest.approx(2.0, rel=1e-6) and meta["randomness"] == "secure"
            assert meta["for_publication"] is True
        else:
            assert res.epsilon() == 0.0 == meta["epsilon"] and "no private data used" in res.table()
        res.undo(model)
    seeded = release_statistics(collect_statistics(model, batches, groups), epsilon=2.0, delta=1e-6,
                                generator=torch.Generator().manual_seed(0))
    res = compress_model(model, groups, ratio=0.6, statistics=seeded)
    assert res.metadata()["privacy"]["randomness"] == "seeded" and "not for publication" in res.table()
    res.undo(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_activations_are_still_clipped_to_c(dtype):
    """Entries near float32's limit: the float32 product overflows (the contribution is redone
    in float64), and the scale must not become a subnormal float32 whose coarse precision
    lets the contribution exceed C (it reached 1.0002 for C = 1 before)."""
    d, t = 64, 128
    model = nn.Sequential(nn.Linear(d, d, bias=False))
    groups = find_groups(model, ["0"])
    for mag in (1e3, 1.0e38, 3.3e38):
        x = torch.full((1, t, d), mag, dtype=torch.float32)
        st = collect_statistics(model, [{"x": x, "attention_mask": torch.ones(1, t)}], groups, clip=1.0,
                                forward=lambda m, b: m(b["x"]), matmul_dtype=dtype)
        norm = float(torch.linalg.matrix_norm(st["0"].gram))
        assert 0.99 < norm <= 1.0, (mag, norm)


# ---- found by the independent audit of the statistics ------------------------------------------


@pytest.mark.parametrize("dtype, tiny", [(torch.float32, 3.4e-12), (torch.float64, 8e-82)])
def test_tiny_activations_cannot_underflow_the_norm_bound(dtype, tiny):
    """Squares of entries near 1e-23 (float32) vanish: the norm bound was ~0 and "normalize"
    divided by it, one example moving ‖K‖_F to 39.7 (C = 1). The bound is now taken after
    dividing by a power of two near the largest entry."""
    d = 64
    model = nn.Sequential(nn.Linear(d, d)).to(dtype)
    groups = find_groups(model, ["0"])
    x = torch.full((1, 1, d), tiny, dtype=dtype)
    x[0, 0, 0] = tiny * 1.14
    for clip in ("normalize", 1.0):
        st = collect_statistics(model, [{"x": x}], groups, clip=clip, mask_key=None, matmul_dtype=dtype,
                                forward=lambda m, b: m(b["x"]))
        assert float(torch.linalg.matrix_norm(st["0"].gram)) <= 1.0


class _Cumulative(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=0)  # example i sees examples < i


class _BigBatchOnly(nn.Module):
    def forward(self, x):
        return x + 10 * x.mean(0, keepdim=True) if x.shape[0] > 2 else x


def test_isolation_splits_tuple_batches_and_refuses_tensors_whose_first_axis_is_not_the_examples():
    gen = torch.Generator().manual_seed(41)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    groups = find_groups(model, ["2"])
    x = torch.randn(5, 4, generator=gen)
    tup = collect_statistics(model, [(x, torch.arange(5))], groups, clip=None, mask_key=None,
                             forward=lambda m, b: m(b[0]), examples=lambda b: int(b[0].shape[0]))["2"]
    one = [collect_statistics(model, [x[i:i + 1]], groups, clip=None, mask_key=None, isolate=False)["2"]
           for i in range(5)]
    torch.testing.assert_close(tup.row_space_gram(), sum(o.row_space_gram() for o in one))
    with pytest.raises(ValueError, match="but the batch has 2 examples"):
        collect_statistics(model, [torch.randn(5, 4)], groups, mask_key=None, examples=lambda b: 2)


class _Faint(nn.Module):
    def forward(self, x):
        return x + 1e-4 * x.sum(0, keepdim=True)


@pytest.mark.parametrize("mix", [_Cumulative, _BigBatchOnly, _Faint])
def test_the_probe_catches_one_sided_faint_and_batch_size_dependent_mixing(mix):
    """The probe compared only the first half of the first batch at a 1e-3 tolerance: a causal
    sum over the batch, mixing only in larger batches, and mixing at 1e-4 all passed."""
    gen = torch.Generator().manual_seed(27)
    model = nn.Sequential(mix(), nn.Linear(6, 6))
    first, later = torch.randn(2, 3, 6, generator=gen), torch.randn(8, 3, 6, generator=gen)
    with pytest.raises(ValueError, match="change with the other examples"):
        collect_statistics(model, [first, later], find_groups(model, ["1"]), mask_key=None, clip="normalize",
                           isolate=False)


def test_a_prior_must_be_declared_public():
    """A prior ships inside the release (its preconditioner); one collected from the private
    corpus published the raw Gram up to a scale."""
    gen = torch.Generator().manual_seed(28)
    model = Toy(gen)
    _, groups = _toy_groups(model)
    raw = collect_statistics(model, _batches(gen), groups, clip=None)
    with pytest.raises(ValueError, match="declared public"):
        collect_statistics(model, _batches(gen), groups, prior=raw)
    public = collect_statistics(model, _batches(gen), groups, clip=None, public=True)
    assert collect_statistics(model, _batches(gen), groups, prior=public)


class _Ema(nn.Module):
    def __init__(self):
        super().__init__()
        self.ema = nn.Parameter(torch.zeros(4), requires_grad=False)

    def forward(self, x):
        self.ema.data.mul_(0.5).add_(0.5 * x.detach().reshape(-1, 4).mean(0))
        return x


def test_a_parameter_updated_by_the_forward_pass_is_refused_and_restored():
    model = nn.Sequential(_Ema(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="changed its state"):
        collect_statistics(model, [torch.randn(3, 2, 4)], find_groups(model, ["1"]), mask_key=None)
    assert torch.equal(model[0].ema, torch.zeros(4))


def test_replace_bounds_hold_for_contributions_that_are_not_exactly_psd():
    """float32 products can round a contribution to a matrix with a negative eigenvalue, and
    ‖S_a − S_b‖_F then exceeded √2·C (by 1.45% at 2²⁰ tokens). Under replace the products are
    float64 and the scale leaves room for the rounded contribution's distance from PSD."""
    t = 2**14
    a = math.sqrt(2.0**-24 * (1 - 2**-6))
    b = 2.0**-24 * (1 + 2**-6) / a
    z = torch.tensor([[1.0, 1.0]] + [[a, b]] * (t - 1), dtype=torch.float32)
    model = nn.Sequential(nn.Linear(2, 2))
    groups = find_groups(model, ["0"])
    p = (z.T @ z).double()
    v = torch.linalg.eigh(p)[1][:, 0].float()
    kw = dict(clip="normalize", mask_key=None, neighbour="replace")
    s_a = collect_statistics(model, [z[None]], groups, **kw)["0"]
    s_b = collect_statistics(model, [v[None, None]], groups, **kw)["0"]
    assert float(torch.linalg.matrix_norm(s_a.gram - s_b.gram)) <= s_a.sensitivity


def test_release_statistics_refuses_bad_arguments_before_charging_the_plan():
    """Found by the audit: a bad noise_shape or generator raised after the plan was charged."""
    _, _groups, stats = _toy_stats()
    budget = dl.PrivacyBudget(5.0, 1e-6)
    for kw, exc in ((dict(noise_shape="bogus"), ValueError), (dict(generator="not a generator"), TypeError)):
        with pytest.raises(exc):
            release_statistics(stats, epsilon=1.0, delta=1e-6, budget=budget, **kw)
    assert budget.events == ()
