"""The portable secure-noise algorithm: ChaCha20 words to hardened normals, the same bits on
the CPU and on a GPU.

The CPU secure source (:mod:`dplowrank._secure`, engine ``"host"``) turns an AES-256-CTR
keystream into normals with the platform's ``log``, ``cos`` and ``sin``, whose last bits
differ between numpy (SLEEF/SVML) and CUDA's libdevice. This module defines a second
algorithm that uses only operations IEEE 754 rounds exactly (+, −, ×, ÷, √, integer and bit
operations, conversions of exactly representable integers) in a fixed order, with no fused
multiply-add, so that its numpy implementation here and its Triton kernel
(:mod:`dplowrank._boxmuller_triton`) give the same bits for the same words. It is what the
secure source draws for CUDA targets (engine ``"auto"``) and everywhere with engine
``"portable"``.

The words (per stream; :mod:`dplowrank._chacha` gives the block layout): ChaCha20 (RFC 8439)
keyed by :func:`subkey` (SHA-256 of a label and the source's key, so AES and ChaCha20 never
share a key), the stream number as the nonce, block counter from 0, the blocks' 16 words in
order. Box–Muller pair p uses words [2p, 2p + 2) for float32 and [4p, 4p + 4) for float64
(two little-endian 64-bit words): first the radius word, then the angle word.

The transform, in the output's precision F (float32 or float64):

1. Radius uniform u ∈ (0, 1]. float32: u = fl(w)·2⁻³² + 2⁻³³ (w the 32-bit word; smallest
   2⁻³³, as in the host algorithm). float64: the top 52 bits of the 64-bit word as the
   mantissa of v ∈ [1, 2), u = v − (1 − 2⁻⁵²) = j·2⁻⁵², 1 ≤ j ≤ 2⁵², exactly.
2. ln u = e·ln 2 + ln m with u = 2ᵉ·m, m ∈ [√½, √2) taken from the bits, and
   ln m = 2 artanh s = s·(2 + z(2/3 + z(2/5 + …))), s = (m − 1)/(m + 1), z = s² ≤ 0.0295:
   the artanh series (Abramowitz & Stegun 4.1.28) to z⁴ (float32) or z¹⁰ (float64), whose
   truncation error is below 2.1·10⁻⁹ and 10⁻¹⁸ relative. The radius is
   r/√m = √(max(0, −(2/m)·ln u)) (the combining's 1/√m folded in).
3. Angle θ = 2π·a·2⁻ᵇ from the angle word's top b bits (b = 24 or 52), reduced *in integers*:
   a = k·2ᵇ⁻² + i with |i| ≤ 2ᵇ⁻³, so θ = kπ/2 + 2πx, x = i·2⁻ᵇ ∈ [−1/8, 1/8] exactly. The
   sine and cosine of 2πx are their Taylor series in x (Abramowitz & Stegun 4.3.65–66, with
   (2π)ⁿ/n! folded into the coefficients) to x⁹/x¹⁰ (float32) or x¹⁷/x¹⁶ (float64), below
   2·10⁻⁹ and 3·10⁻¹⁸; the quarter turns k swap and negate them exactly.
4. The hardening of the host algorithm (Holohan & Braghin 2021, arXiv:2107.10138): groups of
   m = ``combine`` consecutive pairs give two outputs, Σⱼ rⱼ cos θⱼ and Σⱼ rⱼ sin θⱼ (summed
   in order j = 0 … m − 1). Each output sums m draws from m different pairs (never a
   pair's cosine with its own sine), the two outputs are independent (each pair's two
   coordinates are), and every draw is used once.

As in the host algorithm, one draw is capped at |Z| ≤ √(2·33 ln 2) = 6.76 in float32 and
√(2·52 ln 2) = 8.49 in float64, and float32 noise carries float32 rounding.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch

from ._chacha import MAX_BLOCKS, keystream_cpu

__all__ = ["WORDS_PER_PAIR", "blocks_needed", "coefficients", "normals_cpu", "normals_device",
           "normals_from_words", "subkey"]

#: 32-bit keystream words per Box–Muller pair, by output dtype.
WORDS_PER_PAIR = {torch.float32: 2, torch.float64: 4}
#: Groups (two outputs each) per chunk: numpy's chunks stay in L2, the device's bound its scratch.
_CPU_GROUPS = 1 << 14
_DEVICE_GROUPS = 1 << 20
#: Outputs per program of the Triton kernel (two per lane).
_LANES = 512

# Taylor coefficients of sin(2πx) = Σ S[k]·x^(2k+1) and cos(2πx) = Σ C[k]·x^(2k), (2π)ⁿ/n!
# rounded to float64 (checked against mpmath in tests/test_boxmuller.py).
_SIN = tuple(float.fromhex(h) for h in (
    "0x1.921fb54442d18p+2", "-0x1.4abbce625be53p+5", "0x1.466bc6775aae2p+6", "-0x1.32d2cce62bd86p+6",
    "0x1.50783487ee782p+5", "-0x1.e3074fde8871fp+3", "0x1.e8f434d018d63p+1", "-0x1.6fadb9f155744p-1",
    "0x1.aaec32af93359p-4"))
_COS = tuple(float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "-0x1.3bd3cc9be45dep+4", "0x1.03c1f081b5ac4p+6", "-0x1.55d3c7e3cbffap+6",
    "0x1.e1f506891babbp+5", "-0x1.a6d1f2a204a8cp+4", "0x1.f9d38a3763cc3p+2", "-0x1.b6e24f44b128fp+0",
    "0x1.20c62c2f2d7f5p-2"))
_LN2 = float.fromhex("0x1.62e42fefa39efp-1")

#: Per dtype: (float, unsigned, signed) numpy types, mantissa bits, exponent bias, bits of
#: √2's representation (the split point of m), series lengths (log, sin, cos), angle bits.
_SPEC = {
    torch.float32: (np.float32, np.uint32, np.int32, 23, 127, 0x3FB504F3, 4, 4, 5, 24),
    torch.float64: (np.float64, np.uint64, np.int64, 52, 1023, 0x3FF6A09E667F3BCD, 10, 8, 8, 52),
}


def subkey(key: bytes) -> bytes:
    """The ChaCha20 key behind a secure source's (AES) key: SHA-256 of a label and the key."""
    return hashlib.sha256(b"dplowrank-chacha20-noise" + bytes(key)).digest()


