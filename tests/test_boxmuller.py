"""The portable secure-noise algorithm (issue 19): ChaCha20 words to hardened normals with the
same bits on the CPU and on a GPU.

What is checked here, everywhere: the series' constants against mpmath; the transform's
accuracy against float64 libm and mpmath; the Triton kernel (in Triton's interpreter on the
CPU) against the numpy implementation, bit for bit, across chunk boundaries; the distribution
(moments, KS, tails, independence) as for the host source; the Holohan–Braghin combining
(m distinct pairs per output, every draw used once); the engine's choice and its provenance;
and a whole mechanism drawn through the device path against the CPU implementation. On a
CUDA machine the same comparisons run on the GPU.
"""

from __future__ import annotations

import copy
import math
import os
import pickle

import mpmath
import numpy as np
import pytest
import torch

import dplowrank as dl
from dplowrank import SecureNormalSource
from dplowrank import _boxmuller as bm
from dplowrank._chacha import keystream_cpu

from .conftest import assert_standard_normal

N = 400_000
DTYPES = [torch.float32, torch.float64]


def _bits(a) -> np.ndarray:
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


# ---- the definition --------------------------------------------------------------------------


def test_the_series_constants_are_the_correctly_rounded_taylor_coefficients():
    mpmath.mp.prec = 200
    tau = 2 * mpmath.pi
    for k, c in enumerate(bm._SIN):
        assert c == float(mpmath.mpf((-1) ** k) * tau ** (2 * k + 1) / mpmath.factorial(2 * k + 1)), k
    for k, c in enumerate(bm._COS):
        assert c == float(mpmath.mpf((-1) ** k) * tau ** (2 * k) / mpmath.factorial(2 * k)), k
    assert float(mpmath.log(2)) == bm._LN2
    # the truncation the docstring states: the first omitted term at |x| = 1/8
    z = (mpmath.sqrt(2) - 1) ** 2 / (mpmath.sqrt(2) + 1) ** 2  # the largest s²
    for kl, ks, kc, trig_tol, log_tol in ((4, 4, 5, 2e-9, 2.1e-9), (10, 8, 8, 3e-18, 1e-18)):
        assert float(tau ** (2 * ks + 3) / mpmath.factorial(2 * ks + 3) / 8 ** (2 * ks + 3)) < trig_tol
        assert float(tau ** (2 * kc + 2) / mpmath.factorial(2 * kc + 2) / 8 ** (2 * kc + 2)) < trig_tol
        assert float(z ** (kl + 1) / (2 * kl + 3)) < log_tol


