# Everything runs from a local .venv that this Makefile creates and refreshes
# whenever pyproject.toml changes, so a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/thread_hop.py
	$(BIN)/python benchmarks/backpressure_paths.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/async_paths.py
	$(BIN)/python benchmarks/combining.py
	$(BIN)/python benchmarks/broker_redis.py
	$(BIN)/python benchmarks/broker_nats.py
	$(BIN)/python benchmarks/broker_rabbitmq.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache
