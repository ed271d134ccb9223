#!/usr/bin/env python3
"""Serving benchmark for any OpenAI-compatible server (Palisade, llama.cpp's
llama-server, vLLM, ...).

For each concurrency level C, C workers send streaming requests (SSE) back to
back from one shared queue of `--requests` requests (a closed loop, like
vLLM's `--max-concurrency`), and per request we measure:

  TTFT  send -> first chunk with non-empty content
  TPOT  (end of stream - first content chunk) / (output tokens - 1)
  ITL   gaps between consecutive content chunks

Output tokens come from the `usage` block the server sends at the end of the
stream (`stream_options: {"include_usage": true}`); when a server sends none,
the content-chunk count stands in (the table says so). Per level: TTFT, TPOT
and ITL p50/p99, requests/s and output tok/s over the level's wall time,
and errors (HTTP status != 200, SSE error events, malformed or cut streams,
timeouts). Prints a Markdown table (or JSON with `--json`).

The prompts are a fixed, varied set of chat prompts that ask for long
answers (the OpenAI API has no `ignore_eos`); request i of every level uses
prompt i mod len(PROMPTS), so runs are comparable. `--temperature` defaults
to 0 (greedy) so a given server produces the same lengths run after run.

Requirements: scripts/bench-requirements.txt (httpx). Example:

  python scripts/serve_bench.py --base-url http://127.0.0.1:8080/v1 \
      --concurrency 1,4,16 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

PROMPTS = [
    "Write a detailed, step-by-step guide to baking a loaf of sourdough bread at home, from feeding the starter to slicing the finished loaf.",
    "Explain how a car engine works to a curious twelve-year-old. Cover the intake, compression, combustion and exhaust strokes in detail.",
    "Write a long story about a lighthouse keeper who finds a message in a bottle. Describe the island, the weather and the keeper's daily routine.",
    "Describe the water cycle in depth: evaporation, condensation, precipitation and collection, with examples from everyday life.",
    "List twenty practical tips for staying productive while working from home, and explain each one in two or three sentences.",
    "Compare living in a big city with living in a small village. Discuss housing, work, transport, culture, nature and community at length.",
    "Explain, with examples, how the internet delivers a web page from a server to your browser, starting from typing the address.",
    "Write a detailed travel diary of a week-long trip through the mountains, one entry per day, describing the trails, meals and people met.",
    "Teach me the basics of personal budgeting. Explain income, fixed and variable expenses, savings goals and how to track spending each month.",
    "Describe the life cycle of a butterfly in detail, from egg to caterpillar to chrysalis to adult, and explain what happens at each stage.",
    "Write an essay about why reading books matters, with at least five arguments and an example for each.",
    "Explain how to plan and plant a small vegetable garden: choosing the spot, preparing the soil, picking the plants and caring for them through the season.",
    "Give a thorough history of the bicycle, from the earliest wooden designs to modern road and mountain bikes.",
    "Explain the rules of football (soccer) to someone who has never watched a match, including positions, fouls, offside and how a tournament works.",
    "Write a long letter from a grandparent to a grandchild who is leaving home for university, full of advice and memories.",
    "Describe how to train for a first marathon over sixteen weeks, week by week, including running, rest, nutrition and sleep.",
]

# A fixed passage used to pad prompts towards `--prompt-tokens`.
PADDING = (
    "Background notes for the assistant. The following passage is context only. "
    "The history of computing is a story of steady abstraction. Early machines were programmed by rewiring panels "
    "and flipping switches, and every instruction had to be spelled out in the language of the hardware itself. "
    "Over the decades, engineers built layer upon layer of tools, from assemblers and compilers to operating systems "
    "and high-level languages, so that people could describe what they wanted rather than how the circuits should "
    "move each bit. Today a single sentence typed into a text box can set millions of calculations in motion, yet "
    "underneath it all the same simple operations of adding, comparing and moving numbers still do the work. "
)


def build_prompts(prompt_tokens: int) -> list[str]:
    """The prompts, each padded with PADDING to roughly `prompt_tokens` tokens
    (about 0.75 words per token for English text; 0 leaves them as they are)."""
    if prompt_tokens <= 0:
        return list(PROMPTS)
    pad_words = PADDING.split()
    out = []
    for p in PROMPTS:
        need = int(prompt_tokens * 0.75) - len(p.split())
        if need <= 0:
            out.append(p)
            continue
        words = [pad_words[i % len(pad_words)] for i in range(need)]
        out.append(" ".join(words) + "\n\n" + p)
    return out


@dataclass
class Result:
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float = math.nan
    tpot: float = math.nan
    latency: float = math.nan
    itl: list[float] = field(default_factory=list)
    chunks: int = 0  # chunks with non-empty content
    events: int = 0  # all data events
    output_tokens: int = 0
    usage_tokens: bool = False  # output_tokens came from `usage`
    prompt_tokens: int = 0
    done: bool = False  # saw `data: [DONE]`
    retried: bool = False  # resent once after a stale keep-alive connection


def content_of(obj: dict, chat: bool) -> str:
    choices = obj.get("choices") or []
    text = []
    for c in choices:
        if chat:
            d = c.get("delta") or {}
            t = d.get("content") or d.get("reasoning_content") or ""
        else:
            t = c.get("text") or ""
        if t:
            text.append(t)
    return "".join(text)


async def one_request(client: httpx.AsyncClient, url: str, body: dict, chat: bool, timeout: float) -> Result:
    # A server may close a keep-alive connection right after a streamed
    # response (llama.cpp's llama-server does after every one, although it
    # sends `Keep-Alive`); a closed-loop client that sends its next request
    # at once can then write it to the pooled connection before the close
    # arrives, and gets no response at all. As HTTP clients do, such a
    # request (no status received) is sent once more, on a fresh connection;
    # it is counted (`retried_stale_connection`) and timed from the resend.
    for attempt in range(2):
        r = Result(retried=attempt > 0)
        try:
            await asyncio.wait_for(_stream(client, url, body, chat, r), timeout)
        except asyncio.TimeoutError:
            r.ok, r.error = False, f"timeout after {timeout:.0f}s"
        except httpx.RemoteProtocolError as e:
            r.ok, r.error = False, f"{type(e).__name__}: {e}"
            if attempt == 0 and r.status == 0:
                continue
        except httpx.HTTPError as e:
            r.ok, r.error = False, f"{type(e).__name__}: {e}"
        return r
    return r


async def _stream(client: httpx.AsyncClient, url: str, body: dict, chat: bool, r: Result) -> None:
    perf = time.perf_counter
    t0 = perf()
    first = last = None
    async with client.stream("POST", url, json=body) as resp:
        r.status = resp.status_code
        if resp.status_code != 200:
            raw = await resp.aread()
            r.error = f"HTTP {resp.status_code}: {raw[:300].decode('utf-8', 'replace')}"
            return
        buf = b""
        async for data in resp.aiter_bytes():
            now = perf()
            buf += data
            # SSE events end with a blank line; we only need the `data:` lines.
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl].rstrip(b"\r"), buf[nl + 1 :]
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, `event:`/`id:` fields
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    r.done = True
                    continue
                r.events += 1
                try:
                    obj = json.loads(payload)
                except ValueError:
                    r.error = f"malformed SSE data: {payload[:200]!r}"
                    return
                if not isinstance(obj, dict):
                    r.error = f"unexpected SSE data: {payload[:200]!r}"
                    return
                if obj.get("error") is not None:
                    r.error = f"SSE error event: {payload[:300].decode('utf-8', 'replace')}"
                    return
                usage = obj.get("usage")
                if usage:
                    r.output_tokens = int(usage.get("completion_tokens") or 0)
                    r.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    r.usage_tokens = True
                if content_of(obj, chat):
                    r.chunks += 1
                    if first is None:
                        first = now
                    else:
                        r.itl.append(now - last)
                    last = now
    end = perf()
    if buf.strip():
        r.error = f"stream ended mid-line: {buf[:200]!r}"
        return
    if first is None:
        r.error = "stream ended without content"
        return
    if not r.usage_tokens:
        r.output_tokens = r.chunks
    r.ttft = first - t0
    r.latency = end - t0
    if r.output_tokens > 1:
        r.tpot = (end - first) / (r.output_tokens - 1)
    r.ok = True


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default)."""
    if not values:
        return math.nan
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def request_body(args, prompt: str, max_tokens: int) -> dict:
    body: dict = {"model": args.model, "max_tokens": max_tokens, "stream": True, "temperature": args.temperature}
    if not args.no_stream_options:
        body["stream_options"] = {"include_usage": True}
    if args.seed is not None:
        body["seed"] = args.seed
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt + "\n\n"
    return body


