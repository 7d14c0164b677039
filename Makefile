# Airlock — the two commands that matter: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# openai and anthropic need an HTTP stack (h11 >= 0.16) that mitmproxy 11 cannot share: the
# tests run those SDKs from their own virtualenv, as an agent's own process would.
SDK_VENV  := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed-stamp
# The official Node SDKs (pinned by tests/e2e/node/package-lock.json), when Node is here: their
# test is skipped without them, and required (AIRLOCK_REQUIRE_NODE) where Node is.
NODE_TESTS := tests/e2e/node
NODE_STAMP := $(NODE_TESTS)/node_modules/.installed-stamp
NODE       := $(shell command -v node 2>/dev/null)
NODE_DEPS  := $(if $(NODE),$(NODE_STAMP))
# make test's pytest-xdist workers; a test file's tests stay on one worker (its fixtures)
TEST_WORKERS ?= 2

.PHONY: run test demo bench bench-audit bench-ab catalog coverage lint format clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -e ./sdk
	touch $(STAMP)

$(SDK_STAMP): Makefile
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SDK_VENV)/bin/python -m pip install --quiet openai anthropic mcp
	touch $(SDK_STAMP)

$(NODE_STAMP): $(NODE_TESTS)/package-lock.json
	npm ci --prefix $(NODE_TESTS) --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

## run: start the proxy on 127.0.0.1:8080 with the shipped mappings, policies and an SQLite store
run: $(STAMP)
	$(BIN)/airlock run $(ARGS)

## demo: Airlock at work in two minutes: local stand-ins, a scripted agent, the reviewer console
demo: $(STAMP)
	$(BIN)/airlock demo $(ARGS)

## test: lint, then the whole suite (unit, store on SQLite and PostgreSQL, end-to-end through mitmdump)
test: $(STAMP) $(SDK_STAMP) $(NODE_DEPS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# Bytecode for Airlock's own modules, once: with PYTHONDONTWRITEBYTECODE set (this machine
	@# sets it) every proxy, decider and CLI process the suite starts compiled them anew (~0.2 s).
	$(BIN)/python -m compileall -q -j 0 addons console decider pipeline store sdk tests
	AIRLOCK_REQUIRE_SDKS=1 AIRLOCK_REQUIRE_NODE=$(if $(NODE),1,0) \
		$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## bench: bare mitmdump against Airlock, same upstream and load, one run
bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench_proxy $(ARGS)

## bench-audit: the audit trail at 1,000,000 events: seal cost, write, verify, export, offline verify
bench-audit: $(STAMP)
	$(BIN)/python -m tests.bench.bench_audit $(ARGS)

## bench-ab: this checkout against BASE (a git revision), interleaved rounds, medians
bench-ab: $(STAMP)
	$(BIN)/python -m tests.bench.bench_ab $(BASE) $(ARGS)

## catalog: regenerate catalog/aws/*.json from the botocore pinned in catalog/sources.json
catalog: $(STAMP)
	$(BIN)/python -m airlock.console.catalog_build

## coverage: per service, write operations identified / total, and every miss
coverage: $(STAMP)
	$(BIN)/python -m airlock.console.catalog_coverage

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(SDK_VENV) $(NODE_TESTS)/node_modules .pytest_cache .ruff_cache *.egg-info
