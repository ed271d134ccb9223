"""Tool calling with the real default model and the official `openai`
client: forced calls in chat completions (constrained, so the arguments
follow the function's schema), tool results sent back, and the Responses
API running the code interpreter in its sandbox when the policy grants it,
refusing it (and telling the model) when it does not."""

import json
import subprocess

import jsonschema
import openai
import pytest
from conftest import MODEL
from policies import keys_config, plugin, route, write
from server import Server

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Adds two integers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
FULL, PLAIN = "key-full-0123456789", "key-plain-0123456789"
CODE_LIMITS = {"deadline_ms": 3000, "memory_mb": 128}


@pytest.fixture(scope="module")
def setup(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    audit = d / "audit.jsonl"
    text = (
        f'[audit]\npath = "{audit}"\n'
        + plugin("keys", "api_key_auth.wasm", "authenticator",
                 config=keys_config([(FULL, "full", ["inference", "tools"]), (PLAIN, "plain", ["inference"])]))
        + plugin("code-interpreter", "code_interpreter.wasm", "tool", limits=CODE_LIMITS)
        + route("/health", public=True)
        + route("/ready", public=True)
        + route("/v1/responses", auth="keys", scopes=["inference"], tools=[("code-interpreter", ["tools"])],
                max_tool_steps=1)
        + route("*", auth="keys", scopes=["inference"])
    )
    policy = write(d, text)
    s = Server(binary, policy=policy)
    yield s, policy, audit
    assert s.stop() == 0


def client(setup, key=FULL):
    return openai.OpenAI(base_url=setup[0].v1, api_key=key, max_retries=0, timeout=300)


def audit_lines(setup, route_path):
    return [r for r in map(json.loads, setup[2].read_text().splitlines()) if r["route"] == route_path]


def check_call(call):
    assert call.type == "function" and call.id.startswith("call"), call
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_named_tool_choice_yields_a_schema_valid_call(setup):
    r = client(setup).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=120, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.content is None
    [call] = c.message.tool_calls
    assert call.function.name == "get_weather"
    check_call(call)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_yields_a_valid_call_of_one_of_the_tools(setup, seed):
    r = client(setup).chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                              max_tokens=120, temperature=1.0, seed=seed)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    for call in c.message.tool_calls:
        check_call(call)


def test_a_streamed_forced_call_equals_the_whole_one(setup):
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=120, temperature=0,
              tool_choice={"type": "function", "function": {"name": "add"}})
    whole = client(setup).chat.completions.create(**kw).choices[0].message.tool_calls[0]
    calls, finish = [], None
    for chunk in client(setup).chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in calls] == [("add", whole.function.arguments)]
    jsonschema.validate(json.loads(calls[0].function.arguments), ADD)


def test_tool_results_go_back_to_the_model(setup):
    c = client(setup)
    first = c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=120, temperature=0,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 7, "sky": "rain"})},
    ]
    second = c.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                       max_tokens=40, temperature=0)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    # The result is in the prompt the model read: more prompt tokens than
    # the same conversation without it.
    shorter = c.chat.completions.create(model=MODEL, messages=messages[:2], tools=TOOLS, tool_choice="none",
                                        max_tokens=1, temperature=0)
    assert second.usage.prompt_tokens > shorter.usage.prompt_tokens
    # A result for a call that was never made is refused by field.
    bad = messages[:2] + [{"role": "tool", "tool_call_id": "call_nope", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=bad, max_tokens=5)
    assert e.value.body["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize("kw,param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required", "tools": []}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
])
def test_bad_tool_requests_name_the_field(setup, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(setup).chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **{"tools": TOOLS, **kw})
    assert e.value.body["param"] == param, e.value.body


CODE_TOOL = [{"type": "code_interpreter", "container": {"type": "auto"}}]
QUESTION = "Use Python to compute 17 * 23."


