# Two commands on a fresh Debian/Ubuntu machine: `make run` serves, `make test` tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast test-stress install install-dev lint bench bench-triton triton-venv reliability demo-model clean

run: install
	$(PY) -m app.launch

test: install-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

# Unit and in-process model tests only: no nginx, uWSGI or supervisord started.
test-fast: install-dev
	$(PY) -m pytest -q -m "not e2e" tests

# The suite 5 times in a row, then the protocol, batching and e2e tests 3 times beside a CPU hog.
test-stress: install-dev
	VENV=$(VENV) scripts/test-stress.sh

install:
	VENV=$(VENV) scripts/install.sh

install-dev:
	VENV=$(VENV) scripts/install.sh dev

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

# The four workloads of bench/workloads.py, each with the in-process ceiling and Triton's dynamic
# batcher (PyTriton) in the same run, with wrk as the client; then MobileNetV2 once more with a
# Python keep-alive client (mule and Triton) when mobilenet is among them. BENCH_WORKLOADS=small
# for one workload, and BENCH_PYTHON_CLIENT=no to leave the second client out.
BENCH_WORKLOADS ?= mobilenet small tabular photo12mp
BENCH_PYTHON_CLIENT ?= yes
bench: install-dev triton-venv
	for workload in $(BENCH_WORKLOADS); do \
		TRITON_PYTHON=$(TRITON_VENV)/bin/python $(PY) -m bench.run --workload $$workload || exit 1; done
	if [ "$(BENCH_PYTHON_CLIENT)" = yes ] && [ -n "$(filter mobilenet,$(BENCH_WORKLOADS))" ]; then \
		TRITON_PYTHON=$(TRITON_VENV)/bin/python $(PY) -m bench.run --workload mobilenet --client python \
			--kinds mule,triton --memory-probe-workers '' --name python-client; fi

# Overload (2x, 10x, open loop), faults under load and a 30-minute soak; writes docs/reliability.md.
# About 40 minutes; SOAK_MINUTES=0 leaves the soak out.
SOAK_MINUTES ?= 30
reliability: install-dev
	$(PY) -m bench.reliability --soak-minutes $(SOAK_MINUTES)

# Triton's dynamic batcher (PyTriton) beside the mule. PyTriton needs numpy < 2, hence its own
# venv, and its Python backend stub loads the system's libpython, hence the system's python3.
TRITON_VENV ?= bench/work/triton-venv
TRITON_BASE_PYTHON ?= /usr/bin/python3
triton-venv:
	test -f $(TRITON_VENV)/.installed || ( $(TRITON_BASE_PYTHON) -m venv $(TRITON_VENV) && \
		$(TRITON_VENV)/bin/pip install -q -r bench/requirements-triton.txt && touch $(TRITON_VENV)/.installed )

bench-triton: install-dev triton-venv
	TRITON_PYTHON=$(TRITON_VENV)/bin/python $(PY) -m bench.run --kinds mule,triton --memory-probe-workers '' --name triton

demo-model: install-dev
	$(PY) -m training.train_demo

clean:
	rm -rf .run bench/work
