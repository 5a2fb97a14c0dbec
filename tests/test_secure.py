"""Secure noise source: distribution tests (moments, KS), independence, determinism of streams,
the AES-CTR counter layout, the Holohan–Braghin combining (distinct pairs for every n), and
reproducibility of seeded releases."""

import math

import numpy as np
import pytest
import torch

from dplowrank import SecureNormalSource
from dplowrank._secure import _CHUNK, _layout, _normals_from_words

from .conftest import assert_standard_normal

N = 400_000


@pytest.mark.parametrize("combine, dtype", [(1, torch.float64), (2, torch.float64), (3, torch.float64),
                                            (2, torch.float32)])
def test_secure_normals_are_standard_normal(combine, dtype):
    z = SecureNormalSource.from_seed(7, combine=combine).normals(N, stream=0, dtype=dtype).numpy().astype(float)
    assert_standard_normal(z)


@pytest.mark.parametrize("combine", [1, 2])
def test_neighbouring_draws_are_uncorrelated(combine):
    z = SecureNormalSource.from_seed(3, combine=combine).normals(N, stream=5).numpy()
    for lag in (1, 2, N // 2):
        r = np.corrcoef(z[:-lag], z[lag:])[0, 1]
        assert abs(r) < 6 / math.sqrt(N - lag), (lag, r)
    # squares too: consecutive outputs share the radius of one Box–Muller pair (whose two
    # coordinates are independent), so even their squares must be uncorrelated
    r2 = np.corrcoef(z[:-1] ** 2, z[1:] ** 2)[0, 1]
    assert abs(r2) < 6 / math.sqrt(N)


def test_streams_are_deterministic_and_independent():
    a = SecureNormalSource.from_seed("s")
    b = SecureNormalSource.from_seed("s")
    assert torch.equal(a.normals(1000, stream=3), b.normals(1000, stream=3))
    x, y = a.normals(N, stream=0).numpy(), a.normals(N, stream=1).numpy()
    assert abs(np.corrcoef(x, y)[0, 1]) < 6 / math.sqrt(N)
    assert not torch.equal(SecureNormalSource().normals(100, stream=0), SecureNormalSource().normals(100, stream=0))
    assert a.seeded and not SecureNormalSource().seeded
    assert a.new_streams(3) == [0, 1, 2] and a.new_streams(2) == [3, 4]
    assert a.normals(10, stream=0, dtype=torch.float32).dtype == torch.float32


def test_secure_source_rejects_bad_input():
    with pytest.raises(ValueError, match="32 bytes"):
        SecureNormalSource(b"short")
    with pytest.raises(ValueError, match="combine must be a positive integer, got 0"):
        SecureNormalSource(combine=0)
    with pytest.raises(ValueError, match="n must be a non-negative integer, got -1"):
        SecureNormalSource().normals(-1, stream=0)
    assert SecureNormalSource().normals(0, stream=0).shape == (0,)
    with pytest.raises(TypeError, match="dtype must be a real floating torch.dtype, got 'float32'"):
        SecureNormalSource().normals(3, stream=0, dtype="float32")
    with pytest.raises(ValueError, match="stream must be in"):
        SecureNormalSource().normals(3, stream=2**64)


def test_keystream_is_aes256_of_the_counter_blocks():
    """Block j of stream s is AES-256_k(s ‖ j) (64-bit big-endian halves), computed here
    independently with ECB: the streams never share a counter block."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    src = SecureNormalSource(key)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    for stream in (0, 1, 2**40 + 3):
        blocks = b"".join(stream.to_bytes(8, "big") + j.to_bytes(8, "big") for j in range(5))
        got = bytes(src._keystream(src._encryptor(stream), 80, bytearray(96))[:80])
        assert got == ecb.update(blocks)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("combine", [1, 2, 3])
def test_normals_are_the_documented_function_of_the_keystream(dtype, combine):
    """normals() is _normals_from_words applied chunk by chunk to the stream's keystream
    (so the distinct-pairs test below, which goes through the same kernel, covers it)."""
    src = SecureNormalSource.from_seed(11, combine=combine)
    size = _CHUNK[dtype]
    n = size + 5  # a full chunk and a short last one
    got = src.normals(n, stream=9, dtype=dtype)
    enc = src._encryptor(9)
    width, word = (4, "<u4") if dtype == torch.float32 else (8, "<u8")
    want = torch.empty(n, dtype=dtype)
    for c0 in range(0, n, size):
        c = min(size, n - c0)
        rows, cols = _layout(c, combine)
        nbytes = 2 * rows * cols * width
        words = np.frombuffer(src._keystream(enc, nbytes, bytearray(nbytes + 16)), dtype=word, count=nbytes // width)
        _normals_from_words(words.astype(words.dtype.newbyteorder("=")), c, combine, want[c0 : c0 + c])
    assert torch.equal(got, want)


def _contributions(n, m, dtype):
    """For each output of a request of n normals, the set of (pair, "cos"/"sin") draws in it.

    Switches one Box–Muller pair on at a time through crafted keystream words: every other
    pair gets the radius uniform u = 1 (r = 0), the chosen one u at its minimum (r > 0), and
    all angles θ = 0 (only cosines are nonzero) or θ = π/2 (only sines)."""
    rows, cols = _layout(n, m)
    pairs = rows * cols
    if dtype == torch.float64:
        word, r_off, r_on, angle = np.uint64, 2**64 - 1, 0, {"cos": 0, "sin": 2**62}
    else:
        word, r_off, r_on, angle = np.uint32, 2**32 - 1, 0, {"cos": 0, "sin": 2**30}
    used = [set() for _ in range(n)]
    for p in range(pairs):
        for kind, a in angle.items():
            words = np.empty(2 * pairs, dtype=word)
            words[:pairs] = r_off
            words[p] = r_on
            words[pairs:] = a
            z = torch.empty(n, dtype=dtype)
            _normals_from_words(words, n, m, z)
            for i in np.flatnonzero(np.abs(z.numpy()) > 1e-3):
                used[i].add((p, kind))
    return used


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("combine", [1, 2, 3, 4, 5])
def test_combined_draws_come_from_distinct_pairs_for_small_n(combine, dtype):
    """Holohan–Braghin hardening holds for every request size, n = 1 included: each output
    sums `combine` draws from `combine` different Box–Muller pairs, and no draw is shared
    between outputs (so the outputs stay independent)."""
    for n in list(range(1, 10)) + [16, 17]:
        used = _contributions(n, combine, dtype)
        seen = set()
        for i, draws in enumerate(used):
            assert len(draws) == combine, (n, i, draws)
            assert len({p for p, _ in draws}) == combine, (n, i, draws)  # distinct pairs
            assert not draws & seen, (n, i, draws)
            seen |= draws


def test_solver_seed_is_reproducible_and_separate_from_the_noise_streams():
    a, b = SecureNormalSource.from_seed(4), SecureNormalSource.from_seed(4)
    seeds = [a.solver_seed(), a.solver_seed()]
    assert seeds == [b.solver_seed(), b.solver_seed()]
    assert seeds[0] != seeds[1] and min(seeds) >= 0 and max(seeds) < 2**64
    assert seeds[0] != SecureNormalSource.from_seed(5).solver_seed()
    assert a.new_streams(2) == [0, 1]  # the noise streams are untouched


def test_seeded_secure_releases_are_bit_identical_at_large_d():
    """Regression: the solver's random start came from the OS even for a seeded source, so
    two lanczos releases from from_seed(4) at d = 2048 differed (by 5.6e-6)."""
    import dplowrank as dl

    d = 2048
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))[0].T
    # three planted directions with well separated eigenvalues (600, 300, 100): quick to solve
    rows = torch.cat([basis[0].repeat(600, 1), basis[1].repeat(300, 1), basis[2].repeat(100, 1)])
    a, b = (dl.release_rank_k(rows, 2, epsilon=2.0, delta=1e-6, row_norm=1.0, solver="lanczos",
                              generator=SecureNormalSource.from_seed(4)) for _ in range(2))
    assert a.randomness == "seeded" and not a.for_publication
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["host", "portable"])
@pytest.mark.parametrize("mechanism", ["gaussian", "complex"])
def test_secure_noise_is_the_same_on_cuda_as_on_the_cpu(mechanism, engine):
    """With the host engine the normals are computed on the CPU and copied; with the portable
    one on the GPU by the Triton kernels and on the CPU by numpy: either way one key gives
    bit-identical noise on both devices."""
    import dplowrank as dl

    g = torch.randn(1300, 1300, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = g + g.T
    mech = dl.GaussianMechanism(1.5, 1.0) if mechanism == "gaussian" else dl.ComplexGaussianMechanism(1.5, 1.0)
    cpu = mech.perturb(g, generator=SecureNormalSource.from_seed(7, engine=engine))
    gpu = mech.perturb(g.cuda(), generator=SecureNormalSource.from_seed(7, engine=engine))
    assert torch.equal(gpu.cpu(), cpu)


# ---- provenance: only noise keyed from the OS by the library is "secure" -------------------------


def test_a_caller_key_makes_a_seeded_source_and_a_seeded_release():
    """SecureNormalSource(key) with a fixed key gave the same noise on every construction, and
    releases on neighbouring data then differed by exactly the removed row's outer product; it
    was labelled secure and fit to publish."""
    import dplowrank as dl

    key = bytes(range(32))
    a, b = SecureNormalSource(key), SecureNormalSource(key)
    assert torch.equal(a.normals(50, stream=0), b.normals(50, stream=0))  # reproducible by the caller
    assert a.seeded and not a.secure
    assert SecureNormalSource().secure and not SecureNormalSource().seeded
    rows = torch.randn(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 3
    for src in (SecureNormalSource(key), SecureNormalSource.from_seed(1), torch.Generator().manual_seed(1)):
        r = dl.release_rank_k(rows, 2, epsilon=1.0, delta=1e-6, row_norm=1.0, generator=src)
        assert r.randomness == "seeded" and not r.for_publication
    r = dl.release_rank_k(rows, 2, epsilon=1.0, delta=1e-6, row_norm=1.0, generator=SecureNormalSource())
    assert r.randomness == "secure" and r.for_publication
    with pytest.raises(ValueError, match="combine=1 switches off"):
        SecureNormalSource(combine=1)  # the hardening is part of "secure"
    assert SecureNormalSource(key, combine=1).seeded  # a seeded source may skip it


def test_a_secure_source_cannot_be_copied_or_pickled():
    """copy.copy shared the key *and* the stream counter: the copy drew the original's noise."""
    import copy
    import pickle

    src = SecureNormalSource()
    for dup in (copy.copy, copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            dup(src)
    seeded = SecureNormalSource.from_seed(3)
    seeded.new_streams(2)
    clone = copy.deepcopy(seeded)  # seeded sources copy (and repeat: that is what seeded means)
    assert clone.seeded and clone.new_streams(1) == seeded.new_streams(1) == [2]
    back = pickle.loads(pickle.dumps(seeded))
    assert torch.equal(back.normals(8, stream=5), seeded.normals(8, stream=5))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_draws_different_noise_from_the_same_source():
    """After fork, parent and child held the same key and counter: the same streams, the same noise."""
    import os

    src = SecureNormalSource()
    src.new_streams(4)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw the next stream and send it
        try:
            stream = src.new_streams(1)[0]
            z = src.normals(64, stream=stream, dtype=torch.float32).numpy().tobytes()
            os.write(write, stream.to_bytes(8, "little") + z)
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while len(data) < 8 + 64 * 4:
        chunk = os.read(read, 4096)
        if not chunk:
            break
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child_stream = int.from_bytes(data[:8], "little")
    child = np.frombuffer(data[8:], dtype=np.float32)
    mine = src.new_streams(1)[0]
    parent = src.normals(64, stream=mine, dtype=torch.float32).numpy()
    assert mine == 4 and len(child) == 64
    assert not np.array_equal(child, parent)  # the child was rekeyed:
    # its draws match no stream of the parent's key near the ones in use
    for stream in range(8):
        assert not np.array_equal(child, src.normals(64, stream=stream, dtype=torch.float32).numpy())
    assert child_stream == 0  # (its counters restart with the new key)


def test_secure_is_a_provenance_the_caller_cannot_set_by_accident():
    """Found by the audit: seeded and combine were plain attributes (a caller key plus
    ``src.seeded = False`` was "secure"), a clone through __dict__ or a subclass with a fixed key
    stayed secure, and a forked clone was never rekeyed."""
    src = SecureNormalSource()
    assert src.secure
    for attr, value in (("seeded", False), ("secure", True), ("combine", 1)):
        with pytest.raises(AttributeError):
            setattr(src, attr, value)
    assert not hasattr(src, "__dict__")
    clone = object.__new__(SecureNormalSource)  # a hand-made copy of every slot
    for slot in ("_key", "_combine", "_next", "_next_solver", "_lock"):
        object.__setattr__(clone, slot, object.__getattribute__(src, slot))
    assert clone.seeded and not clone.secure

    class Fixed(SecureNormalSource):
        __slots__ = ()

        def __init__(self):
            super().__init__()
            self._key = b"\x01" * 32

    assert Fixed().seeded
    swapped = SecureNormalSource()
    swapped._key = bytes(32)  # a key put in afterwards
    assert swapped.seeded
