"""Shared rate limits across replicas: a real `redis-server` on a loopback
port, two (then three) real `palisade serve` replicas with the same policy
(the rate-limit plugin counting in Redis), and what happens when Redis
goes away."""

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
import uuid

import httpx
import pytest
from conftest import MODEL
from policies import plugin, route, write
from server import Server

N = 5  # requests per minute per principal
WINDOW_MS = 60_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(port, *args):
    """One Redis command over RESP; the reply as Python values."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join([f"*{len(args)}\r\n".encode()] + [f"${len(str(a).encode())}\r\n{a}\r\n".encode() for a in args]))
        f = s.makefile("rb")

        def read():
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind == b"+":
                return rest
            if kind == b"-":
                raise RuntimeError(rest)
            if kind == b":":
                return int(rest)
            if kind == b"$":
                if rest == "-1":
                    return None
                data = f.read(int(rest) + 2)[:-2]
                return data.decode()
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise RuntimeError(f"bad reply {line!r}")

        return read()


class Redis:
    """A real redis-server on 127.0.0.1:port, no persistence, in a tmp dir."""

    def __init__(self, tmp, port=None):
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing: install it (make test-e2e does: apt-get install redis-server)"
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while True:
            try:
                if resp(self.port, "PING") == "PONG":
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, "redis-server exited"
            assert time.time() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.kill()


def keys(binary, f, ident, scopes):
    out = subprocess.run([str(binary), "keys", "create", "--file", str(f), "--id", ident, "--scopes", scopes],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def policy(tmp_path, keys_file, port, prefix, on_unavailable, name):
    counters = (
        "[counters]\n"
        'backend = "redis"\n'
        f'url = "redis://127.0.0.1:{port}/0"\n'
        f'key_prefix = "{prefix}"\n'
        f'on_unavailable = "{on_unavailable}"\n'
        "timeout_ms = 20\n"
    )
    return write(tmp_path, (
        counters
        + plugin("api-key", "api_key_auth.wasm", "authenticator")
        + f'config_files = {{ keys = "{keys_file}" }}\n'
        + plugin("rate-limit", "rate_limit.wasm", "admission", grants={"counters": True},
                 limits={"deadline_ms": 100},
                 config={"principal": json.dumps({"requests_per_window": N}), "window_secs": WINDOW_MS // 1000})
        + route("/v1/chat/completions", auth="api-key", scopes=["inference"], admission=["rate-limit"])
        + route("*", auth="api-key", scopes=["admin"])
    ), name=name)


def replica(binary, p, admin):
    s = Server(binary, "--no-embeddings", "--kv-cache-bytes", 16 << 20, policy=p, wait_ready=False)
    try:
        s.wait_ready(headers={"authorization": f"Bearer {admin}"})
    except Exception:
        s.proc.kill()
        raise
    return s


def chat(s, key):
    return httpx.post(s.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0})


def metrics(s, admin):
    text = httpx.get(s.url + "/metrics", headers={"authorization": f"Bearer {admin}"}, timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def clean(logs):
    return re.sub(r"\x1b\[[0-9;]*m", "", logs)


def wait_for_a_fresh_window(needed_secs=15):
    """Sleeps into the next minute when less than `needed_secs` of this one
    is left: the windows are wall-clock minutes, shared by the replicas."""
    left = WINDOW_MS / 1000 - time.time() % (WINDOW_MS / 1000)
    if left < needed_secs:
        time.sleep(left + 0.2)


def test_a_limit_holds_across_replicas_and_redis_outages_are_handled(binary, redis, tmp_path):
    f = tmp_path / "keys.json"
    admin = keys(binary, f, "ops", "inference,admin,metrics")
    app = keys(binary, f, "app", "inference")
    other = keys(binary, f, "other", "inference")
    prefix = f"palisade-test-{uuid.uuid4().hex[:8]}:"
    deny = policy(tmp_path, f, redis.port, prefix, "deny", "deny.toml")
    local = policy(tmp_path, f, redis.port, prefix, "local", "local.toml")
    servers = []
    try:
        a = replica(binary, deny, admin)
        servers.append(a)
        b = replica(binary, deny, admin)
        servers.append(b)
        c = replica(binary, local, admin)
        servers.append(c)

        # 1. N requests per minute per principal, in total over both
        # replicas: alternate, exactly N succeed, the rest are 429.
        wait_for_a_fresh_window()
        results = [chat([a, b][i % 2], app) for i in range(2 * N + 2)]
        codes = [r.status_code for r in results]
        assert codes.count(200) == N and codes.count(429) == N + 2, codes
        assert codes[:N] == [200] * N, codes
        assert {200} == {r.status_code for r in results[0:N:2]} == {r.status_code for r in results[1:N:2]}, "both replicas served"
        refused = results[N]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
        assert refused.headers["x-ratelimit-limit-requests"] == str(N)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # The count lives in Redis under the wall-clock window's key
        # (refused requests are not counted).
        index = int(time.time() * 1000) // WINDOW_MS
        key = f"{prefix}rate-limit/requests:principal:app:{WINDOW_MS}:{index}"
        assert resp(redis.port, "GET", key) == str(N), resp(redis.port, "KEYS", prefix + "*")
        assert 0 < resp(redis.port, "PTTL", key) <= WINDOW_MS + 5_000
        m = metrics(a, admin)
        assert m["palisade_counters_redis_up"] == 1 and m["palisade_counters_redis_errors_total"] == 0, m

        # 2. Redis goes away. `deny`: refused, with a clear error, and no
        # crash; `local`: served, counted in memory, logged once.
        redis.kill()
        for s in (a, b):
            r = chat(s, other)
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "rate_limit_unavailable", r.text
            assert "rate limits cannot be checked" in err["message"] and "redis cannot be reached" in err["message"], r.text
        m = metrics(a, admin)
        assert m["palisade_counters_redis_up"] == 0 and m['palisade_counters_unavailable_total{action="deny"}'] >= 1, m
        assert chat(a, other).status_code == 503, "still refused while redis is down"

        local_codes = [chat(c, other).status_code for _ in range(N + 1)]
        assert local_codes == [200] * N + [429], f"the local fallback still limits: {local_codes}"
        m = metrics(c, admin)
        assert m['palisade_counters_unavailable_total{action="local"}'] >= N + 1, m
        assert m["palisade_counters_redis_up"] == 0, m
        for s, action in ((a, "refusing counter calls"), (c, "counting in this process's memory")):
            lines = [l for l in clean(s.logs()).splitlines() if "redis for shared counters is unreachable" in l]
            assert len(lines) == 1, f"logged once, not per call: {lines}"
            assert action in lines[0], lines[0]

        # 3. Redis is back (same port, empty): the replicas use it again
        # after the retry pause, and say so.
        back = Redis(tmp_path, port=redis.port)
        try:
            time.sleep(1.2)
            assert chat(a, other).status_code == 200
            assert "redis for shared counters is reachable again" in clean(a.logs())
            assert metrics(a, admin)["palisade_counters_redis_up"] == 1
        finally:
            back.kill()
    finally:
        for s in servers:
            assert s.stop() == 0
