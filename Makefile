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

.PHONY: help setup promtool registry chromium buildtools run test test-real lint fmt schema bench proof \
  clean

help:
	@echo "make run     set up, then serve $(CONFIG) on 127.0.0.1:8080"
	@echo "make test    set up, then run the whole test suite"
	@echo "make test-real  build a CPU llama.cpp once and run the real-engine checks (simulated)"
	@echo "make lint    ruff, mypy (package and bench) and the import layering contract"
	@echo "make schema  regenerate contracts/ (config schema and OpenAPI)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make proof   run the tests and write a proof bundle to $(PROOF)"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Re-sync only when the project definition or the lock changed.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra cluster --python $(PYTHON)
	@touch $@

setup: $(STAMP)

# $(call apt_tool,COMMAND,PACKAGE,WHAT SKIPS): install a Debian package once when its command is
# missing and apt-get is usable (as root); otherwise say loudly which check will skip.
define apt_tool
	@command -v $(1) >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(1) (apt package $(2))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(2) >/dev/null || echo "warning: $(1) install failed"; \
	  else echo "warning: $(1) unavailable and apt-get unusable; $(3) will skip"; fi; }
endef

# promtool (Debian package `prometheus`) checks the /metrics scrape in tests/e2e/test_metrics.py.
promtool:
	$(call apt_tool,promtool,prometheus,its check)

# chromium is the browser tests/e2e/test_console.py drives through Playwright (never
# Playwright's own browser downloads).
chromium:
	$(call apt_tool,chromium,chromium,the console browser tests)

# docker-registry (Debian package; the CNCF distribution registry) serves OCI artifacts to the
# catalog's oci:// tests. Installed once through apt when missing and possible; else they skip.
registry:
	$(call apt_tool,docker-registry,docker-registry,the oci catalog tests)

# cmake and a C++ compiler build the CPU llama-server that `make test-real` runs.
buildtools:
	$(call apt_tool,cmake,cmake,the real llama.cpp build)
	$(call apt_tool,g++,g++,the real llama.cpp build)

run: setup
	$(VENV)/bin/llorch serve --config $(CONFIG)

# The suite runs in TEST_WORKERS processes (pytest-xdist): its tests mostly wait on real servers
# and subprocesses, so more workers than cores still shortens it. TEST_WORKERS=0 runs it in
# this one process. `loadgroup` keeps the Ray cluster tests on one worker (tests/conftest.py).
TEST_WORKERS ?= 4
test: setup promtool registry chromium
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The real llama.cpp checks (tests/real): build llama-server from the pinned llama.cpp source
# once into the engine cache (a CPU build, simulated), then run them. With REQUIRE_REAL_LLAMA=1
# a failed build fails the run; without it the checks skip and say why.
test-real: setup buildtools
	$(VENV)/bin/python -m tests.real.llama_build || [ "$${REQUIRE_REAL_LLAMA:-0}" != 1 ]
	$(VENV)/bin/python -m pytest tests/real --real-llama $(PYTEST_ARGS)

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
