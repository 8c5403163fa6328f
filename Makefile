# Everything runs from a local .venv that this Makefile creates and refreshes
# whenever pyproject.toml changes, so a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck docs pytest demo bench clean

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

# The documentation site (mkdocs.yml): the guide in docs/ and an API reference generated from
# the docstrings; --strict fails on any warning (a broken link or anchor, a missing reference,
# a docstring griffe cannot parse). NO_MKDOCS_2_WARNING silences mkdocs-material's banner.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: lint typecheck docs pytest

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
	rm -rf $(VENV) build dist site .mypy_cache .ruff_cache
