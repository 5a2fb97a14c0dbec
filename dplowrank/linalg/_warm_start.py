"""Half-precision warm start of the Krylov solver: which half type, the copy, the iteration.

:func:`_half_capability` decides from the device's capabilities (never from a timing) which
half-precision type a warm start uses and whether it runs by default; :func:`_to_low` makes
the float16 / bfloat16 copy of A; :func:`_warm_start_block` runs block subspace iteration
with that copy and returns the block the Krylov solve starts from.

Device rule (cached per device type):

* CUDA: float16; on by default from compute capability 7.0 (tensor cores).
* CPU: the ISA flags (Linux ``/proc/cpuinfo``; elsewhere none are assumed). ``amx_fp16``:
  float16, on by default. ``amx_bf16`` or ``avx512_bf16``: bfloat16, on by default.
  Otherwise off by default, and an explicit ``warm_start=True`` uses float16 with
  ``avx512_fp16``, else bfloat16. AMX tiles make half-precision products several times
  faster than float32 ones, and AVX512-BF16 about twice (``docs/eigensolver.md`` has the
  measurements: the warm start halves a float64 solve at d = 4096 on such a CPU).
* Any other device: bfloat16, off by default.

Where the default is on, an explicit ``warm_start=True`` uses the same type. The type that
ran is recorded in :attr:`EighResult.warm_start <dplowrank.linalg.EighResult>`.
"""

from __future__ import annotations

import math

import torch

from .. import _memory
from .._memory import InsufficientMemoryError, empty
from ._basis import _cholqr, _householder
from ._capability import cpu_info
from ._checks import _largest_entry

#: Half-precision warm start: by default only for real matrices with
#: ``d >= WARM_START_MIN_D`` (below it the copy costs about what it saves).
WARM_START_MIN_D = 2048
#: It runs ``_WARM_MIN_STEPS`` to ``_WARM_MAX_STEPS`` subspace steps, ending when a step
#: shrinks the residual by less than ``_WARM_SLOW`` (see :func:`_warm_start_block`).
_WARM_MIN_STEPS = 4
_WARM_MAX_STEPS = 16
_WARM_SLOW = 0.6
#: The caller stops it at this multiple of its own absolute target.
_WARM_TARGET = 3.0

#: Cache of :func:`_half_capability` by device type: (half dtype, on by default).
_CAPABILITY: dict[str, tuple[torch.dtype, bool]] = {}


def _cpu_flags() -> frozenset[str]:
    """The CPU's ISA flags (:func:`._capability.cpu_info`); empty where none are known."""
    return cpu_info()[1]


def _half_capability(device: torch.device) -> tuple[torch.dtype, bool]:
    """The half-precision type of a warm start on ``device``, and whether it runs by default.

    Decided from the device's capabilities, once per device type (see the module
    docstring): the solver path never depends on the machine's load.
    """
    key = device.type
    if key not in _CAPABILITY:
        if key == "cuda":
            fast = torch.cuda.get_device_capability(device) >= (7, 0)
            _CAPABILITY[key] = (torch.float16, fast)
        elif key == "cpu":
            flags = _cpu_flags()
            if "amx_fp16" in flags:
                _CAPABILITY[key] = (torch.float16, True)
            elif "amx_bf16" in flags or "avx512_bf16" in flags:
                _CAPABILITY[key] = (torch.bfloat16, True)
            elif "avx512_fp16" in flags:
                _CAPABILITY[key] = (torch.float16, False)
            else:
                _CAPABILITY[key] = (torch.bfloat16, False)
        else:
            _CAPABILITY[key] = (torch.bfloat16, False)
    return _CAPABILITY[key]


def _warm_start_dtype(A: torch.Tensor, option: bool | None) -> torch.dtype | None:
    """The half type of the warm start for ``A`` (shape (d, d)), or ``None`` for none.

    ``option`` is ``topk_eigh``'s ``warm_start``: ``False`` never, ``True`` always (real
    A), ``None`` for real A with ``d >= WARM_START_MIN_D`` where the device's half type is
    fast. Complex A never gets one.
    """
    if option is False or A.is_complex():
        return None
    half, fast = _half_capability(A.device)
    if option is None and not (fast and A.shape[0] >= WARM_START_MIN_D):
        return None
    return half


