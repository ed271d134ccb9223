#!/usr/bin/env bash
# Writes the policy `make serve` runs with: examples/policy.toml pinned to
# the plugins just built, its key file at $PALISADE_CONFIG_DIR/keys.json and
# its audit log at $PALISADE_STATE_DIR/audit.jsonl. The server creates the
# key file with one admin key on its first start and prints that key once
# (it is stored only as a sha256 hash). Re-run after rebuilding the plugins:
# the pins are recomputed, the keys kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${PALISADE_CONFIG_DIR:-$HOME/.config/palisade}"
STATE="${PALISADE_STATE_DIR:-$HOME/.local/state/palisade}"
umask 077
mkdir -p "$DIR" "$STATE"
chmod 700 "$DIR" "$STATE"
python3 - "$DIR" "$DIR/keys.json" "$STATE/audit.jsonl" <<'PY'
import hashlib, json, pathlib, re, sys
dest, keys, audit = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
# Key files from before `palisade keys` were a JSON list; keep them aside.
k = pathlib.Path(keys)
if k.exists() and k.read_text().lstrip().startswith("["):
    k.rename(k.with_suffix(".json.old"))
root = pathlib.Path("plugins/target/wasm32-wasip2/release").resolve()
pins = {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in root.glob("*.wasm")}
# The default policy, and the tool plugins for `palisade tool run`.
for name in ("policy.toml", "tools.toml"):
    text = pathlib.Path("examples", name).read_text()
    for wasm, digest in pins.items():
        text = text.replace(f"@SHA256:{wasm}@", digest)
    text = text.replace("@PLUGINS@", str(root)).replace("@KEYS_FILE@", keys).replace("@AUDIT@", audit)
    left = re.findall(r"@[A-Z_]+(?::[a-z_.]+)?@", text)
    assert not left, f"{name}: unfilled placeholders {left}: are all plugins built?"
    out = dest / name
    out.write_text(text)
    out.chmod(0o600)
PY
echo "policy written to $DIR/policy.toml (tools: $DIR/tools.toml)" >&2
