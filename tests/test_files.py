"""The library's files: permissions from the umask, errors that name the user's path, and the
factors-only compressed-model format (sealed, keyed, loadable onto a fresh model; format 2 read)."""

import hashlib
import io
import json
import os
import stat

import numpy as np
import pytest
import torch
from torch import nn

import dplowrank as dl
from dplowrank import _files
from dplowrank.accounting import GaussianEvent

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


class _Net(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(10, 6)
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / 3)

    def forward(self, ids):
        return self.b(torch.relu(self.a(self.emb(ids))))


def _compressed(seed=0, **kw):
    model = _Net(seed)
    dl.compress_model(model, dl.find_groups(model, ["a", "b"]), **(kw or {"ratio": 0.6}))
    return model


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _write_each_kind(root):
    """One file of every kind the library writes; returns their paths."""
    release = dl.release_rank_k(torch.eye(4, dtype=torch.float64), 2, sensitivity=1.0, noise_scale=0.5,
                                generator=torch.Generator().manual_seed(0))
    budget = dl.PrivacyBudget(5.0, 1e-6, path=root / "ledger.json")
    budget.spend(GaussianEvent(3.0))
    acc = dl.GramAccumulator(row_norm=1.0)
    acc.update(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    model_dir = dl.save_compressed(_compressed(), root / "model")
    return [release.save(root / "release.npz"), root / "ledger.json", acc.save_checkpoint(root / "gram.ckpt"),
            model_dir / "compression.json", model_dir / "factors.safetensors"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_kind_of_file_gets_the_mode_of_a_plain_open(tmp_path, umask, mask, expected):
    umask(mask)
    with open(tmp_path / "plain", "w"):
        pass
    assert _mode(tmp_path / "plain") == expected
    for path in _write_each_kind(tmp_path):
        assert _mode(path) == expected, path.name
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_existing_file_keeps_its_mode_when_rewritten(tmp_path, umask):
    """As open(path, "w") would: a ledger the user narrowed to 0600 stays 0600 on every spend."""
    p = tmp_path / "ledger.json"
    budget = dl.PrivacyBudget(5.0, 1e-6, path=p)
    budget.spend(GaussianEvent(3.0))
    assert _mode(p) == 0o644
    os.chmod(p, 0o600)
    budget.spend(GaussianEvent(3.0))
    assert _mode(p) == 0o600
    os.chmod(p, 0o640)
    _files.atomic_write_bytes(p, b"{}")
    assert _mode(p) == 0o640
    # the lock file (filelock) stays in place, empty, under the umask: never removed while in use
    lock = tmp_path / "ledger.json.lock"
    assert lock.exists() and lock.stat().st_size == 0 and _mode(lock) == 0o644


def test_the_content_is_never_readable_under_a_wider_mode_than_the_final_one(tmp_path, umask, monkeypatch):
    """The temporary file is narrowed to owner-only before its first byte and widened to the final
    mode only once complete: at every change of mode, record what was on disk and its mode."""
    seen = []
    chmod = _files._chmod

    def spy(fd, tmp, mode):
        st = os.fstat(fd)
        seen.append((stat.S_IMODE(st.st_mode), st.st_size, mode))
        chmod(fd, tmp, mode)

    monkeypatch.setattr(_files, "_chmod", spy)
    data = b"private" * 100
    _files.atomic_write_bytes(tmp_path / "x.bin", data)
    assert seen == [(0o644, 0, 0o600), (0o600, len(data), 0o644)]
    assert (tmp_path / "x.bin").read_bytes() == data and _mode(tmp_path / "x.bin") == 0o644


def test_errors_name_the_users_path_and_leave_no_temporary_file(tmp_path, umask):
    missing = tmp_path / "missing" / "x.npz"
    with pytest.raises(FileNotFoundError, match=f"^cannot write {missing}: directory does not exist$") as info:
        _files.atomic_write_bytes(missing, b"abc")
    assert info.value.errno == 2 and ".tmp" not in str(info.value)
    release = dl.release_rank_k(torch.eye(3, dtype=torch.float64), 1, sensitivity=1.0, noise_scale=0.5,
                                generator=torch.Generator().manual_seed(0))
    with pytest.raises(FileNotFoundError, match=f"cannot write {missing}: directory does not exist"):
        release.save(missing)
    with pytest.raises(FileNotFoundError, match="cannot write .*ledger.json: directory does not exist"):
        dl.PrivacyBudget(1.0, 1e-6, path=tmp_path / "missing" / "ledger.json").spend(GaussianEvent(8.0))
    # a directory where the file should go: the rename fails, naming the target
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match=f"^cannot write {tmp_path / 'd'}: "):
        _files.atomic_write_bytes(tmp_path / "d", b"abc")
    # an unwritable directory (root ignores permissions)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionError, match=f"^cannot write {locked / 'y'}: Permission denied$"):
                _files.atomic_write_bytes(locked / "y", b"abc")
    finally:
        os.chmod(locked, 0o700)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "locked"]


# ---- compressed models: factors only -----------------------------------------------------------


