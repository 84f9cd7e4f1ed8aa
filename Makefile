# tfkd: `make test` and `make demo` each work alone from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tfkd-installed
PYTEST_ARGS ?=

.PHONY: setup system-deps test test-slow test-all lint format demo bench clean

# Debian packages: TTS engines, voices, text sources and audio tools.
system-deps:
	@bash tools/install_system_deps.sh

$(STAMP): setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: system-deps $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) tools/bench_rnnt_loss.py

# The whole story on the built-in small corpus into runs/demo/ (docs/demo.md); resumable.
# e.g. make demo DEMO_ARGS="--fresh" | DEMO_ARGS="--only export" | DEMO_ARGS="--no_baseline"
DEMO_ARGS ?=
demo: setup
	$(PY) tools/run_demo.py --out runs/demo --data data $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
