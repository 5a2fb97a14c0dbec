"""torch.distributed on localhost: 2 and 4 gloo processes per test (spawned, one CPU thread each).

Each test starts a job of ``tests/distributed_helpers.py`` workers and compares what they wrote
with a single-process run: Grams and statistics bit for bit, releases to the bit for the same
seed, the noise drawn once (its variance), the budget charged once, and failures that refuse
on every rank without releasing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dplowrank as dl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_helpers as h

if not torch.distributed.is_available():  # pragma: no cover - every supported build has it
    pytest.skip("torch.distributed is not available", allow_module_level=True)
pytest.importorskip("sklearn")


def _load(out: Path, name: str, world: int) -> list[dict]:
    errors = sorted(out.glob("error-*.txt"))
    assert not errors, errors[0].read_text()
    return [torch.load(out / f"{name}-{r}.pt") for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_the_reduced_gram_is_bit_identical_to_one_process(tmp_path, world):
    assert h.launch("gram", world, tmp_path) == [0] * world
    res = _load(tmp_path, "gram", world)
    assert [r["is_dst"] for r in res] == [True] + [False] * (world - 1)
    one = dl.GramAccumulator(row_norm=8.0, dim=64, max_rows=4096)
    one.update(h.digits()[::-1].copy())  # another order: the grid makes the sums exact in any order
    assert res[0]["n"] == 1797
    assert torch.equal(res[0]["gram"], one.gram)
    # the other ranks keep nothing of the reduction in the buffer they held
    assert all(r["left_behind"] == 0.0 for r in res[1:])


def test_a_seeded_data_parallel_release_equals_the_single_process_one_and_charges_once(tmp_path):
    ledger = tmp_path / "ledger.json"
    dl.PrivacyBudget(3.0, 1e-5, path=ledger).save()
    assert h.launch("release", 2, tmp_path, ledger=str(ledger)) == [0, 0]
    a, b = _load(tmp_path, "release", 2)
    one = dl.release_rank_k(h.digits(), 4, epsilon=1.0, delta=1e-6, row_norm=8.0,
                            generator=dl.SecureNormalSource.from_seed(7))
    for r in (a, b):
        assert torch.equal(r["values"], one.eigenvalues) and torch.equal(r["vectors"], one.eigenvectors)
        assert r["randomness"] == "seeded"
    spent = dl.PrivacyBudget.load(ledger)
    assert len(spent.events) == 1  # charged once, by rank 0
    assert spent.spent_epsilon() == pytest.approx(dl.PrivacyAccountant([one]).epsilon(1e-5), rel=1e-12)


def test_over_budget_refuses_on_every_rank(tmp_path):
    ledger = tmp_path / "ledger.json"
    dl.PrivacyBudget(0.5, 1e-5, path=ledger).save()
    assert h.launch("release", 2, tmp_path, ledger=str(ledger), epsilon=1.0) == [0, 0]
    a, b = _load(tmp_path, "release", 2)
    assert a["error"] == b["error"] == "BudgetExceededError"
    assert len(dl.PrivacyBudget.load(ledger).events) == 0


def test_the_noise_is_added_once(tmp_path):
    """Zero Grams, σ = 1, the whole spectrum: E‖E‖²_F = σ²·d(d + 1)/2 = 2080 at d = 64 for the
    isotropic shape. Noise added on both ranks (or twice) would double it."""
    assert h.launch("noise_once", 2, tmp_path) == [0, 0]
    a, b = _load(tmp_path, "noise_once", 2)
    assert torch.equal(a, b)
    fro2 = (a**2).sum(dim=1).numpy()  # one ‖E‖²_F per release, 60 releases
    # each ‖E‖²_F has variance 2·σ⁴·(d + d(d−1)/4)·... ≈ 2·2080 for this shape: sd of the mean ≈ 8.3
    assert abs(fro2.mean() - 2080.0) < 6 * np.sqrt(2 * 2080.0 / len(fro2))


@pytest.mark.parametrize("stage", ["before", "reduce"])
def test_a_rank_that_dies_makes_the_job_fail_without_a_release(tmp_path, stage):
    codes = h.launch("dies", 2, tmp_path, timeout_s=20, stage=stage)
    assert codes == [0, 3]
    res = torch.load(tmp_path / "dies-0.pt")
    assert res["error"] == "DistributedError" and "nothing was released" in res["message"]
    # dying in the reduction leaves rank 0's buffer unusable: a partial sum is never released
    assert res["consumed"] == (stage == "reduce")


def test_a_bad_argument_on_one_rank_refuses_on_every_rank(tmp_path):
    assert h.launch("bad_argument", 2, tmp_path) == [0, 0]
    a, b = _load(tmp_path, "bad_argument", 2)
    for mode, says in [("src", "src must be a rank"), ("epsilon", "different releases"), ("k", "k must lie in")]:
        assert says in a[mode]["message"] and says in b[mode]["message"], mode
        assert not a[mode]["consumed"] and not b[mode]["consumed"]  # refused before the reduction
    assert "rank 1 refused" in a["src"]["message"]


def test_a_sharded_release_equals_the_single_process_release_bit_for_bit(tmp_path):
    assert h.launch("sharded", 2, tmp_path) == [0, 0]
    a, b = _load(tmp_path, "sharded", 2)
    M = h.spiked(1100, 6)
    one = dl.release_rank_k(M.clone(), 6, sensitivity=1.0, epsilon=1.0, delta=1e-6,
                            generator=dl.SecureNormalSource.from_seed(11))
    noisy = dl.GaussianMechanism(one.noise_scale, 1.0).perturb(M, generator=dl.SecureNormalSource.from_seed(11))
    assert torch.equal(torch.cat([a["rows"], b["rows"]]), noisy)  # each rank's rows of one noise matrix
    for r in (a, b):
        torch.testing.assert_close(r["values"], one.eigenvalues, rtol=1e-12, atol=0)
        assert (r["vectors"] - one.eigenvectors).abs().max() < 1e-9
        assert r["randomness"] == "seeded"


def test_a_sharded_release_noises_the_upper_triangle_of_an_asymmetric_matrix(tmp_path):
    """Rows computed by separate products need not be exactly symmetric: the entries left of a
    rank's rows come from the ranks above, as the single-process mechanism takes the upper
    triangle, so no antisymmetric part reaches the solver without noise."""
    assert h.launch("sharded", 2, tmp_path, asym=True) == [0, 0]
    a, b = _load(tmp_path, "sharded", 2)
    M = h.spiked(1100, 6)
    M[1050, 10] += 1e6
    sigma = dl.calibrate_noise(1.0, epsilon=1.0, delta=1e-6).noise_scale
    noisy = dl.GaussianMechanism(sigma, 1.0).perturb(M, generator=dl.SecureNormalSource.from_seed(11))
    rows = torch.cat([a["rows"], b["rows"]])
    assert torch.equal(rows, noisy) and torch.equal(rows, rows.T)


@pytest.mark.parametrize("secure", [False])  # the secure source takes the same path (and cannot be compared)
def test_ranks_on_different_device_kinds_draw_one_noise_matrix(tmp_path, secure):
    """Engine "auto" draws the host algorithm for CPU rows and the portable one for CUDA rows:
    a job mixing them drew E_ij and E_ji independently (found by the audit of issue 19: the
    mean of the two copies had variance ½). Rank 1 stands for a CUDA rank here; every rank
    must draw the host algorithm, and the noisy rows must be exactly symmetric."""
    assert h.launch("sharded", 2, tmp_path, secure=secure, pretend_cuda=1, keep_rows=True) == [0, 0]
    a, b = _load(tmp_path, "sharded", 2)
    rows = torch.cat([a["rows"], b["rows"]])
    assert torch.equal(rows, rows.T)
    assert a["randomness"] == b["randomness"] == ("secure" if secure else "seeded")
    if not secure:  # the host algorithm's noise, as a single CPU process draws it
        M = h.spiked(1100, 6)
        sigma = dl.calibrate_noise(1.0, epsilon=1.0, delta=1e-6).noise_scale
        assert torch.equal(rows, dl.GaussianMechanism(sigma, 1.0).perturb(M, generator=dl.SecureNormalSource.from_seed(11)))


def test_the_noise_source_is_shared_by_the_library_only(tmp_path):
    assert h.launch("source_sharing", 2, tmp_path) == [0, 0]
    a, b = _load(tmp_path, "source_sharing", 2)
    assert "cannot be shared" in a["refused"]
    assert a["fresh_secure"] and b["fresh_secure"] and torch.equal(a["fresh"], b["fresh"])
    assert not a["seeded_secure"] and not b["seeded_secure"] and torch.equal(a["seeded"], b["seeded"])
    assert torch.equal(a["seeded"], dl.SecureNormalSource.from_seed(3).normals(8, stream=5))


def test_a_secure_sharded_release_over_four_ranks(tmp_path):
    assert h.launch("sharded", 4, tmp_path, d=2100, secure=True) == [0] * 4
    res = _load(tmp_path, "sharded", 4)
    assert all(torch.equal(r["values"], res[0]["values"]) for r in res)
    assert all(r["randomness"] == "secure" for r in res)
    truth = torch.linspace(3000.0, 1500.0, 6, dtype=torch.float64)
    sigma = dl.calibrate_noise(1.0, epsilon=1.0, delta=1e-6).noise_scale
    # each spike moves up by ≈ (σ²/2)·d/λ (second order) and by uᵀEu ~ N(0, σ²) (first order)
    shift = sigma**2 / 2 * 2100 / truth
    assert (res[0]["values"] - truth - shift).abs().max() < 5 * sigma


def test_a_sharded_release_over_budget_draws_nothing_anywhere(tmp_path):
    ledger = tmp_path / "ledger.json"
    dl.PrivacyBudget(0.5, 1e-5, path=ledger).save()
    assert h.launch("sharded_budget", 2, tmp_path, ledger=str(ledger)) == [0, 0]
    a, b = _load(tmp_path, "sharded_budget", 2)
    assert a["error"] == b["error"] == "BudgetExceededError"
    assert a["untouched"] and b["untouched"]  # overwrite=True, yet no noise was added
    assert len(dl.PrivacyBudget.load(ledger).events) == 0


def test_reduced_compression_statistics_are_bit_identical_to_one_pass(tmp_path):
    assert h.launch("statistics", 2, tmp_path) == [0, 0]
    a, b = _load(tmp_path, "statistics", 2)
    one = h.toy_stats(h.toy_rows())
    assert a["is_dst"] and not b["is_dst"]
    for name, st in one.groups.items():
        assert a["n"][name] == st.n_examples == 60
        assert torch.equal(a["grams"][name], st.gram)


def test_the_documented_torchrun_recipe_runs(tmp_path):
    """docs/distributed.md's launch line, on the example script, with 2 processes."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "examples" / "distributed_release.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks, one release" in proc.stdout and "noise secure" in proc.stdout
    assert "sharded over 2 ranks, d = 1024" in proc.stdout