def test_only_the_factors_are_stored_and_load_onto_a_fresh_model(tmp_path):
    model = _compressed()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        out = model(ids)
    dl.save_compressed(model, tmp_path / "m", metadata={"eps": 1.0})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["compression.json", "factors.safetensors"]
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "m" / "factors.safetensors")
    assert sorted(stored) == ["a.down.weight", "a.up.bias", "a.up.weight", "b.down.weight", "b.up.bias",
                              "b.up.weight"]  # no embedding
    fresh = dl.load_compressed(_Net(0), tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(fresh(ids), out)
    assert fresh.compression_metadata == {"eps": 1.0} and isinstance(fresh.a, dl.LowRankLinear)
    # another base is refused (the factors were computed for the original), or taken knowingly
    other = _Net(1)
    with pytest.raises(ValueError, match="does not fit this model.*check_base=False"):
        dl.load_compressed(other, tmp_path / "m")
    assert isinstance(other.a, nn.Linear)
    dl.load_compressed(other, tmp_path / "m", check_base=False)
    assert torch.equal(other.a.up.weight, model.a.up.weight)


def test_quantised_factors_are_stored_as_codes(tmp_path):
    model = _compressed(bits_per_parameter=6.0, bits=(4, 6))
    assert isinstance(model.a.up, dl.compress.QuantizedLinear)
    dl.save_compressed(model, tmp_path / "q")
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "q" / "factors.safetensors")
    assert stored["a.up.packed"].dtype == torch.uint8 and "a.up.weight" not in stored
    fresh = dl.load_compressed(_Net(0), tmp_path / "q")
    ids = torch.tensor([[1, 2]])
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


def test_a_key_authenticates_the_whole_save(tmp_path):
    key, other = b"k" * 32, b"o" * 32
    dl.save_compressed(_compressed(), tmp_path / "m", metadata={"eps": 1.0}, key=key)
    cfg = json.loads((tmp_path / "m" / "compression.json").read_text())
    assert set(cfg["integrity"]) == {"sha256", "hmac_sha256"}
    with pytest.raises(ValueError, match="pass key="):
        dl.load_compressed(_Net(0), tmp_path / "m")
    with pytest.raises(ValueError, match="HMAC"):
        dl.load_compressed(_Net(0), tmp_path / "m", key=other)
    assert dl.load_compressed(_Net(0), tmp_path / "m", key=key).compression_metadata == {"eps": 1.0}
    # a forger who edits the privacy record and recomputes the SHA-256 is caught by the HMAC
    body = {k: v for k, v in cfg.items() if k != "integrity"}
    body["metadata"] = {"eps": 0.1}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    cfg = {**body, "integrity": {"sha256": hashlib.sha256(canon).hexdigest(),
                                 "hmac_sha256": cfg["integrity"]["hmac_sha256"]}}
    (tmp_path / "m" / "compression.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="failed its HMAC check"):
        dl.load_compressed(_Net(0), tmp_path / "m", key=key)
    # without a key, a keyed file is refused, and an unkeyed one is refused with a key
    dl.save_compressed(_compressed(), tmp_path / "plain")
    with pytest.raises(ValueError, match="carries no HMAC"):
        dl.load_compressed(_Net(0), tmp_path / "plain", key=key)


def _save_format_2(model, path, metadata):
    """The writer of dplowrank <= 0.1 (format 2: the whole state dict in weights.npz)."""
    from dplowrank.compress._module import _layout

    layers = _layout(model)
    shared = tuple(f"{n}.down." for n, e in layers.items() if "shares_down_with" in e)
    arrays = {k: t.detach().cpu().numpy() for k, t in model.state_dict().items() if not k.startswith(shared)}
    dtypes = {k: str(t.dtype).replace("torch.", "") for k, t in model.state_dict().items() if k in arrays}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.mkdir()
    (path / "weights.npz").write_bytes(buf.getvalue())
    config = {"format": "dplowrank.compressed_model", "version": 2, "layers": layers, "dtypes": dtypes,
              "metadata": metadata, "weights_sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    (path / "compression.json").write_text(json.dumps(config))


def test_format_2_files_are_still_read_and_a_new_save_replaces_them(tmp_path):
    model = _compressed(seed=3)
    ids = torch.tensor([[1, 2, 3]])
    _save_format_2(model, tmp_path / "old", {"v": 2})
    back = dl.load_compressed(_Net(7), tmp_path / "old")  # format 2 carries the whole model
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))
    assert back.compression_metadata == {"v": 2}
    with pytest.raises(ValueError, match="carries no HMAC"):
        dl.load_compressed(_Net(7), tmp_path / "old", key=b"k" * 32)
    cfg = json.loads((tmp_path / "old" / "compression.json").read_text())
    cfg["dtypes"]["emb.weight"] = "load"  # a torch attribute that is not a dtype: refused, not called
    (tmp_path / "old" / "compression.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown dtype 'load'"):
        dl.load_compressed(_Net(7), tmp_path / "old")
    dl.save_compressed(model, tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["compression.json", "factors.safetensors"]
    with torch.no_grad():
        assert torch.equal(dl.load_compressed(_Net(3), tmp_path / "old")(ids), model(ids))
