"""The Gram accumulator: clipping, exact fixed-point accumulation, streaming, errors that change nothing."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import dplowrank as dl

from .conftest import exact_gram, grid_rows, requires_cuda


def test_clipping_bounds_every_row_and_counts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)) * rng.uniform(0.1, 5.0, size=(300, 1))
    c = 1.3
    acc = dl.GramAccumulator(row_norm=c).update(x)
    norms = np.linalg.norm(x, axis=1)
    assert acc.n_rows == 300 and acc.n_clipped == int((norms > c).sum())
    q, g = grid_rows(x, c)
    assert acc.grid == g
    np.testing.assert_array_equal(acc.gram.numpy(), exact_gram(q, g))
    # the grid costs at most 2^-14 of the power of two above C per entry
    scale = np.minimum(1.0, c / norms)
    np.testing.assert_allclose(acc.gram.numpy(), (x * scale[:, None]).T @ (x * scale[:, None]), atol=300 * 4 * c * g)


def test_clipped_row_norm_never_exceeds_bound():
    # rounding must never leave a clipped row above C (the sensitivity proof needs ≤ C)
    rng = np.random.default_rng(1)
    for c in (1e-3, 0.7, 1.0, 3.3, 1e4):
        x = rng.normal(size=(200, 33)) * 1e3
        for row in x:
            g = dl.GramAccumulator(row_norm=c).update(row).gram
            assert float(torch.trace(g)) <= c * c


def test_float32_input_accumulates_in_float64():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 10)).astype(np.float32)
    acc = dl.GramAccumulator(row_norm=100.0).update(torch.from_numpy(x))
    assert acc.gram.dtype == torch.float64
    q, g = grid_rows(x.astype(np.float64), 100.0)
    np.testing.assert_array_equal(acc.gram.numpy(), exact_gram(q, g))


def test_streaming_equals_one_batch_bit_for_bit():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(250, 6))
    one = dl.GramAccumulator(row_norm=2.0).update(x)
    many = dl.GramAccumulator(row_norm=2.0)
    for chunk in np.array_split(x, 9):
        many.update(chunk)
    assert torch.equal(many.gram, one.gram)
    assert many.n_rows == one.n_rows and many.n_clipped == one.n_clipped


# ---- exact sums: the sensitivity C² holds for the computed matrix, not just in exact arithmetic ----


def test_order_and_batching_do_not_change_a_bit():
    """A float64 sum depends on the order of its terms; the grid sums do not (they are exact).

    With float64 accumulation (before the grid) the reversed and re-batched streams differed
    in their last bits, so the neighbouring Grams could differ by more than C².
    """
    rng = np.random.default_rng(30)
    x = rng.normal(size=(3000, 16)) * rng.lognormal(0, 2, size=(3000, 1))
    ref = dl.GramAccumulator(row_norm=3.0).update(x).gram
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(x))
        acc = dl.GramAccumulator(row_norm=3.0)
        cuts = np.sort(np.random.default_rng(seed + 10).choice(len(x), 12, replace=False))
        for part in np.split(x[perm], cuts):
            acc.update(part)
        assert torch.equal(acc.gram, ref)


def test_a_neighbour_changes_the_gram_by_exactly_one_outer_product():
    rng = np.random.default_rng(31)
    x = rng.normal(size=(2000, 12)) * 40.0  # every row is clipped
    c = 1.7
    full = dl.GramAccumulator(row_norm=c).update(x).gram
    q, g = grid_rows(x[777:778], c)
    without = dl.GramAccumulator(row_norm=c).update(np.delete(x, 777, axis=0)).gram
    diff = full - without
    row = torch.from_numpy(q[0] * g)
    assert torch.equal(diff, torch.outer(row, row))
    assert float(torch.linalg.matrix_norm(diff)) <= c * c


@given(
    rows=arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 6)),
                elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    c=st.floats(1e-3, 1e3),
    log_max_rows=st.integers(6, 40),
)
def test_the_gram_is_the_exact_sum_of_grid_rows(rows, c, log_max_rows):
    """Property: for any rows, C and max_rows, the accumulated Gram is Σ qqᵀ·g² computed with
    Python integers, every ‖q·g‖ ≤ C, and the Gram does not depend on the order of the rows."""
    max_rows = 2**log_max_rows
    acc = dl.GramAccumulator(row_norm=c, max_rows=max_rows).update(rows)
    q, g = grid_rows(rows, c, max_rows)
    assert acc.grid == g
    np.testing.assert_array_equal(acc.gram.numpy(), exact_gram(q, g))
    rev = dl.GramAccumulator(row_norm=c, max_rows=max_rows).update(rows[::-1].copy())
    assert torch.equal(rev.gram, acc.gram)


def test_an_empty_accumulator_with_a_known_dim_releases_like_any_other():
    """Found by the audit: with dim known and no rows, the release refused (before the charge)
    while one row released: under add/remove that is one bit of the private count."""
    budget = dl.PrivacyBudget(10.0, 1e-6)
    for rows in (0, 1):
        acc = dl.GramAccumulator(row_norm=1.0, dim=3)
        if rows:
            acc.update(np.ones((1, 3)) / 2)
        r = dl.release_rank_k(acc, 2, epsilon=1.0, delta=1e-6, budget=budget,
                              generator=torch.Generator().manual_seed(0))
        assert r.dim == 3
    assert len(budget.events) == 2
    assert torch.equal(dl.GramAccumulator(row_norm=1.0, dim=2).gram, torch.zeros(2, 2, dtype=torch.float64))


def test_max_rows_is_a_public_cap_that_refuses_and_changes_nothing():
    acc = dl.GramAccumulator(row_norm=1.0, max_rows=100).update(np.ones((60, 3)) / 2)
    before = acc.gram.clone()
    with pytest.raises(ValueError, match="max_rows=100") as err:
        acc.update(np.ones((41, 3)))
    assert "60" not in str(err.value) and "41" not in str(err.value)  # no private counts
    assert torch.equal(acc.gram, before) and acc.n_rows == 60
    acc.update(np.ones((40, 3)))  # exactly up to the cap
    assert acc.n_rows == 100
    # a smaller cap gives a finer grid
    assert dl.GramAccumulator(row_norm=1.0, max_rows=2**13).grid < dl.GramAccumulator(row_norm=1.0).grid
    for bad in (0, 2**52, 1.5, True):
        with pytest.raises(ValueError, match="max_rows"):
            dl.GramAccumulator(row_norm=1.0, max_rows=bad)
    with pytest.raises(ValueError, match="row_norm=1e-200 is outside the range"):
        dl.GramAccumulator(row_norm=1e-200)


def test_integer_and_single_row_input():
    acc = dl.GramAccumulator(row_norm=10.0, dim=3)
    acc.update([1, 2, 2])
    acc.update(np.array([[0, 0, 3]]))
    np.testing.assert_array_equal(acc.gram.numpy(), [[1, 2, 2], [2, 4, 4], [2, 4, 13]])


def test_bad_row_is_refused_without_its_position_and_changes_nothing():
    acc = dl.GramAccumulator(row_norm=1.0).update(np.ones((5, 3)))
    before = acc.gram.clone()
    bad = np.ones((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf") as err:
        acc.update(bad)
    # which row held the NaN is private (it was "row 7 (index 2 of this batch)")
    assert not any(ch.isdigit() for ch in str(err.value))
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        acc.update(bad)
    assert torch.equal(acc.gram, before) and acc.n_rows == 5


@pytest.mark.parametrize(
    "rows, exc, match",
    [
        (np.ones((2, 4)), ValueError, "3 columns, got shape \\(2, 4\\)"),
        (np.ones((2, 3, 1)), ValueError, "shape \\(n, d\\)"),
        (np.ones((2, 3)) * 1j, TypeError, "complex"),
        ("abc", TypeError, "str"),
        (np.array([["a", "b", "c"]]), TypeError, "numeric"),
    ],
)
def test_bad_batches(rows, exc, match):
    acc = dl.GramAccumulator(row_norm=1.0, dim=3)
    with pytest.raises(exc, match=match):
        acc.update(rows)
    assert acc.n_rows == 0


def test_constructor_rejects():
    with pytest.raises(ValueError, match="row_norm must be finite and > 0, got 0"):
        dl.GramAccumulator(row_norm=0)
    with pytest.raises(ValueError, match="'neighbours'"):
        dl.GramAccumulator(row_norm=1.0, neighbour="neighbours")
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        dl.GramAccumulator(row_norm=1.0, dim=0)
    with pytest.raises(ValueError, match="no rows yet"):
        _ = dl.GramAccumulator(row_norm=1.0).gram


def test_sensitivity_per_relation():
    assert dl.GramAccumulator(row_norm=2.0).sensitivity == 4.0
    assert dl.GramAccumulator(row_norm=2.0, neighbour="replace").sensitivity == pytest.approx(4.0 * 2**0.5)


@requires_cuda
def test_cuda_rows_accumulate_on_device():
    x = torch.randn(100, 8, device="cuda", dtype=torch.float32)
    acc = dl.GramAccumulator(row_norm=3.0).update(x)
    assert acc.gram.device.type == "cuda" and acc.gram.dtype == torch.float64
    ref = dl.GramAccumulator(row_norm=3.0).update(x.cpu()).gram
    assert torch.equal(acc.gram.cpu(), ref)  # exact sums: the device's BLAS cannot change a bit


def test_rows_whose_squares_overflow_are_clipped_to_the_norm_not_to_zero():
    acc = dl.GramAccumulator(row_norm=2.0)
    acc.update(np.array([[1e200, 1e200], [3.0, 4.0], [0.0, 0.0]]))
    # (1e200, 1e200) -> (√2, √2); (3, 4) -> (1.2, 1.6); the zero row stays zero
    want = np.array([[2.0 + 1.44, 2.0 + 1.92], [2.0 + 1.92, 2.0 + 2.56]])
    np.testing.assert_allclose(acc.gram.numpy(), want, atol=4 * 2 * acc.grid)
    assert acc.n_clipped == 2 and acc.n_rows == 3


def test_a_0d_array_is_not_a_row():
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        dl.GramAccumulator(dim=1, row_norm=1.0).update(np.ones(()))
