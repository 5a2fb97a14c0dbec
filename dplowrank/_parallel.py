"""Running independent blocks of work on the CPU's cores (the one place threads are used).

torch releases the GIL inside its kernels, so Python threads over independent blocks use
all cores for work that torch itself runs on one (random draws, small reductions). On
other devices the blocks run in order (the device is already asynchronous), unless the
blocks' work is mostly on the host (``host_work=True``: the secure noise source draws its
keystream on the CPU for every device).

On a CUDA device the worker threads enqueue their kernels on the *caller's* current stream
(torch's current stream is per thread; a worker would otherwise use the default stream, and
work the caller enqueues next on its own stream, such as the eigensolver reading the noisy
matrix, would not wait for the noise).

While the blocks run, torch runs on one intra-op thread in the caller and in every worker
(:func:`dplowrank._threads.single_threaded`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ._threads import intra_op_threads, single_threaded

__all__ = ["run_blocks"]


def run_blocks(fn: Callable[..., Any], blocks: Sequence[tuple], device: torch.device, *,
               host_work: bool = False) -> list:
    """``[fn(*b) for b in blocks]``, on a thread pool when ``device`` is a multi-core CPU
    (or whatever the device, with ``host_work=True``).

    The pool has ``min(intra_op_threads(), len(blocks))`` workers: the count torch had
    outside any :func:`dplowrank._threads.single_threaded` context, also when called from
    inside one.
    """
    threads = intra_op_threads()
    if (device.type == "cpu" or host_work) and len(blocks) > 1 and threads > 1:
        # torch's own intra-op threads would multiply with ours (each worker's kernels fork
        # an OpenMP team, whose threads spin at barriers): while the blocks run, torch uses
        # one thread per call, in the caller and in every worker (timings: docs/eigensolver.md).
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

        def work(*b):
            with single_threaded():
                if stream is None:
                    return fn(*b)
                with torch.cuda.stream(stream):
                    return fn(*b)

        with single_threaded(), ThreadPoolExecutor(max_workers=min(threads, len(blocks))) as pool:
            futures = [pool.submit(work, *b) for b in blocks]
            return [f.result() for f in futures]
    return [fn(*b) for b in blocks]
