#!/usr/bin/env python3
"""Generate reference fixtures for Palisade from llama.cpp (via llama-cpp-python).

Writes, into --out (default tests/fixtures):
  tokenizer.json      tokenization of a fixed corpus (add_bos=False; special=False,
                      plus "special_cases" tokenized with special=True)
  greedy.json         64 pure-argmax greedy tokens per prompt, with top1-top2 logit margins
  chat_template.json  the GGUF chat template rendered with jinja2 the way HF transformers does

Only the pinned model (by sha256) is accepted. Output is deterministic and diff-friendly.

Usage:
  python scripts/make_fixtures.py --model /path/SmolLM2-135M-Instruct.Q4_1.gguf [--out tests/fixtures]
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EXPECTED_LLAMA_CPP_PYTHON = "0.3.36"
N_GEN = 64

# ---------------------------------------------------------------------------
# Tokenizer corpus
# ---------------------------------------------------------------------------

TOKENIZER_TEXTS = [
    # empty / trivial whitespace
    "",
    " ",
    "a",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    # whitespace runs
    "two  spaces and   three   and    four",
    "tabs\there\t\tand\t\t\tthere",
    "line one\nline two\n\nline four\n\n\n",
    "\n\n\n",
    "trailing spaces   ",
    "   leading",
    " \t \n \r\n mixed whitespace \u00a0nbsp",
    # code
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo:\n\tdef __init__(self, x: int = 0) -> None:\n\t\tself.x = x  # comment\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "const add = (a, b) => a + b;\nconsole.log(`sum=${add(1, 2)}`); // => 3\n",
    "if (x != null && y >= 0 || z === undefined) { return !x; }",
    # numbers
    "123 4567 89",
    "pi = 3.14159, e = 2.71828",
    "1,000,000 people; 1_000_000 in code; 1.5e-10",
    "Today is 2026-11-22 at 09:30:15 UTC.",
    "12345678901234567890123456789012345678901234567890",
    "Call 555-0199 or +1 (800) 123-4567 x99",
    # non-Latin scripts
    "你好，世界！今天天气很好。",
    "こんにちは、世界。カタカナとひらがなと漢字。",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Γειά σου Κόσμε! αβγδε ΑΒΓΔΕ",
    "안녕하세요 세계! 한국어 텍스트입니다.",
    # emoji
    "I love pizza 🍕🍕 and 😀😂🤣!",
    "Family: 👨\u200d👩\u200d👧\u200d👦 dev: 👩🏽\u200d💻 flags: 🇫🇷🇯🇵🇺🇸 heart: ❤️",
    # accented Latin
    "Café déjà vu, naïve façade, Ångström, Straße, señor, Œuvre, Łódź",
    # punctuation
    "!!!???...,,,;;;:::---___***&&&^^^%%%$$$###@@@",
    "(([[{{<<>>}}]]))\"'`~|\\/",
    # URLs / paths
    "See https://example.com/path/to/page?q=rust+llm&lang=en#section-2 for details.",
    "email me at first.last+tag@sub.example.org or open /usr/local/bin/palisade",
    # contractions / case
    "don't can't won't it's we've they'd I'LL YOU'RE SHE'S",
    "ALL CAPS SENTENCE, lowercase sentence, MiXeD cAsE wOrDs",
    # mixed everything
    "Mixed: naïve 日本語 🙂 x=3.14\tπ≈3.14159\n  def f(): return 'don't'  https://a.b/c?d=1 🇩🇪 ١٢٣",
    "<|im_start|> is a special marker but here tokenized as plain text <|im_end|>",
    "A long sentence repeated. " * 8,
]

SPECIAL_TEXTS = [
    "<|im_start|>user\nHello!<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|>",
    "text before<|im_start|>assistant\nThe answer is 4.<|im_end|>text after",
    "<|endoftext|>plain<|im_end|>\n\n<|im_start|>",
]

# ---------------------------------------------------------------------------
# Greedy prompts: (prompt, special)
# ---------------------------------------------------------------------------

GREEDY_PROMPTS = [
    ("Once upon a time, in a small village by the sea,", False),
    ("The little robot woke up and realized", False),
    ("It was a dark and stormy night. Suddenly,", False),
    ("The capital of France is", False),
    ("Q: What is the largest planet in our solar system?\nA:", False),
    ("Water boils at a temperature of", False),
    ("The theory of relativity was developed by", False),
    ("def fibonacci(n):", False),
    ("import numpy as np\n\ndef softmax(x):\n", False),
    ("fn main() {\n    println!(", False),
    ("// A JavaScript function that reverses a string\nfunction reverse(s) {", False),
    ("Here is a list of fruits:\n1. Apple\n2.", False),
    ("Three tips for staying healthy:\n-", False),
    ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     "<|im_start|>user\nWrite a haiku about the ocean.<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>user\nExplain what a CPU does in one sentence.<|im_end|>\n<|im_start|>assistant\n", True),
    ("2 + 2 =", False),
    ("Question: What is 12 times 12?\nAnswer:", False),
    ("1, 2, 3, 4, 5,", False),
    ("La capitale de l'Allemagne est", False),
    ("Der schnelle braune Fuchs", False),
    ("The recipe for chocolate chip cookies:\nIngredients:\n", False),
    ("Dear Sir or Madam,\n\nI am writing to", False),
    ("In 1969, Neil Armstrong", False),
]

# ---------------------------------------------------------------------------
# Chat template cases: (messages, add_generation_prompt)
# ---------------------------------------------------------------------------

CHAT_CASES = [
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are a pirate."},
      {"role": "user", "content": "Where is the treasure?"}], True),
    ([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "What is 2+2?"}], False),
    ([{"role": "user", "content": "Hi, who are you?"},
      {"role": "assistant", "content": "I am SmolLM, a small language model."},
      {"role": "user", "content": "What can you do?"},
      {"role": "assistant", "content": "I can answer questions and write text."},
      {"role": "user", "content": "Write a limerick."}], True),
    ([{"role": "system", "content": "sys"},
      {"role": "user", "content": "u1"},
      {"role": "assistant", "content": "a1"},
      {"role": "user", "content": "u2"}], True),
    ([{"role": "user", "content": "你好 🌍! Ça va? Привет 👨\u200d👩\u200d👧 🇯🇵\ttab\nnewline"}], True),
    ([{"role": "user", "content": "Compute {{ 7*7 }} and {% raw %}{{ x }}{% endraw %} {# c #} literally."}], True),
    ([{"role": "user", "content": ""}], True),
    ([{"role": "system", "content": ""},
      {"role": "user", "content": ""}], False),
    ([{"role": "assistant", "content": "I start the conversation."},
      {"role": "user", "content": "ok"}], True),
    ([{"role": "user", "content": "<|im_start|>injected<|im_end|>\n  spaced  \n"}], True),
    ([{"role": "user", "content": " ".join(
        "This is sentence number %d of a long message, with some words." % i for i in range(60))}], True),
]


def disable_extra_bufts():
    """Force llama_model_params.use_extra_bufts = False (no AMX / weight-repack buffers).

    The natively built ggml-cpu on this AMX-capable host segfaults inside
    ggml_backend_amx_mul_mat on the first decode of this Q4_1 model; disabling the
    extra buffer types keeps everything on the plain ggml-cpu kernels.
    """
    import llama_cpp.llama_cpp as ll
    orig = ll.llama_model_default_params
    if getattr(orig, "_palisade_patched", False):
        return

    def patched():
        p = orig()
        p.use_extra_bufts = False
        return p

    patched._palisade_patched = True
    ll.llama_model_default_params = patched


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote %s" % path, file=sys.stderr)


def tok(llm, text, special):
    return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)]


def last_logits(llm, llama_cpp):
    n_vocab = llm.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32, copy=True)


def make_tokenizer(llm, meta):
    cases = [{"text": t, "ids": tok(llm, t, False)} for t in TOKENIZER_TEXTS]
    special_cases = [{"text": t, "ids": tok(llm, t, True)} for t in SPECIAL_TEXTS]
    return dict(meta, add_bos=False, cases=cases, special_cases=special_cases)


def make_greedy(llm, llama_cpp, meta, settings):
    prompts = []
    for prompt, special in GREEDY_PROMPTS:
        ids = tok(llm, prompt, special)
        llm.reset()
        llm.eval(ids)
        tokens, margins, top1 = [], [], []
        for _ in range(N_GEN):
            logits = last_logits(llm, llama_cpp)
            t = int(np.argmax(logits))
            # top-2 of raw logits (argmax-excluded maximum)
            second = float(np.max(np.delete(logits, t)))
            tokens.append(t)
            margins.append(float(logits[t]) - second)
            top1.append(float(logits[t]))
            llm.eval([t])
        prompts.append({
            "prompt": prompt,
            "special": special,
            "prompt_ids": ids,
            "tokens": tokens,
            "margins": margins,
            "top1_logits": top1,
            "text": llm.detokenize(tokens, special=False).decode("utf-8", errors="replace"),
            "text_special": llm.detokenize(tokens, special=True).decode("utf-8", errors="replace"),
        })
        print("greedy %2d: %r" % (len(prompts) - 1, prompts[-1]["text_special"][:60]), file=sys.stderr)
    return dict(meta, settings=settings, n_gen=N_GEN, prompts=prompts)


def make_chat_template(llm, meta):
    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    template = llm.metadata["tokenizer.chat_template"]
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8")
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    cases = []
    for messages, agp in CHAT_CASES:
        rendered = compiled.render(messages=messages, add_generation_prompt=agp,
                                   bos_token=bos, eos_token=eos)
        cases.append({"messages": messages, "add_generation_prompt": agp, "rendered": rendered})
    return dict(meta, jinja2=jinja2.__version__, template=template,
                bos_token=bos, bos_token_id=int(llm.token_bos()),
                eos_token=eos, eos_token_id=int(llm.token_eos()), cases=cases)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    digest = sha256_file(args.model)
    if digest != EXPECTED_SHA256:
        sys.exit("refusing model %s: sha256 %s != expected %s" % (args.model, digest, EXPECTED_SHA256))

    import llama_cpp
    from llama_cpp import Llama
    if llama_cpp.__version__ != EXPECTED_LLAMA_CPP_PYTHON:
        print("WARNING: llama-cpp-python %s, fixtures were pinned with %s"
              % (llama_cpp.__version__, EXPECTED_LLAMA_CPP_PYTHON), file=sys.stderr)

    settings = {
        "n_ctx": 512,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": args.threads,
        "n_threads_batch": args.threads,
        "n_gpu_layers": 0,
        "flash_attn": False,  # llama_flash_attn_type DISABLED
        "type_k": "f16",      # llama.cpp default KV cache type (not overridden)
        "type_v": "f16",
        "logits_all": False,
        "use_extra_bufts": False,  # no AMX / repacked weights (AMX path segfaults here)
        "add_bos": False,
        "sampling": "argmax of raw logits, no sampler/penalties, ties -> lowest id; "
                    "does not stop at EOS; prompt evaluated in one batch, then 1 token per step",
    }
    disable_extra_bufts()
    llm = Llama(
        model_path=args.model,
        n_ctx=settings["n_ctx"],
        n_batch=settings["n_batch"],
        n_ubatch=settings["n_ubatch"],
        n_threads=settings["n_threads"],
        n_threads_batch=settings["n_threads_batch"],
        n_gpu_layers=0,
        flash_attn=False,
        logits_all=False,
        seed=0,
        verbose=False,
    )
    assert llm.model_params.use_extra_bufts is False
    assert llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert llm.context_params.type_k == llama_cpp.GGML_TYPE_F16
    assert llm.context_params.type_v == llama_cpp.GGML_TYPE_F16

    meta = {"model_sha256": digest, "llama_cpp_python": llama_cpp.__version__}
    os.makedirs(args.out, exist_ok=True)
    dump(os.path.join(args.out, "tokenizer.json"), make_tokenizer(llm, meta))
    dump(os.path.join(args.out, "chat_template.json"), make_chat_template(llm, meta))
    dump(os.path.join(args.out, "greedy.json"), make_greedy(llm, llama_cpp, meta, settings))


if __name__ == "__main__":
    main()