async def run_level(client, args, url, prompts, conc: int, n: int) -> dict:
    chat = args.endpoint == "chat"
    results: list[Result] = []
    next_i = 0

    async def worker():
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            body = request_body(args, prompts[i % len(prompts)], args.max_tokens)
            results.append(await one_request(client, url, body, chat, args.timeout))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    itl = [x for r in ok for x in r.itl]
    ttft = [r.ttft for r in ok]
    tpot = [r.tpot for r in ok if not math.isnan(r.tpot)]
    ms = lambda x: x * 1000.0  # noqa: E731
    return {
        "concurrency": conc,
        "requests": n,
        "completed": len(ok),
        "errors": len(bad),
        "error_samples": sorted({r.error for r in bad})[:5],
        "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall > 0 else math.nan,
        "output_tok_s": out_tokens / wall if wall > 0 else math.nan,
        "output_tokens": out_tokens,
        "mean_output_tokens": out_tokens / len(ok) if ok else math.nan,
        "mean_prompt_tokens": (sum(r.prompt_tokens for r in ok) / len(ok)) if ok and all(r.usage_tokens for r in ok) else None,
        "usage_reported": bool(ok) and all(r.usage_tokens for r in ok),
        "mean_chunks": sum(r.chunks for r in ok) / len(ok) if ok else math.nan,
        "missing_done": sum(1 for r in ok if not r.done),
        "retried_stale_connection": sum(1 for r in results if r.retried),
        "ttft_ms_p50": ms(pct(ttft, 50)),
        "ttft_ms_p99": ms(pct(ttft, 99)),
        "tpot_ms_p50": ms(pct(tpot, 50)),
        "tpot_ms_p99": ms(pct(tpot, 99)),
        "itl_ms_p50": ms(pct(itl, 50)),
        "itl_ms_p99": ms(pct(itl, 99)),
        "decode_tok_s_per_stream": 1000.0 / ms(pct(tpot, 50)) if tpot else math.nan,
    }


