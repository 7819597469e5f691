# Everything a fresh machine needs, from python3 and make alone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DB      ?= demo.duckdb

.PHONY: install lint test bench demo clean system-deps

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

# System packages the tests run for real (Debian, root): rsyslog receives the syslog sink's CEF;
# chromium renders the web view.
system-deps:
	(test -x /usr/sbin/rsyslogd && test -x /usr/bin/chromium) || (apt-get update \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			rsyslog chromium fonts-dejavu-core)

test: lint system-deps
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/graph.py

# Until `tokentrail demo` (embedded broker, live stream, API) lands: the end-to-end path on files.
demo: $(STAMP)
	$(BIN)/tokentrail simulate --out demo-world --days 2 --seed 7
	$(BIN)/tokentrail ingest demo-world/events.jsonl --db $(DB) --catalog demo-world/catalog.toml
	$(BIN)/tokentrail stats --db $(DB)
	$(BIN)/tokentrail tokens --db $(DB) --top 10 --format table
	$(BIN)/tokentrail alerts --db $(DB) --format table
	$(BIN)/tokentrail evaluate --db $(DB) --labels demo-world/labels.json --format table

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
