#!/bin/sh
# render-policy.sh TEMPLATE PLUGIN_DIR
# Prints TEMPLATE (a policy such as examples/deploy/policy.toml) with every
# `@SHA256:NAME.wasm@` replaced by the sha256 of PLUGIN_DIR/NAME.wasm, and
# fails if a pin is left unfilled. The Containerfile runs it on the plugins
# it built; run it yourself to make the policy for the Kubernetes ConfigMap:
#   examples/deploy/render-policy.sh policy.toml plugins/target/wasm32-wasip2/release
set -eu
[ $# -eq 2 ] || { echo "usage: $0 TEMPLATE PLUGIN_DIR" >&2; exit 2; }
text=$(cat "$1")
for wasm in "$2"/*.wasm; do
    [ -f "$wasm" ] || continue
    name=$(basename "$wasm")
    sum=$(sha256sum "$wasm" | cut -d' ' -f1)
    text=$(printf '%s\n' "$text" | sed "s|@SHA256:$name@|$sum|g")
done
if printf '%s\n' "$text" | grep -q '@SHA256:'; then
    echo "$0: pins left unfilled (missing plugins in $2?):" >&2
    printf '%s\n' "$text" | grep -o '@SHA256:[^@]*@' >&2
    exit 1
fi
printf '%s\n' "$text"
