# Two commands for a newcomer: `make demo` and `make test`.
# Each creates .venv and installs what it needs; torch is pinned to the CPU build 2.13.0
# here so a fresh machine installs it from disk in seconds (pyproject.toml admits a range).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench peers clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dplowrank demo

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test" >&2; exit 1; fi; exit $$rc

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
