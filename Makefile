# The two commands of the quickstart: `make demo` and `make test`.
.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python examples/quickstart.py

lint: setup
	.venv/bin/ruff check src tests bench examples
	.venv/bin/mypy

# two pytest workers, each taking whole test files (a module's server, broker or cluster starts
# once): most of the suite waits on JVMs, Ray and servers starting, not on the CPU; the twenty
# slowest tests are listed at the end, to keep the whole run within its budget
test: lint
	.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=20

bench: setup
	.venv/bin/python bench/batch_local.py
