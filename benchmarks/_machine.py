"""The machine a benchmark table was measured on, and the one timing helper of the benchmarks.

Every table states its machine: CPU model, core count and the ISA features that change which
kernels run (AVX-512, its BF16/FP16 extensions, AMX), torch and its thread count, and the GPU
when there is one. Timings on different machines are different figures.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable

import torch

__all__ = ["best_time", "machine"]

#: The ISA flags reported (Linux /proc/cpuinfo names).
_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8")


def _cpu() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.partition(":")[2].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.partition(":")[2].split())
    except OSError:
        pass
    return model, flags


def machine() -> str:
    """One line: CPU model, cores, ISA features, torch version and threads, GPU."""
    model, flags = _cpu()
    isa = " ".join(f for f in _FEATURES if f in flags) or "none of " + "/".join(_FEATURES)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {model}, {os.cpu_count()} cores, ISA: {isa}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; {gpu}")


def best_time(fn: Callable[[], object], repeats: int, *, warm_up: bool = True) -> tuple[float, object]:
    """Minimum wall time of ``fn()`` over ``repeats`` calls (after one warm-up call when
    ``warm_up`` and repeats > 1), and the last result."""
    out = fn() if warm_up and repeats > 1 else None
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
