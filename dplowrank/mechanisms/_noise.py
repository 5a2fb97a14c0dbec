"""Symmetric and Hermitian Gaussian noise, drawn block by block and fused with the copy.

The noisy matrix is built in row blocks of ``_BLOCK`` rows. Block r reads the upper part
``src[i0:i1, i0:]`` of the (symmetric) input, adds fresh noise there and mirrors the strip
right of its diagonal block into the column strip below it. So

* only the upper triangle is drawn (d(d+1)/2 normals plus half a diagonal block each),
* the result is exactly symmetric (Hermitian),
* the input is read once and the output written once, with no d×d temporary, and
* ``src`` may be the output itself (in place) or another tensor of any dtype and device.

Each block draws from its own stream, so the noise depends only on the caller's source
and d: numbered keystreams of a :class:`~dplowrank._secure.SecureNormalSource`; for a CPU
torch generator, the keystreams of a source keyed by four words drawn from it
(:func:`_keyed_source`, faster than torch's CPU samplers); for a generator on another
device, child generators seeded from it in block order. A keystream source computes the
draws for a CUDA output on the device (ChaCha20 and the portable Box–Muller of
:mod:`dplowrank._boxmuller`, Triton kernels writing into the block's draw buffer) and for
other outputs on the host. On CPU (and for draws computed on the host, on any device) the
blocks run on a thread pool (the strips written by different blocks never overlap) with
torch at one thread per kernel; torch, numpy and the cipher release the GIL, which roughly
halves the time on 2 cores; on a device that draws for itself they run in order. Each
running block reuses its scratch buffers for the draws (and for a converted copy of its
strip), so that fresh memory is touched only for the output.

Floating point (the rule of DESIGN.md, invariant 6): the private matrix is never rounded
before its noise. Each entry is computed as src + std·z in the *wider* of the input's and the
output's precision (:func:`compute_dtype`: a float64 Gram released in float32 is added to its
noise in float64) and only the noisy sum is rounded to the output dtype, which is
post-processing. The noise is drawn in the output's precision (float32 draws for a float32
release), and every standard deviation is rounded *up* to the precision it is used in
(:func:`std_in`), so the noise is never smaller than the calibrated σ.
"""

from __future__ import annotations

import contextlib
import queue
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._parallel import run_blocks

if TYPE_CHECKING:  # annotations only
    from .._secure import SecureNormalSource

__all__ = ["noisy_symmetric", "noisy_symmetric_rows", "noisy_hermitian", "compute_dtype", "shared_noise_source", "std_in"]

_BLOCK = 512
_SEED_BOUND = 2**62


def _keyed_source(generator: torch.Generator):
    """A CPU torch generator's noise source: an AES-256-CTR keystream (``combine=1``) keyed
    by 4 × 63 random bits drawn from it.

    On the CPU, torch's samplers draw from a Mersenne Twister, one 32-bit word per ~1.8 ns,
    and its float64 normal sampler is scalar code. The keystream (AES-NI) and the secure
    source's vectorised Box–Muller kernel are faster: d = 4096 (8.4 M draws) on 2 cores
    take 14.5 ms against ~17 ms for torch.randn in float32, 38 ms against 71 ms in float64.
    The numbers are a function of the generator's state, as torch's own would be; like
    any torch generator this is a *seeded* source (not for publication)."""
    from .._secure import SecureNormalSource

    words = torch.empty(4, dtype=torch.int64).random_(generator=generator).tolist()
    key = b"".join(int(w).to_bytes(8, "little") for w in words)
    return SecureNormalSource(key, combine=1, _seeded=True)


