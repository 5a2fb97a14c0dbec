"""What both contracts share: dtype names for test ids, and small matrices on one thread."""

from __future__ import annotations

import pytest
import torch

from dplowrank._threads import single_threaded


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class OneThread:
    """Run each test on one torch thread (small matrices: a pool only adds wake-up latency on
    a busy host), through the package's own context, which restores the count afterwards."""

    @pytest.fixture(autouse=True)
    def _one_thread(self):
        with single_threaded():
            yield
