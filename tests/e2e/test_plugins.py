"""The plugin runtime through the real server: API-key authentication,
default-deny coverage, containment of misbehaving plugins, hot reload."""

import http.server
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
from conftest import MODEL
from policies import OPEN, PLUGINS, keys_config, plugin, route, write
from server import Server

ADMIN, USER, METRICS = "pal_admin_key_for_tests_0123456789abcdef", "pal_user_key_for_tests_0123456789abcdef", "pal_metrics_key_0123456789abcdef"
KEYS = [(ADMIN, "admin", ["inference", "admin", "metrics"]), (USER, "user", ["inference"]), (METRICS, "ops", ["metrics"])]


def auth_policy(keys=KEYS):
    return (
        plugin("keys", "api_key_auth.wasm", "authenticator", config=keys_config(keys))
        + route("/health", public=True)
        + route("/ready", public=True)
        + route("/metrics", auth="keys", scopes=["metrics"])
        + route("/admin/*", auth="keys", scopes=["admin"])
        + route("*", auth="keys", scopes=["inference"])
    )


@pytest.fixture(scope="module")
def guarded(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("guarded")
    s = Server(binary, "--no-embeddings", policy=write(d, auth_policy()))
    yield s
    assert s.stop() == 0


ROUTES = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
          ("GET", "/v1/models/x"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/metrics"),
          ("POST", "/admin/reload"), ("GET", "/admin/keys")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_but_health_needs_a_key(guarded, method, path):
    base = guarded.admin_url if path.startswith("/admin/") else guarded.url
    r = httpx.request(method, base + path, json={})
    assert r.status_code == 401, (path, r.text)
    assert r.json()["error"]["type"] == "authentication_error"
    r = httpx.request(method, base + path, json={}, headers={"authorization": "Bearer pal_wrong"})
    assert r.status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200


def test_scopes_are_enforced(guarded):
    h = lambda k: {"authorization": f"Bearer {k}"}
    assert httpx.get(guarded.url + "/metrics", headers=h(USER)).status_code == 403
    assert httpx.get(guarded.url + "/metrics", headers=h(METRICS)).status_code == 200
    assert httpx.get(guarded.url + "/v1/models", headers=h(METRICS)).status_code == 403
    assert guarded.admin("POST", "/admin/reload", USER).status_code == 403
    assert httpx.get(guarded.url + "/v1/models", headers={"x-api-key": USER}).status_code == 200


def test_openai_client_with_a_key(guarded):
    c = openai.OpenAI(base_url=guarded.v1, api_key=USER, max_retries=0)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.v1, api_key="pal_nope", max_retries=0).models.list()
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=guarded.v1, api_key=METRICS, max_retries=0).models.list()
    text = httpx.get(guarded.url + "/metrics", headers={"x-api-key": METRICS}).text
    assert 'palisade_plugin_calls_total{plugin="keys",stage="auth",outcome="allow"}' in text
    assert 'palisade_plugin_calls_total{plugin="keys",stage="auth",outcome="deny"}' in text


def start_fails(binary, policy_text, tmp_path):
    p = subprocess.run([str(binary), "serve", "--listen", "127.0.0.1:0", "--no-embeddings", "--policy", str(write(tmp_path, policy_text))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    return p.stderr


def test_uncovered_routes_refuse_to_start(binary, tmp_path):
    err = start_fails(binary, plugin("keys", "api_key_auth.wasm", "authenticator", config=keys_config(KEYS)) + route("/v1/*", auth="keys"), tmp_path)
    assert "/metrics" in err and "/tokenize" in err and "/admin/reload" in err


def test_sha256_mismatch_refuses_to_load(binary, tmp_path):
    text = plugin("keys", "api_key_auth.wasm", "authenticator").replace('sha256 = "', 'sha256 = "0', 1).replace('"\nkind', '"\nkind', 1)
    text = text.split("sha256 = ")[0] + 'sha256 = "' + "ab" * 32 + '"\nkind = "authenticator"\n' + OPEN
    err = start_fails(binary, text, tmp_path)
    assert "keys" in err and "refusing to load" in err


def test_policy_check_prints_each_route(binary, tmp_path):
    out = subprocess.run([str(binary), "policy", "check", str(write(tmp_path, auth_policy()))], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "GET   /health                  PUBLIC" in out.stdout
    assert "auth keys (scopes: metrics)" in out.stdout


def misbehaving(mode, failure="closed", deadline_ms=200, memory_mb=32, grants=None, config=None):
    return (
        plugin("bad", "misbehave.wasm", "admission", config={"mode": mode, **(config or {})}, limits={"deadline_ms": deadline_ms, "memory_mb": memory_mb}, grants=grants)
        + route("/v1/chat/completions", public=True, admission=["bad"], failure=failure)
        + route("*", public=True)
    )


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize("mode", ["trap", "loop", "alloc", "huge"])
def test_broken_plugins_fail_closed_and_the_server_keeps_serving(binary, tmp_path, mode):
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, misbehaving(mode)))
    try:
        for _ in range(3):
            t = time.time()
            r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30)
            took = time.time() - t
            assert r.status_code == 503, r.text
            assert "security check" in r.json()["error"]["message"]
            assert "panic" not in r.text and "wasm" not in r.text
            assert took < 5, f"{mode}: {took:.1f}s"
        assert httpx.get(s.url + "/v1/models").status_code == 200
        assert rss_mb(s.proc.pid) < 1500, f"RSS {rss_mb(s.proc.pid)} MB after {mode}"
        time.sleep(0.2)
        logs = s.logs()
        assert "plugin stage failed" in logs and "bad" in logs
        kind = {"trap": "trap", "loop": "deadline", "alloc": "memory", "huge": "memory"}[mode]
        plain = re.sub(r"\x1b\[[0-9;]*m", "", logs)
        assert re.search(f'plugin=bad .*kind="?{kind}', plain), plain[-2000:]
    finally:
        assert s.stop() == 0


