"""Crash safety: an accumulation killed with SIGKILL mid-stream (including mid-write) resumes to
the identical Gram; damaged or crafted checkpoints are refused; compressed models are saved as a
pair that cannot be mixed up."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dplowrank as dl

from .conftest import release_file_digest

ROOT = Path(__file__).resolve().parents[1]
DIM, TOTAL = 768, 200  # a 4.7 MB checkpoint: writing it (≈ 20 ms) is most of each step

STREAM = textwrap.dedent(
    f"""
    import os, sys, time
    import numpy as np
    import torch
    torch.set_num_threads(1)  # the same summation order in the job and in the test
    import dplowrank as dl

    DIM, TOTAL = {DIM}, {TOTAL}

    def batch(i):
        rng = np.random.default_rng(1000 + i)
        return rng.normal(size=(32, DIM)) * rng.uniform(0.1, 3.0, size=(32, 1))

    def run(path, start_acc=None, start=0, total=TOTAL, pause_at=None, signal_file=None):
        acc = start_acc or dl.GramAccumulator(row_norm=2.0, dim=DIM)
        for i in range(start, total):
            acc.update(batch(i))
            if path is not None:
                if i + 1 == pause_at:
                    # Stop between writing the temporary file and renaming it, and say so.
                    real = os.replace
                    def paused(*args, **kwargs):
                        open(signal_file, "w").close()
                        time.sleep(60)
                        return real(*args, **kwargs)
                    os.replace = paused
                acc.save_checkpoint(path, cursor=i + 1)
        return acc

    if __name__ == "__main__":
        pause = int(sys.argv[2]) if len(sys.argv) > 2 else None
        run(sys.argv[1], pause_at=pause, signal_file=sys.argv[3] if pause else None)
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield importlib.import_module("stream_job"), mod
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(tmp_path))


def _poll(ckpt: Path) -> int:
    """The cursor of the checkpoint, 0 before the first one; any ValueError (a torn read) fails."""
    if not ckpt.exists():
        return 0
    return dl.GramAccumulator.load_checkpoint(ckpt)[1]  # never caught: a torn read is a failure


def _kill_mid_stream(script: Path, ckpt: Path, *, target: int, extra_delay: float, pause_at=None,
                     signal_file=None) -> None:
    """Start the job, poll its checkpoint until its cursor reaches ``target`` (or, with
    ``pause_at``, until it stops before a rename), wait ``extra_delay`` s, then SIGKILL it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, str(script), str(ckpt)]
    if pause_at is not None:
        args += [str(pause_at), str(signal_file)]
    proc = subprocess.Popen(args, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            cursor = _poll(ckpt)
            if pause_at is not None and signal_file.exists():
                break
            if pause_at is None and cursor >= target:
                break
        else:
            pytest.fail(f"the job exited (code {proc.returncode}) or stalled before the kill point")
        time.sleep(extra_delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:  # killed above (not yet reaped), or left running by a failure
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_stream_resumes_to_identical_gram(tmp_path, stream_module):
    job, script = stream_module
    uninterrupted = job.run(None)
    rng = random.Random(20240611)  # fixed kill points: reproducible, spread over the write cycle
    plans = [dict(target=rng.randint(3, 40), extra_delay=rng.uniform(0.0, 0.03)) for _ in range(3)]
    plans.append(dict(target=None, extra_delay=0.0, pause_at=rng.randint(3, 20)))  # killed inside a write
    works = [tmp_path / f"run{n}" for n in range(len(plans))]
    for work in works:
        work.mkdir()
    # The jobs run side by side (most of each one's time is starting Python and torch).
    with ThreadPoolExecutor(len(plans)) as pool:
        jobs = [pool.submit(_kill_mid_stream, script, work / "gram.ckpt", signal_file=tmp_path / f"paused{n}", **plan)
                for n, (work, plan) in enumerate(zip(works, plans))]
        for done in jobs:
            done.result()
    leftovers_seen = 0
    for work, plan in zip(works, plans):
        ckpt = work / "gram.ckpt"
        # Only the checkpoint and, if the kill hit a write, its temporary file are left.
        temps = sorted(p.name for p in work.glob(".gram.ckpt.*.tmp"))
        assert sorted(p.name for p in work.iterdir()) == sorted(["gram.ckpt"] + temps)
        leftovers_seen += bool(temps)
        if plan.get("pause_at"):
            assert len(temps) == 1, "the kill between write and rename must leave the temporary file"
        acc, cursor = dl.GramAccumulator.load_checkpoint(ckpt)  # the temporary file is never read
        assert 1 <= cursor < TOTAL  # killed mid-stream
        if plan.get("pause_at"):
            assert cursor == plan["pause_at"] - 1  # the interrupted write never became the checkpoint
        # Resuming (and checkpointing again, beside the leftover) gives the uninterrupted Gram bit for bit.
        resumed = job.run(None, start_acc=acc, start=cursor)
        assert torch.equal(resumed.gram, uninterrupted.gram)
        assert (resumed.n_rows, resumed.n_clipped) == (uninterrupted.n_rows, uninterrupted.n_clipped)
        resumed.save_checkpoint(ckpt, cursor=TOTAL)
        again, cursor = dl.GramAccumulator.load_checkpoint(ckpt)
        assert cursor == TOTAL and torch.equal(again.gram, uninterrupted.gram)
        assert sorted(p.name for p in work.glob(".gram.ckpt.*.tmp")) == temps  # ignored, not reused
        for name in temps:  # a leftover is safe to delete (see dplowrank/_io.py)
            (work / name).unlink()
    assert leftovers_seen >= 1


def _write_checkpoint(path: Path, meta: dict, gram: bytes) -> None:
    """A checkpoint with a valid checksum whatever its fields (as save_checkpoint lays it out):
    what anyone who can write the file can do, since a checksum needs no secret."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode() + gram).hexdigest()
    header = json.dumps({"meta": meta, "integrity": {"sha256": digest}}, sort_keys=True).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + gram)


