"""The Gram accumulator: clipping, float64 accumulation, streaming, errors that change nothing."""

import numpy as np
import pytest
import torch

import dplowrank as dl

from .conftest import requires_cuda


def test_clipping_bounds_every_row_and_counts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)) * rng.uniform(0.1, 5.0, size=(300, 1))
    c = 1.3
    acc = dl.GramAccumulator(row_norm=c).update(x)
    norms = np.linalg.norm(x, axis=1)
    assert acc.n_rows == 300 and acc.n_clipped == int((norms > c).sum())
    scale = np.minimum(1.0, c / norms)
    expected = (x * scale[:, None]).T @ (x * scale[:, None])
    np.testing.assert_allclose(acc.gram.numpy(), expected, rtol=1e-10, atol=1e-12)


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
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(acc.gram.numpy(), x64.T @ x64, rtol=1e-13)


def test_streaming_equals_one_batch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(250, 6))
    one = dl.GramAccumulator(row_norm=2.0).update(x)
    many = dl.GramAccumulator(row_norm=2.0)
    for chunk in np.array_split(x, 9):
        many.update(chunk)
    np.testing.assert_allclose(many.gram.numpy(), one.gram.numpy(), rtol=1e-12)
    assert many.n_rows == one.n_rows and many.n_clipped == one.n_clipped


def test_integer_and_single_row_input():
    acc = dl.GramAccumulator(row_norm=10.0, dim=3)
    acc.update([1, 2, 2])
    acc.update(np.array([[0, 0, 3]]))
    np.testing.assert_array_equal(acc.gram.numpy(), [[1, 2, 2], [2, 4, 4], [2, 4, 13]])


def test_bad_row_is_named_and_changes_nothing():
    acc = dl.GramAccumulator(row_norm=1.0).update(np.ones((5, 3)))
    before = acc.gram.clone()
    bad = np.ones((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 7 \\(index 2 of this batch\\)"):
        acc.update(bad)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="row 7"):
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
    torch.testing.assert_close(acc.gram.cpu(), ref, rtol=1e-12, atol=1e-12)


def test_rows_whose_squares_overflow_are_clipped_to_the_norm_not_to_zero():
    acc = dl.GramAccumulator(row_norm=2.0)
    acc.update(np.array([[1e200, 1e200], [3.0, 4.0], [0.0, 0.0]]))
    # (1e200, 1e200) -> (√2, √2); (3, 4) -> (1.2, 1.6); the zero row stays zero
    want = np.array([[2.0 + 1.44, 2.0 + 1.92], [2.0 + 1.92, 2.0 + 2.56]])
    np.testing.assert_allclose(acc.gram.numpy(), want, rtol=1e-9)
    assert acc.n_clipped == 2 and acc.n_rows == 3


def test_a_0d_array_is_not_a_row():
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        dl.GramAccumulator(dim=1, row_norm=1.0).update(np.ones(()))
