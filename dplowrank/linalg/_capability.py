"""What the CPU is, read once from Linux's ``/proc/cpuinfo``: its vendor and ISA flags.

The solver's configuration on a CPU follows from these, never from a timing (a timing
depends on the machine's load, and a seeded release must not): :mod:`._warm_start` picks
its half-precision type from the flags, and :func:`transposed_product` picks the layout of
the products ``A @ X`` from the vendor, because torch's x86 BLAS (MKL) runs the two
equivalent shapes at different speeds on different vendors' cores.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["cpu_info", "transposed_product"]


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """``(vendor_id, flags)`` of the first CPU listed in ``/proc/cpuinfo``.

    ``("", frozenset())`` where there is no such file (other systems), and an empty field
    for a missing line (other architectures list neither).
    """
    vendor, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.partition(":")[2].strip()
                elif line.startswith("flags"):
                    flags = frozenset(line.partition(":")[2].split())
                    break
    except OSError:
        pass
    return vendor, flags


def transposed_product(device: torch.device, dtype: torch.dtype, width: int) -> bool:
    """Whether ``A @ X`` (A symmetric, shape (d, d); X of shape (d, ``width``)) is formed
    as ``(Xᵀ A)ᵀ``, the same product in the shape the CPU's BLAS runs faster.

    Measured with torch's MKL (``docs/eigensolver.md`` has the tables):

    * Intel (``GenuineIntel``): float32 with ``width >= 32`` transposed (d = 4096, 40
      columns: 5.0 against 5.9 ms on a Xeon with AMX); float64 plainly.
    * AMD (``AuthenticAMD``, e.g. EPYC): float64 transposed, float32 plainly. On a 2-core
      EPYC (AVX-512, no AMX) at d = 4096 the plain float64 product with 40 columns took
      44 ms against 26 ms transposed (80 columns: 85 against 42 ms), and the transposed
      float32 one 18 against 11 ms.

    Other or unknown vendors, complex matrices and other devices: plainly.
    The transposed result is made row-major again (see :func:`._pairs._product`).
    """
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    vendor = cpu_info()[0]
    if vendor == "GenuineIntel":
        return dtype == torch.float32 and width >= 32
    if vendor == "AuthenticAMD":
        return dtype == torch.float64
    return False
