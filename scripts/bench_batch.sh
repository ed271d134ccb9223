#!/usr/bin/env bash
# Batched serving throughput, Palisade against llama.cpp's own llama-server
# (`make bench-batch`; not part of `make test`).
#
# Builds the release palisade binary (unless SKIP_BUILD=1) and llama-server
# (scripts/build_llama_server.sh, cached under ~/.cache/palisade/llama.cpp/),
# then, alternating the two servers round after round (P L P L, to cancel
# drift), starts each on a free loopback port with the same model and
# threads, waits until it is ready, runs scripts/serve_bench.py (streaming
# chat completions, the same prompts, temperature 0) at each concurrency
# level with --json, and stops it. Prints one Markdown table
# (scripts/bench_batch_report.py): per server and level the median over
# rounds of output tok/s, TTFT p50/p99, TPOT p50, and the errors; then
# Palisade's scaling, Palisade / llama-server tok/s, TTFT p99 side by side.
#
#   llama-server -m MODEL -t T -tb T -np NP -cb -c NP*CTX_PER_SEQ --host 127.0.0.1 --port P
#   palisade serve --model MODEL --threads T --no-embeddings --listen 127.0.0.1:0
#                  --policy <every route public, no plugin> $PALISADE_SERVE_ARGS
#
# Environment:
#   MODEL                 GGUF (default: the cached SmolLM2-135M-Instruct Q4_1)
#   SKIP_BUILD=1          use target/release/palisade as it is
#   PALISADE_BIN          another palisade binary (implies no build)
#   BENCH_THREADS         threads for both servers (2)
#   BENCH_CONCURRENCY     levels (1,16)
#   BENCH_MAX_TOKENS      max_tokens per request (128)
#   BENCH_REQUESTS_PER_STREAM  requests per level = max(8, this * level) (3)
#   BENCH_ROUNDS          rounds per server, alternating (2)
#   BENCH_SERVERS         which servers, in order per round (palisade,llama-server)
#   LLAMA_SERVER_SLOTS    llama-server -np (16); LLAMA_SERVER_CTX_PER_SEQ (1024)
#   LLAMA_SERVER_ARGS     extra llama-server flags
#   PALISADE_SERVE_ARGS   extra palisade serve flags (e.g. --max-num-seqs 16)
#   BENCH_OUT             keep the raw JSON and server logs in this directory
#   PYTHON (python3), BENCH_SERVE_VENV (.venv-bench-serve, as bench_serve.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${BENCH_SERVE_VENV:-.venv-bench-serve}
MODEL=${MODEL:-${PALISADE_CACHE_DIR:-$HOME/.cache/palisade}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${BENCH_THREADS:-2}
CONCURRENCY=${BENCH_CONCURRENCY:-1,16}
MAX_TOKENS=${BENCH_MAX_TOKENS:-128}
PER_STREAM=${BENCH_REQUESTS_PER_STREAM:-3}
ROUNDS=${BENCH_ROUNDS:-2}
SERVERS=${BENCH_SERVERS:-palisade,llama-server}
SLOTS=${LLAMA_SERVER_SLOTS:-16}
CTX_PER_SEQ=${LLAMA_SERVER_CTX_PER_SEQ:-1024}
read -r -a LLAMA_EXTRA <<<"${LLAMA_SERVER_ARGS:-}"
read -r -a PALISADE_EXTRA <<<"${PALISADE_SERVE_ARGS:-}"
BIN=${PALISADE_BIN:-./target/release/palisade}

die() { echo "bench_batch: $*" >&2; exit 1; }
[[ -f $MODEL ]] || die "no model at $MODEL (make model)"
IFS=, read -r -a levels <<<"$CONCURRENCY"
IFS=, read -r -a servers <<<"$SERVERS"
for s in "${servers[@]}"; do
    [[ $s == palisade || $s == llama-server ]] || die "unknown server '$s' in BENCH_SERVERS"
done

# The client's venv (the same as bench_serve.sh's).
if [[ ! -f $VENV/.installed || scripts/bench-requirements.txt -nt $VENV/.installed ]]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench-requirements.txt
    touch "$VENV/.installed"
fi
PY=$VENV/bin/python

if [[ ${SKIP_BUILD:-0} != 1 && -z ${PALISADE_BIN:-} ]]; then
    cargo build --release
fi
[[ -x $BIN ]] || die "no $BIN (build it, or drop SKIP_BUILD=1)"
LLAMA_SERVER=""
if [[ ,$SERVERS, == *,llama-server,* ]]; then
    LLAMA_SERVER=$(scripts/build_llama_server.sh)
    [[ -x $LLAMA_SERVER ]] || die "build_llama_server.sh printed no binary"
fi

tmp=$(mktemp -d)
mkdir -p "$tmp/res"
server_pid=""
server_name=""
stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        for _ in $(seq 1 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            echo "bench_batch: $server_name did not exit 10 s after SIGTERM; killing it" >&2
            kill -KILL "$server_pid" 2>/dev/null || true
        fi
        wait "$server_pid" 2>/dev/null && rc=0 || rc=$?
        [[ $rc == 0 ]] || echo "bench_batch: $server_name exited with status $rc" >&2
    fi
    server_pid=""
}
cleanup() {
    stop_server
    if [[ -n ${BENCH_OUT:-} ]]; then
        mkdir -p "$BENCH_OUT"
        cp -r "$tmp"/. "$BENCH_OUT"/ 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_died() {
    tail -n 30 "$1" >&2
    die "$server_name exited before it was ready (log above)"
}

# Polls URL until HTTP 200 (120 s).
wait_ready() {
    local url=$1 log=$2
    for _ in $(seq 1 1200); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true) == 200 ]]; then
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || server_died "$log"
        sleep 0.1
    done
    die "$server_name: $url not 200 after 120 s"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts server $1 for round $2; sets base_url.
