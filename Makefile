# Sluice: `make run` starts the gateway on the quick-start config; `make test` runs every test.
# Both install what they need first and can be run again at any time.

SHELL := /bin/bash
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
export PYO3_PYTHON ?= /usr/bin/python3.11
CONFIG ?= conf/examples/quickstart.yaml
PYTHON ?= python3
VENV := .venv
STAMPS := $(CARGO_TARGET_DIR)/.stamps
SLUICE := $(CARGO_TARGET_DIR)/release/sluice

.PHONY: run test build deps system-deps node-deps python-deps lint unit e2e perf-check bench clean

# The quick start's virtual key; set your own in the environment.
export SLUICE_DEMO_KEY ?= sluice-demo-key-change-me

run: deps
	cargo build --release -p sluice
	@mkdir -p data
	@scripts/dev-certs.sh certs/dev
	@echo
	@echo "Sluice is starting on http://127.0.0.1:8080/mcp and https://localhost:8443/mcp"
	@echo "Add it to Claude Code (trusting the development CA):"
	@echo "    export NODE_EXTRA_CA_CERTS=$(CURDIR)/certs/dev/ca.crt"
	@echo "    claude mcp add --transport http sluice https://localhost:8443/mcp --header \"Authorization: Bearer $$SLUICE_DEMO_KEY\""
	@echo "    claude mcp list"
	@echo "Health: http://127.0.0.1:9090/readyz   Metrics: http://127.0.0.1:9090/metrics   Stop: Ctrl-C"
	@echo
	$(SLUICE) --config $(CONFIG)

test: deps lint unit e2e perf-check

build: deps
	cargo build --workspace

deps: system-deps node-deps python-deps

# Build tools for BoringSSL (cmake, clang, go), pyo3 (libpython3.11-dev), the load generator
# oha (libssl-dev, pkg-config), openssl for development certificates, nginx (a path of the load
# benchmark). The stamp is remade when this Makefile changes, so a new package is installed.
APT_PACKAGES := cmake clang libclang-dev golang-go libpython3.11-dev libssl-dev pkg-config openssl procps nginx
system-deps: $(STAMPS)/system
$(STAMPS)/system: Makefile
	@if ! (command -v cmake && command -v clang && command -v go && command -v openssl && test -x /usr/sbin/nginx && dpkg -s libclang-dev libpython3.11-dev libssl-dev pkg-config procps nginx) >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES); \
	fi
	@mkdir -p $(STAMPS) && touch $@

# Real MCP servers and clients used by the quick start and the tests.
node-deps: tests/node_modules/.package-lock.json
tests/node_modules/.package-lock.json: tests/package.json tests/package-lock.json
	npm ci --prefix tests --no-audit --no-fund
	@touch $@

python-deps: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	@touch $@

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace

e2e:
	cargo build -p sluice
	$(VENV)/bin/pytest tests/e2e -q

# The load harness runs for a few seconds at a low rate; no timing is asserted.
perf-check:
	cargo build --release -p sluice -p sluice-perf
	$(VENV)/bin/python perf/bench.py --quick

bench: deps
	$(VENV)/bin/python perf/bench.py
	$(VENV)/bin/python perf/soak.py
	$(VENV)/bin/python perf/upgrade.py
	$(VENV)/bin/python perf/token_economy.py --record
	$(VENV)/bin/python perf/codemode_latency.py --record

clean:
	cargo clean
	rm -rf $(VENV) tests/node_modules data certs/dev
