.PHONY: setup setup-test run test test-unit lint bench
export GRADIO_ANALYTICS_ENABLED := False
# Everything runs in the project's own virtual environment, created by scripts/setup.sh.
PY := .venv/bin/python

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

run: setup
	$(PY) app.py

# Lint, then every tier: unit, integration (tiny model, subprocesses, app server), e2e (embedded model, browser).
test: setup-test
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The quick loop while editing: the unit tier only (no model weights, no subprocess).
test-unit:
	$(PY) -m pytest -q -m unit

lint:
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/run_bench.py