def _words(rng, dtype, n):
    """Random radius and angle words, with the extremes first."""
    if dtype == torch.float32:
        r = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
        a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
        r[:4] = [0, 1, 2**32 - 1, 2**31]
        a[:9] = [0, 2**30, 2**31, 3 * 2**30, 2**29, 2**32 - 1, 2**29 + 2**8, 2**29 - 2**8, 7 * 2**29]
        u = r.astype(np.float32) * np.float32(2**-32) + np.float32(2**-33)
        t = (a >> 8).astype(np.float64) * 2**-24
    else:
        r = rng.integers(0, 2**64, n, dtype=np.uint64)
        a = rng.integers(0, 2**64, n, dtype=np.uint64)
        r[:3] = [0, 2**64 - 1, 2**63]
        a[:6] = [0, 2**62, 2**63, 2**61, 2**61 - 2**12, 2**64 - 1]
        u = ((r >> np.uint64(12)) | np.uint64(0x3FF0000000000000)).view(np.float64) - (1 - 2**-52)
        t = (a >> np.uint64(12)).astype(np.float64) * 2**-52
    return r, a, u.astype(np.float64), t


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 6e-7), (torch.float64, 2e-15)])
def test_the_transform_is_box_muller_to_a_few_ulps(dtype, tol):
    r, a, u, t = _words(np.random.default_rng(1), dtype, 1 << 18)
    dc, ds = bm._pair_draws(r, a, dtype, bm.coefficients(dtype, 1))
    radius = np.sqrt(-2 * np.log(u))
    # absolute error against float64 libm, relative to the radius (|draw| ≤ radius ≤ 8.5)
    assert np.max(np.abs(dc - radius * np.cos(2 * np.pi * t)) / np.maximum(radius, 1)) < tol
    assert np.max(np.abs(ds - radius * np.sin(2 * np.pi * t)) / np.maximum(radius, 1)) < tol
    # the largest radius is the documented cap, √(2·33 ln 2) or √(2·52 ln 2)
    bits = 33 if dtype == torch.float32 else 52
    assert math.isclose(float(np.max(np.hypot(dc, ds))), math.sqrt(2 * bits * math.log(2)), rel_tol=tol)
    if dtype == torch.float64:  # the float64 reference itself is off by an ulp or two: mpmath
        mpmath.mp.prec = 120
        for i in list(range(6)) + list(range(1000, 1200)):
            rr = mpmath.sqrt(-2 * mpmath.log(mpmath.mpf(float(u[i]))))
            th = 2 * mpmath.pi * mpmath.mpf(float(t[i]))
            assert abs(dc[i] - float(rr * mpmath.cos(th))) <= 4 * np.spacing(max(abs(dc[i]), 1.0))
            assert abs(ds[i] - float(rr * mpmath.sin(th))) <= 4 * np.spacing(max(abs(ds[i]), 1.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("combine", [1, 2, 3, 4])
def test_each_output_sums_draws_of_m_distinct_pairs_and_each_draw_is_used_once(dtype, combine):
    """Switch one pair on at a time (every other pair's radius word makes u = 1, so r = 0): it
    must reach exactly one cosine output and one sine output, those of its group."""
    n = 2 * 3 + 1  # an odd n: the last group's sine output is cut
    groups = -(-n // 2)
    pairs = groups * combine
    wpp = bm.WORDS_PER_PAIR[dtype]
    off = np.full(wpp * pairs, 0xFFFFFFFF, dtype=np.uint32)  # radius word all ones: u = 1
    seen = np.zeros((n, pairs), dtype=bool)
    for p in range(pairs):
        w = off.copy()
        w[wpp * p : wpp * p + wpp // 2] = 12345  # pair p: a nonzero radius
        w[wpp * p + wpp // 2 : wpp * (p + 1)] = 0x13579BDF * (p + 1) % 2**32  # an angle off the axes
        z = bm.normals_from_words(w, n, combine, dtype)
        seen[:, p] = z != 0
    for i in range(n):
        g = i // 2
        assert set(np.flatnonzero(seen[i])) == set(range(g * combine, (g + 1) * combine)), i
    used = seen.sum(axis=0)
    assert np.all(used[: (groups - 1) * combine] == 2)  # a cosine and a sine output each
    assert np.all(used[(groups - 1) * combine :] == 1)  # the cut group: its cosine output only


@pytest.mark.parametrize("combine, dtype", [(1, torch.float64), (2, torch.float64), (3, torch.float64),
                                            (2, torch.float32), (1, torch.float32)])
def test_portable_normals_are_standard_normal(combine, dtype):
    src = SecureNormalSource.from_seed(7, combine=combine, engine="portable")
    assert_standard_normal(src.normals(N, stream=0, dtype=dtype).numpy().astype(float))


@pytest.mark.parametrize("combine", [1, 2])
def test_portable_neighbours_and_streams_are_uncorrelated(combine):
    src = SecureNormalSource.from_seed(3, combine=combine, engine="portable")
    z = src.normals(N, stream=5).numpy()
    for lag in (1, 2, N // 2):
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < 6 / math.sqrt(N - lag), lag
    # an output pair shares its groups' radii: even the squares must be uncorrelated
    assert abs(np.corrcoef(z[:-1] ** 2, z[1:] ** 2)[0, 1]) < 6 / math.sqrt(N)
    other = src.normals(N, stream=6).numpy()
    assert abs(np.corrcoef(z, other)[0, 1]) < 6 / math.sqrt(N)


# ---- the engine ------------------------------------------------------------------------------


def test_the_engine_chooses_the_algorithm_and_travels_with_seeded_copies():
    with pytest.raises(ValueError, match="engine must be one of"):
        SecureNormalSource(engine="gpu")
    auto = SecureNormalSource.from_seed(1)
    assert auto.engine == "auto" and auto.algorithm("cpu") == "host" and auto.algorithm("cuda") == "portable"
    assert SecureNormalSource.from_seed(1, engine="host").algorithm("cuda") == "host"
    assert SecureNormalSource.from_seed(1, engine="portable").algorithm("cpu") == "portable"
    assert not auto.draws_on_device("cpu")
    for clone in (copy.copy(SecureNormalSource.from_seed(1, engine="portable")),
                  pickle.loads(pickle.dumps(SecureNormalSource.from_seed(1, engine="portable")))):
        assert clone.engine == "portable"
    # an OS-keyed source is secure with every engine; a copy is refused whatever the engine
    for engine in ("auto", "host", "portable"):
        s = SecureNormalSource(engine=engine)
        assert s.secure and not s.seeded
        with pytest.raises(TypeError, match="cannot be copied"):
            copy.copy(s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_portable_engine_draws_the_documented_function_of_a_subkey(dtype):
    key = bytes(range(32))
    src = SecureNormalSource(key, engine="portable")
    got = src.normals(1001, stream=9, dtype=dtype)
    assert got.dtype == dtype and got.shape == (1001,)
    sub = bm.subkey(key)
    assert sub != key  # AES and ChaCha20 never share a key
    words = keystream_cpu(sub, 9, 0, bm.blocks_needed(1001, 2, dtype))
    np.testing.assert_array_equal(_bits(got), _bits(bm.normals_from_words(words, 1001, 2, dtype)))
    # the host engine's numbers are another algorithm's (AES): a different draw
    host = SecureNormalSource(key, engine="host").normals(1001, stream=9, dtype=dtype)
    assert not torch.equal(host, got)
    # into a caller's buffer, and cast for other dtypes
    buf = torch.full((1500,), float("nan"), dtype=dtype)
    view = src.normals(1001, stream=9, dtype=dtype, out=buf)
    assert torch.equal(view, got) and buf[1001:].isnan().all()
    if dtype == torch.float64:
        assert torch.equal(src.normals(1001, stream=9, dtype=torch.float16), got.to(torch.float16))


def test_chunks_do_not_change_the_numbers(monkeypatch):
    """A chunk starts on a block boundary: any chunk size gives the same stream."""
    key = os.urandom(32)
    for dtype in DTYPES:
        for m in (1, 3):
            whole = bm.normals_from_words(keystream_cpu(key, 4, 0, bm.blocks_needed(20001, m, dtype)), 20001, m, dtype)
            monkeypatch.setattr(bm, "_CPU_GROUPS", 8)
            np.testing.assert_array_equal(_bits(bm.normals_cpu(key, 4, 20001, m, dtype)), _bits(whole))
            monkeypatch.undo()


def test_a_draw_longer_than_a_stream_is_refused_before_anything_is_drawn():
    with pytest.raises(ValueError, match="ChaCha20 blocks"):
        bm.blocks_needed(2**36, 2, torch.float64)
    assert bm.blocks_needed(2**34, 2, torch.float64) == 2**32  # the longest draw fits exactly
    src = SecureNormalSource.from_seed(1, engine="portable")
    with pytest.raises(ValueError, match="ChaCha20 blocks"):
        src.normals(2**36, stream=0)  # refused before the 512 GiB output is allocated


# ---- the device kernels ----------------------------------------------------------------------


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("combine, n", [(1, 1), (2, 2), (2, 2049), (3, 1000), (4, 77)])
def test_the_triton_transform_gives_the_numpy_bits(interpreted, dtype, combine, n):
    key = os.urandom(32)
    ref = bm.normals_cpu(key, 11, n, combine, dtype)
    out = torch.full((n + 3,), float("nan"), dtype=dtype, device=_device())
    got = bm.normals_device(key, 11, n, combine, dtype, out)
    np.testing.assert_array_equal(_bits(got), _bits(ref))
    assert out[n:].isnan().all()  # nothing written past n


def test_the_device_path_crosses_chunks_with_the_same_bits(interpreted, monkeypatch):
    monkeypatch.setattr(bm, "_DEVICE_GROUPS", 256)  # chunks of 512 outputs, several programs
    key = os.urandom(32)
    for dtype in DTYPES:
        out = torch.empty(1801, dtype=dtype, device=_device())
        got = bm.normals_device(key, 2**64 - 1, 1801, 2, dtype, out)
        np.testing.assert_array_equal(_bits(got), _bits(bm.normals_cpu(key, 2**64 - 1, 1801, 2, dtype)))


@pytest.mark.parametrize("mechanism, dtype", [("gaussian", torch.float64), ("complex", torch.float32)])
def test_a_mechanism_drawn_on_the_device_equals_the_portable_cpu_release(interpreted, monkeypatch, mechanism, dtype):
    """The whole noise pass through the device path (the blocks' draw buffers filled by the
    kernels, the blocks run in order), against the numpy implementation on the CPU."""
    d = 70
    g = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = (g + g.T).to(dtype)
    mech = dl.GaussianMechanism(1.5, 1.0) if mechanism == "gaussian" else dl.ComplexGaussianMechanism(1.5, 1.0)
    cpu = mech.perturb(g, generator=SecureNormalSource.from_seed(7, engine="portable"))
    calls = []
    if not torch.cuda.is_available():  # the interpreter runs the kernels on CPU tensors
        monkeypatch.setattr(SecureNormalSource, "draws_on_device", lambda self, device, algorithm=None: True)
        real = bm.normals_device

        def spy(*args, **kwargs):
            calls.append(args[2])
            return real(*args, **kwargs)

        monkeypatch.setattr(bm, "normals_device", spy)
    dev = mech.perturb(g.to(_device()), generator=SecureNormalSource.from_seed(7, engine="portable"))
    assert torch.equal(dev.cpu(), cpu)
    assert torch.cuda.is_available() or len(calls) == (2 if mechanism == "complex" else 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_draws_on_the_gpu_and_its_noise_is_the_portable_algorithm():
    pytest.importorskip("triton")
    src = SecureNormalSource.from_seed(5)
    assert src.draws_on_device("cuda")
    for dtype in DTYPES:
        for n in (1, 10_001, 3_000_017):
            gpu = src.normals(n, stream=3, dtype=dtype, device="cuda")
            assert gpu.device.type == "cuda"
            ref = SecureNormalSource.from_seed(5, engine="portable").normals(n, stream=3, dtype=dtype)
            np.testing.assert_array_equal(_bits(gpu), _bits(ref))


def test_bad_buffers_and_misaligned_chunks_are_refused(monkeypatch):
    """Found by the audit of issue 19: normals_device wrote past a short ``out``, and a chunk
    size whose words were not whole ChaCha20 blocks silently reused keystream words."""
    key = bytes(32)
    with pytest.raises(ValueError, match="at least 10 elements"):
        bm.normals_device(key, 0, 10, 2, torch.float32, torch.empty(3))
    with pytest.raises(ValueError, match="contiguous"):
        bm.normals_device(key, 0, 10, 2, torch.float32, torch.empty(20, dtype=torch.float64))
    monkeypatch.setattr(bm, "_CPU_GROUPS", 3)
    with pytest.raises(RuntimeError, match="block boundaries"):
        bm.normals_cpu(key, 0, 101, 1, torch.float32)


def test_a_failing_device_kernel_falls_back_to_the_same_bits_on_the_host(monkeypatch):
    """A release charges its budget before the noise: if Triton cannot run (no C compiler for
    its launcher, say), the portable algorithm's numpy implementation draws the same numbers."""
    import dplowrank._secure as sec

    monkeypatch.setattr(sec, "_DEVICE_FAILED", False)
    monkeypatch.setattr(sec, "_have_triton", lambda: True)
    monkeypatch.setattr(sec, "auto_algorithm", lambda device: "portable")

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(bm, "normals_device", broken)
    src = SecureNormalSource.from_seed(2)
    monkeypatch.setattr(SecureNormalSource, "draws_on_device",
                        lambda self, device, algorithm=None: not sec._DEVICE_FAILED)
    with pytest.warns(RuntimeWarning, match="RuntimeError"):
        got = src.normals(999, stream=4, dtype=torch.float32)
    assert sec._DEVICE_FAILED
    ref = SecureNormalSource.from_seed(2, engine="portable").normals(999, stream=4, dtype=torch.float32)
    assert torch.equal(got, ref)
    # a bad request is an error, not a reason to leave the device
    monkeypatch.setattr(sec, "_DEVICE_FAILED", False)

    def refuses(*args, **kwargs):
        raise ValueError("out must be a contiguous tensor")

    monkeypatch.setattr(bm, "normals_device", refuses)
    with pytest.raises(ValueError, match="contiguous"):
        src.normals(10, stream=5)
    assert not sec._DEVICE_FAILED


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_noise_for_a_second_gpu_is_drawn_on_that_gpu():
    """Triton launches on torch's current device: the kernels must run on out's device even when
    the current device is another (audit of issue 19)."""
    pytest.importorskip("triton")
    src = SecureNormalSource.from_seed(6)
    with torch.cuda.device(0):
        got = src.normals(300_001, stream=1, device="cuda:1")
    assert got.device == torch.device("cuda:1")
    ref = SecureNormalSource.from_seed(6, engine="portable").normals(300_001, stream=1)
    np.testing.assert_array_equal(_bits(got), _bits(ref))