def _to_low(A: torch.Tensor, dtype: torch.dtype, extra: int = 0) -> tuple[torch.Tensor, float] | None:
    """A half-precision copy of A (shape (d, d)) and the power of two it was divided by.

    The copy is the left (d, d) part of a buffer of shape (d, d + ``extra``) (the warm
    start keeps its current block in the extra columns). A matrix whose largest entry
    (estimated from the diagonal and every 64th row) lies in a range where the warm start's
    arithmetic is safe is copied as it is (scale 1): for float16, which overflows past 65504
    and loses precision below 6e-5, [1/4, 2¹⁴]; for bfloat16 (float32's range), [2⁻⁴⁰, 2⁴⁰],
    where the float32 block arithmetic's squares (residual norms) neither underflow nor
    overflow. Any other is divided by 2^e ≈ 4× that entry (exact: a power of two changes no
    significand). Only an entry far larger than all those sampled would overflow (2¹⁸ times
    for float16); the caller then sees non-finite products and starts from a random block
    instead. ``None``: A is zero, not finite, or beyond 2^±1000 (its products would
    overflow or underflow in A's own dtype).
    """
    d = A.shape[0]
    top = _largest_entry(A)
    if not (2.0**-1000 < top < 2.0**1000):  # zero, non-finite, or at the ends of float64
        return None
    lo, hi = (0.25, 2.0**14) if dtype == torch.float16 else (2.0**-40, 2.0**40)
    buf = empty((d, d + extra), dtype=dtype, device=A.device)
    low = buf[:, :d]
    # Some half-precision kernels read a strided view's padding columns (multiplying them by
    # zero): NaN there, left over in recycled memory, would leak into ``low @ X``. They are
    # zeroed after the copy has touched the fresh pages row by row (zeroing the strided
    # padding first faults every page from a narrow column: 36 against 0.2 ms at d = 4096).
    if lo <= top <= hi:
        # already in range: one converting copy, no scaling pass
        low.copy_(A)
        buf[:, d:].zero_()
        return buf, 1.0
    e = math.ceil(math.log2(top)) + 2
    scale = math.ldexp(1.0, e)
    step = 64  # rows per chunk: the intermediate (in A's dtype) stays small and cache-sized
    tmp = torch.empty((min(step, d), d), dtype=A.dtype, device=A.device)
    for i0 in range(0, d, step):
        i1 = min(d, i0 + step)
        torch.mul(A[i0:i1], math.ldexp(1.0, -e), out=tmp[: i1 - i0])
        low[i0:i1].copy_(tmp[: i1 - i0])
    buf[:, d:].zero_()
    return buf, scale


def _warm_start_block(
    A: torch.Tensor,
    block: int,
    gen: torch.Generator,
    k: int | None = None,
    target: float | None = None,
    *,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, int]:
    """An orthonormal (d, block) starting block for the Krylov solver, and its products.

    Block subspace iteration X ← orth(A X) with a half-precision copy Â of A (``dtype``:
    float16 or bfloat16, see :func:`_half_capability`), from a random block, for
    ``_WARM_MIN_STEPS`` to ``_WARM_MAX_STEPS`` steps: it stops once a step shrinks the
    largest residual of the top ``k`` (default ``block``) Ritz pairs of span(X) with Â by
    less than a factor ``_WARM_SLOW`` near the floor that half-precision rounding sets
    (within 2⁻⁷ of the largest Ritz value), or two steps in a row do (converging too
    slowly to be worth more half-precision steps), or that residual, extrapolated one step
    at the last step's rate, is at most ``target`` (absolute; the caller passes
    ``_WARM_TARGET`` times its own target: the Krylov solve's first steps gain more than
    that when the start got there quickly).

    Half-precision products round their *output* (2⁻¹¹ of ‖Â X‖ ≈ λ₁ in float16, ~0.15·σ
    on the benchmark's noisy spiked matrix); each step therefore forms only the small
    residual in half precision (:func:`_half_step`), leaving the rounding of A's entries
    (~0.02·σ there: the float32 Krylov solve then needs 2 steps to 0.01·σ instead of 3).

    The block is only a *start*: the Krylov solve that follows works with A itself and
    its stopping rule checks every returned pair with fresh products, so nothing here
    changes the accuracy of the result, only how soon it is reached.
    Returns ``(None, 0)`` when the copy does not fit in memory, A is zero or not finite,
    or the products are not finite (the caller then starts from a random block).
    """
    d = A.shape[0]
    k = block if k is None else k
    target = 0.0 if target is None else target
    try:
        what = f"a {str(dtype)[6:]} copy of the matrix (warm start)"
        _memory.check_allocation(2 * d * (d + block), A.device, what)
        made = _to_low(A, dtype, extra=block)
    except (InsufficientMemoryError, RuntimeError):
        return None, 0
    if made is None:
        return None, 0
    aug, scale = made  # aug, shape: (d, d + block): [Â | current block]
    # The block's own arithmetic runs in float32 whatever A's dtype: its rounding (2⁻²⁴) is
    # far below the half-precision copy's (2⁻⁸ or 2⁻¹¹), and float64 would double the cost
    # of every small product and conversion (~10 ms of a float64 solve at d = 4096).
    work = torch.float32
    rhs = torch.empty((d + block, block), dtype=dtype, device=A.device)  # [X; −S] in half precision
    Xw = torch.empty((d, block), dtype=work, device=A.device)  # the block multiplied
    X = torch.randn((d, block), generator=gen, dtype=work, device=A.device)
    shift: torch.Tensor | None = None  # S: the predicted Rayleigh quotient of X (CPU)
    prev = math.inf
    slow_before = False
    steps = 0
    while steps < _WARM_MAX_STEPS:
        steps += 1
        step = _half_step(aug, rhs, Xw, X, shift)
        if step is None:
            return None, 0  # the copy overflowed where the scale did not look
        X, shift, Y, T = step
        if steps + 1 < _WARM_MIN_STEPS:
            continue
        # the residuals of the top-k Ritz pairs of span(X_old): ‖(Â X − X T) yᵢ‖ (T's
        # eigenvectors yᵢ; the columns beyond k may converge slowly and do not count)
        Tc = T.to("cpu", torch.float64)
        theta, Yk = torch.linalg.eigh(0.5 * (Tc + Tc.mT))
        Yk = Yk[:, -k:].to(A.device, work)
        res = float(torch.linalg.vector_norm(torch.addmm(Y, Xw, T, alpha=-1.0) @ Yk, dim=0).max())
        if res == 0.0 or prev == 0.0:
            break  # an invariant block (to the copy's precision): nothing left to gain
        rate = res / prev
        slow = rate >= _WARM_SLOW
        # Early steps may raise the residual (the Ritz pairs reorder): a slow step counts
        # as a stall only near the half-precision floor (the block is rounded to half
        # precision before each product, so the residual of the block multiplied does
        # not go far below 2⁻¹¹·|θ₁|) or when it is the second slow step in a row.
        floor = 2.0**-7 * float(theta.abs().max())
        stalled = slow and (res <= floor or slow_before)
        slow_before = slow
        # the new block's residual, predicted from this step's rate, is what the target
        # is held against (res is that of the block this step multiplied)
        if steps >= _WARM_MIN_STEPS and (stalled or res * min(rate, 1.0) * scale <= target):
            break
        prev = res
    return X.to(A.dtype), steps * block


