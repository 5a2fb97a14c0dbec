"""One version, one license, a typed package: what pip and the package itself report agree."""

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import dplowrank

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dplowrank.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", dplowrank.__version__)
    try:
        installed = importlib.metadata.version("dplowrank")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        pytest.skip("dplowrank is not installed")
    assert installed == dplowrank.__version__  # what `pip show dplowrank` prints


def test_license_and_typing_marker_ship_with_the_package():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "dplowrank" / "py.typed").exists()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["dplowrank"]
    assert "Typing :: Typed" in project["classifiers"]
    requires = _pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires)
