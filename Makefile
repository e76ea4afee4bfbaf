# Batchery's tasks. Everything runs from the virtualenv in .venv, created on first use.
#   make test    install, then run the test suite (real Redis and worker processes)
#   make test-faults  only the fault injection, failure, OOM, security and fuzz tests (docs/reliability.md)
#   make demo    install, start the local stack, run the example jobs over HTTP, stop the stack
#   make up      start the local stack in the background (logs and pid files in .run/); make down stops it
#   make install the virtualenv, with the `batchery` command in .venv/bin
#   make lint    ruff
#   make bench   the benchmarks in bench/ in their quick modes (CI-sized); make bench-full: real sizes

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo up down test test-faults lint bench bench-full

install: $(STAMP)

# The stamp depends on requirements.txt, so a second `make install` does nothing until it changes.
# The project itself is installed editable (no dependencies: they are the pinned ones above), for
# the `batchery` command in .venv/bin.
$(STAMP): requirements.txt pyproject.toml
	@[ -x $(BIN)/pip ] || $(PYTHON) -m venv $(VENV) || { \
		echo "error: '$(PYTHON) -m venv' failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python scripts/stack.py demo

up: $(STAMP)
	$(BIN)/python scripts/stack.py up

# stack.py needs only the standard library, so `down` works even without the virtualenv.
down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/stack.py down; else $(PYTHON) scripts/stack.py down; fi

test: $(STAMP)
	$(BIN)/python -m pytest

FAULT_TESTS := tests/test_faults.py tests/test_failures.py tests/test_oom.py tests/test_api_restart.py \
	tests/test_watchdog.py tests/test_security.py tests/test_auth.py tests/test_fuzz_api.py \
	tests/test_properties.py tests/test_hostile_bodies.py

test-faults: $(STAMP)
	$(BIN)/python -m pytest $(FAULT_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Each benchmark starts its own Redis, workers and API, and runs its baseline in the same run.
bench: $(STAMP)
	$(BIN)/python bench/load.py --quick
	$(BIN)/python bench/status.py --quick
	$(BIN)/python bench/stop.py --quick
	$(BIN)/python bench/enqueue.py --quick

# The real sizes, three runs each where the figures in docs/benchmarks.md are medians.
bench-full: $(STAMP)
	$(BIN)/python bench/load.py --repeat 3
	$(BIN)/python bench/status.py
	$(BIN)/python bench/stop.py --repeat 3
	$(BIN)/python bench/enqueue.py --repeat 3
