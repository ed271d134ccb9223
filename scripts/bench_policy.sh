#!/usr/bin/env bash
# What the default policy costs (`make bench-policy`): two servers on the
# same model, one with every plugin off (an open policy), one with the
# default policy exactly as `make serve` writes it (API key, rate limit,
# request guard, sensitive-data filter, audit file). Alternates
# single-stream runs of scripts/serve_bench.py between them (3 rounds,
# 8 requests of 128 tokens each) and prints decode tok/s (1 / TPOT p50) and
# TTFT for both, with ratios; then times the request-side chain of the
# default policy with `palisade bench-plugins` (its rate limits raised so
# 5000 requests fit).
#
# Environment: SKIP_BUILD=1 (use target/release/palisade as it is),
# PALISADE_THREADS (2), ROUNDS (3), BENCH_SERVE_VENV (.venv-bench-serve).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${PALISADE_THREADS:-2}
ROUNDS=${ROUNDS:-3}
VENV=${BENCH_SERVE_VENV:-.venv-bench-serve}
BIN=./target/release/palisade
if [[ ! -f $VENV/.installed || scripts/bench-requirements.txt -nt $VENV/.installed ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench-requirements.txt
    touch "$VENV/.installed"
fi
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

printf '[[routes]]\npath = "*"\npublic = true\n' >"$tmp/open.toml"
PALISADE_CONFIG_DIR=$tmp/config PALISADE_STATE_DIR=$tmp/state scripts/dev-policy.sh 2>/dev/null

start() { # name policy -> sets addr_<name>
    "$BIN" serve --listen 127.0.0.1:0 --admin-listen off --no-embeddings --threads "$THREADS" --policy "$2" >"$tmp/$1.out" 2>"$tmp/$1.log" &
    pids+=($!)
    for _ in $(seq 1 300); do
        line=$(head -n1 "$tmp/$1.out" 2>/dev/null || true)
        [[ $line == "palisade listening on http://"* ]] && { printf -v "addr_$1" '%s' "${line#palisade listening on http://}"; return; }
        sleep 0.1
    done
    cat "$tmp/$1.log" >&2
    exit 1
}
start off "$tmp/open.toml"
start on "$tmp/config/policy.toml"
key=$(grep -A1 'it is shown once' "$tmp/on.log" | tail -n1)
[[ $key == pal_* ]] || { cat "$tmp/on.log" >&2; echo "bench_policy: no admin key in the log" >&2; exit 1; }
for name in off on; do
    addr_var=addr_$name
    for _ in $(seq 1 1200); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $key" "http://${!addr_var}/ready" || true)
        [[ $code == 200 ]] && break
        sleep 0.1
    done
done

run() { # name -> "decode_tok_s ttft_ms errors"
    local addr_var=addr_$1
    "$VENV/bin/python" scripts/serve_bench.py --base-url "http://${!addr_var}/v1" --api-key "$key" \
        --concurrency 1 --requests 8 --max-tokens 128 --json --quiet >"$tmp/r.json"
    "$VENV/bin/python" -c 'import json,sys; r=json.load(open(sys.argv[1]))["levels"][0]; print("%.2f %.1f %d" % (r["decode_tok_s_per_stream"], r["ttft_ms_p50"], r["errors"]))' "$tmp/r.json"
}
echo "| round | plugins off tok/s | default policy tok/s | on / off | TTFT p50 off ms | TTFT p50 on ms | errors |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
ratios=()
for r in $(seq 1 "$ROUNDS"); do
    read -r off_t off_ttft off_e <<<"$(run off)"
    read -r on_t on_ttft on_e <<<"$(run on)"
    ratio=$(awk -v a="$on_t" -v b="$off_t" 'BEGIN { printf "%.3f", a / b }')
    ratios+=("$ratio")
    echo "| $r | $off_t | $on_t | $ratio | $off_ttft | $on_ttft | $((off_e + on_e)) |"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "\nmedian decode ratio (default policy / plugins off): %s\n\n", v[int((NR + 1) / 2)] }'

# The request-side chain alone, rate limits raised so the run is not refused.
python3 - "$tmp/config/policy.toml" "$tmp/bench.toml" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
t = re.sub(r"(requests_per_window|tokens_per_window|concurrent) = \d+", r"\1 = 1000000000", t)
open(sys.argv[2], "w").write(t)
PY
"$BIN" bench-plugins --policy "$tmp/bench.toml" --key "$key"