def check_loopback(base_url: str) -> None:
    host = urlsplit(base_url).hostname or ""
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except OSError as e:
        sys.exit(f"serve_bench: cannot resolve {host!r}: {e}")
    for a in addrs:
        if not ipaddress.ip_address(a.split("%")[0]).is_loopback:
            sys.exit(f"serve_bench: {host!r} resolves to {a}, not loopback; pass --allow-remote to benchmark it")


def fmt(x, spec=".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"server: {meta['base_url']}  model: {meta['model']}  endpoint: {meta['endpoint']}  "
        f"max_tokens: {meta['max_tokens']}  temperature: {meta['temperature']}",
        "",
        "| concurrency | requests | errors | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms "
        "| ITL p50 ms | ITL p99 ms | out tok/req | chunks/req | prompt tok/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tok = fmt(r["mean_output_tokens"]) + ("*" if r["completed"] and not r["usage_reported"] else "")
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {fmt(r['requests_per_s'], '.2f')} "
            f"| {fmt(r['output_tok_s'])} | {fmt(r['ttft_ms_p50'])} | {fmt(r['ttft_ms_p99'])} "
            f"| {fmt(r['tpot_ms_p50'], '.2f')} | {fmt(r['tpot_ms_p99'], '.2f')} "
            f"| {fmt(r['itl_ms_p50'], '.2f')} | {fmt(r['itl_ms_p99'], '.2f')} "
            f"| {tok} | {fmt(r['mean_chunks'])} | {fmt(r['mean_prompt_tokens'])} |"
        )
    notes = []
    if any(r["completed"] and not r["usage_reported"] for r in rows):
        notes.append("* no usage block from the server: output tokens counted as content chunks")
    for r in rows:
        if r["retried_stale_connection"]:
            notes.append(
                f"concurrency {r['concurrency']}: {r['retried_stale_connection']} requests resent after the server "
                "closed the keep-alive connection they were sent on"
            )
        if r["missing_done"]:
            notes.append(f"concurrency {r['concurrency']}: {r['missing_done']} streams ended without `data: [DONE]`")
        for e in r["error_samples"]:
            notes.append(f"concurrency {r['concurrency']} error: {e}")
    return "\n".join(lines + ([""] + notes if notes else []))


