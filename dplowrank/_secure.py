"""Cryptographically secure Gaussian noise: a ChaCha20 keystream turned into normals.

Why: torch's generators (Mersenne Twister on CPU, Philox on CUDA) are fast and good for
statistics but not cryptographic: their state can be recovered from enough outputs, and a
64-bit seed is a small secret. A release that will be published draws its noise here.

How (per block of noise, so blocks can run in parallel and reproducibly):

1. ChaCha20 (RFC 8439, through the ``cryptography`` package) with a 256-bit key from
   ``os.urandom`` and the block's stream number as nonce produces the keystream.
2. Each 64-bit word gives a uniform on the 2⁻⁵² grid of [0, 1) (float32 output: each 32-bit
   word one on the 2⁻²³ grid, and the arithmetic below in float32).
3. Box–Muller turns uniform pairs into standard normals (r = √(−2 ln(1 − u₁)), θ = 2πu₂).
4. Hardening against floating-point attacks on the sampler (Holohan & Braghin 2021,
   "Secure Random Sampling in Differential Privacy", arXiv:2107.10138): every released
   normal is the normalised sum (Z₁ + … + Z_m)/√m of ``combine`` = m independent draws, which
   is exactly standard normal in distribution and smears the lattice structure that a single
   floating-point Box–Muller draw leaves in its low-order bits.

A *seeded* source (:meth:`SecureNormalSource.from_seed`) derives the key from a seed: it is
reproducible, and releases made with it are marked not for publication.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading

import numpy as np
import torch

__all__ = ["SecureNormalSource"]

_TWO_PI = 2.0 * math.pi


class SecureNormalSource:
    """Standard normal draws from a ChaCha20 keystream, in independent numbered streams.

    Parameters
    ----------
    key : bytes, optional
        32-byte ChaCha20 key; default ``os.urandom(32)``.
    combine : int, default 2
        m: each output is (Z₁ + … + Z_m)/√m (Holohan & Braghin 2021).

    Attributes
    ----------
    seeded : bool
        True when the key came from :meth:`from_seed` (reproducible, not for publication).
    """

    def __init__(self, key: bytes | None = None, *, combine: int = 2, _seeded: bool = False) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ImportError("secure noise needs the 'cryptography' package") from exc
        if key is None:
            key = os.urandom(32)
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ValueError(f"key must be 32 bytes, got {type(key).__name__} of length {len(key) if hasattr(key, '__len__') else '?'}")
        if isinstance(combine, bool) or not isinstance(combine, int) or combine < 1:
            raise ValueError(f"combine must be a positive integer, got {combine!r}")
        self._key = bytes(key)
        self.combine = combine
        self.seeded = bool(_seeded)
        self._next = 0
        self._lock = threading.Lock()

    @classmethod
    def from_seed(cls, seed: int | bytes | str, *, combine: int = 2) -> "SecureNormalSource":
        """A reproducible source whose key is SHA-256(seed): for tests and debugging only."""
        material = seed if isinstance(seed, bytes) else str(seed).encode()
        return cls(hashlib.sha256(b"dplowrank-seeded-noise" + material).digest(), combine=combine, _seeded=True)

    def new_streams(self, count: int) -> list[int]:
        """Reserve ``count`` fresh stream numbers (thread-safe; never reused by this source)."""
        with self._lock:
            start = self._next
            self._next += count
        return list(range(start, start + count))

    def _uniforms(self, stream: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        """``n`` uniforms on the grid {1 + j·2⁻ᵖ} ⊂ [1, 2) from the keystream of ``stream``.

        float64: 64-bit words, p = 52; float32: 32-bit words, p = 23 (all mantissa bits random).
        """
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        single = dtype == torch.float32
        width = 4 if single else 8
        # cryptography's ChaCha20 nonce: 4-byte little-endian block counter, then 12-byte nonce
        nonce = (0).to_bytes(4, "little") + int(stream).to_bytes(12, "little")
        enc = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        buf = bytearray(width * n + 64)  # update_into wants room for one more block
        written = enc.update_into(bytes(width * n), buf)
        if single:
            words = np.frombuffer(buf, dtype="<u4", count=written // 4)
            np.right_shift(words, np.uint32(9), out=words)
            np.bitwise_or(words, np.uint32(0x3F800000), out=words)
            return torch.from_numpy(words.view(np.float32))
        words = np.frombuffer(buf, dtype="<u8", count=written // 8)
        # keep 52 random bits as the mantissa under exponent 0 (all in place)
        np.right_shift(words, np.uint64(12), out=words)
        np.bitwise_or(words, np.uint64(0x3FF0000000000000), out=words)
        return torch.from_numpy(words.view(np.float64))

    def normals(self, n: int, *, stream: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` standard normals from stream number ``stream``, Tensor of shape (n,) on the CPU.

        The same (key, stream, n, combine, dtype) always gives the same numbers; distinct streams are
        independent keystreams. With m = ``combine``, n·m Box–Muller normals are drawn and
        output i sums draws from m *different* Box–Muller pairs (never the cosine and sine of
        one pair, whose sum would be a single rotated Box–Muller draw and smooth nothing).
        """
        m = self.combine
        pairs = (n * m + 1) // 2
        # float32 output is computed in float32 from 23-bit uniforms; anything else in float64
        work = torch.float32 if dtype == torch.float32 else torch.float64
        v = self._uniforms(stream, 2 * pairs, work)
        v1, theta = v[:pairs], v[pairs:]
        r = v1.neg_().add_(2.0).log_().mul_(-2.0).sqrt_()  # 2 − v₁ ∈ (0, 1]: no log(0)
        theta.sub_(1.0).mul_(_TWO_PI)
        cos = torch.cos(theta).mul_(r)  # shape: (pairs,), independent N(0, 1)
        sin = theta.sin_().mul_(r)  # shape: (pairs,), independent of cos and of each other
        if m == 1:
            z = torch.cat([cos, sin])[:n]
        elif m == 2:
            # output i = (cos of pair i + sin of pair i − 1)/√2: two different pairs
            z = cos[:n]
            z[1:].add_(sin[: n - 1])
            z[0].add_(sin[n - 1])
            z.mul_(1.0 / math.sqrt(2.0))
        else:
            draws = torch.cat([cos, sin])[: n * m].view(m, n)
            z = draws[0].clone()
            for j in range(1, m):
                z.add_(torch.roll(draws[j], shifts=j))  # row j's draw i comes from another pair
            z.mul_(1.0 / math.sqrt(m))
        return z.to(dtype)

    def __repr__(self) -> str:
        return f"SecureNormalSource(combine={self.combine}, seeded={self.seeded})"
