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

.PHONY: help setup promtool run test lint fmt schema bench proof clean

help:
	@echo "make run     set up, then serve $(CONFIG) on 127.0.0.1:8080"
	@echo "make test    set up, then run the whole test suite"
	@echo "make lint    ruff, mypy (package and bench) and the import layering contract"
	@echo "make schema  regenerate contracts/ (config schema and OpenAPI)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make proof   run the tests and write a proof bundle to $(PROOF)"

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

run: setup
	$(VENV)/bin/llorch serve --config $(CONFIG)

test: setup promtool
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

# A proof bundle: test reports and determinism outputs, then live-server evidence and a SHA-256
# manifest (tests/support/proof.py). PROOF_TESTS narrows the suites (default: all of them).
PROOF ?= proof/$(shell date -u +%Y%m%dT%H%M%SZ)
PROOF_TESTS ?= tests
proof: setup promtool
	mkdir -p $(PROOF)
	set -o pipefail; LLORCH_PROOF_DIR=$(abspath $(PROOF)) $(VENV)/bin/python -m pytest \
	  $(PROOF_TESTS) --junitxml=$(PROOF)/junit.xml 2>&1 | tee $(PROOF)/pytest.txt
	$(VENV)/bin/python -m tests.support.proof $(PROOF)

bench: setup
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
