# The two commands a user needs: `make demo` and `make test`. Both set up what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo perf lint clean-local check

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/run-tests.sh $(PYTEST_ARGS)

demo: setup
	@$(VENV)/bin/lacewing demo

check: setup
	@$(VENV)/bin/lacewing check

perf: setup
	@$(PY) -m perf run $(PERF_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/lint-imports

# Remove every local cluster this machine still has (after a crash, say).
clean-local: setup
	@$(VENV)/bin/lacewing local down --all
