# The README's two commands: `make demo` and `make test`. Both create the virtual
# environment on first use (torch's CPU wheel first, then the package with its extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skquant-installed
export SKQUANT_DOCS_OFFLINE ?= 1
# `make test` (and CI) draws the same hypothesis examples every run, so a red run
# always means a change broke something; `make explore` draws new ones.
export HYPOTHESIS_PROFILE ?= ci

.PHONY: demo test explore docs lint bench snapshot clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[torch,tests,docs,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m skquant demo --plot demo.png

test: $(STAMP)
	$(PY) -m pytest -n 2 -q
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

explore: $(STAMP)
	HYPOTHESIS_PROFILE=skquant $(PY) -m pytest -n 2 -q

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check skquant tests benchmarks

# A refactor changes no number: fingerprint of every quantizer's and driver's results
# against the one recorded before it (one thread; recorded on the development machine).
snapshot: $(STAMP)
	$(PY) benchmarks/snapshot.py --check benchmarks/results/snapshot.json

bench: $(STAMP)
	$(PY) benchmarks/bench_msq_speed.py

clean:
	rm -rf $(VENV) docs/_build docs/generated docs/auto_examples docs/gen_modules
