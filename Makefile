# `make demo` and `make test` each create .venv when missing, install the project into it, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned so pip takes the CPU wheel where one is provided locally; override for CUDA: make TORCH_SPEC=torch demo
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ganpipe demo

test: $(STAMP)
	$(BIN)/ruff check gan_models data_prep pipelines tests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check gan_models data_prep pipelines tests
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/ganpipe bench --family dcgan --image-size 32 64 --batch 64 --channels 3

clean:
	rm -rf .ganpipe
