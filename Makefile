# Front door: every target installs what it needs first (idempotent and fast when done).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.NOTPARALLEL:

VENV := .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?= --spines 2 --leaves 2 --hypervisors-per-leaf 2 --vms-per-hypervisor 2

# pytest exits 5 when it collects nothing: a suite that vanished must fail, loudly.
define pytest
	@echo "+ pytest $(1)"
	@$(PY) -m pytest $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests ($(1))" >&2; exit 1; fi; \
	exit $$rc
endef

.PHONY: help install venv demo test unit integration bench lint clean

help:
	@echo "make install      system packages, .venv, Open vSwitch (scripts/install.sh)"
	@echo "make demo         leaf-spine Mininet data centre: check it, then keep it running to explore (Ctrl-C ends)"
	@echo "make test         lint, unit tests, integration tests (Mininet, serial)"
	@echo "make unit         unit tests only"
	@echo "make integration  integration tests only"
	@echo "make bench        benchmarks (bench/run.py)"
	@echo "make lint         ruff check"
	@echo "make clean        remove .venv and caches"

install:
	@./scripts/install.sh

venv: install

demo: install
	$(PY) -m mininet_scenarios.datacenter $(DEMO_ARGS)

# Steps run in order inside one recipe, so nothing runs in parallel even under make -j.
test: install
	$(VENV)/bin/ruff check .
	$(call pytest,tests/unit -q)
	$(call pytest,tests/integration -q -p no:cacheprovider --timeout 600)

unit: install
	$(call pytest,tests/unit -q)

# Integration tests share one Open vSwitch and Mininet: always serial (no xdist).
integration: install
	$(call pytest,tests/integration -q -p no:cacheprovider --timeout 600)

bench: install
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .

# Deliberately no `mn -c` here: it would tear down any Mininet run on this machine.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	find . -path ./.git -prune -o -type f -name '*.py[co]' -exec rm -f {} +
