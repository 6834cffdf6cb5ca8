# The project's front door. `make demo` and `make test` each create/refresh .venv on their own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test lint format layout bench gpu-check docker-lint clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' Makefile | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create/refresh the virtual environment (.venv) with uvc and its dev tools

demo: $(STAMP)  ## run the main job on the built-in default
	$(BIN)/uvc demo

test: $(STAMP)  ## lint, format check and the CPU test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -n 2 --durations=10

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

layout: $(STAMP)  ## the package's layers, their sizes, and any upward import or import circle
	$(BIN)/python -m tests.test_layout

bench: $(STAMP)  ## reference benchmark on this machine -> bench/results/
	$(BIN)/python -m uvc.bench.reference --out bench/results

# No .venv and no $(STAMP): the GPU machine has torch & co. preinstalled and no network.
gpu-check:  ## one-shot check on an NVIDIA GPU machine (< 8 min) -> gpu-check/summary.md
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PYTHON) -m uvc.bench.gpu_check --out gpu-check

docker-lint: $(STAMP)  ## lint the Dockerfiles with hadolint
	$(BIN)/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
