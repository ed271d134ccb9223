# The example plugins (examples/plugins): the same plugin contract from two
# languages, each built outside the plugins workspace. Included by the top
# Makefile; paths are relative to the repository root.
#   make examples        build both components
#   make test-examples   run their recorded cases with `palisade plugin test`

HOST_TARGET ?= $(shell rustc -vV | sed -n 's/^host: //p')
EXAMPLE_RUST := examples/plugins/rust-word-filter
EXAMPLE_PY := examples/plugins/python-filter
EXAMPLE_RUST_WASM := $(EXAMPLE_RUST)/target/wasm32-wasip2/release/rust_word_filter.wasm
EXAMPLE_PY_WASM := $(EXAMPLE_PY)/build/python_filter.wasm

.PHONY: examples test-examples

# Rust: a standalone cargo project (its own workspace and target/; the
# wasm32-wasip2 target comes from `toolchain`). Python: componentize-py from
# the test venv; build.sh keeps an up-to-date component (a rebuilt one has a
# new sha256 and costs the host a fresh compile at its first load).
examples: toolchain venv
	cd $(EXAMPLE_RUST) && $(CARGO) build --release --target-dir target
	PYTHON=$(abspath $(VENV))/bin/python OUT=$(abspath $(dir $(EXAMPLE_PY_WASM))) $(EXAMPLE_PY)/build.sh

test-examples: examples
	cmp wit/plugin.wit $(EXAMPLE_RUST)/wit/plugin.wit  # the vendored contract is the current one
	cmp plugins/sdk/src/lib.rs $(EXAMPLE_RUST)/vendor/palisade-plugin-sdk/src/lib.rs
	cmp plugins/sdk/src/http.rs $(EXAMPLE_RUST)/vendor/palisade-plugin-sdk/src/http.rs
	cd $(EXAMPLE_RUST) && $(CARGO) test --target $(HOST_TARGET) --target-dir target
	$(CARGO) build --bin palisade
	./target/debug/palisade plugin test $(EXAMPLE_RUST_WASM) --fixture $(EXAMPLE_RUST)/tests/fixture.json
	./target/debug/palisade plugin test $(EXAMPLE_PY_WASM) --fixture $(EXAMPLE_PY)/tests/fixture.json
