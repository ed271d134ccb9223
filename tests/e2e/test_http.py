"""HTTP-level behaviour: SSE framing (curl), error statuses and shapes, bad
input, limits, slow clients, disconnects, shutdown, TLS."""

import json
import socket
import subprocess
import threading
import time

import httpx
import pytest
from conftest import MODEL
from server import Server

CHAT = "/v1/chat/completions"


def post(server, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=data, headers={"content-type": "application/json"}, timeout=120, **kw)


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_sse_framing_with_curl(server):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True,
                       "stream_options": {"include_usage": True}})
    out = subprocess.run(["curl", "-sN", "-D", "-", "-H", "content-type: application/json", "-d", body, server.url + CHAT],
                         capture_output=True, timeout=120).stdout.decode()
    head, _, stream = out.partition("\r\n\r\n")
    assert "content-type: text/event-stream" in head.lower()
    events = stream.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] > 0
    assert any(p["choices"] and p["choices"][0]["finish_reason"] for p in payloads)


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        (b'{"model": "x", "messages": [', None),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**30}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}, None),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
    ],
)
def test_bad_requests_get_a_400_naming_the_field(server, body, param):
    err = assert_error(post(server, CHAT, body), 400, param)
    assert err["type"] == "invalid_request_error"
    if param:
        assert param.split("[")[0].split(".")[-1] in err["message"] or param in err["message"]


def test_unknown_field_is_named(server):
    err = assert_error(post(server, CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}), 400)
    assert "frobnicate" in err["message"]


def test_invalid_utf8_body(server):
    assert_error(post(server, CHAT, b'{"model": "\xff\xfe"}'), 400)


def test_unknown_model_route_and_method(server):
    assert assert_error(post(server, CHAT, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404, "model")["code"] == "model_not_found"
    assert assert_error(httpx.get(server.url + "/v1/nowhere"), 404)["code"] == "unknown_url"
    assert_error(httpx.get(server.url + CHAT), 405)


def test_ten_megabyte_body_is_413_and_server_keeps_serving(server):
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (10 << 20)}]})
    try:
        r = post(server, CHAT, big)
        assert_error(r, 413)
    except httpx.HTTPError:
        pass  # the server may close the connection before reading it all
    assert httpx.get(server.url + "/health").status_code == 200


def test_prompt_longer_than_context_is_400(binary, model):
    s = Server(binary, "--no-embeddings", "--max-model-len", "64")
    try:
        err = assert_error(post(s, CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "word " * 100}]}), 400)
        assert "64" in err["message"]
        err = assert_error(post(s, CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}), 400, "max_tokens")
        assert "64" in err["message"]
    finally:
        assert s.stop() == 0


def test_tokenize_detokenize(server):
    r = post(server, "/tokenize", {"prompt": "Hello world"})
    assert r.status_code == 200
    toks = r.json()["tokens"]
    assert r.json()["count"] == len(toks) > 0
    assert post(server, "/detokenize", {"tokens": toks}).json()["prompt"] == "Hello world"
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "Hello"}]}).json()
    assert chat["count"] > len(toks)
    assert_error(post(server, "/detokenize", {"tokens": [10**9]}), 400, "tokens")


def test_health_ready_metrics(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json() == {"status": "ok"}
    post(server, CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    text = httpx.get(server.url + "/metrics").text
    for name in ["palisade_requests_total{route=\"/v1/chat/completions\",status=\"200\"}", "palisade_prompt_tokens_total",
                 "palisade_completion_tokens_total", "palisade_time_to_first_token_seconds_bucket", "palisade_time_per_output_token_seconds_count",
                 "palisade_queue_depth", "palisade_running_sequences", "palisade_kv_cache_usage_ratio"]:
        assert name in text, name


def test_ready_is_503_while_loading(binary):
    s = Server(binary, "--no-embeddings", env={"PALISADE_TEST_LOAD_DELAY_MS": "1500"}, wait_ready=False)
    try:
        r = httpx.get(s.url + "/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert_error(post(s, CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}), 503)
        assert httpx.get(s.url + "/health").status_code == 200
        s.wait_ready()
    finally:
        assert s.stop() == 0


def test_concurrency_limit_gives_429_with_retry_after(binary):
    s = Server(binary, "--no-embeddings", "--max-concurrent-requests", "1", "--queue-timeout-ms", "0")
    try:
        # logit_bias bans the end-of-turn token, so this runs all 300 tokens.
        long = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 300, "stream": True,
                "logit_bias": {"2": -100}}
        with httpx.stream("POST", s.url + CHAT, json=long, timeout=120) as r:
            assert r.status_code == 200
            # Keep the iterator alive: dropping it closes the stream.
            lines = r.iter_lines()
            next(lines)
            busy = post(s, CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
            assert_error(busy, 429)
            assert busy.headers["retry-after"] == "1"
    finally:
        assert s.stop() == 0


def test_client_disconnect_cancels_generation(server):
    before = server.metric("palisade_cancelled_sequences_total")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 2000, "stream": True,
            "temperature": 1.0, "logit_bias": {"2": -100}}
    with httpx.stream("POST", server.url + CHAT, json=body, timeout=120) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.time() + 10
    while time.time() < deadline:
        if server.metric("palisade_cancelled_sequences_total") > before and server.metric("palisade_running_sequences") == 0:
            break
        time.sleep(0.1)
    assert server.metric("palisade_cancelled_sequences_total") > before
    assert server.metric("palisade_running_sequences") == 0


def test_slow_headers_are_cut_off_and_others_are_served(binary):
    s = Server(binary, "--no-embeddings", "--header-read-timeout-secs", "2")
    try:
        sock = socket.create_connection((s.host, s.port))
        sock.settimeout(0.2)
        request = b"GET /health HTTP/1.1\r\nHost: example\r\nUser-Agent: slowloris\r\n"
        start, closed_at = time.time(), None
        for b in request:  # one byte every half second: 20 s for the whole header
            try:
                sock.send(bytes([b]))
                data = sock.recv(1024)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed_at = time.time()
                    break
            except socket.timeout:
                pass
            except OSError:
                closed_at = time.time()
                break
            # Meanwhile, other clients are served.
            assert httpx.get(s.url + "/health", timeout=5).status_code == 200
            time.sleep(0.5)
        assert closed_at is not None, "the slow client kept its connection"
        assert closed_at - start < 8, f"closed after {closed_at - start:.1f}s"
    finally:
        assert s.stop() == 0


def test_sigterm_lets_streams_finish_and_exits_zero(binary):
    s = Server(binary, "--no-embeddings", "--shutdown-timeout-secs", "60")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 64, "stream": True, "temperature": 0}
    got = []

    def reader():
        with httpx.stream("POST", s.url + CHAT, json=body, timeout=120) as r:
            got.extend(r.iter_lines())

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.5)
    code = s.stop()
    t.join(60)
    assert code == 0
    assert "data: [DONE]" in got, got[-3:]


def test_slow_body_gets_408(binary):
    s = Server(binary, "--no-embeddings", "--body-read-timeout-secs", "2")
    try:
        sock = socket.create_connection((s.host, s.port))
        sock.settimeout(15)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\":")
        start = time.time()
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b'"type":"invalid_request_error"' in reply
        assert time.time() - start < 10
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        assert s.stop() == 0
