#!/usr/bin/env bash
# Writes the policy `make serve` runs with: examples/policy.toml pinned to
# the plugins just built, with API keys from $PALISADE_CONFIG_DIR/keys.json.
# The first run creates that key file with one admin key and prints the key
# once (it is stored only as a sha256 hash). Re-run after rebuilding the
# plugins: the pins are recomputed, the keys kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${PALISADE_CONFIG_DIR:-$HOME/.config/palisade}"
umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
KEYS="$DIR/keys.json"
if [[ ! -f "$KEYS" ]]; then
    KEY="pal_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    HASH="$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
    printf '[{"id": "admin", "tenant": "local", "scopes": ["inference", "embeddings", "metrics", "admin"], "sha256": "%s"}]\n' "$HASH" > "$KEYS"
    echo "created $KEYS with an admin API key; it is shown only now:" >&2
    echo "$KEY"
fi
python3 - "$DIR/policy.toml" "$KEYS" <<'PY'
import hashlib, json, pathlib, sys
out, keys = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
root = pathlib.Path("plugins/target/wasm32-wasip2/release").resolve()
text = pathlib.Path("examples/policy.toml").read_text()
for wasm in root.glob("*.wasm"):
    text = text.replace(f"@SHA256:{wasm.name}@", hashlib.sha256(wasm.read_bytes()).hexdigest())
text = text.replace("@PLUGINS@", str(root)).replace("@KEYS@", json.dumps(keys.read_text().strip()))
out.write_text(text)
out.chmod(0o600)
PY
echo "policy written to $DIR/policy.toml" >&2
