#!/usr/bin/env python3
"""The table of scripts/bench_batch.sh: Palisade against llama.cpp's
llama-server, from the `serve_bench.py --json` results of alternating rounds.

  python scripts/bench_batch_report.py DIR [--title TEXT]

DIR holds one file per server, round and concurrency level, named
SERVER.rROUND.cCONC.json (e.g. palisade.r1.c16.json), each the JSON of one
`serve_bench.py --json --concurrency CONC` run. Per server and level the
table gives the median over rounds of output tok/s, TTFT p50/p99, TPOT p50
and output tokens per request, the per-round output tok/s, and the errors
summed over rounds; then the ratio lines (scaling from the lowest to the
highest level, Palisade over llama-server, TTFT p99 side by side).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

NAME = re.compile(r"^(?P<server>[A-Za-z0-9_-]+)\.r(?P<round>\d+)\.c(?P<conc>\d+)\.json$")
ORDER = ["palisade", "llama-server"]


def median(xs: list) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else math.nan


def fmt(x: float, spec: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def load(d: Path) -> dict:
    """{(server, conc): [level dict per round, in round order]}"""
    runs: dict = {}
    for f in sorted(d.iterdir()):
        m = NAME.match(f.name)
        if not m:
            continue
        data = json.loads(f.read_text())
        for level in data["levels"]:
            key = (m["server"], int(level["concurrency"]))
            runs.setdefault(key, []).append((int(m["round"]), level, data["meta"]))
    return {k: [lv for _, lv, _ in sorted(v, key=lambda t: t[0])] for k, v in runs.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--title", default="", help="a line printed above the table")
    args = p.parse_args()
    runs = load(args.dir)
    if not runs:
        print(f"bench_batch_report: no SERVER.rN.cC.json files in {args.dir}", file=sys.stderr)
        return 1
    servers = sorted({s for s, _ in runs}, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))
    levels = sorted({c for _, c in runs})

    summary: dict = {}
    for key, rounds in runs.items():
        summary[key] = {
            "rounds": len(rounds),
            "tok_s": median([r["output_tok_s"] for r in rounds]),
            "tok_s_each": [r["output_tok_s"] for r in rounds],
            "ttft_p50": median([r["ttft_ms_p50"] for r in rounds]),
            "ttft_p99": median([r["ttft_ms_p99"] for r in rounds]),
            "tpot_p50": median([r["tpot_ms_p50"] for r in rounds]),
            "out_tok": median([r["mean_output_tokens"] for r in rounds]),
            "requests": sum(r["requests"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "error_samples": sorted({e for r in rounds for e in r.get("error_samples") or []})[:3],
            "usage": all(r.get("usage_reported") for r in rounds),
            "retried": sum(r.get("retried_stale_connection") or 0 for r in rounds),
        }

    out = []
    if args.title:
        out += [args.title, ""]
    out += [
        "| server | concurrency | output tok/s (median) | per round | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms "
        "| out tok/req | errors / requests |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in servers:
        for c in levels:
            r = summary.get((s, c))
            if r is None:
                continue
            each = ", ".join(fmt(x) for x in r["tok_s_each"])
            out.append(
                f"| {s} | {c} | {fmt(r['tok_s'])} | {each} | {fmt(r['ttft_p50'])} | {fmt(r['ttft_p99'])} "
                f"| {fmt(r['tpot_p50'], '.2f')} | {fmt(r['out_tok'])}{'' if r['usage'] else '*'} "
                f"| {r['errors']} / {r['requests']} |"
            )

    lo, hi = levels[0], levels[-1]
    get = lambda s, c, k: summary.get((s, c), {}).get(k, math.nan)  # noqa: E731
    lines = []
    if lo != hi:
        for s in servers:
            lines.append(
                f"- {s} tok/s at {hi} / at {lo}: {fmt(ratio(get(s, hi, 'tok_s'), get(s, lo, 'tok_s')), '.2f')}x "
                f"({fmt(get(s, hi, 'tok_s'))} / {fmt(get(s, lo, 'tok_s'))})"
            )
    if "palisade" in servers and "llama-server" in servers:
        for c in sorted({hi, lo}, reverse=True):
            lines.append(
                f"- palisade / llama-server tok/s at {c}: "
                f"{fmt(ratio(get('palisade', c, 'tok_s'), get('llama-server', c, 'tok_s')), '.2f')}x "
                f"({fmt(get('palisade', c, 'tok_s'))} / {fmt(get('llama-server', c, 'tok_s'))})"
            )
        lines.append(
            f"- TTFT p99 at {hi}: palisade {fmt(get('palisade', hi, 'ttft_p99'))} ms, "
            f"llama-server {fmt(get('llama-server', hi, 'ttft_p99'))} ms"
        )
        a, b = get("palisade", hi, "out_tok"), get("llama-server", hi, "out_tok")
        if not math.isnan(a) and not math.isnan(b) and abs(a - b) > 0.05 * max(a, b):
            lines.append(
                f"- note: the servers wrote answers of different lengths at {hi} ({fmt(a)} vs {fmt(b)} tokens "
                "per request; chat templates or stopping differ), so tok/s compares unequal work"
            )
    notes = []
    if any(not r["usage"] for r in summary.values()):
        notes.append("* no usage block from the server: output tokens counted as content chunks")
    for (s, c), r in sorted(summary.items()):
        if r["retried"]:
            notes.append(
                f"{s} at {c}: {r['retried']} of {r['requests']} requests resent once: the server had closed "
                "the keep-alive connection (serve_bench.py retries a request that got no response at all)"
            )
        for e in r["error_samples"]:
            notes.append(f"{s} at {c}: error: {e}")
    print("\n".join(out + [""] + lines + ([""] + notes if notes else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
