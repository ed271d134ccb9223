#!/usr/bin/env bash
# Serving benchmark of Palisade (`make bench-serve`): builds the release
# binary, starts `palisade serve` on a free loopback port, waits for
# GET /ready, runs scripts/serve_bench.py at concurrency 1,4,16 with
# max_tokens 128, and stops the server with SIGTERM.
#
#   scripts/bench_serve.sh [--with-engine] [--policy FILE] [-- extra serve_bench.py args]
#
# --policy FILE  the server's policy (default: an open policy, every route
#                public and no plugin, so the numbers are the bare server's;
#                with an auth policy pass the key: -- --api-key KEY)
# --with-engine  also compares single-stream decode through the server with
#                the engine alone: alternates `palisade bench --threads 2
#                --reps 3 --gen-tokens 128` and the server benchmark at
#                concurrency 1, twice, and prints
#                server decode tok/s (1 / TPOT p50) / engine decode tok/s.
#
# Environment: PYTHON (python3), BENCH_SERVE_VENV (.venv-bench-serve),
# SKIP_BUILD=1 (use target/release/palisade as it is), PALISADE_THREADS (2),
# BENCH_CONCURRENCY (1,4,16), BENCH_MAX_TOKENS (128).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${BENCH_SERVE_VENV:-.venv-bench-serve}
THREADS=${PALISADE_THREADS:-2}
CONCURRENCY=${BENCH_CONCURRENCY:-1,4,16}
MAX_TOKENS=${BENCH_MAX_TOKENS:-128}
BIN=./target/release/palisade

with_engine=0
policy=""
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --with-engine) with_engine=1 ;;
        --policy) policy=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "usage: $0 [--with-engine] [--policy FILE] [-- serve_bench.py args]" >&2; exit 2 ;;
    esac
    shift
done

# The venv, rebuilt when the requirements change.
if [[ ! -f $VENV/.installed || scripts/bench-requirements.txt -nt $VENV/.installed ]]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench-requirements.txt
    touch "$VENV/.installed"
fi
PY=$VENV/bin/python

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release
fi

# The numbers mean little when something else is using the cores.
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "bench_serve: warning: 1-minute load average is $load before starting; results will be noisy" >&2
fi

tmp=$(mktemp -d)
server_pid=""
stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        for _ in $(seq 1 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            echo "bench_serve: server did not exit 10 s after SIGTERM; killing it" >&2
            kill -KILL "$server_pid" 2>/dev/null || true
        fi
        wait "$server_pid" 2>/dev/null && rc=0 || rc=$?
        [[ $rc == 0 ]] || echo "bench_serve: server exited with status $rc (log: $tmp/server.log)" >&2
    fi
    server_pid=""
}
cleanup() {
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

policy_args=()
if "$BIN" serve --help 2>/dev/null | grep -q -- '--policy'; then
    if [[ -z $policy ]]; then
        policy=$tmp/open-policy.toml
        printf '[[routes]]\npath = "*"\npublic = true\n' >"$policy"
    fi
    policy_args=(--policy "$policy")
fi
# No fixed admin port: it could clash with a running server.
if "$BIN" serve --help 2>/dev/null | grep -q -- '--admin-listen'; then
    policy_args+=(--admin-listen off)
fi
"$BIN" serve --listen 127.0.0.1:0 --no-embeddings --threads "$THREADS" "${policy_args[@]}" >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!

# The first stdout line is `palisade listening on http://ADDR`.
addr=""
for _ in $(seq 1 300); do
    line=$(head -n1 "$tmp/server.out" 2>/dev/null || true)
    if [[ $line == "palisade listening on http://"* ]]; then
        addr=${line#palisade listening on http://}
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "bench_serve: server exited" >&2; exit 1; }
    sleep 0.1
done
[[ -n $addr ]] || { echo "bench_serve: no listening line after 30 s" >&2; exit 1; }

ready=0
for _ in $(seq 1 1200); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/ready" || true) == 200 ]]; then
        ready=1
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "bench_serve: server exited" >&2; exit 1; }
    sleep 0.1
done
[[ $ready == 1 ]] || { echo "bench_serve: /ready not 200 after 120 s" >&2; exit 1; }
echo "bench_serve: server ready on http://$addr (threads $THREADS)" >&2

base=http://$addr/v1
"$PY" scripts/serve_bench.py --base-url "$base" --concurrency "$CONCURRENCY" --max-tokens "$MAX_TOKENS" "${extra[@]}"

if [[ $with_engine == 1 ]]; then
    echo >&2
    echo "bench_serve: single stream: engine alone vs through the server, alternating, 2 rounds" >&2
    rows=()
    for round in 1 2; do
        # Engine alone (the server sits idle meanwhile: its workers park).
        "$BIN" bench --threads "$THREADS" --reps 3 --gen-tokens "$MAX_TOKENS" >"$tmp/engine.txt"
        engine=$(awk -F'|' -v l="decode $MAX_TOKENS" '{gsub(/^ +| +$/, "", $3)} $3 == l {gsub(/ /, "", $4); print $4}' "$tmp/engine.txt")
        [[ -n $engine ]] || { cat "$tmp/engine.txt" >&2; echo "bench_serve: no decode row in palisade bench output" >&2; exit 1; }
        "$PY" scripts/serve_bench.py --base-url "$base" --concurrency 1 --requests 8 --max-tokens "$MAX_TOKENS" --json --quiet "${extra[@]}" >"$tmp/server.json"
        server=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["levels"][0]; print("%.1f %.2f %.1f %d" % (r["decode_tok_s_per_stream"], r["tpot_ms_p50"], r["mean_output_tokens"], r["errors"]))' "$tmp/server.json")
        read -r server_tps tpot out_tok errors <<<"$server"
        echo "bench_serve: round $round: engine $engine tok/s, server $server_tps tok/s (TPOT p50 $tpot ms, $out_tok tokens/request, $errors errors)" >&2
        rows+=("$round $engine $server_tps $tpot $out_tok")
    done
    echo
    echo "Single-stream decode, $THREADS threads, $MAX_TOKENS tokens: engine alone (\`palisade bench\`, median of 3) vs server at concurrency 1 (1 / TPOT p50 over 8 requests)"
    echo
    echo "| round | engine decode tok/s | server decode tok/s | server TPOT p50 ms | server out tok/req | server / engine |"
    echo "|---:|---:|---:|---:|---:|---:|"
    for row in "${rows[@]}"; do
        read -r r e s t o <<<"$row"
        awk -v r="$r" -v e="$e" -v s="$s" -v t="$t" -v o="$o" 'BEGIN { printf "| %s | %.1f | %.1f | %.2f | %.1f | %.3f |\n", r, e, s, t, o, s / e }'
    done
    printf '%s\n' "${rows[@]}" | awk '{ e += $2; s += $3; n++ } END { printf "| mean | %.1f | %.1f | | | %.3f |\n", e / n, s / n, s / e }'
fi
