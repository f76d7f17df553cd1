.PHONY: setup setup-test run test bench
export GRADIO_ANALYTICS_ENABLED := False

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

run: setup
	python app.py

test: setup-test
	python -m pytest -q

bench: setup
	python bench/run_bench.py