def _meta_and_gram(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])["meta"], raw[8 + n:]


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
    for name, data in {"flip": bytes(flipped), "cut": raw[:-8], "empty": b"", "junk": b"12345678{]",
                       "deep": (100_000).to_bytes(8, "little") + b"[" * 100_000}.items():
        q = tmp_path / name
        q.write_bytes(data)
        with pytest.raises(ValueError, match=name):
            dl.GramAccumulator.load_checkpoint(q)
    with pytest.raises(FileNotFoundError):
        dl.GramAccumulator.load_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="is a directory"):
        dl.GramAccumulator.load_checkpoint(tmp_path)
    empty = dl.GramAccumulator(row_norm=1.0).save_checkpoint(tmp_path / "e.ckpt")
    fresh, cur = dl.GramAccumulator.load_checkpoint(empty)
    assert cur is None and fresh.n_rows == 0 and fresh.dim is None


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m.pop("n_rows"), "n_rows"),
        (lambda m: m.pop("cursor"), "cursor"),
        (lambda m: m.update(dim=None), "gram"),  # rows but no dimension to shape them
        (lambda m: m.update(dim="5"), "dim"),
        (lambda m: m.update(dim=6), "gram"),  # the bytes do not hold a 6×6 Gram
        (lambda m: m.update(n_rows=-1), "n_rows"),
        (lambda m: m.update(n_clipped=10**6), "n_clipped"),
        (lambda m: m.update(row_norm="1.5"), "row_norm"),
        (lambda m: m.update(row_norm=float("inf")), "row_norm"),
        (lambda m: m.update(neighbour="swap"), "neighbour"),
        (lambda m: m.update(device="tpu"), "device"),
        (lambda m: m.update(device=5), "device"),
        (lambda m: m.update(version=3), "version"),
        (lambda m: m.update(max_rows=0), "max_rows"),
        (lambda m: m.update(n_rows=2**30), "n_rows"),  # more rows than max_rows
    ],
)
def test_crafted_checkpoint_with_a_valid_checksum_is_refused_by_field(tmp_path, change, field):
    acc = dl.GramAccumulator(row_norm=1.5).update(np.random.default_rng(1).normal(size=(8, 5)))
    raw = acc.save_checkpoint(tmp_path / "good.ckpt").read_bytes()
    meta, gram = _meta_and_gram(raw)
    change(meta)
    bad = tmp_path / "crafted.ckpt"
    _write_checkpoint(bad, meta, gram)
    with pytest.raises(ValueError, match=f"crafted.ckpt.*'{field}'"):
        dl.GramAccumulator.load_checkpoint(bad)
    # a non-finite Gram with a valid checksum, and rows without any Gram
    nan_gram = np.frombuffer(gram, dtype="<f8").copy()
    nan_gram[0] = np.nan
    _write_checkpoint(bad, _meta_and_gram(raw)[0], nan_gram.tobytes())
    with pytest.raises(ValueError, match="crafted.ckpt.*'gram'.*NaN"):
        dl.GramAccumulator.load_checkpoint(bad)
    _write_checkpoint(bad, _meta_and_gram(raw)[0], b"")
    with pytest.raises(ValueError, match="crafted.ckpt.*'gram'.*empty"):
        dl.GramAccumulator.load_checkpoint(bad)


