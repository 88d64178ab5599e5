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

test: deps lint unit e2e perf-check fuzz

build: deps
	cargo build --workspace

deps: system-deps node-deps python-deps

# Build tools for BoringSSL (cmake, clang, go), pyo3 (libpython3.11-dev), the load generator
# oha (libssl-dev, pkg-config), openssl for development certificates, nginx (a path of the load
# benchmark). The stamp is remade when this Makefile changes, so a new package is installed.
APT_PACKAGES := cmake clang libclang-dev golang-go libpython3.11-dev libssl-dev pkg-config openssl procps nginx redis-server
system-deps: $(STAMPS)/system
$(STAMPS)/system: Makefile
	@if ! (command -v cmake && command -v clang && command -v go && command -v openssl && test -x /usr/sbin/nginx && command -v redis-server && dpkg -s libclang-dev libpython3.11-dev libssl-dev pkg-config procps nginx redis-server) >/dev/null 2>&1; then \
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
	$(VENV)/bin/python perf/llm.py --quick

# Fuzzing (cargo-fuzz, libFuzzer on stable Rust): each target of fuzz/ for FUZZ_SECONDS, from
# its committed corpus and regressions (new inputs go to a scratch corpus under the target
# dir). Without a sanitizer: the fuzzed crates have no unsafe code, and it builds and runs far
# faster. A crash stops make and leaves its input in fuzz/artifacts/<target>/. See fuzz/README.md.
FUZZ_TARGETS := jsonrpc session_token mcp_request config
FUZZ_SECONDS ?= 25
FUZZ_BUILD := --release --debug-assertions --sanitizer none --target-dir $(CARGO_TARGET_DIR)/fuzz
.PHONY: fuzz
fuzz: fuzz/Cargo.lock
	@cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
	cargo fuzz build $(FUZZ_BUILD)
	@for t in $(FUZZ_TARGETS); do \
	    scratch=$(CARGO_TARGET_DIR)/fuzz/corpus/$$t; log=$(CARGO_TARGET_DIR)/fuzz/$$t.log; \
	    mkdir -p $$scratch fuzz/regressions/$$t; \
	    dict=; if [ -f fuzz/dict/$$t.dict ]; then dict=-dict=fuzz/dict/$$t.dict; fi; \
	    echo "fuzz $$t: $(FUZZ_SECONDS) s (log: $$log)"; \
	    if ! cargo fuzz run $(FUZZ_BUILD) $$t $$scratch fuzz/corpus/$$t fuzz/regressions/$$t -- \
	        -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 $$dict >$$log 2>&1; then \
	        tail -n 60 $$log; \
	        echo "fuzz $$t failed; a crash's input is in fuzz/artifacts/$$t/, replay it with:"; \
	        echo "    cargo fuzz run $(FUZZ_BUILD) $$t fuzz/artifacts/$$t/<file>"; \
	        exit 1; \
	    fi; \
	    grep -E '^(#[0-9]+[[:space:]]+DONE|Done)' $$log | sed "s/^/    /"; \
	done

# The fuzz crate is its own workspace; it starts from the root's lock, so it builds the same
# versions (cargo adds libfuzzer-sys to it).
fuzz/Cargo.lock: Cargo.lock
	cp Cargo.lock $@

bench: deps
	$(VENV)/bin/python perf/bench.py
	$(VENV)/bin/python perf/llm.py --record
	$(VENV)/bin/python perf/soak.py
	$(VENV)/bin/python perf/upgrade.py
	$(VENV)/bin/python perf/token_economy.py --record
	$(VENV)/bin/python perf/codemode_latency.py --record

clean:
	cargo clean
	rm -rf $(VENV) tests/node_modules data certs/dev
