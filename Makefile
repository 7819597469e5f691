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

# Until `tokentrail demo` (embedded broker, live stream, API) lands: the end-to-end path on files.
demo: $(STAMP)
	$(BIN)/tokentrail simulate --out demo-world --days 2 --seed 7
	$(BIN)/tokentrail ingest demo-world/events.jsonl --db $(DB)
	$(BIN)/tokentrail stats --db $(DB)
	$(BIN)/tokentrail tokens --db $(DB) --top 10 --format table

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
