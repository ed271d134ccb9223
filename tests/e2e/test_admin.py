"""The admin listener: `/admin/*` only there (404 on the public port), the
policy's auth stage and `admin` scope in front of it, keys over HTTP, and
a drain that lets in-flight requests finish and exits 0."""

import json
import subprocess
import threading
import time

import httpx
import pytest
from conftest import MODEL
from policies import plugin, route, write
from server import Server

ADMIN_ROUTES = [("POST", "/admin/reload"), ("POST", "/admin/drain"), ("GET", "/admin/keys"), ("POST", "/admin/keys"),
                ("DELETE", "/admin/keys/app")]


def keys(binary, *args):
    out = subprocess.run([str(binary), "keys", *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def policy(tmp_path, keys_file):
    return write(tmp_path, (
        plugin("api-key", "api_key_auth.wasm", "authenticator")
        + f'config_files = {{ keys = "{keys_file}" }}\n'
        + "[plugins.api-key.grants]\nclock = true\n"  # key expiry
        + route("/health", public=True)
        + route("/ready", public=True)
        + route("/admin/*", auth="api-key", scopes=["admin"])
        + route("*", auth="api-key", scopes=["inference"])
    ))


@pytest.fixture(scope="module")
def ctx(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("admin")
    f = d / "keys.json"
    admin = keys(binary, "create", "--file", f, "--id", "ops", "--scopes", "admin")
    user = keys(binary, "create", "--file", f, "--id", "user", "--scopes", "inference")
    s = Server(binary, "--no-embeddings", policy=policy(d, f))
    yield {"server": s, "admin": admin, "user": user, "keys": f}
    assert s.stop() == 0


def bearer(k):
    return {"authorization": f"Bearer {k}"}


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_routes_are_not_on_the_public_port(ctx, method, path):
    s = ctx["server"]
    assert s.admin_url and s.admin_url != s.url
    r = httpx.request(method, s.url + path, headers=bearer(ctx["admin"]), json={"id": "x", "scopes": ["admin"]})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "unknown_url"


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_port_needs_the_admin_scope(ctx, method, path):
    s = ctx["server"]
    assert s.admin(method, path).status_code == 401
    r = s.admin(method, path, ctx["user"], json={"id": "x", "scopes": ["admin"]})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    # The public routes are not on the admin port.
    assert httpx.get(s.admin_url + "/v1/models", headers=bearer(ctx["user"])).status_code == 404
    assert httpx.get(s.url + "/ready").status_code == 200


def test_keys_create_list_revoke_over_http(ctx):
    s, admin = ctx["server"], ctx["admin"]
    assert s.admin("POST", "/admin/reload", admin).json() == {"status": "reloaded"}
    r = s.admin("POST", "/admin/keys", admin, json={"id": "app", "scopes": ["inference"], "tenant": "acme", "expires": "2099-01-01"})
    assert r.status_code == 201, r.text
    made = r.json()
    key = made["key"]
    assert key.startswith("pal_") and len(key) == 47 and made["reloaded"] is True
    assert made["id"] == "app" and made["tenant"] == "acme" and made["scopes"] == ["inference"]
    assert key not in ctx["keys"].read_text(), "only the hash is stored"
    # It works at once on the public port (the policy reloaded).
    assert httpx.get(s.url + "/v1/models", headers=bearer(key)).status_code == 200
    listed = s.admin("GET", "/admin/keys", admin)
    assert listed.status_code == 200
    ids = {k["id"]: k for k in listed.json()["data"]}
    assert set(ids) == {"ops", "user", "app"}
    assert ids["app"]["expires"] == 4070908800 and ids["app"]["tenant"] == "acme"
    text = listed.text
    assert key not in text and "sha256" not in text
    for digest in json.loads(ctx["keys"].read_text()):
        assert digest not in text and digest[:12] not in text, "no hashes in the listing"
    # Bad requests name the field; the same id twice is refused.
    r = s.admin("POST", "/admin/keys", admin, json={"id": "app", "scopes": ["inference"]})
    assert r.status_code == 400 and "exists" in r.json()["error"]["message"]
    r = s.admin("POST", "/admin/keys", admin, json={"id": "x", "scopes": ["inference"], "scope": 1})
    assert r.status_code == 400 and "scope" in r.json()["error"]["message"]
    r = s.admin("POST", "/admin/keys", admin, json={"id": "y", "scopes": ["inference"], "expires": "soon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires"
    # Revoke: the key stops working at once; a second revoke is a 404.
    assert s.admin("DELETE", "/admin/keys/app", admin).json() == {"status": "revoked"}
    assert httpx.get(s.url + "/v1/models", headers=bearer(key)).status_code == 401
    r = s.admin("DELETE", "/admin/keys/app", admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"
    assert "app" not in {k["id"] for k in s.admin("GET", "/admin/keys", admin).json()["data"]}


def test_drain_refuses_new_work_lets_the_stream_finish_and_exits_zero(binary, tmp_path):
    f = tmp_path / "keys.json"
    admin = keys(binary, "create", "--file", f, "--id", "ops", "--scopes", "admin")
    user = keys(binary, "create", "--file", f, "--id", "user", "--scopes", "inference")
    s = Server(binary, "--no-embeddings", "--shutdown-timeout-secs", "60", policy=policy(tmp_path, f))
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 96, "stream": True, "temperature": 0}
    got = []

    def reader():
        with httpx.stream("POST", s.url + "/v1/completions", json=body, headers=bearer(user), timeout=120) as r:
            got.extend(r.iter_lines())

    t = threading.Thread(target=reader)
    try:
        t.start()
        deadline = time.time() + 30
        while time.time() < deadline and not any(l.startswith("data: {") for l in list(got)):
            time.sleep(0.02)  # wait for the stream to start
        r = s.admin("POST", "/admin/drain", admin)
        assert r.status_code == 202 and r.json() == {"status": "draining"}
        # Still in flight: readiness is off, new generations are refused.
        assert t.is_alive(), "the stream ended before the drain could be observed"
        r = httpx.get(s.url + "/ready")
        assert r.status_code == 503 and r.json() == {"status": "draining"}
        r = httpx.post(s.url + "/v1/completions", headers=bearer(user), json={**body, "stream": False}, timeout=30)
        assert r.status_code == 503, r.text
        t.join(60)
        assert "data: [DONE]" in got, got[-3:]
        assert s.proc.wait(timeout=60) == 0, s.logs()[-2000:]
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_a_remote_admin_address_needs_the_opt_in(binary, tmp_path):
    p = subprocess.run([str(binary), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0", "--policy", str(write(tmp_path, route("*", public=True)))],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert "admin_allow_remote" in p.stderr and "loopback" in p.stderr, p.stderr


def test_the_admin_listener_can_be_off(binary):
    s = Server(binary, "--no-embeddings", "--admin-listen", "off")
    try:
        assert s.admin_url is None
        assert httpx.post(s.url + "/admin/reload").status_code == 404
    finally:
        assert s.stop() == 0