def sandbox_logs(binary, policy, code):
    """What the same sandbox says about `code`, run by `palisade tool run`."""
    p = subprocess.run([str(binary), "tool", "run", "code-interpreter", "--policy", str(policy),
                        "--args", json.dumps({"code": code})], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        return None
    out = json.loads(p.stdout)
    return "".join(s if s.endswith("\n") else s + "\n" for s in
                   (out[k] for k in ("stdout", "stderr", "result", "error")) if s)


def test_the_server_runs_the_granted_code_interpreter_and_feeds_the_result_back(setup, binary):
    r = client(setup).responses.create(model=MODEL, input=QUESTION, tools=CODE_TOOL, temperature=0,
                                       tool_choice={"type": "code_interpreter"}, max_output_tokens=200)
    assert r.status in ("completed", "incomplete"), r
    kinds = [o.type for o in r.output]
    # max_tool_steps = 1: one call, then the model answers without tools.
    assert kinds[0] == "code_interpreter_call" and kinds.count("code_interpreter_call") == 1, kinds
    assert kinds[-1] == "message", kinds
    call = r.output[0]
    assert isinstance(call.code, str)
    expected = sandbox_logs(binary, setup[1], call.code)
    if expected is None:
        assert call.status == "failed"
    else:
        assert call.status == "completed"
        assert call.outputs[0].logs == expected
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    rec = audit_lines(setup, "/v1/responses")[-1]
    assert rec["principal"] == "full"
    tools = [s for s in rec["stages"] if s["stage"] == "tool"]
    assert [t["plugin"] for t in tools] == ["code_interpreter"]
    assert tools[0]["verdict"] in ("ok", "tool-error") or tools[0]["verdict"].startswith("error:"), tools


def test_a_call_the_policy_does_not_grant_is_refused_and_the_model_is_told(setup):
    r = client(setup, PLAIN).responses.create(model=MODEL, input=QUESTION, tools=CODE_TOOL, temperature=0,
                                              tool_choice={"type": "code_interpreter"}, max_output_tokens=200)
    call = r.output[0]
    assert call.type == "code_interpreter_call" and call.status == "failed", call
    logs = call.outputs[0].logs
    assert "refused by policy" in logs and "tools" in logs and "not run" in logs, logs
    assert r.output[-1].type == "message"
    rec = audit_lines(setup, "/v1/responses")[-1]
    assert rec["principal"] == "plain"
    assert [(s["plugin"], s["verdict"]) for s in rec["stages"] if s["stage"] == "tool"] == [("code_interpreter", "refused")]


def test_a_client_function_call_comes_back_and_its_output_goes_in(setup):
    c = client(setup)
    fn = {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}
    r = c.responses.create(model=MODEL, input="Weather in Oslo?", tools=[fn], temperature=0,
                           tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=120)
    [call] = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    follow = c.responses.create(model=MODEL, tools=[fn], max_output_tokens=40, temperature=0, input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 7}'},
    ])
    assert follow.output[-1].type in ("message", "function_call")
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=MODEL, input=[{"type": "function_call_output", "call_id": "x", "output": "y"}])
    assert e.value.body["param"] == "input[0].call_id"


def test_streamed_events_match_the_whole_response(setup):
    kw = dict(model=MODEL, input=QUESTION, tools=CODE_TOOL, temperature=0, tool_choice={"type": "code_interpreter"},
              max_output_tokens=200)
    whole = client(setup).responses.create(**kw)
    events = list(client(setup).responses.create(**kw, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for t in ("response.code_interpreter_call.interpreting", "response.code_interpreter_call.completed",
              "response.output_text.delta", "response.output_item.done"):
        assert t in types, types
    final = events[-1].response
    assert [o.type for o in final.output] == [o.type for o in whole.output]
    assert final.output[0].code == whole.output[0].code
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output[-1].content[0].text


@pytest.mark.parametrize("kw,param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": CODE_TOOL, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
])
def test_bad_responses_requests_name_the_field(setup, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(setup).responses.create(model=MODEL, input="hi", max_output_tokens=5, **kw)
    assert e.value.body["param"] == param, e.value.body


def test_a_turn_without_tools_streams_token_by_token(setup):
    kw = dict(model=MODEL, input="Name three rivers.", temperature=0, max_output_tokens=24)
    whole = client(setup).responses.create(**kw)
    events = list(client(setup).responses.create(**kw, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3, deltas
    assert "".join(deltas) == whole.output[0].content[0].text == events[-1].response.output[0].content[0].text
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens == 24
