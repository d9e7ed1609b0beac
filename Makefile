# Two commands on a fresh machine with only Python 3.11+ and make: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean dist interop interop-deps check-venv

# Python 3.11+ is checked before it is used, so an old interpreter is named with the way out instead of
# failing inside pip or the code, the same way on every run.
NEEDS_311 := -c 'import sys; sys.exit(sys.version_info < (3, 11))'
GOAL := $(or $(firstword $(MAKECMDGOALS)),run)
# Shell: the command to run instead, naming an interpreter on PATH that would do when there is one.
SUGGEST := for py in python3.14 python3.13 python3.12 python3.11; do \
	command -v $$py >/dev/null 2>&1 && $$py $(NEEDS_311) 2>/dev/null && { echo "make PYTHON=$$py $(GOAL)"; exit; }; \
	done; echo "install Python 3.11 or newer, then name it: make PYTHON=python3.12 $(GOAL)"

$(BIN)/python:
	@! test -L $@ || { \
		echo "make: $(VENV) was made by a Python that is no longer there ($@ -> $$(readlink $@))." >&2; \
		echo "make: remove it and pick the interpreter: rm -rf $(VENV) && $$($(SUGGEST))" >&2; \
		exit 2; }
	@$(PYTHON) $(NEEDS_311) 2>/dev/null || { \
		found=$$($(PYTHON) --version 2>&1) && found=$$(echo "$$found" | head -n 1) || found="not found"; \
		echo "make: hitl-mcp needs Python 3.11 or newer, but PYTHON=$(PYTHON) is $$found." >&2; \
		echo "make: pick the interpreter: $$($(SUGGEST))" >&2; \
		exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A .venv made earlier by an older Python (or whose Python is gone) is not mended by installing into it.
check-venv: | $(BIN)/python
	@$(BIN)/python $(NEEDS_311) 2>/dev/null || { \
		found=$$($(BIN)/python --version 2>&1) && found=$$(echo "$$found" | head -n 1) || found="a Python that no longer runs"; \
		echo "make: $(VENV) was made by $$found, but hitl-mcp needs Python 3.11 or newer." >&2; \
		echo "make: remove it and pick the interpreter: rm -rf $(VENV) && $$($(SUGGEST))" >&2; \
		exit 2; }

# The distribution was called hitl-mcp before it took a name of its own: a venv holding both would register
# every built-in action twice.
DROP_OLD := $(BIN)/python -m pip uninstall --quiet --yes hitl-mcp 2>/dev/null || true

$(RUN_STAMP): pyproject.toml | check-venv
	@$(DROP_OLD)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | check-venv
	@$(DROP_OLD)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/hitl serve --http --host 127.0.0.1 --port 8000

LINT_PATHS := src tests examples interop $(wildcard bench)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite in worker processes (pytest-xdist). Most tests wait on subprocesses, sockets and databases rather
# than compute, so more workers than cores pays: measured in docs/performance.md ("The test suite").
# `make pytest TEST_WORKERS=0` runs it in this one process. loadgroup keeps the tests that share a
# module-scoped server or browser on one worker (tests/conftest.py groups them), so each starts once.
TEST_WORKERS ?= 4

# Every worker imports the whole suite. With PYTHONDONTWRITEBYTECODE set (as some shells and images do), pytest
# rewrote each test module's asserts anew in every worker of every run and nothing was cached: collecting took
# ~10 s of CPU a worker instead of ~3 s. Bytecode lands in __pycache__/ (ignored by git).
pytest: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -c 'import langgraph.checkpoint.sqlite' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

# Clients we did not write: the official TypeScript SDK and the MCP conformance suite, pinned in
# interop/package-lock.json and installed into interop/node_modules (needs npm; brings its own Node 22).
# The npm packages alone: the interop clients, and the official filesystem server the gateway's tests put
# behind hitl (they skip without it, except under CI=true).
interop-deps:
	@command -v npm >/dev/null || { echo "make interop needs npm (any Node.js); it fetches Node 22 itself" >&2; exit 2; }
	@test interop/node_modules/.package-lock.json -nt interop/package-lock.json \
		|| npm ci --prefix interop --no-audit --no-fund --loglevel=error \
		|| npm ci --prefix interop --no-audit --no-fund --loglevel=error

interop: interop-deps $(RUN_STAMP)
	$(BIN)/python interop/run.py

# A release artifact: the wheel that `pip install dist/…whl` takes on any machine.
dist: | check-venv
	rm -rf dist
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	@ls dist/*.whl

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
