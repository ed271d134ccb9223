"""The official `openai` client against the real server and model."""

import base64
import math
import struct

import openai
import pytest
from conftest import EMBED, MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL and r.system_fingerprint
    c = r.choices[0]
    assert c.message.role == "assistant" and "Paris" in c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert roles == ["assistant"]
    assert "Paris" in text and finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0
    # Streaming and not give the same greedy text.
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == text


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, n=2, temperature=1.0, seed=5, logprobs=True)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    # Usage counts the tokens of both choices.
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)


def test_stop_sequence(client):
    full = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0).choices[0]
    assert "Paris" in full.message.content
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stop=["Paris"]).choices[0]
    assert "Paris" not in cut.message.content and cut.finish_reason == "stop"
    assert full.message.content.startswith(cut.message.content)


def test_seed_reproducibility(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=24, temperature=1.2)
    a = client.chat.completions.create(seed=42, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=42, **kw).choices[0].message.content
    c = client.chat.completions.create(seed=43, **kw).choices[0].message.content
    assert a == b and a != c


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token and math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-5)
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
    c = r.choices[0]
    assert r.object == "text_completion" and "Paris" in c.text
    assert len(c.logprobs.tokens) == r.usage.completion_tokens == len(c.logprobs.token_logprobs)
    echo = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, echo=True)
    assert echo.choices[0].text == "The capital of France is" + c.text
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == c.text
    multi = client.completions.create(model=MODEL, prompt=["One, two,", "A, B,"], max_tokens=4, temperature=0)
    assert [ch.index for ch in multi.choices] == [0, 1]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings(client):
    r = client.embeddings.create(model=EMBED, input=["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    a, b, c = (d.embedding for d in r.data)
    assert len(a) == 384 and r.usage.prompt_tokens > 0
    assert cosine(a, b) > cosine(a, c) + 0.3
    # base64 holds the same floats, little-endian f32.
    r64 = client.embeddings.create(model=EMBED, input="A man is eating food.", encoding_format="base64")
    raw = base64.b64decode(r64.data[0].embedding)
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(floats) == 384 and max(abs(x - y) for x, y in zip(floats, a)) < 1e-6


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and EMBED in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_error_statuses_through_the_client(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=5)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10**6)
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=100)
    assert e.value.body["param"] == "n"
