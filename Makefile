# InferMesh developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help setup demo serve-demo test test-unit test-slow fmt lint typecheck bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## create .venv (CPU torch 2.13.0 without a GPU) and install infermesh[dev]
	@./scripts/setup.sh

demo: setup  ## train the tiny GPT on an embedded local cell, then serve it and answer a request
	@$(BIN)/infermesh-run --nnodes auto --nproc-per-node 2 --run-dir runs \
		examples/train_tiny_gpt.py trainer.max_steps=300 trainer.ckpt_every=100 \
		trainer.out_dir=runs/tiny_gpt
	@$(PY) examples/serve_once.py --checkpoint runs/tiny_gpt/checkpoints

serve-demo: setup  ## serve the demo checkpoint (2 replicas behind the router) and ask it once
	@$(PY) examples/serve_once.py --checkpoint runs/tiny_gpt/checkpoints

test: setup  ## lint, typecheck and the whole test suite (what CI runs)
	@$(MAKE) --no-print-directory lint typecheck
	@$(BIN)/pytest -q $(PYTEST_ARGS)

test-unit: setup  ## the fast tests only (no multi-process launches)
	@$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

fmt: setup  ## format and auto-fix with ruff
	@$(BIN)/ruff format infermesh sim tests benchmarks examples
	@$(BIN)/ruff check --fix infermesh sim tests benchmarks examples

lint: setup  ## ruff lint and format check; generated gRPC code matches proto/
	@PY=$(PY) ./scripts/gen_proto.sh --check
	@$(BIN)/ruff check infermesh sim tests benchmarks examples
	@$(BIN)/ruff format --check infermesh sim tests benchmarks examples

typecheck: setup  ## mypy over the package
	@$(BIN)/mypy

bench: setup  ## the launcher benchmark against torchrun (the others: benchmarks/*/README.md)
	@$(PY) benchmarks/launch/bench_launch.py

clean:  ## remove runs/, caches and the virtual environment
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache $(VENV)
