# One entry surface. Every target installs what it needs on first use: a virtual environment
# created from pyproject.toml, re-installed whenever pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

PROFILE ?= quick

.PHONY: install test lint format describe train bench-lightning clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

# The test command the README names and CI runs: lint, format check, then the CPU test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# make describe ARGS="--set backbone.output_stride=8"
describe: $(STAMP)
	$(BIN)/ablations describe $(ARGS)

# make train PROFILE=quick ARGS="--set backbone.output_stride=8 --out runs/os8"
train: $(STAMP)
	$(BIN)/ablations train --profile $(PROFILE) $(ARGS)

# Lightning's overhead against a plain PyTorch loop on the same model and batches (prints the ratio).
bench-lightning: $(STAMP)
	$(BIN)/python benchmarks/lightning_overhead.py --profile $(PROFILE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
