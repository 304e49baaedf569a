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
PY_TEST_DEPS := "pytest>=8" "pytest-timeout>=2" "hypothesis>=6.100" "mypy>=1.10" "scapy>=2.5" "cryptography>=42" "maturin>=1.7,<2"

.PHONY: all build run test test-rust test-python stubtest bench fuzz clean

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(VPY) pyproject.toml
	$(VPY) -m pip install -q --disable-pip-version-check $(PY_TEST_DEPS)
	touch $@

# Release build of the extension, installed into .venv (editable: python/ stays live).
$(BUILT): $(DEPS) $(RUST_SOURCES) pyproject.toml
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
		$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(BUILT)

run: $(BUILT)
	$(VENV)/bin/ikecore demo

test: test-rust test-python

test-rust:
	cargo test --quiet

stubtest: $(BUILT)
	cd /tmp && $(abspath $(VPY)) -m mypy.stubtest ikecore._core --allowlist $(abspath .mypy-stubtest-allowlist)

test-python: $(BUILT) stubtest
	$(VPY) -m pytest -q

bench: $(BUILT)
	$(VPY) bench/run.py

clean:
	rm -rf target $(VENV) python/ikecore/*.so

# Bounded coverage-guided fuzz run of the ISAKMP codec (stable Rust, libFuzzer via
# libfuzzer-sys; the same flags cargo-fuzz uses). FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
FUZZ_TARGET_DIR := fuzz/target/x86_64-unknown-linux-gnu/release
fuzz:
	cd fuzz && RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
		cargo build --release --quiet --target x86_64-unknown-linux-gnu
	mkdir -p fuzz/corpus/parse_message fuzz/corpus/parse_chain
	$(FUZZ_TARGET_DIR)/parse_message fuzz/corpus/parse_message -max_total_time=$(FUZZ_SECONDS) -max_len=4096
	$(FUZZ_TARGET_DIR)/parse_chain fuzz/corpus/parse_chain -max_total_time=$(FUZZ_SECONDS) -max_len=4096
