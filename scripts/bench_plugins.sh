#!/usr/bin/env bash
# Plugin overhead benchmark: api-key auth + two admission stages + one
# output filter on /v1/chat/completions, timed by `palisade bench-plugins`
# against the no-stage baseline in the same run. Needs the release binary
# and the plugins built (make bench-plugins does both).
set -euo pipefail
cd "$(dirname "$0")/.."
TMP="$(mktemp -d)"
[ -n "${KEEP_TMP:-}" ] || trap 'rm -rf "$TMP"' EXIT
KEY="pal_bench_key_0123456789abcdefghijklmnopqrstuvwxyz"
python3 - "$TMP/policy.toml" "$KEY" <<'PY'
import hashlib, json, pathlib, sys
root = pathlib.Path("plugins/target/wasm32-wasip2/release").resolve()
def pin(name):
    p = root / name
    return f'path = "{p}"\nsha256 = "{hashlib.sha256(p.read_bytes()).hexdigest()}"\n'
key = sys.argv[2]
keys = json.dumps([{"id": "bench", "tenant": "b", "scopes": ["inference"], "sha256": hashlib.sha256(key.encode()).hexdigest()}])
text = f"""
[runtime]
prewarm = 8

[plugins.keys]
{pin("api_key_auth.wasm")}kind = "authenticator"
[plugins.keys.config]
keys = {json.dumps(keys)}

[plugins.guard-a]
{pin("misbehave.wasm")}kind = "admission"
[plugins.guard-a.config]
mode = "ok"
[plugins.guard-a.grants]
log = false

[plugins.guard-b]
{pin("misbehave.wasm")}kind = "admission"
[plugins.guard-b.config]
mode = "ok"
[plugins.guard-b.grants]
log = false

[plugins.redact]
{pin("redact_word.wasm")}kind = "output-filter"
[plugins.redact.config]
word = "secret"

[[routes]]
path = "/v1/chat/completions"
auth = "keys"
scopes = ["inference"]
admission = ["guard-a", "guard-b"]
output = ["redact"]

[[routes]]
path = "*"
public = true
"""
pathlib.Path(sys.argv[1]).write_text(text)
PY
./target/release/palisade bench-plugins --policy "$TMP/policy.toml" --key "$KEY" "$@"