def _half_step(
    aug: torch.Tensor,
    rhs: torch.Tensor,
    Xw: torch.Tensor,
    X: torch.Tensor,
    shift: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor] | None:
    """One subspace step X ← orth(Â X) with the half-precision copy; ``None`` on overflow.

    ``aug``: the buffer [Â | ·] of shape (d, d + b); ``rhs`` (shape (d + b, b), half) and
    ``Xw`` (shape (d, b), float32) are work buffers; ``X``: the current block, shape
    (d, b); ``shift``: S of shape (b, b) on the CPU, or ``None``. torch's CPU
    float16/bfloat16 matmul returns half precision, rounding Â X to 2⁻¹¹ of its norm.
    With a usable S the product is instead [Â | X]·[X; −S] = Â X − X S: it accumulates in
    float32 and rounds only that residual, small once X is close to invariant, and Â X is
    completed as residual + X S in float32. S = R T R⁻¹
    predicts X's Rayleigh quotient from the previous step's Cholesky factor R
    (A X_old = X R) and T = X_oldᵀ Â X_old, exact when span(X_old) is invariant.

    Returns ``(X_new, S_new, Y, T)``: the orthonormalised block, the next shift (``None``
    after a Householder fallback), Y ≈ Â X (float32, shape (d, b)) and T = Xᵀ Y (shape
    (b, b)). ``Xw`` then holds X rounded to half precision, the block multiplied.
    """
    d = aug.shape[0]
    dtype, low = rhs.dtype, aug[:, :d]
    big = torch.finfo(dtype).max / 16
    rhs[:d].copy_(X)
    Xw.copy_(rhs[:d])
    use_shift = shift is not None and bool(torch.isfinite(shift).all()) and float(shift.abs().max()) < big
    for _ in range(2):
        if use_shift:
            assert shift is not None
            rhs[d:].copy_(shift.neg())
            aug[:, d:].copy_(rhs[:d])
            # Â X − X S (the product accumulates in float32 and rounds only this), + X S
            Y = torch.addmm((aug @ rhs).to(X.dtype), Xw, rhs[d:].to(X.dtype), alpha=-1.0)
        else:
            Y = (low @ rhs[:d]).to(X.dtype)
        out = _cholqr(Y, passes=1)  # a tall Householder QR is ~10× slower on the CPU
        if out is not None or bool(torch.isfinite(Y).all()):
            break
        if not use_shift:
            return None
        use_shift = False  # the predicted shift overflowed: the plain product once more
    T = Xw.mT @ Y  # shape (b, b): ≈ Xᵀ Â X
    if out is None:
        return _householder(Y)[0], None, Y, T
    Xn, R = out
    # S = R T R⁻¹: R⁻¹ applied from the right as a triangular solve on (b, b)
    RT = R @ T.to("cpu", R.dtype)
    return Xn, torch.linalg.solve_triangular(R, RT, upper=True, left=False), Y, T
