# flowmatch: `make demo` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt
DEMO   := runs/demo

.PHONY: install demo test bench clean

install: $(STAMP)

# torch is pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/flowmatch train --data two-gaussians --out $(DEMO) --force
	$(BIN)/flowmatch sample --run $(DEMO) -n 2000 --solver rk4 --nfe 100 --out $(DEMO)/generated.npy --force
	@echo "demo run folder: $(DEMO) (samples.png, metrics.json, generated.npy)"

# lint and format (ruff), types (mypy on the package), the layers (import-linter's contracts in pyproject.toml),
# then the tests, on two worker processes (pytest-xdist: each test is single-threaded, see tests/conftest.py)
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2

# the peers (torchcfm, flow-matching) come with the bench extra
bench: install
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