def shared_noise_source(generator) -> SecureNormalSource:
    """The keystream source :func:`noisy_symmetric` would draw from for ``generator``: the
    source itself, or for a CPU :class:`torch.Generator` the seeded source keyed by four
    words drawn from it (advancing it as the release would). Ranks of a sharded release
    that hold this one source (a copy for a seeded one) draw rows of the same noise.
    ``TypeError`` for generators on other devices, whose child generators cannot be shared."""
    from .._secure import SecureNormalSource

    if isinstance(generator, SecureNormalSource):
        return generator
    if isinstance(generator, torch.Generator) and generator.device.type == "cpu":
        return _keyed_source(generator)
    raise TypeError(
        "a sharded release draws its noise from a keystream: pass None (secure), a SecureNormalSource or a CPU "
        f"torch.Generator, got {type(generator).__name__}"
        + (f" on {generator.device}" if isinstance(generator, torch.Generator) else "")
    )


def _block_generators(generator, d: int, streams: int, algorithm: str | None = None) -> list[list]:
    """Per-block sources: (source, stream number, ``algorithm``) for numbered keystreams of a
    :class:`~dplowrank._secure.SecureNormalSource` (given, or keyed from a CPU torch generator
    by :func:`_keyed_source`; ``algorithm`` None: the source's choice for the device), or child
    torch generators seeded in order from a generator on another device."""
    from .._secure import SecureNormalSource

    nblocks = -(-d // _BLOCK)
    if isinstance(generator, torch.Generator) and generator.device.type == "cpu":
        generator = _keyed_source(generator)
    if isinstance(generator, SecureNormalSource):
        ids = generator.new_streams(nblocks * streams)
        return [[(generator, ids[r * streams + j], algorithm) for j in range(streams)] for r in range(nblocks)]
    seeds = torch.randint(
        0, _SEED_BOUND, (nblocks, streams), generator=generator, device=generator.device
    ).tolist()
    out = []
    for row in seeds:
        gens = []
        for s in row:
            g = torch.Generator(device=generator.device)
            g.manual_seed(int(s))
            gens.append(g)
        out.append(gens)
    return out


def _host_draws(gens: list[list], device: torch.device) -> bool:
    """Whether the blocks' draws (:func:`_block_generators`) for ``device`` are computed on the
    host: a keystream source's, unless it draws on the device itself
    (:meth:`~dplowrank._secure.SecureNormalSource.draws_on_device`)."""
    first = gens[0][0] if gens and gens[0] else None
    return isinstance(first, tuple) and not first[0].draws_on_device(device, first[2])


def _normal(shape: tuple[int, int], source, buf: torch.Tensor) -> torch.Tensor:
    """Standard normals of ``shape`` from a child torch generator or a (secure source, stream),
    in the first elements of ``buf`` (a 1-D scratch Tensor, on the output's device and of its dtype)."""
    n = shape[0] * shape[1]
    dst = buf[:n].view(shape)
    if isinstance(source, tuple):
        secure, stream, algorithm = source
        if buf.dtype in (torch.float32, torch.float64):  # drawn where the source draws for buf's device
            secure.normals(n, stream=stream, dtype=buf.dtype, out=buf, algorithm=algorithm)
            return dst
        z = secure.normals(n, stream=stream, dtype=buf.dtype, device=buf.device, algorithm=algorithm).view(shape)
        return dst.copy_(z)
    return torch.randn(shape, generator=source, dtype=buf.dtype, device=buf.device, out=dst)


class _Scratch:
    """Reusable (``numel``,) buffers, one per block running at the same time: fresh memory
    for every block would cost a page fault per 4 KiB (or 2 MiB) page, every release."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self._spec = (numel, dtype, device)
        self._free: queue.SimpleQueue = queue.SimpleQueue()

    @contextlib.contextmanager
    def take(self):
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            numel, dtype, device = self._spec
            buf = torch.empty(numel, dtype=dtype, device=device)
        try:
            yield buf
        finally:
            self._free.put(buf)


def _as_work(part: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``part`` (shape (b, c)) in ``buf``'s dtype and device: ``part`` itself when it already
    is, else a copy in ``buf``. ``buf`` has the compute dtype (:func:`compute_dtype`), which
    holds every value of ``part`` exactly, so the copy never rounds."""
    if part.dtype == buf.dtype and part.device == buf.device:
        return part
    return buf[: part.numel()].view(part.shape).copy_(part)


def compute_dtype(src: torch.dtype, out: torch.dtype) -> torch.dtype:
    """The real dtype in which src + noise is formed: wide enough for every value of ``src``
    and of the (real) output dtype ``out``, so that nothing private is rounded before the
    noise. float64 for float64 on either side and for non-float input (integers above 2²⁴
    are not float32 numbers); float32 for float32/float16/bfloat16 input with float32 output.
    """
    if src.is_complex:
        raise TypeError(f"the source matrix must be real, got {src}")
    if not src.is_floating_point:
        return torch.float64
    return torch.promote_types(src, out)


def std_in(std: float, dtype: torch.dtype) -> float:
    """``std`` rounded *up* to a number of ``dtype`` (float32 or float64).

    Torch casts a Python scalar to the tensor's dtype with rounding to nearest, which can
    lower a float32 noise scale by half an ulp (a relative 2⁻²⁵): slightly less noise than the
    calibration claims. Rounding up errs on the side of privacy.
    """
    if dtype == torch.float64:
        return float(std)
    if dtype != torch.float32:
        raise ValueError(f"noise is formed in float32 or float64, got {dtype}")
    x = np.float32(std)
    if float(x) < std:
        x = np.nextafter(x, np.float32(np.inf))
    return float(x)


#: Rows per tile of a widened noisy sum (_add_noise): 64 rows of float64 stay in L2 at d = 4096.
_WIDE_ROWS = 64


def _add_noise(dst: torch.Tensor, src: torch.Tensor, g: torch.Tensor, std: float, wide: torch.Tensor | None) -> None:
    """dst = src + std·g, formed in ``src``'s dtype and rounded into ``dst`` (shapes (b, c)).

    When ``src`` is wider than the draws (a float64 Gram released in float32), a mixed-dtype
    ``torch.add`` runs an unvectorised cast loop (4.2 ms for a (512, 3584) strip on one core
    here, against 1.3 ms for the old cast-first path); tiles of :data:`_WIDE_ROWS` rows, each
    widened in ``wide`` (a scratch of the compute dtype, at least _WIDE_ROWS·c elements),
    added and rounded back, take 1.5 ms. ``dst`` may be ``g`` (same positions).
    """
    if wide is None or (src.dtype == g.dtype == dst.dtype):
        torch.add(src, g, alpha=std, out=dst)
        return
    b, c = src.shape
    for r0 in range(0, b, _WIDE_ROWS):
        r1 = min(b, r0 + _WIDE_ROWS)
        t = wide[: (r1 - r0) * c].view(r1 - r0, c)
        t.copy_(g[r0:r1])  # exact: float32 draws in float64
        torch.add(src[r0:r1], t, alpha=std, out=t)  # the noisy sum, in the compute dtype
        dst[r0:r1].copy_(t)  # rounded once, after the noise


_TILE = 256


def _mirror(rest: torch.Tensor, below: torch.Tensor) -> None:
    """``below.copy_(rest.T)`` in square tiles of ``_TILE``: a strided transposed copy of a
    whole (512, d) strip thrashes the cache, and so do (512, 512) tiles; (256, 256) tiles
    take about half the time (2.2 against 4.2 ms for a (512, 3584) float32 strip on one
    core of this project's CPU; 128: 2.5 ms)."""
    b, c = rest.shape
    for j0 in range(0, c, _TILE):
        j1 = min(c, j0 + _TILE)
        for i0 in range(0, b, _TILE):
            i1 = min(b, i0 + _TILE)
            below[j0:j1, i0:i1].copy_(rest[i0:i1, j0:j1].T)


def _check(src: torch.Tensor, out: torch.Tensor) -> int:
    if src.ndim != 2 or src.shape[0] != src.shape[1] or out.shape != src.shape:
        raise ValueError(f"expected square matrices of equal shape, got {tuple(src.shape)} and {tuple(out.shape)}")
    return src.shape[0]


def noisy_symmetric(
    src: torch.Tensor,
    out: torch.Tensor,
    *,
    diag_std: float,
    off_std: float,
    generator: torch.Generator | SecureNormalSource,
) -> torch.Tensor:
    """out = sym(src) + E, E symmetric with E_ii ~ N(0, diag_std²), E_ij = E_ji ~ N(0, off_std²).

    The entries with i ≤ j are independent; sym(src) takes src's upper triangle and
    mirrors it. ``src``, ``out``: Tensors of shape (d, d), ``out`` real; ``out`` may be ``src``.
    Each sum is formed in :func:`compute_dtype` and rounded to ``out``'s dtype afterwards.
    """
    d = _check(src, out)
    gens = _block_generators(generator, d, 1)
    dt, dev = out.dtype, out.device
    work = compute_dtype(src.dtype, dt)
    diag_std, off_std = std_in(diag_std, work), std_in(off_std, work)
    draws = _Scratch(min(_BLOCK, d) * d, dt, dev)
    copies = _Scratch(min(_BLOCK, d) * d, work, dev)
    widened = _Scratch(min(_WIDE_ROWS, d) * d, work, dev) if work != dt else None

    def block(i0: int, gen: list[torch.Generator]) -> None:
        with draws.take() as gbuf, copies.take() as sbuf, \
                (widened.take() if widened is not None else contextlib.nullcontext()) as wbuf:
            fill(i0, gen, gbuf, sbuf, wbuf)

    def fill(i0: int, gen: list[torch.Generator], gbuf: torch.Tensor, sbuf: torch.Tensor, wbuf) -> None:
        i1 = min(d, i0 + _BLOCK)
        b = i1 - i0
        strip = _as_work(src[i0:i1, i0:], sbuf)  # shape: (b, d - i0), compute dtype; may be a view of src
        g = _normal((b, d - i0), gen[0], gbuf)  # shape: (b, d - i0), out's dtype
        # the diagonal block in the compute dtype, rounded once when copied into out
        head = torch.triu(strip[:, :b], diagonal=1).add_(torch.triu(g[:, :b], diagonal=1), alpha=off_std)
        diag = torch.add(strip[:, :b].diagonal(), g[:, :b].diagonal(), alpha=diag_std)
        head = head + head.T
        head.diagonal().copy_(diag)
        out[i0:i1, i0:i1].copy_(head)
        if i1 < d:
            # One pass: out = src + off·g, formed in the compute dtype and rounded into out
            # (when src is out, each entry is read before it is written; nothing else reads
            # this strip).
            rest = out[i0:i1, i1:]  # shape: (b, d - i1)
            _add_noise(rest, strip[:, b:], g[:, b:], off_std, wbuf)
            _mirror(rest, out[i1:, i0:i1])

    run_blocks(block, [(i0, gens[r]) for r, i0 in enumerate(range(0, d, _BLOCK))], dev,
               host_work=_host_draws(gens, dev))
    return out


def noisy_hermitian(
    src: torch.Tensor, out: torch.Tensor, *, scale: float, off_scale: float,
    generator: torch.Generator | SecureNormalSource,
) -> torch.Tensor:
    """out = sym(src) + Z, Z = scale·(W + W*)/2 with W = X + iY, X, Y iid N(0, 1).

    So Z_ii ~ N(0, scale²) real and Re Z_ij, Im Z_ij ~ N(0, off_scale²) independent for
    i < j, with off_scale = scale/√2 rounded up (the GUE shape). ``src``: real Tensor of
    shape (d, d); ``out``: complex, same shape. The real parts are formed in
    :func:`compute_dtype` and rounded to ``out``'s precision afterwards.
    """
    if not out.is_complex() or src.is_complex():
        raise TypeError(f"noisy_hermitian needs real src and complex out, got {src.dtype} and {out.dtype}")
    d = _check(src, out)
    gens = _block_generators(generator, d, 2)
    rdt = torch.float32 if out.dtype == torch.complex64 else torch.float64
    work = compute_dtype(src.dtype, rdt)
    dev = out.device
    diag_std, off = std_in(scale, work), std_in(off_scale, work)
    im_off = std_in(off_scale, rdt)  # the imaginary part is data-free: formed in rdt
    pools = [_Scratch(min(_BLOCK, d) * d, rdt, dev) for _ in range(2)] + [_Scratch(min(_BLOCK, d) * d, work, dev)]
    widened = _Scratch(min(_WIDE_ROWS, d) * d, work, dev) if work != rdt else None

    def block(i0: int, gen: list[torch.Generator]) -> None:
        with pools[0].take() as rbuf, pools[1].take() as ibuf, pools[2].take() as sbuf, \
                (widened.take() if widened is not None else contextlib.nullcontext()) as wbuf:
            fill(i0, gen, rbuf, ibuf, sbuf, wbuf)

    def fill(i0: int, gen: list[torch.Generator], rbuf, ibuf, sbuf, wbuf) -> None:
        i1 = min(d, i0 + _BLOCK)
        b = i1 - i0
        strip = _as_work(src[i0:i1, i0:], sbuf)  # compute dtype
        g_re = _normal((b, d - i0), gen[0], rbuf)
        g_im = _normal((b, d - i0), gen[1], ibuf)
        re = torch.triu(strip[:, :b], diagonal=1).add_(torch.triu(g_re[:, :b], diagonal=1), alpha=off)
        re_diag = torch.add(strip[:, :b].diagonal(), g_re[:, :b].diagonal(), alpha=diag_std)
        re = (re + re.T).to(rdt)  # rounded after the noise
        im = torch.triu(g_im[:, :b], diagonal=1).mul_(im_off)
        head = torch.complex(re, im - im.T)
        head.diagonal().real.copy_(re_diag)
        out[i0:i1, i0:i1].copy_(head)
        if i1 < d:
            # src + off·g formed in the compute dtype, rounded into g_re's buffer (same positions)
            re_rest = g_re[:, b:]
            _add_noise(re_rest, strip[:, b:], g_re[:, b:], off, wbuf)
            rest = torch.complex(re_rest, g_im[:, b:].mul_(im_off))
            out[i0:i1, i1:].copy_(rest)
            out[i1:, i0:i1].copy_(rest.conj().T)

    run_blocks(block, [(i0, gens[r]) for r, i0 in enumerate(range(0, d, _BLOCK))], dev,
               host_work=_host_draws(gens, dev))
    return out


def noisy_symmetric_rows(
    src: torch.Tensor,
    out: torch.Tensor,
    row_start: int,
    *,
    diag_std: float,
    off_std: float,
    generator: torch.Generator | SecureNormalSource,
    algorithm: str | None = None,
) -> torch.Tensor:
    """Rows ``row_start : row_start + b`` of what :func:`noisy_symmetric` makes of the whole matrix.

    For a row-sharded release (:mod:`dplowrank.distributed`): ``src`` holds rows
    ``[row_start, row_start + b)`` of a symmetric (d, d) matrix, shape (b, d), and ``out``
    (same shape, real; may be ``src``) receives the same rows of sym(M) + E as
    :func:`noisy_symmetric` would write for the same generator state: the noise blocks use
    the same numbered streams, so every rank of a job that holds the same source (key and
    stream counter) draws its rows of one symmetric E, and no rank materialises the whole
    matrix. ``row_start`` must be a multiple of 512 (the noise block), and so must ``b``
    unless the rows end at d.

    The entries right of the diagonal block come from the rows' own streams. Those left of
    ``row_start`` belong to the streams of the row blocks above, which are regenerated here
    (the rank drawing the last rows regenerates all the blocks above it: its noise costs as
    much time as the whole matrix's, but no communication). With M exactly symmetric (an
    accumulator's Gram is: its sums are exact) the rows are bit-identical to the
    single-process ones; otherwise they use each rank's own rows where the single-process
    release takes the upper triangle. ``algorithm`` (``"host"`` or ``"portable"``) overrides a
    keystream source's choice for the device. Ranks on different device kinds must pass one
    (:func:`dplowrank.release_rank_k_sharded` does): with engine ``"auto"`` each would draw
    by its own device kind, and an entry and its mirror would get independent noise.
    """
    b, d = src.shape
    if out.shape != src.shape or src.ndim != 2:
        raise ValueError(f"expected src and out of equal shape (b, d), got {tuple(src.shape)} and {tuple(out.shape)}")
    if row_start % _BLOCK or row_start < 0 or row_start + b > d or (b % _BLOCK and row_start + b != d) or b == 0:
        raise ValueError(
            f"rows [{row_start}, {row_start + b}) of a d={d} matrix: the first row and the row count must be "
            f"multiples of {_BLOCK} (the last shard may end at d)"
        )
    r1 = row_start + b
    gens = _block_generators(generator, d, 1, algorithm)  # every rank reserves the same streams
    dt, dev = out.dtype, out.device
    work = compute_dtype(src.dtype, dt)
    diag_std, off_std = std_in(diag_std, work), std_in(off_std, work)
    draws = _Scratch(min(_BLOCK, d) * d, dt, dev)
    # a converted strip: (512, d − i0) for the shard's own blocks, (b, 512) for a block above
    copies = _Scratch(max(min(_BLOCK, d) * d, b * _BLOCK), work, dev)
    widened = _Scratch(min(_WIDE_ROWS, d) * d, work, dev) if work != dt else None
    flipped = _Scratch(_BLOCK * b, dt, dev)  # the draws of a block above, transposed

    def block(i0: int, gen: list) -> None:
        with draws.take() as gbuf, copies.take() as sbuf, \
                (widened.take() if widened is not None else contextlib.nullcontext()) as wbuf:
            if i0 >= row_start:
                own(i0, gen, gbuf, sbuf, wbuf)
            else:
                above(i0, gen, gbuf, sbuf, wbuf)

    def own(i0: int, gen: list, gbuf, sbuf, wbuf) -> None:
        # as noisy_symmetric's fill, with the rows shifted by row_start and the mirror kept
        # to this shard's rows
        i1 = min(d, i0 + _BLOCK)
        w, lo = i1 - i0, i0 - row_start
        strip = _as_work(src[lo : lo + w, i0:], sbuf)  # shape: (w, d - i0)
        g = _normal((w, d - i0), gen[0], gbuf)
        head = torch.triu(strip[:, :w], diagonal=1).add_(torch.triu(g[:, :w], diagonal=1), alpha=off_std)
        diag = torch.add(strip[:, :w].diagonal(), g[:, :w].diagonal(), alpha=diag_std)
        head = head + head.T
        head.diagonal().copy_(diag)
        out[lo : lo + w, i0:i1].copy_(head)
        if i1 < d:
            rest = out[lo : lo + w, i1:]  # shape: (w, d - i1)
            _add_noise(rest, strip[:, w:], g[:, w:], off_std, wbuf)
            if i1 < r1:
                _mirror(rest[:, : r1 - i1], out[lo + w :, i0:i1])

    def above(i0: int, gen: list, gbuf, sbuf, wbuf) -> None:
        # block [i0, i1) of an earlier shard: its noisy entries in columns [row_start, r1) are
        # this shard's entries in columns [i0, i1); the draws are transposed (in cache-sized
        # tiles) and added in this shard's orientation: the same sums, element by element
        i1 = i0 + _BLOCK
        w = i1 - i0
        g = _normal((w, d - i0), gen[0], gbuf)[:, row_start - i0 : r1 - i0]  # shape: (w, b)
        with flipped.take() as tbuf:
            gt = tbuf[: b * w].view(b, w)
            _mirror(g, gt)
            part = _as_work(src[:, i0:i1], sbuf)  # shape: (b, w): M[i0:i1, rows]ᵀ by symmetry
            _add_noise(out[:, i0:i1], part, gt, off_std, wbuf)

    blocks = [(i0, gens[r]) for r, i0 in enumerate(range(0, d, _BLOCK)) if i0 < r1]
    run_blocks(block, blocks, dev, host_work=_host_draws(gens, dev))
    return out
