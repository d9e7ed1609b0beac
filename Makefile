# Two commands on a fresh machine with only Python 3.11+ and make: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean interop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
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

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -c 'import langgraph.checkpoint.sqlite' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

# Clients we did not write: the official TypeScript SDK and the MCP conformance suite, pinned in
# interop/package-lock.json and installed into interop/node_modules (needs npm; brings its own Node 22).
interop: $(RUN_STAMP)
	@command -v npm >/dev/null || { echo "make interop needs npm (any Node.js); it fetches Node 22 itself" >&2; exit 2; }
	@test interop/node_modules/.package-lock.json -nt interop/package-lock.json \
		|| npm ci --prefix interop --no-audit --no-fund --loglevel=error \
		|| npm ci --prefix interop --no-audit --no-fund --loglevel=error
	$(BIN)/python interop/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
