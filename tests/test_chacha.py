"""The ChaCha20 keystream (issue 19's device half): the CPU reference against RFC 8439's
vectors, and the Triton kernel against the reference, in Triton's interpreter on the CPU
(and on a GPU where there is one)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dplowrank._chacha import MAX_BLOCKS, keystream_cpu, keystream_device

# RFC 8439 §2.3.2: key 00 01 … 1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, block counter 1
RFC_2_3_2_KEY = bytes(range(32))
RFC_2_3_2_STREAM = (0x4A000000 << 32) | 0x09000000  # nonce words 13, 14 (word 15 is 0)
RFC_2_3_2_BLOCK = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)
# RFC 8439 Appendix A.1, test vector 1: all-zero key and nonce, block counter 0
RFC_A1_BLOCK0 = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)


def _u32(t: torch.Tensor) -> np.ndarray:
    return t.cpu().view(torch.int32).numpy().view(np.uint32)


def test_the_cpu_reference_reproduces_rfc_8439():
    assert keystream_cpu(RFC_2_3_2_KEY, RFC_2_3_2_STREAM, 1, 1).astype("<u4").tobytes() == RFC_2_3_2_BLOCK
    assert keystream_cpu(bytes(32), 0, 0, 1).astype("<u4").tobytes() == RFC_A1_BLOCK0
    # a run of blocks is the blocks one after another
    run = keystream_cpu(RFC_2_3_2_KEY, RFC_2_3_2_STREAM, 0, 3)
    assert run.shape == (48,) and run.dtype == np.uint32
    assert run[16:32].astype("<u4").tobytes() == RFC_2_3_2_BLOCK


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"key": bytes(31)}, "key"),
        ({"stream": -1}, "stream"),
        ({"stream": 2**64}, "stream"),
        ({"first_block": -1}, "first_block"),
        ({"nblocks": True}, "nblocks"),
        ({"first_block": MAX_BLOCKS - 1, "nblocks": 2}, "first_block + nblocks"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    args = {"key": bytes(range(32)), "stream": 3, "first_block": 0, "nblocks": 1} | kwargs
    with pytest.raises(ValueError, match=name.split()[0]) as err:
        keystream_cpu(**args)
    assert "0x" not in str(err.value) and "\\x" not in str(err.value)  # never the key's bytes
    with pytest.raises(ValueError, match=name.split()[0]):
        keystream_device(**args, device="cpu")


@pytest.mark.parametrize(
    "key, stream, first_block, nblocks",
    [
        (RFC_2_3_2_KEY, RFC_2_3_2_STREAM, 1, 1),  # RFC 8439 §2.3.2
        (bytes(32), 0, 0, 2),  # RFC 8439 A.1
        (None, 5, 0, 300),  # more blocks than one program's lanes, not a multiple of them
        (None, 2**64 - 1, MAX_BLOCKS - 17, 17),  # the last blocks of the last stream
        (None, 2**40 + 3, 12345, 0),
    ],
    ids=["rfc8439-2.3.2", "rfc8439-A.1", "300-blocks", "last-blocks-of-last-stream", "no-blocks"],
)
def test_the_triton_kernel_gives_the_reference_bits(interpreted, key, stream, first_block, nblocks):
    key = os.urandom(32) if key is None else key
    got = keystream_device(key, stream, first_block, nblocks, "cpu")
    assert got.dtype == torch.uint32 and got.shape == (16 * nblocks,)
    np.testing.assert_array_equal(_u32(got), keystream_cpu(key, stream, first_block, nblocks))
    if nblocks:
        # a block is a function of (key, stream, counter) alone: a run started later agrees
        tail = keystream_device(key, stream, first_block + nblocks - 1, 1, "cpu")
        np.testing.assert_array_equal(_u32(tail), _u32(got)[-16:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_keystream_equals_the_cpu_reference():
    pytest.importorskip("triton")
    key = os.urandom(32)
    for stream, first, n in ((7, 0, 1), (2**63 + 5, 1000, 100_000)):
        got = keystream_device(key, stream, first, n, "cuda")
        np.testing.assert_array_equal(_u32(got), keystream_cpu(key, stream, first, n))
