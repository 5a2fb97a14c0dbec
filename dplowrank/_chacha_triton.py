"""The ChaCha20 block function as a Triton kernel: one 64-byte block per lane.

Imported only by :func:`dplowrank._chacha.keystream_device` (Triton is optional). The state
layout and the CPU reference are in :mod:`dplowrank._chacha`; the rounds follow RFC 8439 §2.1–2.3
(quarter round: add, xor, rotate by 16, 12, 8, 7; 10 column-and-diagonal double rounds; the
input state added to the output). Words are uint32, whose additions wrap mod 2³².
"""

import triton
import triton.language as tl

__all__ = ["chacha20"]


@triton.jit
def rotl(x, n: tl.constexpr):
    return (x << n) | (x >> (32 - n))


@triton.jit
def quarter(a, b, c, d):
    a = a + b
    d = rotl(d ^ a, 16)
    c = c + d
    b = rotl(b ^ c, 12)
    a = a + b
    d = rotl(d ^ a, 8)
    c = c + d
    b = rotl(b ^ c, 7)
    return a, b, c, d


@triton.jit
def chacha20(params, out, nblocks, LANES: tl.constexpr):
    # params (uint32): key words 0–7, first block counter, stream low, stream high
    lane = tl.program_id(0).to(tl.int64) * LANES + tl.arange(0, LANES)  # int64: up to 2³² blocks
    live = lane < nblocks
    zero = tl.zeros((LANES,), dtype=tl.uint32)
    s0 = zero + 0x61707865
    s1 = zero + 0x3320646E
    s2 = zero + 0x79622D32
    s3 = zero + 0x6B206574
    s4 = zero + tl.load(params + 0)
    s5 = zero + tl.load(params + 1)
    s6 = zero + tl.load(params + 2)
    s7 = zero + tl.load(params + 3)
    s8 = zero + tl.load(params + 4)
    s9 = zero + tl.load(params + 5)
    s10 = zero + tl.load(params + 6)
    s11 = zero + tl.load(params + 7)
    s12 = zero + tl.load(params + 8) + lane.to(tl.uint32)  # no carry: checked on the host
    s13 = zero + tl.load(params + 9)
    s14 = zero + tl.load(params + 10)
    s15 = zero
    x0, x1, x2, x3, x4, x5, x6, x7 = s0, s1, s2, s3, s4, s5, s6, s7
    x8, x9, x10, x11, x12, x13, x14, x15 = s8, s9, s10, s11, s12, s13, s14, s15
    for _ in tl.static_range(10):  # 20 rounds: a column round and a diagonal round, 10 times
        x0, x4, x8, x12 = quarter(x0, x4, x8, x12)
        x1, x5, x9, x13 = quarter(x1, x5, x9, x13)
        x2, x6, x10, x14 = quarter(x2, x6, x10, x14)
        x3, x7, x11, x15 = quarter(x3, x7, x11, x15)
        x0, x5, x10, x15 = quarter(x0, x5, x10, x15)
        x1, x6, x11, x12 = quarter(x1, x6, x11, x12)
        x2, x7, x8, x13 = quarter(x2, x7, x8, x13)
        x3, x4, x9, x14 = quarter(x3, x4, x9, x14)
    base = out + lane.to(tl.int64) * 16
    tl.store(base + 0, x0 + s0, mask=live)
    tl.store(base + 1, x1 + s1, mask=live)
    tl.store(base + 2, x2 + s2, mask=live)
    tl.store(base + 3, x3 + s3, mask=live)
    tl.store(base + 4, x4 + s4, mask=live)
    tl.store(base + 5, x5 + s5, mask=live)
    tl.store(base + 6, x6 + s6, mask=live)
    tl.store(base + 7, x7 + s7, mask=live)
    tl.store(base + 8, x8 + s8, mask=live)
    tl.store(base + 9, x9 + s9, mask=live)
    tl.store(base + 10, x10 + s10, mask=live)
    tl.store(base + 11, x11 + s11, mask=live)
    tl.store(base + 12, x12 + s12, mask=live)
    tl.store(base + 13, x13 + s13, mask=live)
    tl.store(base + 14, x14 + s14, mask=live)
    tl.store(base + 15, x15 + s15, mask=live)
