"""Attack tests against the real binary under the default policy (the real
api-key plugin, keys made with `palisade keys`): every route the server
registers, taken from `palisade routes`, is probed without a key, with wrong
keys, with a key of the wrong scope, with path tricks and odd methods. The
probes go over raw HTTP/1.1 so the request target reaches the server byte for
byte (an HTTP client would normalize `/v1/../metrics` away). Nothing but
`/health` may answer 2xx without a valid key of the right scope."""

import json
import re
import socket
import subprocess

import pytest
from conftest import MODEL, ROOT
from server import Server
from test_default_policy import keys

SCOPES = ["inference", "embeddings", "metrics", "admin", "tools"]
ODD_METHODS = ["HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "PATCH", "GET", "POST"]
WRONG_KEYS = [
    ("authorization", "Bearer pal_" + "A" * 43),
    ("authorization", "Bearer "),
    ("authorization", "Basic YWRtaW46YWRtaW4="),
    ("authorization", "Bearer pal_../../etc/passwd"),
    ("x-api-key", "pal_" + "z" * 43),
]


def cli(binary, *args):
    p = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout


def registered_routes(binary):
    """(method, path) of every route, from the binary itself."""
    return [tuple(line.split(" ", 1)) for line in cli(binary, "routes").splitlines() if line.strip()]


def raw(addr, method, target, headers=(), body=b"", timeout=30):
    """One HTTP/1.1 request with `target` sent verbatim: (status, headers, body)."""
    host, port = addr
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines += [f"Content-Length: {len(body)}", "Content-Type: application/json"]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ")[1]), hdrs, rest


def concrete(path):
    return path.replace("{id}", MODEL)


BODIES = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
    "/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 1},
    "/v1/responses": {"model": MODEL, "input": "Hi", "max_output_tokens": 1},
    "/v1/embeddings": {"model": "all-minilm-l6-v2", "input": "Hi"},
    "/tokenize": {"prompt": "Hi"},
    "/detokenize": {"tokens": [1, 2]},
}


def body_for(path):
    """A body that would succeed if the guard let it through."""
    return json.dumps(BODIES.get(path, {})).encode() if path in BODIES else b""


def tricks(path):
    """Spellings of `path` that a careless router or proxy could map to it."""
    segs = path.strip("/").split("/")
    first, last = segs[0], segs[-1]
    enc = lambda s: "".join(f"%{ord(c):02x}" for c in s)
    out = [
        "/" + path,  # //v1/models
        path + "/",
        path + "//",
        path.upper(),
        "/" + first.upper() + path[len(first) + 1:],  # /V1/models
        path[: -len(last)] + "%" + f"{ord(last[0]):02x}" + last[1:],  # /v1/%6dodels
        path[: -len(last)] + "%" + f"{ord(last[0]):02X}" + last[1:],
        "/" + "/".join(enc(s) for s in segs),  # every byte percent-encoded
        "/v1/.." + path,  # /v1/../metrics
        "/x/.." + path,
        "/%2e%2e" + path,  # /%2e%2e/metrics
        "/.%2e" + path,
        "/v1/%2e%2e" + path,
        "/./" + path.lstrip("/"),
        path.replace("/", "%2f").replace("%2f", "/", 1),  # /v1%2fmodels
        path + "%00",
        path + "%20",
        path + ";x=1",
        path + "/.",
        path + "?api_key=x",
        path.replace("/", "\\"),
    ]
    return [t for t in dict.fromkeys(out) if t != path]


