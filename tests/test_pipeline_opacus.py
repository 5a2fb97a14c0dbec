"""The docs' example: private compression with dplowrank, then DP-SGD with opacus, one ε."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("opacus", reason="opacus (optional extra) not installed")
pytest.importorskip("sklearn")


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "compress_then_dpsgd.py"
    spec = importlib.util.spec_from_file_location("compress_then_dpsgd", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_compress_then_dpsgd_reports_one_epsilon():
    from opacus.accountants import RDPAccountant

    import dplowrank as dl

    out = _example().run(epochs=1, seed=0)
    assert out["methods"][0] == "rdp" and out["release_for_publication"] is False  # seeded for the test
    assert out["train_accuracy"] > 0.3  # learns (chance is 0.1)
    # by the same accountant the whole pipeline costs more than DP-SGD alone ...
    assert out["total_epsilon_rdp"] > out["dpsgd_epsilon_opacus"]
    # ... by RDP exactly what opacus' own RDP accountant says when told about the release too,
    # and "auto" is never above it (the PLD, with dp_accounting installed)
    z = dl.analytic_gaussian_sigma(1.0, out["delta"], 1.0)  # release noise multiplier (σ/Δ)
    ref = RDPAccountant()
    ref.history = out["opacus_history"] + [(z, 1.0, 1)]
    assert ref.history[0][0] == 1.0 and ref.history[0][2] > 10  # the DP-SGD steps
    assert out["total_epsilon_rdp"] == pytest.approx(ref.get_epsilon(out["delta"]), rel=1e-6)
    assert out["total_epsilon"] <= out["total_epsilon_rdp"]
    if "pld" in out["methods"]:
        assert out["total_epsilon"] < 0.97 * out["total_epsilon_rdp"]


def test_the_example_releases_with_secure_noise_by_default():
    """The example seeded torch's global generator and the release (a recipe users copy)."""
    out = _example().run(epochs=1)
    assert out["release_for_publication"] is True
