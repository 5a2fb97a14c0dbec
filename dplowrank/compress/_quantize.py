"""Uniform scalar quantisation with B bits: integer codes packed into bytes, plus scales.

A tensor X is split into scale groups (the whole tensor, each row, or each column). Each group
with smallest entry lo and largest hi is mapped to the 2^B points lo + s·c, c = 0 … 2^B − 1,
s = (hi − lo)/(2^B − 1): the uniform quantiser of LPLR (Saha, Srivastava & Pilanci,
arXiv:2310.11028, §2), with the dynamic range taken per group. Rounding is to the nearest
point, or *dithered* (stochastic rounding c = ⌊t + U⌋, U ~ Uniform[0, 1)), which makes the
quantiser unbiased, E[Q(x)] = x, the property the paper's analysis of LPLR uses.

Storage is real: the codes of all entries are written as one little-endian bit stream of
exactly numel·B bits (``numpy.packbits``), and each group stores its offset lo and step s as
float32 (64 bits). ``Quantized.nbits`` is that exact count. The offsets and steps are rounded
to float32 *before* the codes are computed, so dequantisation reproduces exactly the points the
codes were chosen for.

Why not torchao's packing: torchao 0.18 (the current release) loads C++ extensions built for
one torch version (they fail to load against the torch this project pins), and its bit packing
covers widths 1–7 only; numpy's ``packbits``/``unpackbits`` (C kernels, any width here 1–32)
have neither limit. Int kernels for the product are out of scope: factors are dequantised
once (they are small) and multiplied in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._random import resolve_generator
from .._validation import check_choice, check_int

__all__ = ["Quantized", "quantize", "pack_codes", "unpack_codes", "SCALE_BITS", "GRANULARITIES"]

#: Bits stored per scale group: a float32 offset and a float32 step.
SCALE_BITS = 64
GRANULARITIES = ("tensor", "row", "column")
_MAX_BITS = 32
_CHUNK = 1 << 18  # codes per packing chunk (a multiple of 8: every chunk ends on a byte)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits of each code as one little-endian bit stream.

    Parameters
    ----------
    codes : ndarray of shape (n,), unsigned integers below 2**bits
    bits : int in [1, 32]

    Returns
    -------
    ndarray of shape (ceil(n·bits / 8),), uint8
    """
    bits = check_int(bits, "bits", low=1, high=_MAX_BITS)
    c = np.ascontiguousarray(codes, dtype="<u8").reshape(-1)
    parts = []
    for i in range(0, c.size, _CHUNK):
        planes = np.unpackbits(c[i:i + _CHUNK].view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        parts.append(np.packbits(planes[:, :bits].reshape(-1), bitorder="little"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def unpack_codes(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ndarray of shape (n,), uint64."""
    bits = check_int(bits, "bits", low=1, high=_MAX_BITS)
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size * 8 < n * bits:
        raise ValueError(f"the packed codes hold {packed.size * 8} bits, {n} codes of {bits} bits need {n * bits}")
    out = np.empty(n, dtype="<u8")
    for i in range(0, n, _CHUNK):
        c = min(_CHUNK, n - i)
        byte0 = i * bits // 8  # exact: i is a multiple of 8
        planes = np.unpackbits(packed[byte0:byte0 + (c * bits + 7) // 8], count=c * bits, bitorder="little")
        full = np.zeros((c, 64), dtype=np.uint8)
        full[:, :bits] = planes.reshape(c, bits)
        out[i:i + c] = np.packbits(full, axis=1, bitorder="little").view("<u8").reshape(-1)
    return out


@dataclass(frozen=True, eq=False)
class Quantized:
    """A tensor stored as B-bit integer codes and per-group float32 offsets and steps.

    Attributes
    ----------
    packed : Tensor of shape (ceil(numel·bits / 8),), uint8
        The codes, row-major, as one little-endian bit stream.
    offset, step : Tensor of shape (groups,), float32
        Group g's points are ``offset[g] + step[g]·c``; groups are the whole tensor (1),
        the rows (shape[0]) or the columns (shape[1]).
    shape : tuple of int
        (rows, columns) of the original tensor.
    bits : int
        B, 1 to 32.
    granularity : {"tensor", "row", "column"}

    Examples
    --------
    >>> q = quantize(torch.arange(12.0).reshape(3, 4), 2, granularity="row")
    >>> q.codes().tolist()
    [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    >>> q.nbits  # 12 codes × 2 bits + 3 rows × 64 bits
    216
    """

    packed: torch.Tensor
    offset: torch.Tensor
    step: torch.Tensor
    shape: tuple
    bits: int
    granularity: str

    @property
    def numel(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def nbits(self) -> int:
        """Exact storage in bits: numel·B for the codes plus 64 per scale group."""
        return self.numel * self.bits + SCALE_BITS * int(self.offset.numel())

    @property
    def bits_per_entry(self) -> float:
        return self.nbits / self.numel

    def codes(self) -> torch.Tensor:
        """The integer codes, Tensor of shape ``shape``, int64 (every value below 2^B)."""
        c = unpack_codes(self.packed.cpu().numpy(), self.numel, self.bits)
        return torch.from_numpy(c.astype(np.int64)).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """offset + step·code, Tensor of shape ``shape`` (computed in float64, then cast)."""
        c = self.codes().to(torch.float64)
        off, st = _broadcast(self.offset, self.granularity), _broadcast(self.step, self.granularity)
        out = off.to(torch.float64) + st.to(torch.float64) * c
        return out.to(dtype=dtype, device=device if device is not None else self.packed.device)


def _broadcast(v: torch.Tensor, granularity: str) -> torch.Tensor:
    if granularity == "row":
        return v.cpu()[:, None]
    if granularity == "column":
        return v.cpu()[None, :]
    return v.cpu().reshape(1, 1)


def quantize(x: torch.Tensor, bits: int, *, granularity: str = "tensor", dither: bool = False,
             generator: torch.Generator | None = None, hessian: torch.Tensor | None = None) -> Quantized:
    """Quantise a matrix to ``bits`` bits per entry with a uniform quantiser per scale group.

    Parameters
    ----------
    x : Tensor of shape (rows, columns)
        Finite real entries (any float dtype; quantised from float64).
    bits : int in [1, 32]
    granularity : {"tensor", "row", "column"}, default "tensor"
        One dynamic range for the whole tensor, one per row, or one per column.
    dither : bool, default False
        Stochastic rounding (unbiased) instead of rounding to the nearest point.
    generator : torch.Generator, optional
        CPU source of the dither (default: seeded from the OS). Quantising public weights or
        released factors is post-processing: the dither is not a privacy mechanism.
    hessian : Tensor of shape (columns, columns), optional
        Second moment H = E[a aᵀ] of the inputs a the matrix multiplies (``x @ a``), e.g. an
        activation Gram: rounding is then *activation-aware* (GPTQ, Frantar et al.,
        arXiv:2210.17323, Algorithm 1 without blocking). Columns are rounded one after the
        other and each column's rounding error is spread over the columns not yet rounded
        through the Cholesky factor of H⁻¹, which minimises the output error
        E‖(Q(x) − x)·a‖² column by column instead of ‖Q(x) − x‖. H is damped by 1% of its
        mean diagonal. The scale groups (and so the codes' range and the bit count) are those
        of plain rounding. Not with ``dither``. A released (noisy) Gram may be used: rounding
        is post-processing.

    Returns
    -------
    Quantized
    """
    bits = check_int(bits, "bits", low=1, high=_MAX_BITS)
    check_choice(granularity, "granularity", GRANULARITIES)
    if not isinstance(dither, bool):
        raise TypeError(f"dither must be a bool, got {dither!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.is_complex() or x.numel() == 0:
        raise ValueError("x must be a non-empty real Tensor of shape (rows, columns)")
    a = x.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("x has non-finite entries")
    if granularity == "row":
        lo, hi = a.amin(dim=1), a.amax(dim=1)
    elif granularity == "column":
        lo, hi = a.amin(dim=0), a.amax(dim=0)
    else:
        lo, hi = a.min().reshape(1), a.max().reshape(1)
    levels = float(2**bits - 1)
    # offsets and steps are rounded to float32 first: the codes are chosen for the stored points
    off = lo.to(torch.float32)
    step = ((hi - off.to(torch.float64)) / levels).to(torch.float32)
    step = torch.where(step > 0, step, torch.ones_like(step))  # a constant group: every code 0
    if hessian is not None:
        if dither:
            raise ValueError("hessian (activation-aware rounding) and dither exclude each other")
        codes = _gptq_codes(a, _check_hessian(hessian, a.shape[1]), _broadcast(off, granularity).double(),
                            _broadcast(step, granularity).double(), levels)
        packed = torch.from_numpy(pack_codes(codes.reshape(-1), bits))
        return Quantized(packed, off, step, (int(a.shape[0]), int(a.shape[1])), bits, granularity)
    t = (a - _broadcast(off, granularity).double()) / _broadcast(step, granularity).double()
    if dither:
        gen, _ = resolve_generator(generator, "cpu")
        t = torch.floor(t + torch.rand(t.shape, generator=gen, dtype=torch.float64))
    else:
        t = torch.round(t)
    codes = t.clamp_(0.0, levels).to(torch.int64).numpy().astype(np.uint64)
    packed = torch.from_numpy(pack_codes(codes.reshape(-1), bits))
    return Quantized(packed, off, step, (int(a.shape[0]), int(a.shape[1])), bits, granularity)


#: GPTQ's damping: 1% of the mean diagonal of H is added to its diagonal.
_DAMP = 0.01


def _check_hessian(h: object, n: int) -> torch.Tensor:
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or tuple(h.shape) != (n, n) or h.is_complex():
        raise ValueError(f"hessian must be a real Tensor of shape ({n}, {n}) (the columns of x)")
    h = h.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("hessian has non-finite entries")
    return (h + h.T) / 2


def _gptq_codes(a: torch.Tensor, h: torch.Tensor, off: torch.Tensor, step: torch.Tensor, levels: float) -> np.ndarray:
    """Codes of ``a`` (rows × n) rounded column by column with GPTQ's error feedback."""
    n = a.shape[1]
    dead = torch.diagonal(h) <= 0  # inputs that never vary: their weights do not matter
    h = h.clone()
    h[dead, dead] = 1.0
    damp = _DAMP * float(torch.diagonal(h).mean())
    h.diagonal().add_(damp if damp > 0 else 1.0)
    u = None
    for extra in (0.0, 1e-6, 1e-3, 1e-1, 1.0):  # a noisy Gram can be indefinite: damp more
        hh = h + extra * float(torch.diagonal(h).mean()) * torch.eye(n, dtype=h.dtype)
        chol, info = torch.linalg.cholesky_ex(hh)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                break
            u = None
    if u is None:
        raise ValueError("hessian is not positive definite even after damping")
    w = a.clone()
    codes = torch.empty_like(a)
    off = off.expand(a.shape[0], n) if off.shape[1] == n else off.expand(a.shape[0], 1)
    step = step.expand(a.shape[0], n) if step.shape[1] == n else step.expand(a.shape[0], 1)
    for j in range(n):
        o, s = off[:, j if off.shape[1] > 1 else 0], step[:, j if step.shape[1] > 1 else 0]
        c = torch.round((w[:, j] - o) / s).clamp_(0.0, levels)
        codes[:, j] = c
        err = (w[:, j] - (o + s * c)) / u[j, j]
        if j + 1 < n:
            w[:, j + 1:].addr_(err, u[j, j + 1:], alpha=-1.0)
    return codes.to(torch.int64).numpy().astype(np.uint64)
