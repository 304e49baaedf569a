# Quick start on a fresh Debian machine with Rust and Python 3.11:
#   make run    build if needed, then run the self-contained demo
#   make test   build if needed, then cargo test (pure Rust) and pytest
#   make bench  build if needed, then run every benchmark in bench/

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-stamp
BUILT  := $(VENV)/.build-stamp
RUST_SOURCES := $(shell find rust -name '*.rs') Cargo.toml
PY_TEST_DEPS := "pytest>=8" "pytest-timeout>=2" "hypothesis>=6.100" "mypy>=1.10" "scapy>=2.5" "cryptography>=42" "maturin>=1.7,<2" "prometheus_client>=0.20" "orjson>=3.9" "bcrypt>=4" "pyyaml>=6" "atheris>=2.3" "ruff>=0.5" "locust>=2.30" "selenium>=4.10"

.PHONY: all build run test test-rust test-python test-rules stubtest typecheck lint bench fuzz clean openssl-dev

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(VPY) pyproject.toml
	$(VPY) -m pip install -q --disable-pip-version-check $(PY_TEST_DEPS)
	touch $@

# Release build of the extension, installed into .venv (editable: python/ stays live).
$(BUILT): $(DEPS) $(RUST_SOURCES) pyproject.toml | openssl-dev
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
		$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(BUILT)

# The DH core (rust/crypto/dh.rs) links the system OpenSSL through openssl-sys:
# install its headers when missing and we are root, else say what to install.
openssl-dev:
	@pkg-config --exists openssl 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq libssl-dev pkg-config >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null; }; \
	  else echo "ikecore needs the OpenSSL headers: install libssl-dev and pkg-config (Debian: sudo apt-get install libssl-dev pkg-config)" >&2; exit 1; fi; }

run: $(BUILT)
	$(VENV)/bin/ikecore demo

test: test-rust test-python test-rules

# The Prometheus rules of prometheus/: valid, and their unit tests pass (promtool comes
# with Debian's prometheus package, which .ci/run installs).
test-rules:
	@command -v promtool >/dev/null || { echo "make test needs promtool: apt-get install prometheus" >&2; exit 1; }
	promtool check rules prometheus/ikecore-rules.yml
	cd prometheus && promtool test rules ikecore-rules.test.yml

test-rust: | openssl-dev
	cargo test --quiet

stubtest: $(BUILT)
	cd /tmp && $(abspath $(VPY)) -m mypy.stubtest ikecore._core --allowlist $(abspath .mypy-stubtest-allowlist)

# Types are checked, not only declared: --strict on the sans-IO wings (and the root
# vocabulary they import), the default checks on the whole package.
typecheck: $(BUILT)
	$(VPY) -m mypy --strict python/ikecore/protocol python/ikecore/engine
	$(VPY) -m mypy python/ikecore

# Undefined names, unused imports and variables (pyflakes' rules), no style opinions.
lint: $(BUILT)
	$(VPY) -m ruff check --no-cache --select F,E9 python tests bench

test-python: $(BUILT) stubtest typecheck lint
	$(VPY) -m pytest -q

bench: $(BUILT)
	$(VPY) bench/run.py

clean:
	rm -rf target $(VENV) python/ikecore/*.so

# A wheel that installs where there is no Rust, compiler or libssl: manylinux2014 (glibc
# 2.17 or later, x86-64), OpenSSL built from source and linked in statically (the Cargo
# feature `vendored`). zig (PyPI's ziglang) compiles and links against the old glibc. Its
# own target directory keeps the dev build (make build) untouched; the first build
# compiles OpenSSL (a few minutes on 2 cores), later ones reuse target/wheel.
WHEEL_DIR := target/wheel/dist
.PHONY: wheel
wheel: $(DEPS)
	$(VPY) -m pip install -q --disable-pip-version-check "ziglang>=0.11"
	rm -f $(WHEEL_DIR)/ikecore-*.whl
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH CARGO_TARGET_DIR=$(abspath target/wheel) \
		$(VENV)/bin/maturin build --release --quiet --zig --compatibility manylinux2014 \
		--features python,vendored --out $(WHEEL_DIR)

# Bounded coverage-guided fuzz run of the ISAKMP codec (stable Rust, libFuzzer via
# libfuzzer-sys; the same flags cargo-fuzz uses) and of the Python engine (atheris,
# tests/fuzz/engine_fuzz.py: datagram sequences into responders and initiators
# mid-exchange). FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS ?=
FUZZ_TARGET_DIR := fuzz/target/x86_64-unknown-linux-gnu/release
fuzz: $(BUILT)
	cd fuzz && RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
		cargo build --release --quiet --target x86_64-unknown-linux-gnu
	mkdir -p fuzz/corpus/parse_message fuzz/corpus/parse_chain fuzz/corpus/cookie_dispatch fuzz/corpus/frontdoor_classify
	$(FUZZ_TARGET_DIR)/parse_message fuzz/corpus/parse_message -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(FUZZ_FLAGS)
	$(FUZZ_TARGET_DIR)/parse_chain fuzz/corpus/parse_chain -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(FUZZ_FLAGS)
	$(FUZZ_TARGET_DIR)/cookie_dispatch fuzz/corpus/cookie_dispatch -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(FUZZ_FLAGS)
	$(FUZZ_TARGET_DIR)/frontdoor_classify fuzz/corpus/frontdoor_classify -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(FUZZ_FLAGS)
	$(VPY) tests/fuzz/engine_fuzz.py --make-corpus fuzz/corpus/engine
	mkdir -p fuzz/artifacts
	$(VPY) tests/fuzz/engine_fuzz.py fuzz/corpus/engine -max_total_time=$(FUZZ_SECONDS) -timeout=10 -max_len=4096 -artifact_prefix=fuzz/artifacts/engine- $(FUZZ_FLAGS)
