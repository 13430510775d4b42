# The two commands of the README's Quick start. Both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= deploy/config/default.toml
PYTEST_ARGS ?=

.PHONY: run test install install-dev bench clean

## make run: create .venv, install, start the node on its defaults (Ctrl-C stops it)
run: install
	$(VENV)/bin/mammo-node serve --config $(CONFIG)

## make test: install what the tests need (Debian tools too when root) and run the whole suite
test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

install:
	VENV=$(VENV) scripts/install.sh

install-dev:
	VENV=$(VENV) scripts/install.sh --dev --train --system

bench: install-dev
	$(PY) -m bench.ingest

clean:
	rm -rf $(VENV) var .pytest_cache