def test_a_checksum_is_not_tamper_evidence_but_a_key_is(tmp_path):
    """Lowering row_norm in a checkpoint shrinks its sensitivity 10⁴× (C = 1.5 → 0.015): a
    recomputed SHA-256 hides the edit, an HMAC with the user's key does not."""
    key = b"k" * 32
    rows = np.random.default_rng(2).normal(size=(20, 4))
    for with_key in (False, True):
        acc = dl.GramAccumulator(row_norm=1.5).update(rows)
        good = acc.save_checkpoint(tmp_path / "good.ckpt", key=key if with_key else None)
        meta, gram = _meta_and_gram(good.read_bytes())
        meta["row_norm"] = 0.015
        forged = tmp_path / "forged.ckpt"
        _write_checkpoint(forged, meta, gram)
        if not with_key:  # without a key the forgery loads: the checksum only catches corruption
            back, _ = dl.GramAccumulator.load_checkpoint(forged)
            assert back.sensitivity == pytest.approx(0.015**2)
            with pytest.raises(ValueError, match="carries no HMAC"):
                dl.GramAccumulator.load_checkpoint(forged, key=key)
            continue
        back, _ = dl.GramAccumulator.load_checkpoint(good, key=key)
        assert torch.equal(back.gram, acc.gram)
        with pytest.raises(ValueError, match="pass key="):
            dl.GramAccumulator.load_checkpoint(good)  # an authenticated file needs its key
        with pytest.raises(ValueError, match="HMAC check"):
            dl.GramAccumulator.load_checkpoint(good, key=b"x" * 32)  # the wrong key
        # the forger keeps the HMAC field but cannot recompute it
        header = json.dumps({"meta": meta, "integrity": {
            "sha256": hashlib.sha256(json.dumps(meta, sort_keys=True).encode() + gram).hexdigest(),
            "hmac_sha256": json.loads(good.read_bytes()[8:8 + int.from_bytes(good.read_bytes()[:8], "little")])
            ["integrity"]["hmac_sha256"]}}, sort_keys=True).encode()
        forged.write_bytes(len(header).to_bytes(8, "little") + header + gram)
        with pytest.raises(ValueError, match="forged.ckpt.*HMAC check"):
            dl.GramAccumulator.load_checkpoint(forged, key=key)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        dl.GramAccumulator(row_norm=1.0).save_checkpoint(tmp_path / "x.ckpt", key=b"short")
    with pytest.raises(TypeError, match="key must be bytes"):
        dl.GramAccumulator(row_norm=1.0).save_checkpoint(tmp_path / "x.ckpt", key="a text password")


def test_a_version_1_checkpoint_is_refused_with_a_reason(tmp_path):
    meta = {"format": "dplowrank.GramAccumulator.checkpoint", "version": 1, "row_norm": 1.0,
            "neighbour": "add_remove", "dim": None, "n_rows": 0, "n_clipped": 0, "device": None, "cursor": None}
    meta["sha256"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    header = json.dumps(meta, sort_keys=True).encode()
    old = tmp_path / "v1.ckpt"
    old.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="version-1 .* not exact"):
        dl.GramAccumulator.load_checkpoint(old)


