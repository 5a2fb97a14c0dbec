"""ChaCha20 keystreams (RFC 8439) on the CPU and, through Triton, on a device.

The device half of issue 19's secure noise: a keystream computed where the noise is needed,
the same bits as the CPU reference for the same key, stream and block counter. The portable
algorithm of :mod:`dplowrank._boxmuller` draws its words from here.

Layout of the 16-word ChaCha20 state (RFC 8439 §2.3; all words little-endian uint32):

====== =========================================================
words  content
====== =========================================================
0–3    the constants "expand 32-byte k"
4–11   the 256-bit key
12     the block counter within a stream (32 bits: 2³² blocks of 64 bytes, 256 GiB)
13–14  the stream number (64 bits, low word first)
15     zero (reserved)
====== =========================================================

Words 13–15 are RFC 8439's 96-bit nonce, so a (key, stream) pair is an RFC 8439 (key, nonce)
pair and the CPU reference is the ``cryptography`` package's ChaCha20 with the 16-byte
``nonce`` argument (counter ‖ nonce). Block ``i`` of a stream is 16 keystream words; a run of
blocks is returned as their words in order, shape (16·n,).

The device kernel (:func:`keystream_device`) needs Triton (bundled with CUDA builds of torch);
``TRITON_INTERPRET=1`` runs it on the CPU with numpy, which is how the tests check it where no
GPU is present.
"""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import torch

__all__ = ["MAX_BLOCKS", "device_params", "keystream_cpu", "keystream_device"]

#: Blocks in one stream: the counter is one 32-bit word.
MAX_BLOCKS = 2**32
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
#: ChaCha20 blocks computed by one program of the device kernel (one block per lane).
_LANES = 256


def _check(key: bytes, stream: int, first_block: int, nblocks: int) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise ValueError("key must be 32 bytes")
    if isinstance(stream, bool) or not isinstance(stream, int) or not 0 <= stream < 2**64:
        raise ValueError("stream must be an integer in [0, 2**64)")
    for name, v in (("first_block", first_block), ("nblocks", nblocks)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer")
    if first_block + nblocks > MAX_BLOCKS:
        raise ValueError(f"a stream holds {MAX_BLOCKS} blocks: first_block + nblocks exceeds it")


def keystream_cpu(key: bytes, stream: int, first_block: int, nblocks: int) -> np.ndarray:
    """Keystream words of blocks ``first_block … first_block + nblocks − 1`` of ``stream``.

    The reference: the ``cryptography`` package's ChaCha20 (OpenSSL) applied to zeros.
    Returns a uint32 array of shape (16·nblocks,).
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    _check(key, stream, first_block, nblocks)
    nonce = struct.pack("<IQI", first_block, stream, 0)  # counter ‖ (stream, reserved)
    enc = Cipher(algorithms.ChaCha20(bytes(key), nonce), mode=None).encryptor()
    raw = enc.update(bytes(64 * nblocks))
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


def _kernel():
    """The Triton kernel (:mod:`dplowrank._chacha_triton`); ImportError without Triton."""
    from ._chacha_triton import chacha20

    return chacha20


def device_params(key: bytes, stream: int, first_blocks: list[int], device: torch.device | str) -> torch.Tensor:
    """The kernel's parameters for runs of ``stream`` starting at each of ``first_blocks``:
    a torch.uint32 Tensor of shape (len(first_blocks), 11) on ``device`` (key words 0–7, first
    block counter, stream low and high words), made in one host-to-device copy."""
    for first in first_blocks:
        _check(key, stream, first, 0)
    head = struct.unpack("<8I", bytes(key))
    rows = [head + (first, stream & 0xFFFFFFFF, stream >> 32) for first in first_blocks]
    table = np.array(rows, dtype=np.uint32).reshape(len(first_blocks), 11)
    return torch.from_numpy(table.view(np.int32)).view(torch.uint32).to(device)


def keystream_device(key: bytes, stream: int, first_block: int, nblocks: int,
                     device: torch.device | str, out: torch.Tensor | None = None,
                     params: torch.Tensor | None = None) -> torch.Tensor:
    """The words :func:`keystream_cpu` returns, computed on ``device`` by the Triton kernel.

    Returns a torch.uint32 Tensor of shape (16·nblocks,) on ``device``: bit for bit the
    CPU reference's words (the first 16·nblocks elements of ``out`` when given: a contiguous
    torch.uint32 Tensor on ``device``). ``params``: this run's row of :func:`device_params`,
    to spare a host-to-device copy per run. Raises ImportError where Triton is not installed;
    on a CPU tensor the kernel runs only under ``TRITON_INTERPRET=1``.
    """
    _check(key, stream, first_block, nblocks)
    dev = torch.device(device)
    if out is None:
        out = torch.empty(16 * nblocks, dtype=torch.uint32, device=dev)
    elif out.dtype != torch.uint32 or out.device.type != dev.type or not out.is_contiguous() or out.numel() < 16 * nblocks:
        raise ValueError(f"out must be a contiguous torch.uint32 tensor on {dev} of at least {16 * nblocks} elements")
    out = out.view(-1)[: 16 * nblocks]
    if params is None:
        params = device_params(key, stream, [first_block], out.device)[0]
    if nblocks:
        grid = (-(-nblocks // _LANES),)
        # Triton launches on torch's current device: make it out's
        with torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext():
            _kernel()[grid](params, out, nblocks, LANES=_LANES)
    return out
