# Two commands for a newcomer: `make demo` and `make test`.
# Both use one .venv and install only what they need, each with its own stamp: `make demo` the
# core dependencies, `make test` the test extras as well (so `make demo` then `make test` works,
# and so does either alone). torch is pinned here to the CPU build 2.13.0 for a fast set-up
# (pyproject.toml admits torch>=2.1,<3: with CUDA, install your own torch first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
STAMP      := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
DOCS_STAMP := $(VENV)/.installed-docs
LINT_STAMP := $(VENV)/.installed-lint

.PHONY: demo test docs lint bench peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

$(LINT_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[lint]'
	touch $(LINT_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m dplowrank demo

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test" >&2; exit 1; fi; exit $$rc

# The documentation site (mkdocs.yml); --strict turns every warning into an error.
docs: $(DOCS_STAMP)
	$(PY) -m mkdocs build --strict

# ruff (rules in pyproject.toml [tool.ruff]) and mypy on the package ([tool.mypy]); the library is
# installed too, so that mypy sees torch, numpy and scipy's own annotations.
lint: $(LINT_STAMP)
	$(PY) -m ruff check dplowrank tests benchmarks tools
	$(PY) -m mypy dplowrank

bench: $(STAMP)
	$(PY) benchmarks/bench_release.py

# The PCA peers (diffprivlib 0.6 needs scikit-learn < 1.6) in their own environment, for
# benchmarks/bench_pca_peers.py; the library and its tests never need them.
peers: .peers/.installed
.peers/.installed:
	$(PYTHON) -m venv .peers
	.peers/bin/python -m pip install -q "scikit-learn<1.6" "diffprivlib==0.6.6" "opendp[numpy]==0.16.0"
	touch .peers/.installed

clean:
	rm -rf $(VENV) .peers .pytest_cache .hypothesis
