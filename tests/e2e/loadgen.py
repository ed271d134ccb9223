"""A small asyncio HTTP/1.1 load generator for the load tests: many
concurrent connections, each running one behaviour at a time (a normal
request, keep-alive runs, slow headers, slow bodies, abrupt disconnects,
garbage, oversized bodies), recording what the server answered."""

import asyncio
import collections
import json
import random
import socket
import struct
import time

MODEL = "SmolLM2-135M-Instruct.Q4_1"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


class Closed(Exception):
    """The server closed the connection without (a complete) response."""


async def read_response(reader, timeout):
    """(status, headers, body) of one response; Closed on EOF."""
    async def go():
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        h = {}
        for line in lines:
            if ":" in line:
                k, v = line.split(":", 1)
                h[k.strip().lower()] = v.strip()
        if "content-length" in h:
            body = await reader.readexactly(int(h["content-length"]))
        elif h.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await reader.read()
        return status, h, body

    try:
        return await asyncio.wait_for(go(), timeout)
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise Closed(str(e)) from e


def request(method, path, key=None, body=None, close=True, extra=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: load"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    data = b""
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if close:
        lines.append("Connection: close")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Load:
    """Runs `conns` concurrent workers against host:port for `secs`."""

    def __init__(self, host, port, key, unauth_paths=("/metrics",), seed=1, timeout=30.0, header_timeout=2.0, body_timeout=2.0):
        self.host, self.port, self.key = host, port, key
        self.unauth_paths = unauth_paths
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.statuses = collections.Counter()  # (behaviour, status or 'closed')
        self.failures = []  # (behaviour, what)
        self.faults = collections.Counter()
        self.requests = 0
        self.latencies = []

    BEHAVIOURS = [
        ("models", 25), ("keepalive", 10), ("tokenize", 12), ("health", 5), ("chat", 10), ("stream", 5),
        # slow_ok: headers and body in 8 pieces, 0.2 s in all. A stage may
        # refuse it before its body has arrived (the api-key plugin missing
        # its deadline under load gives a fail-closed 503); the host drains
        # the unread body (server/body_deadline.rs), so the refusal arrives
        # intact instead of being destroyed by a reset.
        ("slow_ok", 4),
        ("unauth", 5), ("slow_headers", 4), ("slow_body", 3), ("abort", 8), ("abort_early", 3),
        ("garbage", 2), ("oversize", 2),
    ]

    def pick(self):
        names, weights = zip(*self.BEHAVIOURS)
        return self.rng.choices(names, weights)[0]

    def expect(self, behaviour, status, allowed):
        self.statuses[(behaviour, status)] += 1
        if status not in allowed:
            self.failures.append((behaviour, f"status {status}, expected one of {sorted(map(str, allowed))}"))

    async def connect(self):
        return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)

    async def one(self, behaviour):
        r, w = await self.connect()
        t0 = time.monotonic()
        try:
            await getattr(self, "do_" + behaviour)(r, w)
        finally:
            self.latencies.append(time.monotonic() - t0)
            w.transport.abort() if behaviour.startswith("abort") else w.close()

    async def simple(self, behaviour, r, w, req, allowed):
        w.write(req)
        await w.drain()
        self.requests += 1
        try:
            status, _, body = await read_response(r, self.timeout)
        except Closed:
            self.expect(behaviour, "closed", allowed)
            return None
        except asyncio.TimeoutError:
            self.failures.append((behaviour, f"no answer within {self.timeout}s"))
            return None
        self.expect(behaviour, status, allowed)
        return status, body

    ok = {200, 429, 503}
    # Auth-only routes: 503 when the api-key plugin misses its 50 ms
    # deadline on a saturated machine (the policy fails closed).
    authed = {200, 503}

    async def do_models(self, r, w):
        await self.simple("models", r, w, request("GET", "/v1/models", self.key), self.authed)

    async def do_keepalive(self, r, w):
        for i in range(5):
            res = await self.simple("keepalive", r, w, request("GET", "/v1/models", self.key, close=(i == 4)), self.authed)
            if res is None:
                return

    async def do_tokenize(self, r, w):
        await self.simple("tokenize", r, w, request("POST", "/tokenize", self.key, {"prompt": "The quick brown fox " * 8}), self.authed)

    async def do_health(self, r, w):
        await self.simple("health", r, w, request("GET", "/health"), {200})

    async def do_chat(self, r, w):
        await self.simple("chat", r, w, request("POST", "/v1/chat/completions", self.key, CHAT), self.ok)

    async def do_stream(self, r, w):
        res = await self.simple("stream", r, w, request("POST", "/v1/chat/completions", self.key, {**CHAT, "stream": True}), self.ok)
        if res and res[0] == 200 and not res[1].rstrip().endswith(b"data: [DONE]"):
            self.failures.append(("stream", f"stream did not end with [DONE]: {res[1][-200:]!r}"))

    async def do_unauth(self, r, w):
        await self.simple("unauth", r, w, request("GET", self.rng.choice(self.unauth_paths)), {401, 503})

    async def do_slow_ok(self, r, w):
        """Headers and body in small pieces, well inside the timeouts: served."""
        req = request("POST", "/tokenize", self.key, {"prompt": "slow but steady"})
        self.faults["trickled (within limits)"] += 1
        step = max(1, len(req) // 8)
        t0 = time.monotonic()
        self.requests += 1
        try:
            for i in range(0, len(req), step):
                w.write(req[i:i + step])
                await w.drain()
                await asyncio.sleep(self.header_timeout / 80)
            status, _, _ = await read_response(r, self.timeout)
        except (Closed, ConnectionError, asyncio.TimeoutError) as e:
            # The trickle takes about a tenth of the timeouts; a client whose
            # own event loop was starved past them was rightly cut off.
            if time.monotonic() - t0 >= min(self.header_timeout, self.body_timeout):
                self.faults["trickle starved past the timeouts (cut off)"] += 1
            else:
                self.failures.append(("slow_ok", f"not served: {e!r}"))
            return
        self.expect("slow_ok", status, {200, 503})

    async def cut_off(self, behaviour, r, w, req, pause, allowed):
        """Trickles `req` slower than the server allows; the server must cut
        the client off (a status in `allowed` or a close) in bounded time."""
        self.faults[behaviour] += 1
        self.requests += 1
        t0 = time.monotonic()
        limit = (self.header_timeout if behaviour == "slow_headers" else self.body_timeout) + 5
        reader = asyncio.ensure_future(read_response(r, limit + 1))
        try:
            for b in req:
                if reader.done():
                    break
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(pause)
            status, _, _ = await reader
            self.expect(behaviour, status, allowed)
        except (Closed, ConnectionError):
            self.statuses[(behaviour, "closed")] += 1
        except asyncio.TimeoutError:
            self.failures.append((behaviour, "never cut off"))
        finally:
            reader.cancel()
        if time.monotonic() - t0 > limit + 1:
            self.failures.append((behaviour, f"cut off only after {time.monotonic() - t0:.1f}s"))

    async def do_slow_headers(self, r, w):
        await self.cut_off("slow_headers", r, w, request("GET", "/v1/models", self.key), 0.4, {408})

    async def do_slow_body(self, r, w):
        req = request("POST", "/tokenize", self.key, {"prompt": "x" * 64})
        head, _, body = req.partition(b"\r\n\r\n")
        w.write(head + b"\r\n\r\n")
        await w.drain()
        # 408 once the body deadline passes; or, under saturation, the
        # api-key plugin's fail-closed 503 (authentication runs on the
        # headers, before the body is read).
        await self.cut_off("slow_body", r, w, body, 0.4, {408, 503})

    async def do_abort(self, r, w):
        """Starts a stream, reads a little, then resets the connection."""
        self.faults["abrupt disconnect mid-stream"] += 1
        w.write(request("POST", "/v1/chat/completions", self.key, {**CHAT, "stream": True, "max_tokens": 8}))
        await w.drain()
        self.requests += 1
        try:
            await asyncio.wait_for(r.read(self.rng.randint(1, 300)), self.timeout)
        except asyncio.TimeoutError:
            self.failures.append(("abort", "no first byte"))
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def do_abort_early(self, r, w):
        """Sends half a request and resets the connection."""
        self.faults["abrupt disconnect mid-request"] += 1
        req = request("POST", "/v1/chat/completions", self.key, CHAT)
        w.write(req[: self.rng.randint(1, len(req) - 1)])
        await w.drain()
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def do_garbage(self, r, w):
        self.faults["garbage request"] += 1
        junk = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 200))) + b"\r\n\r\n"
        await self.simple("garbage", r, w, junk, {400, "closed"})

    async def do_oversize(self, r, w):
        """Announces a body over the limit and sends one byte of it: refused
        (413), or cut off by the body timeout (408); authentication runs
        first, so under saturation also the api-key plugin's fail-closed
        503 (as for every authenticated request here)."""
        self.faults["oversized body announced"] += 1
        head = request("POST", "/tokenize", self.key).replace(b"\r\n\r\n", b"")
        await self.simple("oversize", r, w, head + b"\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\n\r\n{", {413, 408, 503})

    async def worker(self, deadline):
        while time.monotonic() < deadline:
            b = self.pick()
            try:
                await self.one(b)
            except (OSError, asyncio.TimeoutError) as e:
                if not b.startswith("abort"):
                    self.failures.append((b, f"connection failed: {e!r}"))

    async def run(self, conns, secs):
        deadline = time.monotonic() + secs
        await asyncio.gather(*(self.worker(deadline) for _ in range(conns)))

    def summary(self):
        by = collections.defaultdict(dict)
        for (b, s), n in sorted(self.statuses.items(), key=lambda x: (x[0][0], str(x[0][1]))):
            by[b][str(s)] = n
        lat = sorted(self.latencies)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
        return {"requests": self.requests, "statuses": dict(by), "faults": dict(self.faults),
                "p50_s": round(p(0.5), 3), "p99_s": round(p(0.99), 3), "failures": len(self.failures)}
