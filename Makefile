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
	$(BIN)/python bench/ingest.py --floor
	$(BIN)/python bench/graph.py

# The live demo: embedded broker, simulated attacks, ingest, detection, API and web view on
# 127.0.0.1. Runs until Ctrl-C; `make demo DURATION=60` stops after a minute with a summary.
# Each run starts a new demo.duckdb (--fresh): a continued world would replay expired tokens.
DURATION ?=
demo: $(STAMP)
	$(BIN)/tokentrail demo --db $(DB) --fresh$(if $(DURATION), --duration $(DURATION))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