start_server() {
    local name=$1 round=$2 log="$tmp/$1.r$2.log"
    server_name=$name
    if [[ $name == llama-server ]]; then
        local port
        port=$(free_port)
        "$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -np "$SLOTS" -cb -c $((SLOTS * CTX_PER_SEQ)) \
            --host 127.0.0.1 --port "$port" "${LLAMA_EXTRA[@]}" >"$log" 2>&1 &
        server_pid=$!
        wait_ready "http://127.0.0.1:$port/health" "$log"
        base_url=http://127.0.0.1:$port/v1
    else
        "$BIN" serve --model "$MODEL" --listen 127.0.0.1:0 --admin-listen off --no-embeddings --threads "$THREADS" \
            --policy "$tmp/open-policy.toml" "${PALISADE_EXTRA[@]}" >"$tmp/palisade.out" 2>"$log" &
        server_pid=$!
        # The first stdout line is `palisade listening on http://ADDR`.
        local addr="" line
        for _ in $(seq 1 300); do
            line=$(head -n1 "$tmp/palisade.out" 2>/dev/null || true)
            if [[ $line == "palisade listening on http://"* ]]; then
                addr=${line#palisade listening on http://}
                break
            fi
            kill -0 "$server_pid" 2>/dev/null || server_died "$log"
            sleep 0.1
        done
        [[ -n $addr ]] || die "palisade: no listening line after 30 s"
        wait_ready "http://$addr/ready" "$log"
        base_url=http://$addr/v1
    fi
}

printf '[[routes]]\npath = "*"\npublic = true\n' >"$tmp/open-policy.toml"

load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "bench_batch: warning: 1-minute load average is $load before starting; results will be noisy" >&2
fi

llama_version=none
[[ -z $LLAMA_SERVER ]] || llama_version=$("$LLAMA_SERVER" --version 2>&1 | sed -n 's/^version: //p' | head -n1)
palisade_version="$("$BIN" --version 2>/dev/null || echo palisade) (binary of $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'); repo HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "bench_batch: $palisade_version vs llama-server $llama_version; model $(basename "$MODEL"); threads $THREADS; levels $CONCURRENCY; max_tokens $MAX_TOKENS; $ROUNDS rounds" >&2

for round in $(seq 1 "$ROUNDS"); do
    for name in "${servers[@]}"; do
        start_server "$name" "$round"
        echo "bench_batch: round $round: $name ready on $base_url" >&2
        for c in "${levels[@]}"; do
            n=$((PER_STREAM * c)); ((n >= 8)) || n=8
            "$PY" scripts/serve_bench.py --base-url "$base_url" --concurrency "$c" --requests "$n" \
                --max-tokens "$MAX_TOKENS" --temperature 0 --json --quiet >"$tmp/res/$name.r$round.c$c.json"
            "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["levels"][0]; print("bench_batch: round %s: %s at %s: %.1f output tok/s, TTFT p99 %.0f ms, %d/%d errors" % (sys.argv[2], sys.argv[3], r["concurrency"], r["output_tok_s"] or 0, r["ttft_ms_p99"] or 0, r["errors"], r["requests"]))' \
                "$tmp/res/$name.r$round.c$c.json" "$round" "$name" >&2
        done
        stop_server
    done
done

load_end=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
llama_desc=""
[[ -z $LLAMA_SERVER ]] || llama_desc=" vs llama-server $llama_version (-np $SLOTS -cb -c $((SLOTS * CTX_PER_SEQ))${LLAMA_SERVER_ARGS:+ $LLAMA_SERVER_ARGS})"
title="Batched serving, $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $THREADS threads per server: $palisade_version (serve${PALISADE_SERVE_ARGS:+ $PALISADE_SERVE_ARGS})$llama_desc; model $(basename "$MODEL"); streaming chat, temperature 0, max_tokens $MAX_TOKENS, requests per level max(8, $PER_STREAM x concurrency); $ROUNDS alternating rounds; load average $load before, $load_end at the end (the benchmark's own load included)."
echo
"$PY" scripts/bench_batch_report.py "$tmp/res" --title "$title"
