# Two commands: `make run` (the main job on the embedded broker) and `make test`.
# Both create .venv if missing and install the project (with test extras) into it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: run test install chromium bench replay-ml100k schemas docs clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,train]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/reloop run $(ARGS)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(ARGS)

# Headless Chromium (Debian's package) loads the worker's status page in tests/ops/test_status_page.py.
CHROMIUM := /usr/bin/chromium
CHROMIUM_MISSING := error: $(CHROMIUM) is missing and could not be installed with \
	'apt-get install -y --no-install-recommends chromium' (needs root and a reachable Debian mirror); \
	install Debian's chromium package, then rerun make test
chromium:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian's chromium for the status-page test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium \
	  || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; \
	} || { echo "$(CHROMIUM_MISSING)" >&2; exit 1; }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM_MISSING)" >&2; exit 1; }

replay-ml100k: $(STAMP)
	$(BIN)/reloop replay ../shared/data/ml-100k --format movielens --report reports/ml100k.json

schemas docs: $(STAMP)
	$(BIN)/python -m reloop.streams.schemas docs/schemas
	$(BIN)/python -m reloop.streams.topics > docs/topics.md
	$(BIN)/python -m reloop.ops.settings > docs/configuration.md

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/throughput.py --json reports/throughput.json
	$(BIN)/python bench/error_memory_speed.py --json reports/error_memory_speed.json

clean:
	rm -rf $(VENV) var reports .pytest_cache .hypothesis