def coefficients(dtype: torch.dtype, combine: int) -> np.ndarray:
    """The constants of the transform in ``dtype``, in the order the kernel reads them.

    [radius scale, radius offset, ln 2, −2/m, angle scale, log series (KL + 1), sine series
    (KS + 1), cosine series (KC + 1)]. float32: scale 2⁻³², offset 2⁻³³; float64: scale
    unused (1), offset 1 − 2⁻⁵².
    """
    ft, *_, kl, ks, kc, bits = _SPEC[dtype]
    head = [2.0**-32, 2.0**-33] if dtype == torch.float32 else [1.0, 1.0 - 2.0**-52]
    head += [_LN2, -2.0 / combine, 2.0**-bits]
    logs = [2.0 / (2 * k + 1) for k in range(kl + 1)]
    return np.array(head + logs + list(_SIN[: ks + 1]) + list(_COS[: kc + 1]), dtype=ft)


def _horner(z: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Σ coef[k]·zᵏ by Horner's rule from the top, one rounding per multiply and per add."""
    acc = np.full_like(z, coef[-1])
    for c in coef[-2::-1]:
        acc = acc * z
        acc = acc + c
    return acc


def _pair_draws(radius: np.ndarray, angle: np.ndarray, dtype: torch.dtype, coef: np.ndarray):
    """(r·cos θ, r·sin θ) for radius and angle words (uint32 for float32, uint64 for float64)."""
    ft, ut, it, mbits, bias, sqrt2, kl, ks, _, abits = _SPEC[dtype]
    scale, offset, ln2, neg2m, ascale = coef[:5]
    logc = coef[5 : 6 + kl]
    sinc = coef[6 + kl : 7 + kl + ks]
    cosc = coef[7 + kl + ks :]
    if dtype == torch.float32:
        u = radius.astype(ft) * scale
        u = u + offset
    else:
        v = ((radius >> ut(12)) | ut(0x3FF0000000000000)).view(ft)
        u = v - offset
    bits = u.view(ut)
    e = (bits >> ut(mbits)).astype(it) - it(bias)
    mb = (bits & ut((1 << mbits) - 1)) | ut(bias << mbits)
    big = mb > ut(sqrt2)
    mb = mb - (big.astype(ut) << ut(mbits))  # m/2, exactly
    e = e + big.astype(it)
    m = mb.view(ft)
    f = m - ft(1)
    s = f / (m + ft(1))
    lnm = s * _horner(s * s, logc)
    lnu = e.astype(ft) * ln2
    lnu = lnu + lnm
    r = np.sqrt(np.maximum(lnu * neg2m, ft(0)))
    a = (angle >> ut(64 - abits if dtype == torch.float64 else 32 - abits)).astype(it)
    k = (a + it(1 << (abits - 3))) >> it(abits - 2)
    x = (a - (k << it(abits - 2))).astype(ft) * ascale
    z = x * x
    sn = x * _horner(z, sinc)
    cs = _horner(z, cosc)
    q = k & it(3)
    swap = (q & it(1)) == 1
    c0 = np.where(swap, sn, cs)
    s0 = np.where(swap, cs, sn)
    cos = np.where((q == 1) | (q == 2), -c0, c0)
    sin = np.where(q >= 2, -s0, s0)
    return r * cos, r * sin


def normals_from_words(words: np.ndarray, n: int, combine: int, dtype: torch.dtype) -> np.ndarray:
    """The first ``n`` normals behind keystream ``words`` (uint32, shape (≥ WPP·m·⌈n/2⌉,)).

    The numpy implementation of the transform (module docstring); returns shape (n,) in
    ``dtype``'s numpy type.
    """
    ft = _SPEC[dtype][0]
    groups = -(-n // 2)
    pairs = groups * combine
    wpp = WORDS_PER_PAIR[dtype]
    w32 = np.ascontiguousarray(words[: wpp * pairs], dtype=np.uint32)
    w = w32.reshape(pairs, 2) if dtype == torch.float32 else w32.view("<u8").astype(np.uint64).reshape(pairs, 2)
    dc, ds = _pair_draws(w[:, 0], w[:, 1], dtype, coefficients(dtype, combine))
    dc, ds = dc.reshape(groups, combine), ds.reshape(groups, combine)
    out = np.empty(2 * groups, dtype=ft)
    acc_c, acc_s = dc[:, 0].copy(), ds[:, 0].copy()
    for j in range(1, combine):
        acc_c = acc_c + dc[:, j]
        acc_s = acc_s + ds[:, j]
    out[0::2], out[1::2] = acc_c, acc_s
    return out[:n]


def blocks_needed(n: int, combine: int, dtype: torch.dtype) -> int:
    """ChaCha20 blocks behind ``n`` outputs (``ValueError`` beyond one stream's 2³²)."""
    words = WORDS_PER_PAIR[dtype] * combine * (-(-n // 2))
    blocks = -(-words // 16)
    if blocks > MAX_BLOCKS:
        raise ValueError(f"n = {n} normals need {blocks} ChaCha20 blocks; one stream holds {MAX_BLOCKS}")
    return blocks


def _chunks(n: int, combine: int, dtype: torch.dtype, groups: int):
    """(first output, outputs, first block, blocks) per chunk of ``groups`` groups: each chunk
    starts on a block boundary (WPP·m·groups is a multiple of 16)."""
    words = WORDS_PER_PAIR[dtype] * combine * groups
    if words % 16:  # a chunk starting inside a block would reuse that block's words
        raise RuntimeError(f"chunks of {groups} groups do not start on ChaCha20 block boundaries")
    per_block = words // 16
    for c, o0 in enumerate(range(0, n, 2 * groups)):
        count = min(2 * groups, n - o0)
        yield o0, count, c * per_block, blocks_needed(count, combine, dtype)


def normals_cpu(key: bytes, stream: int, n: int, combine: int, dtype: torch.dtype,
                out: np.ndarray | None = None) -> np.ndarray:
    """``n`` normals of (ChaCha20 ``key``, ``stream``) by the numpy implementation, shape (n,).

    ``key`` is the ChaCha20 key itself (a source passes :func:`subkey` of its own).
    """
    blocks_needed(n, combine, dtype)  # refuse before drawing anything
    dst = np.empty(n, dtype=_SPEC[dtype][0]) if out is None else out
    for o0, count, b0, nb in _chunks(n, combine, dtype, _CPU_GROUPS):
        dst[o0 : o0 + count] = normals_from_words(keystream_cpu(key, stream, b0, nb), count, combine, dtype)
    return dst


def normals_device(key: bytes, stream: int, n: int, combine: int, dtype: torch.dtype,
                   out: torch.Tensor) -> torch.Tensor:
    """The same numbers as :func:`normals_cpu`, computed on ``out``'s device by the Triton kernels
    (the ChaCha20 block function, then the transform); ``out``: contiguous, ``dtype``, ≥ n
    elements. Returns ``out[:n]``. ImportError without Triton."""
    from ._boxmuller_triton import launch
    from ._chacha import device_params, keystream_device

    if out.dtype != dtype or not out.is_contiguous() or out.numel() < n:
        raise ValueError(f"out must be a contiguous {dtype} tensor of at least {n} elements")
    blocks_needed(n, combine, dtype)
    dst = out.view(-1)[:n]
    if n == 0:
        return dst
    # Triton launches on torch's current device and stream: make them out's
    on_device = torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        coef = torch.from_numpy(coefficients(dtype, combine)).to(out.device)
        groups = min(_DEVICE_GROUPS, -(-n // 2))
        words = torch.empty(16 * blocks_needed(2 * groups, combine, dtype), dtype=torch.uint32, device=out.device)
        chunks = list(_chunks(n, combine, dtype, _DEVICE_GROUPS))
        params = device_params(key, stream, [b0 for _, _, b0, _ in chunks], out.device)  # one copy per call
        for c, (o0, count, b0, nb) in enumerate(chunks):
            keystream_device(key, stream, b0, nb, out.device, out=words, params=params[c])
            launch(words, coef, dst[o0 : o0 + count], count, combine, dtype == torch.float64, _LANES)
    return dst
