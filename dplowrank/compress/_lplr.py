"""LPLR: randomized low-rank factors in low precision, and the baselines it is measured against.

LPLR (Saha, Srivastava & Pilanci, "Matrix compression via randomized low rank and low precision
factorization", NeurIPS 2023, arXiv:2310.11028, Alg. 1) approximates A (n × d) by L·R:

1. sketch Y = A·S with a random S (d × m): Gaussian (entries N(0, 1/m)) or a sparse JL
   embedding (s nonzeros ±1/√s per row of S; Kane & Nelson 2014), optionally after q power
   iterations Y ← A·(Aᵀ·orth(Y)) that sharpen a slowly decaying spectrum (Halko, Martinsson &
   Tropp 2011, Alg. 4.4);
2. L = Q_{B1}(Y): the sketch is quantised *first* (per column: each sketch column its range);
3. W = L⁺·A, the least-squares right factor for the quantised left one, so the right factor
   absorbs (part of) the left factor's quantisation error;
4. R = Q_{B2}(W) (per row).

The baselines of the paper's experiments: DSVD quantises the SVD factors U_k and
Σ_kV_kᵀ directly; LSVD is LPLR with the sketch replaced by the top-k left singular
vectors scaled by their singular values (L = Q(U_kΣ_k), then steps 3–4); NQ quantises A itself.

Storage: m·(n·B1 + d·B2) bits for the codes plus 64 bits per scale group (one per column of L
and per row of R), so each unit of rank costs exactly n·B1 + d·B2 + 128 bits and
:func:`rank_for_budget` picks the largest m within a budget. The factors multiply a vector
(:meth:`LowPrecisionFactors.matmul`) without ever forming A.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._random import resolve_generator
from .._validation import check_choice, check_int, check_positive
from ._quantize import SCALE_BITS, Quantized, quantize

__all__ = ["LowPrecisionFactors", "lplr", "dsvd", "lsvd", "naive_quantize", "rank_for_budget", "SKETCHES"]

SKETCHES = ("gaussian", "sparse")


@dataclass(frozen=True, eq=False)
class LowPrecisionFactors:
    """Â = L·R with both factors stored as :class:`Quantized` codes.

    Attributes
    ----------
    left : Quantized of shape (n, m)
    right : Quantized of shape (m, d)
    method : str
        "lplr", "lsvd" or "dsvd".
    """

    left: Quantized
    right: Quantized
    method: str = "lplr"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @property
    def nbits(self) -> int:
        """Exact storage of both factors in bits (codes and scales)."""
        return self.left.nbits + self.right.nbits

    @property
    def bits_per_entry(self) -> float:
        """Storage per entry of the approximated n × d matrix."""
        n, d = self.shape
        return self.nbits / (n * d)

    def factors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """The dequantised (L of shape (n, m), R of shape (m, d))."""
        return self.left.dequantize(dtype), self.right.dequantize(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Â·x = L·(R·x) for x of shape (d,) or (d, p), without forming Â."""
        left, right = self.factors(x.dtype if x.is_floating_point() else torch.float64)
        return left @ (right @ x.to(left.dtype))

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Â, Tensor of shape (n, d) (for analysis; the point of the factors is not to form it)."""
        left, right = self.factors(dtype)
        return left @ right


def _check_matrix(a: object) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or a.ndim != 2 or a.is_complex() or a.numel() == 0:
        raise ValueError("a must be a non-empty real Tensor of shape (n, d)")
    a = a.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("a has non-finite entries")
    return a


def _check_bits(bits: object) -> tuple[int, int]:
    if isinstance(bits, tuple) and len(bits) == 2:
        return check_int(bits[0], "bits[0]", low=1, high=32), check_int(bits[1], "bits[1]", low=1, high=32)
    b = check_int(bits, "bits", low=1, high=32)
    return b, b


def _sketch(d: int, m: int, kind: str, gen: torch.Generator, sparsity: int) -> torch.Tensor:
    """S of shape (d, m): Gaussian N(0, 1/m), or ``sparsity`` entries ±1/√s per row."""
    if kind == "gaussian":
        return torch.randn(d, m, generator=gen, dtype=torch.float64) / math.sqrt(m)
    s = min(sparsity, m)
    cols = torch.argsort(torch.rand(d, m, generator=gen), dim=1)[:, :s]  # s distinct columns per row
    signs = torch.randint(0, 2, (d, s), generator=gen).to(torch.float64).mul_(2).sub_(1) / math.sqrt(s)
    rows = torch.arange(d).repeat_interleave(s)
    return torch.sparse_coo_tensor(torch.stack([rows, cols.reshape(-1)]), signs.reshape(-1), (d, m),
                                   check_invariants=False).coalesce()


def lplr(a: torch.Tensor, rank: int, *, bits: int | tuple[int, int] = 8, sketch: str = "gaussian",
         power_iters: int = 0, sparsity: int = 8, dither: bool = False,
         generator: torch.Generator | None = None) -> LowPrecisionFactors:
    """LPLR factors of ``a`` with sketch size ``rank`` (arXiv:2310.11028, Alg. 1).

    Parameters
    ----------
    a : Tensor of shape (n, d)
    rank : int
        m, the sketch size and inner dimension (1 ≤ m ≤ min(n, d)).
    bits : int or (int, int), default 8
        (B1, B2): bits per entry of the left and right factor.
    sketch : {"gaussian", "sparse"}, default "gaussian"
    power_iters : int, default 0
        q power iterations before quantising the sketch.
    sparsity : int, default 8
        Nonzeros per row of the sparse sketch.
    dither : bool, default False
        Dithered (unbiased) quantisation of both factors.
    generator : torch.Generator, optional
        CPU source of the sketch and dither (default: seeded from the OS). ``a`` is a public
        weight or a released (noisy) matrix: this randomness is not a privacy mechanism.

    Returns
    -------
    LowPrecisionFactors
    """
    a = _check_matrix(a)
    n, d = a.shape
    m = check_int(rank, "rank", low=1, high=min(n, d))
    b1, b2 = _check_bits(bits)
    check_choice(sketch, "sketch", SKETCHES)
    q = check_int(power_iters, "power_iters", low=0, high=100)
    s = check_int(sparsity, "sparsity", low=1)
    gen, _ = resolve_generator(generator, "cpu")
    sk = _sketch(d, m, sketch, gen, s)
    y = (torch.sparse.mm(sk.T, a.T).T if sketch == "sparse" else a @ sk)  # shape: (n, m)
    for _ in range(q):
        y = a @ (a.T @ torch.linalg.qr(y).Q)
    return _least_squares_factors(a, y, b1, b2, dither, gen, "lplr")


def _least_squares_factors(a, y, b1, b2, dither, gen, method) -> LowPrecisionFactors:
    """L = Q_{B1}(Y) per column, W = L⁺A, R = Q_{B2}(W) per row."""
    left = quantize(y, b1, granularity="column", dither=dither, generator=gen)
    w = torch.linalg.lstsq(left.dequantize(), a, driver="gelsd").solution  # shape: (m, d), minimum norm
    right = quantize(w, b2, granularity="row", dither=dither, generator=gen)
    return LowPrecisionFactors(left, right, method)


def lsvd(a: torch.Tensor, rank: int, *, bits: int | tuple[int, int] = 8, dither: bool = False,
         generator: torch.Generator | None = None) -> LowPrecisionFactors:
    """LPLR with the sketch replaced by U_kΣ_k (the LSVD baseline of arXiv:2310.11028)."""
    a = _check_matrix(a)
    k = check_int(rank, "rank", low=1, high=min(a.shape))
    b1, b2 = _check_bits(bits)
    gen, _ = resolve_generator(generator, "cpu")
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    return _least_squares_factors(a, u[:, :k] * s[:k], b1, b2, dither, gen, "lsvd")


def dsvd(a: torch.Tensor, rank: int, *, bits: int | tuple[int, int] = 8, dither: bool = False,
         generator: torch.Generator | None = None) -> LowPrecisionFactors:
    """Direct SVD quantisation: Q_{B1}(U_k) and Q_{B2}(Σ_kV_kᵀ) (the DSVD baseline, with the singular
    values in the right factor as in the paper's code)."""
    a = _check_matrix(a)
    k = check_int(rank, "rank", low=1, high=min(a.shape))
    b1, b2 = _check_bits(bits)
    gen, _ = resolve_generator(generator, "cpu")
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    left = quantize(u[:, :k], b1, granularity="column", dither=dither, generator=gen)
    right = quantize(s[:k, None] * vh[:k], b2, granularity="row", dither=dither, generator=gen)
    return LowPrecisionFactors(left, right, "dsvd")


def naive_quantize(a: torch.Tensor, bits: int, *, granularity: str = "row", dither: bool = False,
                   generator: torch.Generator | None = None) -> Quantized:
    """NQ: the matrix itself quantised to ``bits`` bits per entry (per row by default)."""
    return quantize(_check_matrix(a), bits, granularity=granularity, dither=dither, generator=generator)


def rank_for_budget(shape: tuple[int, int], bits_per_entry: float, bits: int | tuple[int, int] = 8) -> int:
    """The largest m whose LPLR/DSVD/LSVD factors fit ``bits_per_entry``·n·d bits.

    Each unit of rank stores n·B1 + d·B2 bits of codes and two scale groups (128 bits), so
    m = ⌊bits_per_entry·n·d / (n·B1 + d·B2 + 128)⌋, capped at min(n, d).

    Raises
    ------
    ValueError
        When not even rank 1 fits.
    """
    n, d = (check_int(v, "shape", low=1) for v in shape)
    budget = check_positive(bits_per_entry, "bits_per_entry")
    b1, b2 = _check_bits(bits)
    per_rank = n * b1 + d * b2 + 2 * SCALE_BITS
    m = min(int(budget * n * d // per_rank), n, d)
    if m < 1:
        raise ValueError(f"bits_per_entry={budget:g} cannot hold rank 1 of a {n}x{d} matrix at bits={bits}")
    return m
