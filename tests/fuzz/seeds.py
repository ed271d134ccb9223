#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/seeds/<target>/):
small valid inputs the fuzzer mutates from. Re-run after changing it; the
output is committed."""

import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
OUT = ROOT / "seeds"
REPO = ROOT.parents[1]
MODEL = "SmolLM2-135M-Instruct.Q4_1"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def requests():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9\U0001F600"}]
    bodies = [
        {"model": MODEL, "messages": msgs, "max_tokens": 8, "temperature": 0},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], "stream": True,
         "stream_options": {"include_usage": True}, "n": 2, "seed": 7, "stop": ["\n", "END"], "top_p": 0.9, "top_k": 40,
         "logprobs": True, "top_logprobs": 2, "logit_bias": {"42": -100}, "presence_penalty": 0.5, "max_completion_tokens": 4},
        {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "echo": True, "logprobs": 2},
        {"model": MODEL, "prompt": ["a", "b"], "n": 2, "best_of": 2},
        {"model": MODEL, "prompt": [1, 2, 3]},
        {"model": MODEL, "prompt": [[1, 2], [3]]},
        {"model": "all-minilm-l6-v2", "input": ["A man is eating food."], "encoding_format": "base64"},
        {"prompt": "Hello <|im_start|>", "add_special_tokens": False},
        {"messages": msgs},
        {"tokens": [1, 2, 3, 49151]},
    ]
    for i, b in enumerate(bodies):
        put("request_json", f"body{i}.json", json.dumps(b))


def policies():
    text = (REPO / "examples" / "policy.toml").read_text()
    text = text.replace("@PLUGINS@", "/plugins").replace("@KEYS_FILE@", "/keys.json").replace("@AUDIT@", "/audit.jsonl")
    for name in ["api_key_auth", "rate_limit", "request_guard", "sensitive_data"]:
        text = text.replace(f"@SHA256:{name}.wasm@", "ab" * 32)
    put("policy_toml", "default.toml", text)
    put("policy_toml", "open.toml", '[[routes]]\npath = "*"\npublic = true\n')


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(v):
    if isinstance(v, bool):
        return struct.pack("<I", 7) + struct.pack("<B", v)
    if isinstance(v, int):
        return struct.pack("<I", 4) + struct.pack("<I", v)
    if isinstance(v, float):
        return struct.pack("<I", 6) + struct.pack("<f", v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + gguf_string(v)
    items = list(v)
    if isinstance(items[0], str):
        return struct.pack("<IIQ", 9, 8, len(items)) + b"".join(gguf_string(x) for x in items)
    return struct.pack("<IIQ", 9, 5, len(items)) + b"".join(struct.pack("<i", x) for x in items)


def gguf():
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u0120", "Ġa", "ab"]
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 1,
        "llama.context_length": 64,
        "llama.embedding_length": 4,
        "llama.feed_forward_length": 8,
        "llama.attention.head_count": 1,
        "llama.attention.head_count_kv": 1,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * 5 + [1] * (len(tokens) - 5),
        "tokenizer.ggml.merges": ["a b", "\u0120 a"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    }
    tensors = [("token_embd.weight", [4, len(tokens)]), ("output_norm.weight", [4])]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for k, v in meta.items():
        head += gguf_string(k) + gguf_value(v)
    offset = 0
    data = b""
    for name, dims in tensors:
        n = 1
        for d in dims:
            n *= d
        head += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", 0, offset)
        data += struct.pack(f"<{n}f", *([0.5] * n))
        offset += 4 * n
    head += b"\0" * (-len(head) % 32)
    put("gguf_header", "tiny.gguf", head + data)


def safetensors():
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]}}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    put("safetensors_header", "two.safetensors", struct.pack("<Q", len(h)) + h + b"\x01" * 22)


def texts():
    samples = ["Hello, world!", "  leading  and trailing  \n\n\t", "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600\U0001F468\u200d\U0001F469",
               "<|im_start|>user\nHi<|im_end|>", "1234567890 3.14159 0x1F", "don't we'll I'M", "\u0000\u0001\u007f\ufeff"]
    for i, s in enumerate(samples):
        put("tokenizer", f"text{i}.txt", s)


if __name__ == "__main__":
    requests()
    policies()
    gguf()
    safetensors()
    texts()
