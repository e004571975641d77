# llama-orch developer entry points. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
CONFIG ?= examples/demo.yaml
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help setup promtool registry run test lint fmt schema bench clean

help:
	@echo "make run     set up, then serve $(CONFIG) on 127.0.0.1:8080"
	@echo "make test    set up, then run the whole test suite"
	@echo "make lint    ruff, mypy (package and bench) and the import layering contract"
	@echo "make schema  regenerate contracts/ (config schema and OpenAPI)"
	@echo "make bench   run the benchmarks in bench/"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Re-sync only when the project definition or the lock changed.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python $(PYTHON)
	@touch $@

setup: $(STAMP)

# promtool (Debian package `prometheus`) checks the /metrics scrape in tests/e2e/test_metrics.py.
# Installed once through apt when missing and possible; otherwise that one check skips, loudly.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing promtool (apt package prometheus)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null || echo "warning: promtool install failed"; \
	  else echo "warning: promtool unavailable and apt-get unusable; its check will skip"; fi; }

# docker-registry (Debian package; the CNCF distribution registry) serves OCI artifacts to the
# catalog's oci:// tests. Installed once through apt when missing and possible; else they skip.
registry:
	@command -v docker-registry >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing docker-registry (apt package docker-registry)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends docker-registry >/dev/null \
	      || echo "warning: docker-registry install failed"; \
	  else echo "warning: docker-registry unavailable and apt-get unusable; oci tests skip"; fi; }

run: setup
	$(VENV)/bin/llorch serve --config $(CONFIG)

test: setup promtool registry
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: setup
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

schema: setup
	$(VENV)/bin/llorch contracts write

bench: setup
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