def test_damaged_release_file_is_refused_by_field(tmp_path):
    r = dl.release_rank_k(torch.eye(4, dtype=torch.float64), 2, sensitivity=1.0, noise_scale=0.1,
                          generator=torch.Generator().manual_seed(0))
    p = r.save(tmp_path / "r.npz")
    with np.load(p, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    for key, value, match in [("noise_scale", None, "noise_scale"), ("psd", "yes", "psd"),
                              ("mechanism", "laplace", "mechanism"), ("delta", 2.0, "delta"),
                              ("warm_start", "int8", "warm_start")]:
        doc = json.loads(str(data["metadata"]))
        meta = doc["meta"]
        if value is None:
            del meta[key]
        else:
            meta[key] = value
        # a forger who recomputes the checksum: the field check still refuses it
        doc["integrity"] = {"sha256": release_file_digest(meta, data)}
        np.savez(tmp_path / "bad.npz", **{**data, "metadata": np.array(json.dumps(doc))})
        with pytest.raises(ValueError, match=f"bad.npz.*{match}"):
            dl.load_release(tmp_path / "bad.npz")
    bad = {**data, "eigenvalues": np.array(["a", "b"])}
    doc = json.loads(str(data["metadata"]))
    doc["integrity"] = {"sha256": release_file_digest(doc["meta"], bad)}
    np.savez(tmp_path / "bad.npz", **{**bad, "metadata": np.array(json.dumps(doc))})
    with pytest.raises(ValueError, match="bad.npz.*eigenvalues"):
        dl.load_release(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        dl.load_release(tmp_path / "nothing.npz")
    with pytest.raises(ValueError, match="not a readable"):
        dl.load_release(tmp_path)


class _Small(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 4)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _compressed(seed: int) -> nn.Module:
    model = _Small(seed)
    dl.compress_model(model, dl.find_groups(model, ["a", "b"]), ratio=0.5)
    return model


@pytest.mark.parametrize("metadata", [{"a": object()}, {"a": {1, 2}}, 5])
def test_save_compressed_with_bad_metadata_writes_nothing(tmp_path, metadata):
    out = tmp_path / "model"
    with pytest.raises(TypeError, match="metadata"):
        dl.save_compressed(_compressed(0), out, metadata=metadata)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # over an existing save, a failing one leaves it as it was
    dl.save_compressed(_compressed(0), out, metadata={"v": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TypeError, match="metadata"):
        dl.save_compressed(_compressed(1), out, metadata=metadata)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_compressed_refuses_a_mixed_or_damaged_pair(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    dl.save_compressed(_compressed(0), first, metadata={"v": 1})
    dl.save_compressed(_compressed(1), second, metadata={"v": 2})
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    back = dl.load_compressed(_Small(5), second)
    with torch.no_grad():
        assert torch.equal(back(x), _load_reference(1)(x)) and back.compression_metadata == {"v": 2}
    # what a crash between the two renames of a save over `first` would leave: new factors, old config
    (first / "factors.safetensors").write_bytes((second / "factors.safetensors").read_bytes())
    model = _Small(7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="first.*does not match.*SHA-256"):
        dl.load_compressed(model, first)
    assert isinstance(model.a, nn.Linear) and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # a damaged config is a ValueError naming the directory and the field, never a KeyError
    for change, field in [(lambda c: c.pop("layers"), "layers"), (lambda c: c.update(layers=[]), "layers"),
                          (lambda c: c["layers"]["a"].update(rank="2"), "layers.a.rank"),
                          (lambda c: c["layers"]["a"].pop("bias"), "layers.a.bias"),
                          (lambda c: c["layers"]["a"].update(shares_down_with="zzz"), "layers.a.shares_down_with"),
                          (lambda c: c.update(factors_sha256=None), "factors_sha256"),
                          (lambda c: c.update(integrity=[]), "integrity")]:
        cfg = json.loads((second / "compression.json").read_text())
        change(cfg)
        damaged = tmp_path / "damaged"
        damaged.mkdir(exist_ok=True)
        (damaged / "factors.safetensors").write_bytes((second / "factors.safetensors").read_bytes())
        (damaged / "compression.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=f"damaged.*'{field}'"):
            dl.load_compressed(_Small(7), damaged)
    # a config edited within its schema (the privacy record, a rank) fails its seal
    for change in (lambda c: c["metadata"].update(v=3), lambda c: c["layers"]["a"].update(rank=c["layers"]["a"]["rank"] + 1)):
        cfg = json.loads((second / "compression.json").read_text())
        change(cfg)
        (damaged / "compression.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="damaged.*failed its checksum"):
            dl.load_compressed(_Small(7), damaged)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        dl.load_compressed(None, second)
    with pytest.raises(ValueError, match="is a file"):
        dl.save_compressed(_compressed(0), second / "factors.safetensors")


def _load_reference(seed: int) -> nn.Module:
    return _compressed(seed)
