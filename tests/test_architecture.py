"""The package's structure: layers without cycles or upward imports, public names across
units, no hidden process state, and seeded releases that do not depend on the machine's load.

The layer table and the import reader are ``tools/structure.py`` (docs/architecture.md).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _structure():
    spec = importlib.util.spec_from_file_location("structure", ROOT / "tools" / "structure.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["structure"] = mod
    spec.loader.exec_module(mod)
    return mod


structure = _structure()
Import = structure.Import


def test_the_package_has_no_cycle_no_upward_import_and_no_private_reach():
    edges = structure.imports()
    assert len(edges) > 100  # the reader sees the package's imports (a sanity check on the tool)
    assert structure.violations(edges) == []


def test_every_unit_has_a_layer():
    units = {structure.unit_of(structure.module_name(p)) for p in (ROOT / "dplowrank").rglob("*.py")}
    assert units <= set(structure.LAYER_OF), units - set(structure.LAYER_OF)


def test_tests_use_public_names_where_there_are_some():
    assert structure.private_test_imports() == []


@pytest.mark.parametrize(
    "edge, message",
    [
        (Import("dplowrank.mechanisms._gaussian", "dplowrank.accounting", ("GaussianEvent",), 1), "sideways"),
        (Import("dplowrank.privacy._gdp", "dplowrank.mechanisms", ("gram_sensitivity",), 1), "upward"),
        (Import("dplowrank.release._pipeline", "dplowrank.gram", ("_check",), 1), "private names"),
        (Import("dplowrank.release._pipeline", "dplowrank.linalg._lanczos", ("x",), 1), "private module"),
        (Import("dplowrank.nowhere", "dplowrank.gram", ("x",), 1), "no layer"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(edge, message):
    """The checker is not vacuous: each planted violation is reported."""
    found = structure.violations([edge])
    assert found and message in found[0]


def test_the_checker_catches_a_cycle_inside_a_unit():
    edges = [
        Import("dplowrank.diagnostics._report", "dplowrank.diagnostics._noise", ("x",), 1),
        Import("dplowrank.diagnostics._noise", "dplowrank.diagnostics._report", ("y",), 1),
    ]
    assert any("cycle" in v for v in structure.violations(edges))


def _calls(attr: str) -> list[str]:
    """Modules of the package that call ``torch.<attr>`` (or anything ending in ``.<attr>``)."""
    found = []
    for path in (ROOT / "dplowrank").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == attr:
                found.append(str(path.relative_to(ROOT)))
    return sorted(set(found))


def test_thread_settings_change_in_one_place():
    """Only the locked, re-entrant context of ``_threads`` sets torch's thread count."""
    assert _calls("set_num_threads") == ["dplowrank/_threads.py"]


def test_no_decision_is_taken_from_a_clock():
    """No timing probe: the only clock reads are the progress bar's and the CLI's report."""
    allowed = {"dplowrank/_progress.py", "dplowrank/cli/_demos.py", "dplowrank/demo/minilm.py"}
    for attr in ("perf_counter", "monotonic", "time_ns", "process_time"):
        assert set(_calls(attr)) <= allowed, attr


_RELEASE = r"""
import hashlib, json, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
import dplowrank as dl

out = {}
rng = np.random.default_rng(7)
for d, dtype, mech in ((96, "float64", "gaussian"), (640, "float32", "gaussian"), (640, "float64", "gaussian"),
                       (600, "float64", "complex"), (2112, "float32", "gaussian")):
    x = rng.normal(size=(2 * d, d)) * np.linspace(3, 0.1, d)
    r = dl.release_rank_k(x, 6, epsilon=2.0, delta=1e-6, row_norm=30.0, mechanism=mech, dtype=dtype,
                          generator=torch.Generator().manual_seed(11))
    h = hashlib.sha256()
    for t in (r.eigenvalues, r.eigenvectors, r.spectrum):
        h.update(t.contiguous().numpy().tobytes())
    out[f"{d}-{dtype}-{mech}"] = [h.hexdigest(), r.solver, r.warm_start]
print(json.dumps(out))
"""


def test_a_seeded_release_is_bit_identical_across_processes_and_thread_counts():
    """The same seed gives the same bytes with 1 and 2 threads, in separate processes: no
    solver path, block split or warm start depends on the thread count or the machine's
    load. The shapes cover the dense solver and the Krylov solver in both dtypes, and (at
    d ≥ 2048, on a CPU whose capability turns it on) the half-precision warm start."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = []
    for threads in (1, 2):
        proc = subprocess.run([sys.executable, "-c", _RELEASE, str(threads)], capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1]
    assert {v[1] for v in runs[0].values()} == {"dense", "lanczos"}
    assert hashlib.sha256(json.dumps(runs[0]).encode()).hexdigest()  # the runs carry content


def test_old_import_paths_still_work_with_a_deprecation_warning():
    """What moved between units keeps its old path for now (tools/structure.py lists the shims)."""
    import importlib

    import dplowrank as dl
    import dplowrank.diagnostics as diagnostics

    with pytest.warns(DeprecationWarning, match="dplowrank.analysis"):
        assert diagnostics.theory_bounds is dl.theory_bounds
    with pytest.warns(DeprecationWarning, match="dplowrank.analysis"):
        assert diagnostics.check_bounds is dl.check_bounds
    with pytest.raises(AttributeError):
        diagnostics.no_such_name  # noqa: B018
    for old, new, name in (("dplowrank.audit", "dplowrank.analysis", "audit"),
                           ("dplowrank.datasets", "dplowrank.demo.datasets", "stdlib_sentences"),
                           ("dplowrank.compress.minilm", "dplowrank.demo.minilm", "run_demo")):
        with pytest.warns(DeprecationWarning, match=new):
            module = importlib.reload(importlib.import_module(old)) if old in sys.modules else importlib.import_module(old)
        assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_a_shim_is_the_only_allowed_upward_import():
    shim = Import("dplowrank.diagnostics", "dplowrank.analysis", ("",), 1)
    assert structure.violations([shim]) == []
    other = Import("dplowrank.diagnostics._report", "dplowrank.analysis", ("",), 1)
    assert "upward" in structure.violations([other])[0]