def test_a_plugin_that_traps_in_prepare_refuses_to_load(binary, tmp_path):
    err = start_fails(binary, misbehaving("trap-prepare"), tmp_path)
    assert "`bad`" in err and "prepare" in err, err


def test_fail_open_skips_the_broken_stage(binary, tmp_path):
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, misbehaving("loop", failure="open", deadline_ms=50)))
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("mode, expect", [
    ("ungranted", "capability `counters` is not granted"),
    ("socket", "socket refused"),
    ("file", "file refused"),
    ("env", "environment: []"),
    ("clock", "clock: 0"),
])
def test_capabilities_are_not_there_unless_granted(binary, tmp_path, mode, expect):
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, misbehaving(mode)))
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert r.status_code == 403, r.text
        assert expect in r.json()["error"]["message"], r.text
        assert "root:" not in r.text
    finally:
        assert s.stop() == 0


def test_granted_counters_work(binary, tmp_path):
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, misbehaving("ungranted", grants={"counters": True})))
    try:
        msgs = [httpx.post(s.url + "/v1/chat/completions", json=CHAT).json()["error"]["message"] for _ in range(3)]
        assert msgs == ["counter reached 1", "counter reached 2", "counter reached 3"]
    finally:
        assert s.stop() == 0


@pytest.fixture
def web():
    """A local HTTP server: `/` answers `hello`, `/slow` never answers."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow":
                time.sleep(5)
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.mark.parametrize("grant, status, expect", [
    (None, 403, "HTTP request denied by the host's policy"),
    ("127.0.0.1:{port}", 418, "status 200: hello"),
    ("127.0.0.1:1", 403, "HTTP request denied by the host's policy"),
    ("localhost:{port}", 403, "the destination is a loopback, private or link-local address"),
])
def test_outgoing_http_goes_through_the_allow_list(binary, tmp_path, web, grant, status, expect):
    grants = {"http": [grant.format(port=web)]} if grant else None
    url = f"http://{'localhost' if grant and 'localhost' in grant else '127.0.0.1'}:{web}/"
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, misbehaving("http", grants=grants, config={"url": url})))
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert r.status_code == status, r.text
        assert expect in r.json()["error"]["message"], r.text
    finally:
        assert s.stop() == 0


def test_outgoing_http_is_bounded_by_the_deadline(binary, tmp_path, web):
    policy = misbehaving("http", deadline_ms=300, grants={"http": [f"127.0.0.1:{web}"]}, config={"url": f"http://127.0.0.1:{web}/slow"})
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, policy))
    try:
        t = time.time()
        r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30)
        took = time.time() - t
        assert r.status_code in (403, 503), r.text
        assert took < 3, f"{took:.1f}s"
        assert httpx.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code in (403, 503)
    finally:
        assert s.stop() == 0


def test_hot_reload_revokes_a_key_and_keeps_a_good_policy(binary, tmp_path):
    path = write(tmp_path, auth_policy())
    s = Server(binary, "--no-embeddings", policy=path)
    try:
        h = lambda k: {"authorization": f"Bearer {k}"}
        assert httpx.get(s.url + "/v1/models", headers=h(USER)).status_code == 200
        # Revoke USER through the admin endpoint.
        path.write_text(auth_policy([k for k in KEYS if k[1] != "user"]))
        assert s.admin("POST", "/admin/reload", ADMIN).status_code == 200
        assert httpx.get(s.url + "/v1/models", headers=h(USER)).status_code == 401
        # A broken policy leaves the current one running and says why.
        path.write_text("[[routes]]\npath = '/v1/*'\npublic = true\n")
        r = s.admin("POST", "/admin/reload", ADMIN)
        assert r.status_code == 422 and "/metrics" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/v1/models", headers=h(ADMIN)).status_code == 200
        # SIGHUP reloads too: give USER back.
        path.write_text(auth_policy())
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and httpx.get(s.url + "/v1/models", headers=h(USER)).status_code != 200:
            time.sleep(0.1)
        assert httpx.get(s.url + "/v1/models", headers=h(USER)).status_code == 200
    finally:
        assert s.stop() == 0


def test_a_reload_keeps_unchanged_plugins_and_still_checks_their_pins(binary, tmp_path):
    # The filter loads from a copy, so the test can change the file under its pin.
    wasm = tmp_path / "redact.wasm"
    shutil.copy(PLUGINS / "redact_word.wasm", wasm)

    def policy(word):
        redact = plugin("redact", "redact_word.wasm", "output-filter", config={"word": word, "action": "redact"})
        return (auth_policy().replace(route("*", auth="keys", scopes=["inference"]),
                                      route("*", auth="keys", scopes=["inference"], output=["redact"]))
                + redact.replace(str(PLUGINS / "redact_word.wasm"), str(wasm)))

    path = write(tmp_path, policy("Paris"))
    s = Server(binary, "--no-embeddings", policy=path)
    h = {"authorization": f"Bearer {USER}"}
    text = lambda: httpx.post(s.url + "/v1/completions", json=PARIS, headers=h, timeout=60).json()["choices"][0]["text"]
    try:
        first = text()
        assert "[REDACTED]" in first and "Paris" not in first, first
        # Nothing changed: both plugins are kept, the filter still filters.
        assert s.admin("POST", "/admin/reload", ADMIN).status_code == 200
        assert "policy reloaded: 2 of 2 plugins kept, 0 loaded" in s.logs()
        assert text() == first
        # A changed config loads that plugin again, with the new config.
        path.write_text(policy("nowhere"))
        assert s.admin("POST", "/admin/reload", ADMIN).status_code == 200
        assert "policy reloaded: 1 of 2 plugins kept, 1 loaded" in s.logs()
        assert "Paris" in text()
        # A kept plugin's file is still checked against its pin: a changed
        # file fails the reload, and the running policy stays.
        good = wasm.read_bytes()
        wasm.write_bytes(good + b"\0")
        r = s.admin("POST", "/admin/reload", ADMIN)
        assert r.status_code == 422 and "sha256" in r.json()["error"]["message"], r.text
        assert "Paris" in text()
        wasm.write_bytes(good)
        assert s.admin("POST", "/admin/reload", ADMIN).status_code == 200
        assert s.logs().count("policy reloaded: 2 of 2 plugins kept, 0 loaded") == 2
    finally:
        assert s.stop() == 0


def redact_policy(action="redact", word="Paris"):
    return (
        plugin("redact", "redact_word.wasm", "output-filter", config={"word": word, "action": action})
        + route("/v1/*", public=True, output=["redact"])
        + route("*", public=True)
    )


PARIS = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


def test_output_filter_redacts_streamed_and_whole_responses_alike(binary, tmp_path):
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, redact_policy()))
    try:
        whole = httpx.post(s.url + "/v1/completions", json=PARIS).json()["choices"][0]["text"]
        assert "Paris" not in whole and "[REDACTED]" in whole
        chunks = []
        with httpx.stream("POST", s.url + "/v1/completions", json={**PARIS, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    import json
                    chunks += [c["text"] for c in json.loads(line[6:])["choices"]]
        assert "".join(chunks) == whole
        # The model writes "Paris" as more than one token? Either way no
        # chunk leaks a piece of it that later completes the word.
        assert not any("Par" in c and "[REDACTED]" not in c for c in chunks)
        chat = httpx.post(s.url + "/v1/chat/completions", json={"model": MODEL, "max_tokens": 24, "temperature": 0,
                          "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}).json()
        assert "Paris" not in chat["choices"][0]["message"]["content"]
    finally:
        assert s.stop() == 0


def test_output_filter_abort_stops_the_response(binary, tmp_path):
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, redact_policy(action="abort")))
    try:
        r = httpx.post(s.url + "/v1/completions", json=PARIS).json()
        assert r["choices"][0]["finish_reason"] == "content_filter"
        assert "Paris" not in r["choices"][0]["text"]
        with httpx.stream("POST", s.url + "/v1/completions", json={**PARIS, "stream": True}) as resp:
            lines = [l for l in resp.iter_lines() if l.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert "content_filter" in lines[-2] and "Paris" not in "".join(lines)
    finally:
        assert s.stop() == 0
