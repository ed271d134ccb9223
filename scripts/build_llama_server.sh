#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` and `llama-bench` from the
# vendor/llama.cpp sources of the llama-cpp-python sdist on PyPI (the version
# `make fixtures` uses), for scripts/bench_batch.sh and `make bench`. Prints
# llama-server's path on stdout (llama-bench sits beside it; progress goes to
# stderr). A second run with both binaries in place does nothing.
#
# Cache (outside the repo): ${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}/llama.cpp/<version>/
#   llama_cpp_python-<version>.tar.gz   the sdist, sha256-verified
#   src/                                 the extracted sdist
#   build/                               the cmake build tree
#   bin/llama-server, bin/llama-bench    the installed binaries (static ggml/llama)
#
# Environment: PYTHON (python3, for `pip download`), LLAMA_CPP_JOBS (2).
# The build runs under `nice -n 10`: it takes about 10 minutes on 2 cores.
set -euo pipefail

VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
PYTHON=${PYTHON:-python3}
JOBS=${LLAMA_CPP_JOBS:-2}

CACHE="${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}"
DEST="$CACHE/llama.cpp/$VERSION"
BIN="$DEST/bin/llama-server"
BENCH_BIN="$DEST/bin/llama-bench"
SDIST="$DEST/llama_cpp_python-$VERSION.tar.gz"

if [[ -x $BIN && -x $BENCH_BIN ]]; then
    echo "build_llama_server: llama-server and llama-bench $VERSION already built" >&2
    echo "$BIN"
    exit 0
fi

mkdir -p "$DEST"

# One build at a time (bench_batch.sh may be started twice); the second
# waits, then finds the binary.
exec 9>"$DEST/.lock"
flock 9
if [[ -x $BIN && -x $BENCH_BIN ]]; then
    echo "$BIN"
    exit 0
fi

# Compilers and cmake (Debian).
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
    echo "build_llama_server: installing cmake and g++ with apt-get" >&2
    apt-get update -q >&2 && apt-get install -y -q cmake g++ >&2
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }

# The sdist. `--no-binary` only for llama-cpp-python: pip prepares the sdist's
# metadata in an isolated env, and `:all:` would also compile that env's
# build requirements (cmake, ninja) from source.
if [[ ! -f $SDIST || $(sha "$SDIST") != "$SDIST_SHA256" ]]; then
    rm -f "$SDIST"
    tmp=$(mktemp -d "$DEST/.download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "build_llama_server: downloading the llama-cpp-python==$VERSION sdist from PyPI (about 75 MB)" >&2
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$tmp" >&2
    got=$(sha "$tmp/llama_cpp_python-$VERSION.tar.gz")
    if [[ $got != "$SDIST_SHA256" ]]; then
        echo "build_llama_server: sha256 mismatch for the sdist: got $got, want $SDIST_SHA256" >&2
        exit 1
    fi
    mv "$tmp/llama_cpp_python-$VERSION.tar.gz" "$SDIST"
    rm -rf "$tmp"
    trap - EXIT
fi

# The sources (the sdist carries the llama.cpp submodule's git dir, so the
# build records the llama.cpp commit in `llama-server --version`).
SRC="$DEST/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [[ ! -f $SRC/CMakeLists.txt ]]; then
    rm -rf "$DEST/src"
    mkdir -p "$DEST/src.tmp"
    tar -xzf "$SDIST" -C "$DEST/src.tmp"
    mv "$DEST/src.tmp" "$DEST/src"
fi

# Only the llama-server and llama-bench targets. No web UI (LLAMA_USE_PREBUILT_UI would fetch
# it from Hugging Face at build time), no TLS, static libraries so the
# binary stands alone. -march=native minus AMX: on this machine's Xeon (a
# Firecracker VM) ggml's AMX matmul segfaults in the warm-up decode (at
# `ldtilecfg` in ggml_backend_amx_mul_mat, although a plain AMX program runs
# fine), and -mno-amx-* wins over -march=native whatever the order; the
# AVX-512/VNNI kernels and weight repacking stay on.
echo "build_llama_server: building llama-server and llama-bench (cmake, -j$JOBS, nice 10; about 10 minutes)" >&2
nice -n 10 cmake -S "$SRC" -B "$DEST/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" >&2
nice -n 10 cmake --build "$DEST/build" --config Release --target llama-server llama-bench -j "$JOBS" >&2

# Installed last, atomically: its presence means a finished build.
mkdir -p "$DEST/bin"
cp "$DEST/build/bin/llama-bench" "$DEST/bin/.llama-bench.tmp"
mv "$DEST/bin/.llama-bench.tmp" "$BENCH_BIN"
cp "$DEST/build/bin/llama-server" "$DEST/bin/.llama-server.tmp"
mv "$DEST/bin/.llama-server.tmp" "$BIN"
"$BIN" --version >&2 || true
echo "$BIN"
