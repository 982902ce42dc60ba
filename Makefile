# make demo: the Quart example on http://127.0.0.1:5000; make test: lint, types and the suite.
# Both build .venv themselves (python3 -m venv, pip install -e '.[test]'), so a fresh clone
# needs nothing but python3 >= 3.11 and make.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: help install system-deps demo test bench lint format clean

help:
	@echo "make demo     run the Quart example on http://$(HOST):$(PORT) (upload form, local storage)"
	@echo "make test     ruff check, ruff format --check, mypy --strict and pytest"
	@echo "make lint     the same without pytest"
	@echo "make bench    benchmarks: bench/results/latest.md and latest.png"
	@echo "make format   ruff format and ruff check --fix"
	@echo "make clean    remove .venv and the caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# PostgreSQL for the database tests (the suite starts its own server on a loopback port).
system-deps:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
		echo "note: PostgreSQL is not installed; its tests will say so and skip (apt-get install postgresql)"; \
	fi

demo: $(STAMP)
	@echo "async_store demo on http://$(HOST):$(PORT) (SQLite and files in examples/instance unless DATABASE_URL / STORE_PATH are set)"
	$(BIN)/hypercorn --bind $(HOST):$(PORT) examples/quart_app.py:app

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint system-deps
	$(BIN)/pytest

# Not part of make test: minutes, and figures only mean something on a quiet machine.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
