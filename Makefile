# make demo: the Quart example on http://127.0.0.1:5000; make test: lint, types and the suite.
# Both build .venv themselves (python3 -m venv), so a fresh clone needs nothing but python3 >= 3.11
# and make: make demo installs the demo extra only (pip install -e '.[demo]'), make test the test
# extra, which includes it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
# The demo's extras, each installed once (.venv/.installed-<extra>): the S3 client too when the
# demo is pointed at S3 (STORE_PROVIDER=s3 or a Flask-Store S3 provider path in the environment).
DEMO_EXTRAS := demo $(if $(filter s3 %.S3Provider %.S3GeventProvider,$(STORE_PROVIDER)),s3)

.PHONY: help install system-deps demo test test-quart-lowest bench docs lint format clean

help:
	@echo "make demo     run the Quart example on http://$(HOST):$(PORT) (upload form, local storage; PORT=5001 for another port)"
	@echo "make test     ruff check, ruff format --check, mypy --strict and pytest"
	@echo "make lint     the same without pytest"
	@echo "make bench    benchmarks: bench/results/latest.md and latest.png"
	@echo "make docs     build the documentation site into site/ (mkdocs build --strict)"
	@echo "make format   ruff format and ruff check --fix"
	@echo "make clean    remove .venv and the caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[$*]'
	touch $@

# PostgreSQL for the database tests (the suite starts its own server on a loopback port), Chromium
# and its WebDriver for the demo's browser test (tests/test_demo_browser.py).
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing="$$missing chromium chromium-driver"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "note:$$missing not installed; their tests will say so and skip (apt-get install$$missing)"; \
	fi

# uvicorn, through the example's launcher: it says where files and rows go, and a port in use
# is one line.
demo: $(DEMO_EXTRAS:%=$(VENV)/.installed-%)
	@$(BIN)/python examples/quart_app.py --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two workers (pytest-xdist), each test module kept on one: its servers and fixtures start once.
test: lint system-deps
	$(BIN)/pytest -n 2 --dist loadfile
	$(MAKE) test-quart-lowest

# save_request's flow control (async_store/_quart.py) subclasses Quart's request Body, which is
# private API: its tests run again on the lowest Quart pyproject.toml allows, installed beside
# the venv's own (the highest) and put first on the path, so the venv itself is left as it is.
QUART_LOWEST := 0.20.0
QUART_TESTS := tests/test_ingest.py tests/test_asgi_servers.py tests/test_quart_version.py

QUART_DIR := $(VENV)/quart-$(QUART_LOWEST)

# Touched once pip has finished: a half-made folder is never taken for an installed one.
$(QUART_DIR)/.installed: | $(STAMP)
	rm -rf $(QUART_DIR)
	$(BIN)/python -m pip install -q --no-deps --target $(QUART_DIR) 'quart==$(QUART_LOWEST)'
	touch $@

test-quart-lowest: $(QUART_DIR)/.installed
	PYTHONPATH=$(QUART_DIR) QUART_EXPECTED=$(QUART_LOWEST) \
		$(BIN)/pytest -q -n 2 --dist loadfile -p no:cacheprovider $(QUART_TESTS)

# Not part of make test: minutes, and figures only mean something on a quiet machine.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

# The site in site/ (open site/index.html); tests/test_docs.py builds it too, in make test.
docs: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist site *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
