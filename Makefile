# tdd_lab developer commands. `make test` is the test command (CI runs it via .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run bench test test-slow test-all lint clean

setup: $(STAMP)  ## create the virtualenv and install tdd_lab[dev] (no-op when pyproject.toml is unchanged)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup  ## the main job: TDD on the embedded digits teacher (pretrains and caches the teacher on first use)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m tdd_lab.train $(ARGS)

bench: setup  ## benchmarks (medians; `make bench ARGS=--quick` takes about half a minute)
	$(PY) -m tdd_lab.bench --json $(ARGS)

test: setup  ## fast test suite (slow tests deselected)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q --durations=25

test-slow: setup  ## only the slow tests
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m slow

test-all: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m 'slow or not slow'

lint: setup  ## ruff (formatting is by hand: aligned per-argument comments are part of the style)
	$(VENV)/bin/ruff check tdd_lab tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
