PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs wheel

$(VENV)/.installed: pyproject.toml constraints.txt setup.py sgdx/_native/sgd_step.cc
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m sgdx demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(VENV)/.installed
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint docs
	$(BIN)/python -m pytest

# the release wheel (manylinux), in dist/
wheel: $(VENV)/.installed
	$(BIN)/python tools/build_wheel.py dist
