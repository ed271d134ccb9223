#!/usr/bin/env bash
# Builds code_interpreter.wasm, the code-interpreter tool component, from
# src/ with componentize-py 0.25.1 (CPython and the standard library modules
# src/code_interpreter.py imports, snapshotted after import; bindings for the
# `tool` world of ../../wit are generated on the fly).
#
#   PYTHON  the python of a venv to build with (default: the repo's .venv);
#           componentize-py is installed into it if missing
#   OUT     where to write code_interpreter.wasm (default: the plugins
#           workspace's target/wasm32-wasip2/release, next to the Rust plugins)
#   FORCE=1 rebuild even when the component is newer than its sources
#
# componentize-py's output is not byte-for-byte reproducible, and every new
# sha256 costs the host a fresh Cranelift compile at its first load, so an
# up-to-date component is kept.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/plugins/target/wasm32-wasip2/release}
COMPONENTIZE_PY_VERSION=0.25.1

# Absolute paths: the build runs in a staging directory. (A venv's python
# is a symlink: keep its directory, do not resolve the link.)
case "$PYTHON" in
    */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;;
esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WASM=$OUT/code_interpreter.wasm

if [ -z "${FORCE:-}" ] && [ -f "$WASM" ] \
    && [ -z "$(find "$HERE/src" "$ROOT/wit" "$HERE/build.sh" -newer "$WASM" \( -name '*.py' -o -name '*.wit' -o -name build.sh \) -print -quit)" ]; then
    echo "$WASM is up to date"
    exit 0
fi

if ! "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('componentize-py') != '$COMPONENTIZE_PY_VERSION')" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# Build from a copy of src/: componentize-py writes __pycache__ next to the
# sources, and only what is on its path (not the venv's packages) should go
# into the component.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$HERE"/src/*.py "$STAGE"/
(
    cd "$STAGE"
    env -u VIRTUAL_ENV "$PYTHON" -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
        --quiet -d "$ROOT/wit" -w tool componentize -p "$STAGE" code_interpreter -o "$STAGE/code_interpreter.wasm"
)
mv "$STAGE/code_interpreter.wasm" "$WASM"
echo "wrote $WASM ($(wc -c <"$WASM") bytes, sha256 $(sha256sum "$WASM" | cut -d' ' -f1))"
