# Everything a fresh machine needs, from python3 and make alone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DB      ?= demo.duckdb

.PHONY: install lint test bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check tokentrail tests bench
	$(BIN)/ruff format --check tokentrail tests bench
	$(BIN)/mypy tokentrail

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

demo: $(STAMP)
	$(BIN)/tokentrail demo --db $(DB)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
