# Palisade: the two commands of the README, and their set-up steps.
#   make serve   fetch the models, build, run the server on 127.0.0.1:8080
#   make test    fetch and install everything, run the whole test suite
# Every step is idempotent: a second run reuses the cached model, the venv
# and the build.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
BENCH_VENV := .venv-bench
export PALISADE_CACHE_DIR ?= $(HOME)/.cache/palisade
export PALISADE_CONFIG_DIR ?= $(HOME)/.config/palisade
MODEL := $(PALISADE_CACHE_DIR)/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EMBED_MODEL := $(PALISADE_CACHE_DIR)/all-minilm-l6-v2

.PHONY: serve test setup model embedding-model toolchain plugins venv build test-rust test-plugins test-e2e test-fuzz test-fuzz-ci fuzz fuzz-tools bench fixtures bench-serve bench-policy bench-plugins bench-batch

serve: model embedding-model plugins
	$(CARGO) build --release
	scripts/dev-policy.sh
	./target/release/palisade serve --policy $(PALISADE_CONFIG_DIR)/policy.toml

test: setup
	$(MAKE) test-rust
	$(MAKE) test-plugins
	$(MAKE) test-examples
	$(MAKE) test-e2e
	$(MAKE) test-fuzz-ci

setup: toolchain model embedding-model venv plugins examples

toolchain:
	rustup target add wasm32-wasip2

# The plugins workspace builds straight to WebAssembly components; the
# code-interpreter tool (Python, componentize-py from the venv) is written
# next to them.
plugins: toolchain venv
	cd plugins && $(CARGO) build --release
	PYTHON=$(abspath $(VENV))/bin/python plugins/code-interpreter/build.sh

model:
	scripts/fetch-model.sh

embedding-model:
	scripts/fetch-embedding-model.sh

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

test-rust:
	PALISADE_MODEL=$(MODEL) PALISADE_EMBED_MODEL=$(EMBED_MODEL) $(CARGO) test --workspace
	$(CARGO) check -p palisade-kernels --features cuda --tests

# Each standard plugin: its pure logic natively, then the component against
# its recorded cases through `palisade plugin test`.
HOST_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')
PLUGIN_FIXTURES := api-key-auth:api_key_auth rate-limit:rate_limit request-guard:request_guard code-interpreter:code_interpreter fetch:fetch $(if $(wildcard plugins/sensitive-data/tests/fixture.json),sensitive-data:sensitive_data)
test-plugins: plugins
	cd plugins && $(CARGO) test --target $(HOST_TARGET) -p request-guard -p fetch $(if $(wildcard plugins/sensitive-data),-p sensitive-data)
	$(CARGO) build --bin palisade
	set -e; for p in $(PLUGIN_FIXTURES); do \
	    ./target/debug/palisade plugin test plugins/target/wasm32-wasip2/release/$${p#*:}.wasm --fixture plugins/$${p%%:*}/tests/fixture.json; \
	done

test-e2e: venv
	command -v openssl >/dev/null || (apt-get update -q && apt-get install -y -q openssl)
	command -v curl >/dev/null || (apt-get update -q && apt-get install -y -q curl)
	command -v redis-server >/dev/null || (apt-get update -q && apt-get install -y -q redis-server)
	command -v systemd-analyze >/dev/null || (apt-get update -q && apt-get install -y -q systemd)
	$(CARGO) build --bin palisade
	$(VENV)/bin/python -m pytest -q tests/e2e

# Fuzzing (tests/fuzz, its own workspace): libFuzzer through cargo-fuzz on
# the stable toolchain (RUSTC_BOOTSTRAP=1 lets it pass its -Z flags), no
# sanitizer (the parsers are safe Rust; debug assertions and overflow checks
# are on). `make test` runs `test-fuzz-ci`: each target for FUZZ_RUNS
# executions with a fixed seed from the committed seeds and a fresh corpus,
# so a run that passes here passes in CI (the instrumented build of the
# host, wasmtime and candle included, takes about 16 minutes on 2 cores).
# `make test-fuzz` runs each target for FUZZ_SECS seconds and keeps its
# corpus. The test suite also runs the same target bodies
# (tests/fuzz/src/targets.rs) under a mutation fuzzer without coverage
# feedback on the ordinary test build (host/tests/fuzz_smoke.rs).
# `make fuzz` runs each for 10 minutes and keeps the corpus it grows in
# tests/fuzz/corpus/ (ignored by git; the seeds are committed). cargo-fuzz
# is pointed at this directory with --fuzz-dir (it looks for ./fuzz by
# default). A crash leaves its input in tests/fuzz/artifacts/<target>/ and
# fails the run.
FUZZ_TARGETS := request_json policy_toml gguf_header safetensors_header tokenizer
FUZZ_SECS ?= 25
CARGO_FUZZ_VERSION := 0.13.2
# Shared by test-fuzz and test-fuzz-ci; FUZZ_RUN and FUZZ_FLAGS expect `$$t`
# (the target) and run inside tests/fuzz.
FUZZ_BUILD = cd tests/fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build --fuzz-dir . -s none -a
FUZZ_RUN = RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir . -s none -a $$t
FUZZ_FLAGS = -max_len=65536 -timeout=10 -rss_limit_mb=2048 $$( [ -f dicts/$$t.dict ] && echo -dict=dicts/$$t.dict )
fuzz-tools:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

test-fuzz: fuzz-tools model
	$(FUZZ_BUILD)
	set -e; cd tests/fuzz; for t in $(FUZZ_TARGETS); do \
	    mkdir -p corpus/$$t; \
	    $(FUZZ_RUN) corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECS) $(FUZZ_FLAGS) 2>&1 | tail -n 4; \
	    test $${PIPESTATUS[0]} -eq 0; \
	done

