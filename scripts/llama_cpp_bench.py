#!/usr/bin/env python3
"""Benchmark llama.cpp (via llama-cpp-python) prefill and decode throughput on a GGUF.

Per rep, prints one JSON line to stdout:
  {"engine":"llama.cpp","threads":N,"prefill_tok_s":x,"decode_tok_s":y}
With --once-json, prints only one line with the medians over reps (plus "reps").
Everything else goes to stderr.

Prompt (reproducible on the Rust side): PARAGRAPH repeated k times (smallest k such
that tokenize(PARAGRAPH * k) has >= --prompt-tokens ids), tokenized as one string with
add_bos=False, special=False, truncated to exactly --prompt-tokens ids.
Use --dump-prompt-ids to print those ids as a JSON list and exit.

Prefill: fresh KV cache, the whole prompt in a single llama_decode call
(n_batch = n_ubatch >= prompt tokens); only the decode call is timed.
Decode: fresh KV cache, the first --decode-prompt-tokens ids of the same prompt are
evaluated (untimed), then --gen-tokens greedy steps: argmax (numpy) of the last logits,
llama_decode of that single token; only the llama_decode calls are timed.
One untimed warm-up prefill+decode runs before the reps.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

PARAGRAPH = (
    "The history of computing is a story of steady abstraction. Early machines were "
    "programmed by rewiring panels and flipping switches, and every instruction had to be "
    "spelled out in the language of the hardware itself. Over the decades, engineers built "
    "layer upon layer of tools, from assemblers and compilers to operating systems and "
    "high-level languages, so that people could describe what they wanted rather than how "
    "the circuits should move each bit. Today a single sentence typed into a text box can "
    "set millions of calculations in motion, yet underneath it all the same simple "
    "operations of adding, comparing and moving numbers still do the work. "
)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def disable_extra_bufts(ll):
    """use_extra_bufts=False: the AMX extra buffer type segfaults on this host
    (ggml_backend_amx_mul_mat), so keep to the plain ggml-cpu kernels."""
    orig = ll.llama_model_default_params
    if getattr(orig, "_palisade_patched", False):
        return

    def patched():
        p = orig()
        p.use_extra_bufts = False
        return p

    patched._palisade_patched = True
    ll.llama_model_default_params = patched


def prompt_ids(llm, n):
    k = 1
    while True:
        ids = llm.tokenize((PARAGRAPH * k).encode("utf-8"), add_bos=False, special=False)
        if len(ids) >= n:
            return [int(t) for t in ids[:n]], k
        k += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--decode-prompt-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--once-json", action="store_true", help="print only one line with medians over reps")
    ap.add_argument("--flash-attn", action="store_true", help="enable flash attention (default: disabled)")
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp extra buffer types (AMX/repack); crashes on this host")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--dump-prompt-ids", action="store_true", help="print the prompt ids as JSON and exit")
    args = ap.parse_args()

    import llama_cpp.llama_cpp as ll
    import llama_cpp
    if not args.extra_bufts:
        disable_extra_bufts(ll)
    from llama_cpp import Llama

    n_ctx = max(args.prompt_tokens, args.decode_prompt_tokens + args.gen_tokens) + 16
    n_batch = max(512, args.prompt_tokens)
    llm = Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        flash_attn=args.flash_attn,
        logits_all=False,
        verbose=False,
    )
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    ids, k = prompt_ids(llm, args.prompt_tokens)
    if args.dump_prompt_ids:
        print(json.dumps(ids))
        return
    log("llama-cpp-python %s threads=%d n_ctx=%d n_batch=n_ubatch=%d flash_attn=%s kv=f16 "
        "use_extra_bufts=%s paragraph_repeats=%d prompt_ids[:8]=%s"
        % (llama_cpp.__version__, args.threads, n_ctx, n_batch, args.flash_attn,
           args.extra_bufts, k, ids[:8]))

    batch = llm._batch  # llama_batch sized n_batch, owned by Llama

    def clear_kv():
        ll.llama_memory_clear(ll.llama_get_memory(ctx), True)

    def decode(tokens, n_past):
        batch.set_batch(batch=tokens, n_past=n_past, logits_all=False)
        t0 = time.perf_counter()
        rc = ll.llama_decode(ctx, batch.batch)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError("llama_decode returned %d" % rc)
        return dt

    def argmax_last():
        return int(np.argmax(np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))))

    def run_prefill():
        clear_kv()
        dt = decode(ids, 0)
        return len(ids) / dt

    def run_decode():
        clear_kv()
        p = ids[: args.decode_prompt_tokens]
        decode(p, 0)
        n_past = len(p)
        total = 0.0
        for _ in range(args.gen_tokens):
            t = argmax_last()
            total += decode([t], n_past)
            n_past += 1
        return args.gen_tokens / total

    if not args.no_warmup:
        run_prefill()
        run_decode()

    rows = []
    for rep in range(args.reps):
        pf = run_prefill()
        dc = run_decode()
        row = {"engine": "llama.cpp", "threads": args.threads,
               "prefill_tok_s": round(pf, 2), "decode_tok_s": round(dc, 2)}
        rows.append(row)
        if args.once_json:
            log(json.dumps(row))
        else:
            print(json.dumps(row), flush=True)

    if args.once_json:
        print(json.dumps({
            "engine": "llama.cpp", "threads": args.threads,
            "prefill_tok_s": round(statistics.median(r["prefill_tok_s"] for r in rows), 2),
            "decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in rows), 2),
            "reps": args.reps,
        }), flush=True)


if __name__ == "__main__":
    main()
