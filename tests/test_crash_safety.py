"""Crash safety: an accumulation killed with SIGKILL mid-stream resumes to the identical Gram."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dplowrank as dl

ROOT = Path(__file__).resolve().parents[1]

STREAM = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import dplowrank as dl

    def batch(i):
        rng = np.random.default_rng(1000 + i)
        return rng.normal(size=(64, 48)) * rng.uniform(0.1, 3.0, size=(64, 1))

    def run(path, start_acc=None, start=0, total=40, pause=0.0):
        acc = start_acc or dl.GramAccumulator(row_norm=2.0, dim=48)
        for i in range(start, total):
            acc.update(batch(i))
            if path is not None:
                acc.save_checkpoint(path, cursor=i + 1)
            time.sleep(pause)
        return acc

    if __name__ == "__main__":
        run(sys.argv[1], pause=0.05)
    """
)


@pytest.fixture
def stream_module(tmp_path):
    mod = tmp_path / "stream_job.py"
    mod.write_text(STREAM)
    sys.path.insert(0, str(tmp_path))
    import importlib

    if "stream_job" in sys.modules:
        del sys.modules["stream_job"]
    yield importlib.import_module("stream_job"), mod
    sys.path.remove(str(tmp_path))


def test_sigkill_mid_stream_resumes_to_identical_gram(tmp_path, stream_module):
    job, script = stream_module
    ckpt = tmp_path / "gram.ckpt"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt)], env=env)
    try:
        deadline = time.time() + 120
        cursor = 0
        while time.time() < deadline and cursor < 6:
            time.sleep(0.05)
            if ckpt.exists():
                try:
                    cursor = dl.GramAccumulator.load_checkpoint(ckpt)[1]
                except ValueError:
                    pass  # impossible with atomic writes; would fail below
        assert cursor >= 6, "the streaming job made no progress"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    acc, cursor = dl.GramAccumulator.load_checkpoint(ckpt)
    assert 6 <= cursor < 40  # killed mid-stream
    resumed = job.run(None, start_acc=acc, start=cursor)
    uninterrupted = job.run(None)
    assert torch.equal(resumed.gram, uninterrupted.gram)  # bit for bit
    assert (resumed.n_rows, resumed.n_clipped) == (uninterrupted.n_rows, uninterrupted.n_clipped)


def test_checkpoint_round_trip_and_damage(tmp_path):
    acc = dl.GramAccumulator(row_norm=1.5, neighbour="replace").update(np.random.default_rng(0).normal(size=(30, 5)))
    p = acc.save_checkpoint(tmp_path / "a.ckpt", cursor={"batch": 3})
    back, cursor = dl.GramAccumulator.load_checkpoint(p)
    assert cursor == {"batch": 3} and torch.equal(back.gram, acc.gram)
    assert (back.row_norm, back.neighbour, back.n_rows, back.n_clipped) == (1.5, "replace", 30, acc.n_clipped)
    assert back.sensitivity == acc.sensitivity
    raw = p.read_bytes()
    flipped = bytearray(raw)
    flipped[-3] ^= 0x01  # one bit of the Gram
    for name, data in {"flip": bytes(flipped), "cut": raw[:-8], "empty": b"", "junk": b"12345678{]"}.items():
        q = tmp_path / name
        q.write_bytes(data)
        with pytest.raises(ValueError, match=name):
            dl.GramAccumulator.load_checkpoint(q)
    with pytest.raises(FileNotFoundError):
        dl.GramAccumulator.load_checkpoint(tmp_path / "missing")
    empty = dl.GramAccumulator(row_norm=1.0).save_checkpoint(tmp_path / "e.ckpt")
    fresh, cur = dl.GramAccumulator.load_checkpoint(empty)
    assert cur is None and fresh.n_rows == 0 and fresh.dim is None
