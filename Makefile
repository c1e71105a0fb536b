# The two commands of the quickstart: `make demo` and `make test`.
.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python examples/quickstart.py

lint: setup
	.venv/bin/ruff check src tests bench examples
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/batch_local.py