async def main_async(args) -> int:
    base = args.base_url.rstrip("/")
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    levels = args.concurrency
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, trust_env=False) as client:
        if not args.model:
            try:
                resp = await client.get(f"{base}/models", timeout=10.0)
                resp.raise_for_status()
                args.model = resp.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
                print(f"serve_bench: no --model and GET {base}/models failed: {e}", file=sys.stderr)
                return 2
        url = f"{base}/chat/completions" if args.endpoint == "chat" else f"{base}/completions"
        prompts = build_prompts(args.prompt_tokens)
        chat = args.endpoint == "chat"
        for i in range(args.warmup):
            body = request_body(args, prompts[i % len(prompts)], min(16, args.max_tokens))
            r = await one_request(client, url, body, chat, args.timeout)
            if not r.ok:
                print(f"serve_bench: warm-up request failed: {r.error}", file=sys.stderr)
        rows = []
        for conc in levels:
            n = args.requests if args.requests else max(8, 2 * conc)
            row = await run_level(client, args, url, prompts, conc, n)
            rows.append(row)
            if not args.quiet:
                print(
                    f"serve_bench: concurrency {conc}: {row['completed']}/{n} ok in {row['wall_s']:.1f}s, "
                    f"{row['output_tok_s']:.1f} output tok/s",
                    file=sys.stderr,
                )
    meta = {
        "base_url": args.base_url,
        "model": args.model,
        "endpoint": args.endpoint,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "prompt_tokens_target": args.prompt_tokens,
        "warmup": args.warmup,
    }
    if args.json:
        nan_to_null = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        rows_json = [{k: nan_to_null(v) for k, v in r.items()} for r in rows]
        print(json.dumps({"meta": meta, "levels": rows_json}, indent=1, allow_nan=False))
    else:
        print(markdown(meta, rows))
    return 1 if any(r["errors"] for r in rows) and args.fail_on_error else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1", help="the server's /v1 URL")
    p.add_argument("--model", default="", help="model id (default: the first of GET /models)")
    p.add_argument("--api-key", default="", help="sent as `Authorization: Bearer KEY`")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default: max(8, 2*concurrency))")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=0, help="pad prompts to roughly this many tokens (0: as written, ~30 tokens)")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2, help="sequential warm-up requests (16 tokens each), not measured")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a whole request may take")
    p.add_argument("--no-stream-options", action="store_true", help="omit stream_options (for servers that reject it)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--fail-on-error", action="store_true", help="exit 1 when any request failed")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback server address")
    args = p.parse_args()
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    if not args.concurrency or min(args.concurrency) < 1 or args.max_tokens < 1 or args.requests < 0:
        p.error("concurrency levels, --max-tokens must be >= 1")
    if not args.allow_remote:
        check_loopback(args.base_url)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
