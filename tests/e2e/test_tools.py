"""The tool plugins through `palisade tool run`: the code interpreter's
sandbox (the real CPython component) and the fetch tool against local HTTP
servers, with the host's checks (allow-list, non-public addresses refused
before any connection, redirects re-checked per hop, response cap,
deadline)."""

import http.server
import json
import subprocess
import threading
import time

import pytest
from policies import plugin, write

CODE_LIMITS = {"deadline_ms": 2000, "memory_mb": 128}


def tool_run(binary, policy, name, args, timeout=120):
    t = time.time()
    p = subprocess.run([str(binary), "tool", "run", name, "--policy", str(policy), "--args", json.dumps(args)],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p, time.time() - t


@pytest.fixture(scope="module")
def code_policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("code")
    return write(d, plugin("python", "code_interpreter.wasm", "tool", limits=CODE_LIMITS)
                 + plugin("other", "request_guard.wasm", "admission"))


def run_code(binary, policy, code):
    p, took = tool_run(binary, policy, "python", {"code": code})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), took


def test_code_runs_with_the_standard_library(binary, code_policy):
    out, _ = run_code(binary, code_policy, "import statistics, json\nprint(json.dumps([1]))\nstatistics.mean([1, 2, 3, 4])")
    assert out == {"stdout": "[1]\n", "stderr": "", "result": "2.5", "error": None, "truncated": []}


def test_code_cannot_read_host_files(binary, code_policy, model):
    for path in ["/etc/passwd", str(model)]:
        out, _ = run_code(binary, code_policy, f"import os\nprint(os.path.exists({path!r}))\nopen({path!r}, 'rb').read(16)")
        assert out["stdout"] == "False\n", out
        assert out["error"].startswith("FileNotFoundError"), out