FUZZ_RUNS ?= 300000
test-fuzz-ci: fuzz-tools model
	$(FUZZ_BUILD)
	set -e; cd tests/fuzz; for t in $(FUZZ_TARGETS); do \
	    fresh=$$(mktemp -d); \
	    $(FUZZ_RUN) $$fresh seeds/$$t -- -seed=1 -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS) 2>&1 \
	        | grep -E '^(Done|==|SUMMARY)|panicked' | sed "s/^/fuzz $$t: /"; \
	    status=$${PIPESTATUS[0]}; rm -rf $$fresh; test $$status -eq 0; \
	done

fuzz:
	$(MAKE) test-fuzz FUZZ_SECS=600


# Benchmarks (not part of the test suite): ours against llama.cpp's own
# llama-bench, built from the llama-cpp-python==0.3.36 sdist's sources into
# ~/.cache/palisade/llama.cpp/ (about 10 minutes the first time). The
# fixtures are made with llama-cpp-python itself, in a separate venv.
$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BENCH_VENV)/bin/pip install --disable-pip-version-check llama-cpp-python==0.3.36 numpy jinja2
	touch $@

bench: model
	$(CARGO) build --release
	./target/release/palisade bench --llama-bench "$$(dirname "$$(scripts/build_llama_server.sh)")/llama-bench"

# Regenerates tests/fixtures from llama.cpp (commit the result).
fixtures: model $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python scripts/make_fixtures.py --model $(MODEL)

# Serving benchmark: palisade serve on a loopback port, streaming clients at
# concurrency 1, 4, 16 (scripts/serve_bench.py works against any
# OpenAI-compatible server). ARGS=--with-engine adds the single-stream
# comparison with the engine alone.
bench-serve: model
	scripts/bench_serve.sh $(ARGS)

# Batched serving: palisade serve against llama.cpp's own llama-server (built
# from the llama-cpp-python==0.3.36 sdist into ~/.cache/palisade/llama.cpp/,
# about 10 minutes the first time), alternating, at concurrency 1 and 16.
# Extra palisade flags: PALISADE_SERVE_ARGS="--max-num-seqs 16"; more knobs
# in scripts/bench_batch.sh.
bench-batch: model
	MODEL=$(MODEL) scripts/bench_batch.sh

bench-policy: model plugins
	$(CARGO) build --release
	SKIP_BUILD=1 scripts/bench_policy.sh

bench-plugins: plugins
	$(CARGO) build --release
	scripts/bench_plugins.sh

include examples/plugins/examples.mk
