# Entry points for everyone, CI included. uv comes from PATH, or is installed into
# .data/tools on first use so a machine with only Python and make can run everything.
SHELL := /bin/bash
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.data/tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never

.PHONY: help sync run test test-containers lint fmt typecheck unit migrate bench up down

help:
	@echo "make run | test | test-containers | lint | fmt | migrate | bench | up | down"

$(CURDIR)/.data/tools/bin/uv:
	python3 -m venv $(CURDIR)/.data/tools
	$(CURDIR)/.data/tools/bin/pip install --quiet uv

# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set (CI, containers) every
# process would otherwise compile each module it imports again (see `make bench`, row
# `cold-start`).
sync: $(UV)
	$(UV) sync --frozen --all-packages --compile-bytecode

run: sync
	$(UV) run --frozen python -m devstack.run

lint: sync
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen ruff check .

fmt: sync
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

typecheck: sync
	$(UV) run --frozen mypy
	for tests in gateway/tests audits-service/tests llm-service/tests; do \
		$(UV) run --frozen mypy "$$tests" || exit 1; \
	done

unit: sync
	$(UV) run --frozen pytest

test: lint typecheck unit

# The images and docker-compose.yml on a real Docker engine (installed and started if needed,
# stopped afterwards); see tests/containers/run.sh.
test-containers: sync
	UV=$(UV) bash tests/containers/run.sh

migrate: sync
	$(UV) run --frozen alembic -c migrations/alembic.ini upgrade head

bench: sync
	$(UV) run --frozen python -m bench

up:
	docker compose up --build

down:
	docker compose down
