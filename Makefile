# Shoal's developer entry points. Every target sets the machine up first (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup serve test bench lint generate

setup:
	@scripts/setup

serve: setup
	@$(VENV)/bin/shoal serve

test:
	@scripts/setup --test
	@scripts/test

lint:
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: setup
	@$(PY) -m bench

generate:
	@scripts/generate