def test_code_cannot_open_sockets(binary, code_policy):
    # A listener on loopback: the code must not reach it.
    hits = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (http.server.BaseHTTPRequestHandler,), {
        "do_GET": lambda self: hits.append(self.path), "log_message": lambda self, *a: None}))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        for target in [("127.0.0.1", port), ("169.254.169.254", 80)]:
            out, _ = run_code(binary, code_policy, f"import socket\nsocket.create_connection({target!r}, timeout=1)")
            assert out["error"] and out["result"] is None, out
        out, _ = run_code(binary, code_policy, f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/x').read()")
        assert out["error"], out
        assert hits == []
    finally:
        srv.shutdown()


def test_a_runaway_loop_is_stopped_at_the_deadline(binary, code_policy):
    p, took = tool_run(binary, code_policy, "python", {"code": "while True:\n    pass"})
    assert p.returncode == 1
    assert "deadline: the call ran longer than 2000 ms (limits.deadline_ms)" in p.stderr, p.stderr
    assert took < 60


def test_memory_and_output_are_capped(binary, code_policy):
    out, _ = run_code(binary, code_policy, "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))")
    assert out["error"].startswith("MemoryError"), out
    out, took = run_code(binary, code_policy, "line = 'x' * 1023\nfor _ in range(1 << 20):\n    print(line)")
    assert out["error"] == "OutputLimitExceeded: stdout larger than 65536 bytes; output truncated", out
    assert len(out["stdout"]) == 65536 and out["truncated"] == ["stdout"]


def test_tool_run_explains_what_it_cannot_do(binary, code_policy):
    p, _ = tool_run(binary, code_policy, "nope", {"code": "1"})
    assert p.returncode == 1 and "defines no plugin of that name (its tools: python)" in p.stderr, p.stderr
    p, _ = tool_run(binary, code_policy, "other", {"code": "1"})
    assert p.returncode == 1 and "not a tool" in p.stderr, p.stderr
    p = subprocess.run([str(binary), "tool", "run", "python", "--policy", str(code_policy), "--args", "{nope"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--args is not JSON" in p.stderr, p.stderr
    p, _ = tool_run(binary, code_policy, "python", {"script": "1"})
    assert p.returncode == 1 and "refused: arguments must be an object with a string `code`" in p.stderr, p.stderr


# --- fetch ---------------------------------------------------------------

METADATA = "http://169.254.169.254/latest/meta-data/"


@pytest.fixture(scope="module")
def web():
    """A local HTTP server; `hits` records every request it got."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            hits.append(("GET", self.path))
            if self.path == "/":
                self.reply(200, b"hello", [("content-type", "text/plain")])
            elif self.path == "/to-metadata":
                self.reply(302, headers=[("location", METADATA)])
            elif self.path == "/to-home":
                self.reply(302, headers=[("location", "/")])
            elif self.path == "/zeros":
                self.send_response(200)
                self.send_header("content-length", str(1 << 30))
                self.end_headers()
                chunk = b"\0" * (1 << 16)
                try:
                    for _ in range((1 << 30) // len(chunk)):
                        self.wfile.write(chunk)
                except OSError:
                    pass
            elif self.path == "/slow-body":
                self.send_response(200)
                self.send_header("content-length", "1000")
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    pass
            elif self.path == "/slow":
                time.sleep(10)
            else:
                self.reply(404)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            hits.append(("POST", self.path))
            self.reply(201, b"got " + body + b" " + self.headers.get("x-test", "").encode())

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.hits = hits
    yield srv
    srv.shutdown()


def fetch_policy(tmp_path, http, config=None, limits=None):
    return write(tmp_path, plugin("fetch", "fetch.wasm", "tool", config=config,
                                  limits={"deadline_ms": 1500, **(limits or {})}, grants={"http": http}))


def test_fetch_reaches_a_listed_address(binary, tmp_path, web):
    port = web.server_address[1]
    pol = fetch_policy(tmp_path, [f"127.0.0.1:{port}"], config={"max_redirects": 2})
    p, _ = tool_run(binary, pol, "fetch", {"url": f"http://127.0.0.1:{port}/"})
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["status"], r["body"], r["truncated"], r["headers"]["content-type"]) == (200, "hello", False, "text/plain")
    p, _ = tool_run(binary, pol, "fetch", {"url": f"http://127.0.0.1:{port}/echo", "method": "POST", "body": "data",
                                           "headers": {"x-test": "yes"}})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["body"] == "got data yes"
    # A redirect to a listed address is followed (and checked) hop by hop.
    p, _ = tool_run(binary, pol, "fetch", {"url": f"http://127.0.0.1:{port}/to-home"})
    r = json.loads(p.stdout)
    assert (r["status"], r["body"], r["redirects"], r["url"]) == (200, "hello", 1, f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize("url, grant, expect", [
    ("http://127.0.0.1:{port}/", "example.com", "HTTP request denied by the host's policy"),
    ("http://10.0.0.1/", "127.0.0.1:{port}", "HTTP request denied by the host's policy"),
    ("http://169.254.169.254/latest/meta-data/", "127.0.0.1:{port}", "HTTP request denied by the host's policy"),
    # Listed by name, but the name resolves to loopback: refused before connecting.
    ("http://localhost:{port}/", "localhost:{port}", "loopback, private or link-local address"),
    # A wildcard that happens to match an IP literal does not let it through either.
    ("http://127.0.0.1:{port}/", "*.0.1", "loopback, private or link-local address"),
])
def test_fetch_refuses_before_connecting(binary, tmp_path, web, url, grant, expect):
    port = web.server_address[1]
    before = len(web.hits)
    p, took = tool_run(binary, fetch_policy(tmp_path, [grant.format(port=port)]), "fetch", {"url": url.format(port=port)})
    assert p.returncode == 1, p.stdout
    assert "refused: " in p.stderr and expect in p.stderr, p.stderr
    assert "outgoing HTTP refused" in p.stderr, p.stderr
    assert len(web.hits) == before, "the server was contacted"


def test_a_redirect_to_metadata_is_refused(binary, tmp_path, web):
    port = web.server_address[1]
    pol = fetch_policy(tmp_path, [f"127.0.0.1:{port}"], config={"max_redirects": 3})
    p, _ = tool_run(binary, pol, "fetch", {"url": f"http://127.0.0.1:{port}/to-metadata"})
    assert p.returncode == 1
    assert f"refused: HTTP request denied by the host's policy (after 1 redirect(s), at {METADATA})" in p.stderr, p.stderr
    assert "outgoing HTTP refused: not in the plugin's allow-list" in p.stderr
    # Without max_redirects the 302 itself is the result.
    pol = fetch_policy(tmp_path, [f"127.0.0.1:{port}"])
    p, _ = tool_run(binary, pol, "fetch", {"url": f"http://127.0.0.1:{port}/to-metadata"})
    r = json.loads(p.stdout)
    assert (r["status"], r["headers"]["location"], r["redirects"]) == (302, METADATA, 0)


def test_a_huge_body_is_capped(binary, tmp_path, web):
    port = web.server_address[1]
    url = {"url": f"http://127.0.0.1:{port}/zeros"}
    # The tool's own cap: reading stops, the result says so.
    p, took = tool_run(binary, fetch_policy(tmp_path, [f"127.0.0.1:{port}"]), "fetch", url)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["truncated"], len(r["body"])) == (True, 65536)
    # The host's cap, below what the tool would read: a clear error.
    pol = fetch_policy(tmp_path, [f"127.0.0.1:{port}"], config={"max_body_bytes": 64 << 20},
                       limits={"max_http_response_bytes": 1 << 20, "memory_mb": 256})
    p, took = tool_run(binary, pol, "fetch", url)
    assert p.returncode == 1
    assert "refused: response larger than 1048576 bytes" in p.stderr, p.stderr
    assert took < 30


@pytest.mark.parametrize("path", ["/slow", "/slow-body"])
def test_a_slow_server_is_cut_off_at_the_deadline(binary, tmp_path, web, path):
    port = web.server_address[1]
    p, took = tool_run(binary, fetch_policy(tmp_path, [f"127.0.0.1:{port}"]), "fetch", {"url": f"http://127.0.0.1:{port}{path}"})
    assert p.returncode == 1, p.stdout
    assert "refused: HTTP request failed" in p.stderr or "deadline: the call ran longer than 1500 ms" in p.stderr, p.stderr
    assert took < 8, took
