# ray-vsr: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.ray-vsr-installed
PYTEST_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: help venv demo test lint format bench gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ray-vsr needs Python 3.11: set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the project's metadata changes, so a second `make test` starts within seconds.
$(STAMP): pyproject.toml | $(PY)
	@# Keep a torch that is already there (e.g. a CUDA build); otherwise take the pinned release.
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)  ## create .venv and install the project (editable) with its dev tools

demo: $(STAMP)  ## run the main job end to end on the embedded sample data
	$(PY) jobs/demo.py

test: $(STAMP)  ## run the whole test suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)  ## run the benchmarks in bench/ (figures go to BENCHMARKS.md by hand)
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Needs NVIDIA GPUs and a CUDA build of torch==$(TORCH_VERSION) in $(VENV) (the image's, infra/Dockerfile).
gpu-check: $(STAMP)  ## GPUs: released TTVSR recipe at full size, 300 iterations + evaluation, < 8 min
	TORCH_VERSION=$(TORCH_VERSION) PYTHON=$(PY) bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

clean:  ## remove generated data, runs and the MLflow store (keeps .venv)
	rm -rf data runs mlruns mlartifacts mlflow.db outputs .pytest_cache
