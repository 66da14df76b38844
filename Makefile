# Two commands on a fresh Debian/Ubuntu machine: `make run` serves, `make test` tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test install install-dev lint bench demo-model clean

run: install
	$(PY) -m app.launch

test: install-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

install:
	VENV=$(VENV) scripts/install.sh

install-dev:
	VENV=$(VENV) scripts/install.sh dev

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

bench: install-dev
	$(PY) -m bench.run

demo-model: install-dev
	$(PY) -m training.train_demo

clean:
	rm -rf .run bench/work
