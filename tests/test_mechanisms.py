"""Noise shapes, symmetry, sensitivity: statistical tests with fixed seeds and loose p-values."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

import dplowrank as dl

D = 48
REPS = 200
SIGMA = 2.5


def _draws(mech, *, complex_=False, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(REPS):
        out.append(mech.perturb(torch.zeros(D, D, dtype=dtype), generator=gen))
    return torch.stack(out)  # shape: (REPS, D, D)


def _variance_ok(x: torch.Tensor, target: float):
    """Sample variance (known zero mean) within 6 standard errors of the target."""
    x = x.double().flatten()
    n = x.numel()
    v = float((x**2).mean())
    se = target * math.sqrt(2.0 / n)
    assert abs(v - target) < 6 * se, (v, target, se)


def _normal_ok(x: torch.Tensor, std: float):
    x = x.double().flatten().numpy()[:20000] / std
    assert stats.kstest(x, "norm").pvalue > 1e-3


iu = torch.triu_indices(D, D, offset=1)


def test_isotropic_shape_variances():
    e = _draws(dl.GaussianMechanism(SIGMA, 1.0, "isotropic"))
    diag = torch.diagonal(e, dim1=1, dim2=2)
    off = e[:, iu[0], iu[1]]
    _variance_ok(diag, SIGMA**2)
    _variance_ok(off, SIGMA**2 / 2)
    _normal_ok(diag, SIGMA)
    _normal_ok(off, SIGMA / math.sqrt(2))
    assert torch.equal(e, e.transpose(1, 2))


def test_upper_triangular_shape_variances():
    e = _draws(dl.GaussianMechanism(SIGMA, 1.0, "upper_triangular"))
    diag = torch.diagonal(e, dim1=1, dim2=2)
    off = e[:, iu[0], iu[1]]
    _variance_ok(diag, SIGMA**2)
    _variance_ok(off, SIGMA**2)
    _normal_ok(off, SIGMA)
    assert torch.equal(e, e.transpose(1, 2))


def test_complex_shape_variances_and_hermitian():
    z = _draws(dl.ComplexGaussianMechanism(SIGMA, 1.0), complex_=True)
    assert torch.equal(z, z.conj().transpose(1, 2))
    diag = torch.diagonal(z, dim1=1, dim2=2)
    assert torch.count_nonzero(diag.imag) == 0
    _variance_ok(diag.real, SIGMA**2)
    off = z[:, iu[0], iu[1]]
    _variance_ok(off.real, SIGMA**2 / 2)
    _variance_ok(off.imag, SIGMA**2 / 2)
    _normal_ok(off.imag, SIGMA / math.sqrt(2))
    # real and imaginary parts uncorrelated
    r = np.corrcoef(off.real.flatten().numpy(), off.imag.flatten().numpy())[0, 1]
    assert abs(r) < 6 / math.sqrt(off.numel())


def test_entries_are_independent_across_positions():
    # neighbouring upper-triangle entries (same row, adjacent columns; across block edges) uncorrelated
    e = _draws(dl.GaussianMechanism(SIGMA, 1.0, "upper_triangular"))
    a = e[:, 0, 1:].flatten().numpy()
    b = e[:, 1, 1:].flatten().numpy()
    assert abs(np.corrcoef(a, b)[0, 1]) < 6 / math.sqrt(a.size)


def test_block_boundaries_are_symmetric_and_seeded():
    # d larger than the internal block (512): symmetry and determinism across blocks
    mech = dl.GaussianMechanism(1.0, 1.0)
    a = mech.perturb_(torch.zeros(700, 700), generator=torch.Generator().manual_seed(3))
    b = mech.perturb_(torch.zeros(700, 700), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, a.T) and torch.equal(a, b)
    off = a[:512, 512:]
    assert float(off.std()) == pytest.approx(1 / math.sqrt(2), rel=0.02)


def test_float32_noise_has_right_scale():
    e = _draws(dl.GaussianMechanism(SIGMA, 1.0), dtype=torch.float32)
    assert e.dtype == torch.float32
    _variance_ok(torch.diagonal(e, dim1=1, dim2=2), SIGMA**2)


def test_mechanism_records():
    m = dl.GaussianMechanism(4.0, 2.0, "upper_triangular")
    assert m.mu == 0.5 and m.event.noise_multiplier == 2.0 and m.event.mu == 0.5
    c = dl.ComplexGaussianMechanism(4.0, 2.0)
    assert c.noise_shape == "hermitian" and c.event == dl.GaussianEvent(2.0)
    with pytest.raises(ValueError, match="'gue'"):
        dl.GaussianMechanism(1.0, 1.0, "gue")
    with pytest.raises(ValueError, match="noise_scale must be finite and > 0, got 0"):
        dl.GaussianMechanism(0, 1.0)
    with pytest.raises(TypeError, match="real matrix, got dtype torch.complex128"):
        dl.ComplexGaussianMechanism(1.0, 1.0).perturb(torch.zeros(3, 3, dtype=torch.complex128),
                                                      generator=torch.Generator())
    with pytest.raises(ValueError, match="\\(3, 4\\)"):
        m.perturb(torch.zeros(3, 4), generator=torch.Generator())


def test_copy_and_in_place_agree_and_input_is_untouched():
    rng = torch.Generator().manual_seed(0)
    a = torch.randn(600, 600, generator=rng, dtype=torch.float64)
    m = a + a.T
    before = m.clone()
    mech = dl.GaussianMechanism(0.5, 1.0, "upper_triangular")
    out = mech.perturb(m, generator=torch.Generator().manual_seed(8))
    assert torch.equal(m, before) and out.data_ptr() != m.data_ptr()
    inplace = mech.perturb_(m.clone(), generator=torch.Generator().manual_seed(8))
    assert torch.equal(out, inplace)
    # conversion on the fly: float64 input, float32 output (noise drawn in float32)
    out32 = mech.perturb(m, generator=torch.Generator().manual_seed(8), dtype=torch.float32)
    assert out32.dtype == torch.float32 and torch.equal(out32, out32.T)
    assert 0.3 < float((out32.double() - m).std()) < 0.7
    c = dl.ComplexGaussianMechanism(0.5, 1.0).perturb(m, generator=torch.Generator().manual_seed(8))
    assert c.dtype == torch.complex128 and torch.equal(c, c.conj().T)
    torch.testing.assert_close(c.real - m, (c.real - m).T)


def test_only_the_upper_triangle_of_the_input_is_read():
    m = torch.zeros(5, 5, dtype=torch.float64)
    m[0, 3] = 7.0
    m[3, 0] = -100.0  # a slightly asymmetric input: its upper triangle is what is released
    out = dl.GaussianMechanism(1e-12, 1.0).perturb(m, generator=torch.Generator().manual_seed(0))
    assert out[0, 3] == pytest.approx(7.0) and out[3, 0] == out[0, 3]


# ---- sensitivity ---------------------------------------------------------------------------

C = 1.7


def _gram(rows, neighbour="add_remove"):
    return dl.GramAccumulator(row_norm=C, neighbour=neighbour).update(rows).gram


finite_rows = arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)),
    elements=st.floats(-100, 100, allow_nan=False, allow_infinity=False),
)


@given(rows=finite_rows, extra=st.lists(st.floats(-100, 100), min_size=5, max_size=5))
def test_add_remove_sensitivity_holds(rows, extra):
    d = rows.shape[1]
    a = np.asarray(extra[:d])[None, :]
    diff = _gram(np.vstack([rows, a])) - _gram(rows)
    assert float(torch.linalg.matrix_norm(diff)) <= dl.gram_sensitivity(C) * (1 + 1e-12)


@given(
    rows=finite_rows,
    a=st.lists(st.floats(-100, 100), min_size=5, max_size=5),
    b=st.lists(st.floats(-100, 100), min_size=5, max_size=5),
)
def test_replace_sensitivity_holds(rows, a, b):
    d = rows.shape[1]
    ra = np.vstack([rows, np.asarray(a[:d])])
    rb = np.vstack([rows, np.asarray(b[:d])])
    diff = _gram(ra, "replace") - _gram(rb, "replace")
    assert float(torch.linalg.matrix_norm(diff)) <= dl.gram_sensitivity(C, "replace") * (1 + 1e-12)


def test_sensitivity_is_attained():
    # add/remove: a row of norm ≥ C moves the exact Gram by exactly qqᵀ with ‖q‖ ≤ C, within
    # one grid step of C (vech too: a = C·e₁)
    d = 4
    base = np.zeros((1, d))
    a = np.zeros((1, d))
    a[0, 0] = 10.0
    g = dl.GramAccumulator(row_norm=C).grid
    diff = _gram(np.vstack([base, a])) - _gram(base)
    fro = float(torch.linalg.matrix_norm(diff))
    assert C**2 - 2 * C * g <= fro <= C**2
    tri = torch.triu_indices(d, d)
    assert float(diff[tri[0], tri[1]].norm()) == fro
    # replace: orthogonal rows of norm C move it by √2·C² (up to the grid)
    b = np.zeros((1, d))
    b[0, 1] = 10.0
    diff = _gram(a, "replace") - _gram(b, "replace")
    fro = float(torch.linalg.matrix_norm(diff))
    assert math.sqrt(2) * (C**2 - 2 * C * g) <= fro <= math.sqrt(2) * C**2
    assert dl.gram_sensitivity(C, "replace") == pytest.approx(math.sqrt(2) * C**2)


def test_gram_sensitivity_rejects():
    with pytest.raises(ValueError, match="'swap'"):
        dl.gram_sensitivity(1.0, "swap")
    with pytest.raises(ValueError, match="row_norm must be finite and > 0, got -1"):
        dl.gram_sensitivity(-1)


# ---- CPU noise from a torch generator: a keystream keyed by the generator ------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_generator_noise_is_the_keyed_stream_and_normal(dtype):
    """A CPU torch.Generator keys an AES-CTR source (4 words of 63 bits, combine=1): the
    noise of block r (rows 512r…) is stream r, in the documented layout; the entries are
    standard normal (KS, with the tail reached) and the matrix exactly symmetric across
    the 256-column mirror tiles and the 512-row blocks."""
    from dplowrank import SecureNormalSource

    d = 1100  # 3 row blocks, partial mirror tiles
    g = torch.Generator().manual_seed(11)
    e = dl.GaussianMechanism(1.0, 1.0, "upper_triangular").perturb(torch.zeros(d, d, dtype=dtype), generator=g)
    assert e.dtype == dtype and torch.equal(e, e.T)
    words = torch.empty(4, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(11)).tolist()
    src = SecureNormalSource(b"".join(int(w).to_bytes(8, "little") for w in words), combine=1)
    z1 = src.normals(512 * (d - 512), stream=1, dtype=dtype).view(512, d - 512)
    assert torch.equal(torch.triu(e[512:1024, 512:]), torch.triu(z1))  # block 1: upper part, σ = 1
    off = e[torch.triu_indices(d, d, offset=1).unbind()].double().numpy()
    assert stats.kstest(off, "norm").pvalue > 1e-3
    assert abs(off.mean()) < 6 / math.sqrt(off.size) and 4.0 < np.abs(off).max() < 7.0
    again = dl.GaussianMechanism(1.0, 1.0, "upper_triangular").perturb(
        torch.zeros(d, d, dtype=dtype), generator=torch.Generator().manual_seed(11))
    other = dl.GaussianMechanism(1.0, 1.0, "upper_triangular").perturb(
        torch.zeros(d, d, dtype=dtype), generator=torch.Generator().manual_seed(12))
    assert torch.equal(e, again) and not torch.equal(e, other)


@pytest.mark.parametrize("d", [257, 700, 1100])
def test_mirror_tiles_give_exact_symmetry_in_place_and_converted(d):
    rng = torch.Generator().manual_seed(d)
    a = torch.randn(d, d, generator=rng, dtype=torch.float64)
    m = a + a.T
    mech = dl.GaussianMechanism(0.3, 1.0)
    out = mech.perturb(m, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    inplace = mech.perturb_(m.float(), generator=torch.Generator().manual_seed(1))
    converted = mech.perturb(m.float(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, out.T) and torch.equal(inplace, converted)
    # the float64 input is added to the same float32 draws in float64 and rounded once:
    # within an ulp of the in-place result on the pre-rounded input, never rounded before
    torch.testing.assert_close(out, inplace, rtol=3e-7, atol=3e-7)
    c = dl.ComplexGaussianMechanism(0.3, 1.0).perturb(m, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, c.conj().T)


def test_run_blocks_restores_torch_threads_even_on_error():
    from dplowrank._parallel import run_blocks

    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("needs torch to use at least 2 threads")
    seen = run_blocks(lambda i: torch.get_num_threads(), [(0,), (1,)], torch.device("cpu"))
    assert seen == [1, 1] and torch.get_num_threads() == before

    def boom(i):
        raise RuntimeError(f"block {i}")

    with pytest.raises(RuntimeError, match="block 0"):
        run_blocks(boom, [(0,), (1,)], torch.device("cpu"))
    assert torch.get_num_threads() == before


# ---- floating point: nothing private is rounded before its noise ---------------------------------

# 3·2²² + ½ is not a float32 number: float32 spacing there is 1, and it rounds (half to
# even) to 3·2²², 0.5 below. Adding the noise in float32 after that cast released
# fl32(M) + E, whose mean is 0.5 off and whose neighbours are up to ~1.5·C² apart.
_OFF_GRID = 3 * 2.0**22 + 0.5


@pytest.mark.parametrize("kind", ["isotropic", "upper_triangular", "complex"])
def test_float32_release_of_a_float64_matrix_is_unbiased(kind):
    """The mean of float32 releases of a matrix with non-float32 entries is the matrix itself.

    With σ = 64 (64 float32 grid cells), rounding *after* the noise averages out; rounding
    before it shifts every entry by −0.5, which 2 × 1024² samples resolve at > 9 standard
    errors (off-diagonal std σ/√2 = 45, so the mean of ~10⁶ entries has std 0.045).
    """
    d, sigma = 1024, 64.0
    m = torch.full((d, d), _OFF_GRID, dtype=torch.float64)
    if kind == "complex":
        mech = dl.ComplexGaussianMechanism(sigma, 1.0)
    else:
        mech = dl.GaussianMechanism(sigma, 1.0, kind)
    gen = torch.Generator().manual_seed(7)
    total, count = 0.0, 0
    for _ in range(2):
        out = mech.perturb(m, generator=gen, dtype=torch.float32)
        assert out.dtype == (torch.complex64 if kind == "complex" else torch.float32)
        upper = torch.triu_indices(d, d)  # independent entries only
        vals = out.real[upper[0], upper[1]].double()
        total += float(vals.sum())
        count += vals.numel()
    bias = total / count - _OFF_GRID
    std = sigma / count**0.5
    assert abs(bias) < 5 * std, (bias, std)  # rounded first: bias ≈ −0.5 ≈ −11 std


def test_noise_scales_are_rounded_up_to_the_working_dtype(monkeypatch):
    """σ = 1 + 2⁻²⁵ is not a float32 number; cast to nearest it would be 1.0, less noise than
    calibrated. Every std used in float32 arithmetic is rounded up instead."""
    from dplowrank.mechanisms import _noise

    def ones(shape, source, buf):  # every draw z = 1: the output shows the std used
        return buf[: shape[0] * shape[1]].view(shape).fill_(1.0)

    monkeypatch.setattr(_noise, "_normal", ones)
    sigma = 1.0 + 2.0**-25
    for shape in ("isotropic", "upper_triangular"):
        mech = dl.GaussianMechanism(sigma, 1.0, shape)
        out = mech.perturb_(torch.zeros(3, 3, dtype=torch.float32), generator=torch.Generator())
        assert float(out[0, 0]) >= sigma
        off = sigma / math.sqrt(2.0) if shape == "isotropic" else sigma
        assert float(out[0, 1]) >= off
        out64 = mech.perturb(torch.zeros(3, 3, dtype=torch.float64), generator=torch.Generator())
        assert float(out64[0, 0]) == sigma and float(out64[0, 1]) >= off
    h = dl.ComplexGaussianMechanism(sigma, 1.0).perturb(torch.zeros(3, 3), generator=torch.Generator(),
                                                         dtype=torch.float32)
    assert float(h[0, 0].real) >= sigma and float(h[0, 1].real) >= sigma / math.sqrt(2.0)
    assert float(h[0, 1].imag) >= sigma / math.sqrt(2.0)


def test_compute_dtype_and_std_rounding_helpers():
    from dplowrank.mechanisms._noise import compute_dtype, std_in

    assert compute_dtype(torch.float64, torch.float32) == torch.float64
    assert compute_dtype(torch.float32, torch.float32) == torch.float32
    assert compute_dtype(torch.float16, torch.float32) == torch.float32
    assert compute_dtype(torch.int64, torch.float32) == torch.float64
    for x in (1.0 + 2.0**-25, 0.1, 3.7306, 1e-30, 7.0318):
        y = std_in(x, torch.float32)
        assert y >= x and np.float32(y) == y and y - x <= abs(np.spacing(np.float32(x)))
        assert std_in(x, torch.float64) == x


@given(c=st.floats(1e-100, 1e100))
def test_sensitivities_are_never_rounded_down(c):
    """C·C and √2·C·C round to nearest and can fall an ulp below C² and √2·C²."""
    from fractions import Fraction

    exact = Fraction(c) ** 2
    assert Fraction(dl.gram_sensitivity(c)) >= exact
    assert Fraction(dl.gram_sensitivity(c, "replace")) ** 2 >= 2 * exact**2
    assert dl.gram_sensitivity(c) == pytest.approx(c * c, rel=1e-15)
    assert dl.gram_sensitivity(c, "replace") == pytest.approx(math.sqrt(2) * c * c, rel=1e-15)


@pytest.mark.parametrize(("d", "cuts", "src_dtype", "out_dtype"), [
    (1300, (0, 512, 1024, 1300), torch.float64, torch.float64),
    (1300, (0, 1024, 1300), torch.float64, torch.float32),
    (1300, (0, 512, 1300), torch.float32, torch.float64),  # widened: the strips are converted copies
    (1536, (0, 512, 1536), torch.float32, torch.float32),
    (515, (0, 512, 515), torch.float64, torch.float64),  # a last shard of 3 rows
])
def test_noise_rows_are_the_rows_of_the_whole_noisy_matrix(d, cuts, src_dtype, out_dtype):
    """noisy_symmetric_rows gives, shard by shard, exactly the rows noisy_symmetric writes
    (same streams, same sums), in place or not, for keyed and torch-generator sources."""
    from dplowrank.mechanisms import noisy_symmetric_rows
    from dplowrank.mechanisms._noise import noisy_symmetric

    x = torch.randn(d, 30, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    M = (x @ x.T).to(src_dtype)
    M = torch.triu(M) + torch.triu(M, 1).T  # exactly symmetric
    for make in (lambda: dl.SecureNormalSource.from_seed(3), lambda: torch.Generator().manual_seed(5)):
        whole = noisy_symmetric(M, torch.empty(d, d, dtype=out_dtype), diag_std=0.7, off_std=0.5, generator=make())
        for a, b in itertools.pairwise(cuts):
            rows = noisy_symmetric_rows(M[a:b].clone(), torch.empty(b - a, d, dtype=out_dtype), a, diag_std=0.7,
                                        off_std=0.5, generator=make())
            assert torch.equal(rows, whole[a:b])
            if src_dtype == out_dtype:
                inplace = M[a:b].clone()
                noisy_symmetric_rows(inplace, inplace, a, diag_std=0.7, off_std=0.5, generator=make())
                assert torch.equal(inplace, whole[a:b])
    with pytest.raises(ValueError, match="multiples of 512"):
        noisy_symmetric_rows(M[100:200].clone(), torch.empty(100, d, dtype=out_dtype), 100, diag_std=1.0,
                             off_std=1.0, generator=dl.SecureNormalSource.from_seed(1))
