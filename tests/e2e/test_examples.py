"""The example plugins (examples/plugins) through the real server: a Rust
output filter made with `palisade plugin new` and a Python one built with
componentize-py, each pinned in a policy as the output filter of
/v1/chat/completions and seen through the official `openai` client.

The model is steered to repeat a sentence holding what the filter masks. An
unfiltered server first shows the model really says it; the filtered server
must then answer exactly that text with the filter applied (temperature 0),
with nothing of it leaking, whole or streamed."""

import re
from dataclasses import dataclass

import httpx
import openai
import pytest
from conftest import MODEL
from policies import OPEN, ROOT, plugin, route, write
from server import Server

EXAMPLES_DIR = ROOT / "examples" / "plugins"
RUST_WASM = EXAMPLES_DIR / "rust-word-filter" / "target" / "wasm32-wasip2" / "release" / "rust_word_filter.wasm"
PYTHON_WASM = EXAMPLES_DIR / "python-filter" / "build" / "python_filter.wasm"

_missing = [str(p.relative_to(ROOT)) for p in (RUST_WASM, PYTHON_WASM) if not p.exists()]
if _missing:
    pytest.skip(f"example plugins not built: {', '.join(_missing)} (run `make examples`)", allow_module_level=True)

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


@dataclass
class Example:
    wasm: object
    sentence: str
    config: dict
    limits: dict
    mask: str
    # Anything of what the filter must hide, even a piece of it.
    leak: re.Pattern
    # What the filter should make of the unfiltered text.
    expected: callable


EXAMPLES = {
    # "Zanzibar" comes as three tokens (" Z", "anz", "ibar"): a split word.
    "rust-word-filter": Example(
        wasm=RUST_WASM,
        sentence="The secret code is Zanzibar.",
        config={"words": ["secret", "zanzibar"]},
        limits={},
        mask="****",
        leak=re.compile(r"secret|zan|ibar|\bZ", re.I),
        expected=lambda text: re.sub(r"(?i)\b(?:secret|zanzibar)\b", "****", text),
    ),
    # The address comes as seven tokens (" john", ".", "smith", "@", ...).
    # A Python component is large: its first call in a fresh instance takes
    # a few milliseconds, so it gets a roomier deadline than the default.
    "python-filter": Example(
        wasm=PYTHON_WASM,
        sentence="My email address is john.smith@example.com.",
        config={},
        limits={"deadline_ms": 1000, "memory_mb": 64},
        mask="[email]",
        leak=re.compile(r"@|john|smith|example", re.I),
        expected=lambda text: EMAIL.sub("[email]", text),
    ),
}


def messages(sentence):
    return [
        {"role": "system", "content": "You repeat the user's text exactly."},
        {"role": "user", "content": f"Repeat this sentence: {sentence}"},
    ]


def chat(client, sentence, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages(sentence), temperature=0, max_tokens=32, **kw)


def client_of(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def policy(name, ex):
    # `plugin()` looks under plugins/target/...; an absolute path overrides it.
    return (
        plugin(name, str(ex.wasm), "output-filter", config=ex.config or None, limits=ex.limits or None)
        + route("/v1/chat/completions", public=True, output=[name])
        + route("*", public=True)
    )


@pytest.fixture(scope="module")
def unfiltered(binary, tmp_path_factory):
    """What the model answers to each example's prompt with no filter."""
    s = Server(binary, "--no-embeddings", policy=write(tmp_path_factory.mktemp("open"), OPEN))
    try:
        c = client_of(s)
        yield {name: chat(c, ex.sentence).choices[0].message.content for name, ex in EXAMPLES.items()}
    finally:
        assert s.stop() == 0


@pytest.fixture(scope="module", params=list(EXAMPLES))
def filtered(request, binary, tmp_path_factory):
    """(name, example, server) with the example as the output filter."""
    name = request.param
    ex = EXAMPLES[name]
    s = Server(binary, "--no-embeddings", policy=write(tmp_path_factory.mktemp(name), policy(name, ex)))
    yield name, ex, s
    assert s.stop() == 0


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_the_model_says_what_the_filter_hides(unfiltered, name):
    ex = EXAMPLES[name]
    text = unfiltered[name]
    assert ex.leak.search(text), f"the prompt no longer makes the model say it: {text!r}"
    assert ex.expected(text) != text and ex.mask in ex.expected(text), text


def test_whole_response_is_filtered(filtered, unfiltered):
    name, ex, s = filtered
    r = chat(client_of(s), ex.sentence)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert not ex.leak.search(text), text
    assert ex.mask in text, text
    assert text == ex.expected(unfiltered[name]), (text, unfiltered[name])


def test_streamed_response_is_filtered(filtered, unfiltered):
    name, ex, s = filtered
    chunks = []
    finish = None
    for ev in chat(client_of(s), ex.sentence, stream=True):
        for ch in ev.choices:
            chunks.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    text = "".join(chunks)
    assert finish == "stop"
    assert sum(1 for c in chunks if c) > 3, chunks
    # No chunk carries a piece of a masked word or address, not even one
    # that would only later turn out to be part of it.
    assert not any(ex.leak.search(c) for c in chunks), chunks
    assert ex.mask in text, chunks
    assert text == ex.expected(unfiltered[name]), (chunks, unfiltered[name])
    # The server counts the plugin's passes (one per response).
    counted = f'palisade_plugin_calls_total{{plugin="{name}",stage="output",outcome="pass"}} '
    lines = [l for l in httpx.get(s.url + "/metrics", timeout=5).text.splitlines() if l.startswith(counted)]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1, lines
