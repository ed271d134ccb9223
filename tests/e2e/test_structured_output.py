"""`response_format` with the real default model and the official client:
generation is constrained (llguidance), so even a 135M model's output is
valid JSON of the requested shape."""

import json

import openai
import pytest
from conftest import MODEL

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number"},
        "kind": {"type": "string", "enum": ["capital", "port", "village"]},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["city", "country", "kind", "landmarks"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe Paris as JSON."}]


def check(v):
    """A hand check of SCHEMA (every rule it states)."""
    assert isinstance(v, dict) and set(v) <= set(SCHEMA["properties"]), v
    assert {"city", "country", "kind", "landmarks"} <= set(v), v
    assert isinstance(v["city"], str) and len(v["city"]) <= 40
    assert isinstance(v["country"], str) and len(v["country"]) <= 40
    assert v["kind"] in ("capital", "port", "village")
    assert isinstance(v["landmarks"], list) and len(v["landmarks"]) <= 3
    assert all(isinstance(x, str) and len(x) <= 30 for x in v["landmarks"])
    if "population_millions" in v:
        assert isinstance(v["population_millions"], (int, float)) and not isinstance(v["population_millions"], bool)


def fmt():
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("temperature,seed", [(0, None), (1.0, 1), (1.0, 2)])
def test_json_schema_output_is_valid(client, temperature, seed):
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, temperature=temperature, seed=seed,
                                       response_format=fmt())
    c = r.choices[0]
    assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
    check(json.loads(c.message.content))


def test_json_schema_streamed_equals_whole(client):
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, temperature=0, response_format=fmt())
    text = ""
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, temperature=0,
                                                response_format=fmt(), stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
    assert text == whole.choices[0].message.content
    check(json.loads(text))


def test_json_object_output_parses(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
                                       max_tokens=120, temperature=0, response_format={"type": "json_object"})
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:  # out of tokens: still the start of an object
        assert c.message.content.startswith("{")


@pytest.mark.parametrize("bad,param", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}, "response_format.json_schema.schema"),
    ({"type": "xml"}, "response_format"),
])
def test_bad_response_format_is_a_400_naming_the_field(client, bad, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, response_format=bad)
    assert e.value.body["param"].startswith(param.split(".")[0]), e.value.body
    assert e.value.body["param"] == param or param == "response_format", e.value.body
