# The two commands of the README's Quick start. Both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= deploy/config/default.toml
PYTEST_ARGS ?=

.PHONY: run test install install-train install-dev bench clean

# The demo model packages shipped for the current models.package.demo.DEMO_VERSION
# (deploy/demo-models/NAME@VERSION/, one per kind): when both are there `make run` installs the
# runtime only and bootstrap-demo installs them; otherwise it needs the training extras to train them.
DEMO_VERSION := $(shell sed -n 's/^DEMO_VERSION = "\(.*\)".*/\1/p' models/package/demo.py)
DEMO_SHIPPED := $(wildcard deploy/demo-models/*@$(DEMO_VERSION)/manifest.json)

## make run: create .venv, install, make sure demonstration models are active (the shipped packages:
## seconds, no torch; else trained on phantoms the first time, about 40 minutes on 2 cores, cached after),
## start the node (Ctrl-C stops it)
run: $(if $(word 2,$(DEMO_SHIPPED)),install,install-train)
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