@pytest.fixture(scope="module")
def attack(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("attack")
    env = {"PALISADE_CONFIG_DIR": str(d / "config"), "PALISADE_STATE_DIR": str(d / "state")}
    subprocess.run(["scripts/dev-policy.sh"], cwd=ROOT, env={**__import__("os").environ, **env}, check=True, capture_output=True, timeout=60)
    kf = d / "config" / "keys.json"
    k = {s: keys(binary, "create", "--file", kf, "--id", f"only-{s}", "--scopes", s) for s in SCOPES}
    policy = d / "config" / "policy.toml"
    s = Server(binary, "--no-embeddings", policy=policy, wait_ready=False)
    try:
        s.wait_ready(headers={"authorization": f"Bearer {k['metrics']}"})
        yield {"server": s, "keys": k, "policy": policy, "binary": binary}
    finally:
        assert s.stop() == 0


def admin_base(ctx):
    """Where the admin routes listen: the separate admin listener."""
    s = ctx["server"]
    assert s.admin_url, "the admin listener is off"
    host, port = s.admin_url.removeprefix("http://").rsplit(":", 1)
    return (host, int(port))


def base_for(ctx, path):
    s = ctx["server"]
    return admin_base(ctx) if path.startswith("/admin/") else (s.host, s.port)


def required_scopes(ctx):
    """route -> scopes from `palisade policy check` (None: public)."""
    out = cli(ctx["binary"], "policy", "check", ctx["policy"])
    rules = {}
    for method, path in registered_routes(ctx["binary"]):
        m = re.search(rf"^{method}\s+{re.escape(path)}\s+(.*)$", out, re.M)
        assert m, f"{method} {path} missing from `palisade policy check`:\n{out}"
        line = m.group(1)
        if line.startswith("PUBLIC"):
            rules[path] = None
        else:
            sm = re.search(r"auth \S+ \(scopes: ([^)]*)\)", line)
            assert sm, f"{path} is guarded without a scope: {line}"
            rules[path] = [x.strip() for x in sm.group(1).split(",")]
    return rules


def test_every_route_is_listed_documented_and_covered(attack):
    b = attack["binary"]
    got = registered_routes(b)
    assert len(got) >= 10 and len(set(got)) == len(got), got
    doc = json.loads(cli(b, "openapi"))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert set(got) == documented, "`palisade routes` and the OpenAPI document disagree"
    rules = required_scopes(attack)
    public = [p for p, s in rules.items() if s is None]
    assert public == ["/health"], f"only /health may be public in the default policy: {public}"
    for path, scopes in rules.items():
        if scopes is not None:
            assert set(scopes) <= set(SCOPES), (path, scopes)


def test_no_route_answers_without_a_valid_key(attack):
    routes = registered_routes(attack["binary"])
    failures, probes = [], 0
    for route_method, path in routes:
        p = concrete(path)
        addr = base_for(attack, path)
        for method in dict.fromkeys([route_method, *ODD_METHODS]):
            body = body_for(path) if method == route_method else b""
            for auth in [None, *WRONG_KEYS]:
                status, _, resp = raw(addr, method, p, [auth] if auth else [], body)
                probes += 1
                if path == "/health" and method in ("GET", "HEAD"):
                    ok = status == 200
                else:
                    ok = status in (401, 404, 405) and (status == 401 or method != route_method)
                if not ok or b"pal_" in resp:
                    failures.append((method, p, auth, status, resp[:120]))
    print(f"{probes} unauthenticated probes")
    assert not failures, failures


def test_keys_of_the_wrong_scope_are_refused_and_the_right_scope_works(attack):
    rules = required_scopes(attack)
    failures, probes = [], 0
    for method, path in registered_routes(attack["binary"]):
        need = rules[path]
        if need is None:
            continue
        p, addr = concrete(path), base_for(attack, path)
        for scope, key in attack["keys"].items():
            if scope in need and path == "/admin/drain":
                continue  # it works by stopping the server: test_admin.py covers it
            for header in ("authorization", "x-api-key"):
                value = f"Bearer {key}" if header == "authorization" else key
                status, _, resp = raw(addr, method, p, [(header, value)], body_for(path))
                probes += 1
                if scope in need:
                    # The key works: whatever the route says, it is not an auth refusal.
                    if status in (401, 403) or status >= 500:
                        failures.append(("right scope refused", method, p, scope, status, resp[:200]))
                elif status != 403:
                    failures.append(("wrong scope let through", method, p, scope, status, resp[:200]))
    print(f"{probes} scoped probes")
    assert not failures, failures


def test_path_tricks_do_not_reach_guarded_routes(attack):
    k = attack["keys"]
    rules = required_scopes(attack)
    failures, probes = [], 0
    for route_method, path in registered_routes(attack["binary"]):
        p, addr = concrete(path), base_for(attack, path)
        need = rules[path]
        # Without a key, and with an inference key for routes that need another scope.
        auths = [None]
        if need is not None and "inference" not in need:
            auths.append(("authorization", f"Bearer {k['inference']}"))
        targets = tricks(p) + [f"http://{addr[0]}:{addr[1]}{p}", f"http://evil.example{p}"]
        for target in targets:
            for method in dict.fromkeys([route_method, "GET", "HEAD"]):
                for auth in auths:
                    status, _, resp = raw(addr, method, target, [auth] if auth else [], body_for(path) if method == "POST" else b"")
                    probes += 1
                    if path == "/health":
                        ok = status < 500  # /health is public under any spelling
                    else:
                        ok = status in (400, 401, 403, 404, 405)
                    if not ok:
                        failures.append((method, target, auth is not None, status, resp[:200]))
    print(f"{probes} path-trick probes")
    assert not failures, failures


def test_asterisk_form_and_rewrite_headers(attack):
    s = attack["server"]
    addr = (s.host, s.port)
    status, _, _ = raw(addr, "OPTIONS", "*")
    assert status in (400, 401, 404, 405), status
    # Headers some proxies honour to rewrite the path must not move the
    # request to another route: /health stays /health.
    for h in ["x-original-url", "x-rewrite-url", "x-forwarded-uri", "x-http-method-override"]:
        value = "POST" if h.endswith("override") else "/metrics"
        status, _, body = raw(addr, "GET", "/health", [(h, value)])
        assert status == 200 and json.loads(body) == {"status": "ok"}, (h, status, body[:200])
    status, _, _ = raw(addr, "GET", "/v1/models", [("x-original-url", "/health"), ("x-forwarded-for", "127.0.0.1")])
    assert status == 401
    # A key in the query string is not a credential.
    status, _, _ = raw(addr, "GET", f"/v1/models?api_key={attack['keys']['inference']}")
    assert status == 401


def test_unmatched_paths_get_404_without_running_any_handler(attack):
    s = attack["server"]
    addr = (s.host, s.port)
    for target in ["/", "/v2/models", "/admin", "/admin/", "/admin/unknown", "/metrics2", "/v1", "/v1/models/a/b", "/.env", "/%2e%2e/%2e%2e/etc/passwd"]:
        status, _, body = raw(addr, "GET", target)
        assert status in (400, 404), (target, status)
        if status == 404:
            err = json.loads(body)["error"]
            assert set(err) == {"message", "type", "param", "code"}, err
