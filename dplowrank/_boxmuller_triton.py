"""The portable Box–Muller transform as a Triton kernel: keystream words to hardened normals.

Imported only by :func:`dplowrank._boxmuller.normals_device` (Triton is optional). Every step
mirrors the numpy implementation in :mod:`dplowrank._boxmuller` operation for operation, in
the same order and dtypes: the module docstring there is the definition. Bit-identical
results need IEEE operations only, so the kernel is compiled with ``enable_fp_fusion=False``
(no multiply-add contraction) and, in float32, ``div_rn`` / ``sqrt_rn`` (correctly rounded;
Triton's plain float32 ``/`` and ``sqrt`` may be approximate on a GPU; in float64, which has
no approximate forms there, they are the IEEE operations). Constants are read from a table in the
output's dtype (:func:`dplowrank._boxmuller.coefficients`), never from Python literals whose
dtype Triton would choose.

One lane makes one group's two outputs; a program makes ``LANES`` groups.
"""

import triton
import triton.language as tl

__all__ = ["launch"]


@triton.jit
def _horner(z, coef, first: tl.constexpr, count: tl.constexpr):
    # Σ coef[first + k]·zᵏ, k < count, from the top: one rounding per multiply and per add
    acc = z * 0 + tl.load(coef + first + count - 1)
    for k in tl.static_range(count - 2, -1, -1):
        acc = acc * z
        acc = acc + tl.load(coef + first + k)
    return acc


@triton.jit
def _draws(radius, angle, coef, F64: tl.constexpr, KL: tl.constexpr, KS: tl.constexpr, KC: tl.constexpr):
    # (r·cos θ, r·sin θ) for one pair's radius and angle words (uint32, or uint64 for float64)
    offset = tl.load(coef + 1)
    ln2 = tl.load(coef + 2)
    neg2m = tl.load(coef + 3)
    ascale = tl.load(coef + 4)
    if F64:
        v = ((radius >> 12) | 0x3FF0000000000000).to(tl.float64, bitcast=True)
        u = v - offset
        bits = u.to(tl.uint64, bitcast=True)
        e = (bits >> 52).to(tl.int64) - 1023
        mb = (bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000
        big = mb > 0x3FF6A09E667F3BCD
        mb = mb - (big.to(tl.uint64) << 52)
        e = e + big.to(tl.int64)
        m = mb.to(tl.float64, bitcast=True)
        a = (angle >> 12).to(tl.int64)
        k = (a + (1 << 49)) >> 50
        i = a - (k << 50)
        x = i.to(tl.float64) * ascale
        one = m * 0 + 1.0
    else:
        u = radius.to(tl.float32) * tl.load(coef + 0)
        u = u + offset
        bits = u.to(tl.uint32, bitcast=True)
        e = (bits >> 23).to(tl.int32) - 127
        mb = (bits & 0x7FFFFF) | 0x3F800000
        big = mb > 0x3FB504F3
        mb = mb - (big.to(tl.uint32) << 23)
        e = e + big.to(tl.int32)
        m = mb.to(tl.float32, bitcast=True)
        a = (angle >> 8).to(tl.int32)
        k = (a + (1 << 21)) >> 22
        i = a - (k << 22)
        x = i.to(tl.float32) * ascale
        one = m * 0 + 1.0
    f = m - one
    if F64:  # float64 division and square root are correctly rounded on every target
        s = f / (m + one)
    else:
        s = tl.math.div_rn(f, m + one)
    lnm = s * _horner(s * s, coef, 5, KL + 1)
    lnu = e.to(m.dtype) * ln2
    lnu = lnu + lnm
    r2 = tl.maximum(lnu * neg2m, one * 0)
    if F64:
        r = tl.sqrt(r2)
    else:
        r = tl.math.sqrt_rn(r2)
    z = x * x
    sn = x * _horner(z, coef, 6 + KL, KS + 1)
    cs = _horner(z, coef, 7 + KL + KS, KC + 1)
    q = k & 3
    swap = (q & 1) == 1
    c0 = tl.where(swap, sn, cs)
    s0 = tl.where(swap, cs, sn)
    cos = tl.where((q == 1) | (q == 2), -c0, c0)
    sin = tl.where(q >= 2, -s0, s0)
    return r * cos, r * sin


@triton.jit
def _boxmuller(words, coef, out, n, M: tl.constexpr, F64: tl.constexpr, KL: tl.constexpr, KS: tl.constexpr,
               KC: tl.constexpr, LANES: tl.constexpr):
    g = tl.program_id(0).to(tl.int64) * LANES + tl.arange(0, LANES)
    live = 2 * g < n
    acc_c = tl.zeros((LANES,), dtype=tl.float64 if F64 else tl.float32)
    acc_s = acc_c
    for j in tl.static_range(M):
        p = g * M + j
        if F64:
            w = words + 4 * p
            radius = tl.load(w, mask=live, other=0).to(tl.uint64) | (tl.load(w + 1, mask=live, other=0).to(tl.uint64) << 32)
            angle = tl.load(w + 2, mask=live, other=0).to(tl.uint64) | (tl.load(w + 3, mask=live, other=0).to(tl.uint64) << 32)
        else:
            radius = tl.load(words + 2 * p, mask=live, other=0)
            angle = tl.load(words + 2 * p + 1, mask=live, other=0)
        dc, ds = _draws(radius, angle, coef, F64, KL, KS, KC)
        if j == 0:
            acc_c = dc
            acc_s = ds
        else:
            acc_c = acc_c + dc
            acc_s = acc_s + ds
    tl.store(out + 2 * g, acc_c, mask=live)
    tl.store(out + 2 * g + 1, acc_s, mask=2 * g + 1 < n)


def launch(words, coef, out, n: int, combine: int, f64: bool, lanes: int) -> None:
    """``out[:n]`` (contiguous, float32 or float64) from ``words`` (torch.uint32) and ``coef``
    (:func:`dplowrank._boxmuller.coefficients` on the device)."""
    kl, ks, kc = (10, 8, 8) if f64 else (4, 4, 5)
    groups = (n + 1) // 2
    grid = ((groups + lanes - 1) // lanes,)
    _boxmuller[grid](words, coef, out, n, M=combine, F64=f64, KL=kl, KS=ks, KC=kc, LANES=lanes,
                     enable_fp_fusion=False)
