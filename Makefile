# The two commands of the README's Quick start. Both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= deploy/config/default.toml
PYTEST_ARGS ?=

.PHONY: run test install install-train install-dev bench clean

## make run: create .venv, install, make sure demonstration models are active (trained on
## phantoms the first time, about 6-8 minutes on 2 cores; cached after), start the node (Ctrl-C stops it)
run: install-train
	$(VENV)/bin/mammo-node models bootstrap-demo --config $(CONFIG)
	$(VENV)/bin/mammo-node serve --config $(CONFIG)

## make test: install what the tests need (Debian tools too when root) and run the whole suite
test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

install:
	VENV=$(VENV) scripts/install.sh

install-train:
	VENV=$(VENV) scripts/install.sh --train

install-dev:
	VENV=$(VENV) scripts/install.sh --dev --train --system

bench: install-dev
	$(PY) -m bench.ingest

clean:
	rm -rf $(VENV) var .pytest_cache
