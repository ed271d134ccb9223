"""Audit durability against the real binary: a line is written (and, with
`fsync = "always"`, synced) before its response completes, so a kill -9
under load loses no line of a completed request; the hash chain of every
file (rotated ones too) verifies, and an edited or deleted line is caught."""

import json
import subprocess
import threading
import time

import httpx
from conftest import MODEL
from policies import route, write
from server import Server


def audit_policy(path, fsync="always", max_bytes=0, keep=10):
    return (
        f'[audit]\npath = "{path}"\nfsync = "{fsync}"\nmax_bytes = {max_bytes}\nkeep = {keep}\n'
        + route("/health", public=True)
        + route("*", public=True)
    )


def verify(binary, path):
    return subprocess.run([str(binary), "audit", "verify", str(path)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def files(path):
    """The audit file and its rotated predecessors, oldest first."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return rotated + [path]


def records(path):
    out = []
    for f in files(path):
        for line in f.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # the torn last line of a request still in flight
    return out


def test_kill_9_under_load_loses_no_completed_line(binary, tmp_path):
    audit = tmp_path / "state" / "audit.jsonl"
    # Small files: rotation happens under load too.
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, audit_policy(audit, max_bytes=4096, keep=100)))
    completed, errors = [], []
    stop = threading.Event()

    def worker(n):
        i = 0
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                i += 1
                try:
                    if i % 5 == 1:  # refused by the handler: the guard writes the line
                        r = c.post(s.url + "/v1/completions", json={"model": "nope", "prompt": "x", "max_tokens": 2})
                        if r.status_code != 404:
                            errors.append(f"unknown model: {r.status_code}")
                        completed.append(r.headers["x-request-id"])
                    elif n % 2:
                        body = {"model": MODEL, "prompt": f"Worker {n} says", "max_tokens": 3, "stream": True}
                        with c.stream("POST", s.url + "/v1/completions", json=body) as r:
                            lines = list(r.iter_lines())
                            if lines and lines[-1] == "data: [DONE]":
                                completed.append(r.headers["x-request-id"])
                    else:
                        r = c.post(s.url + "/v1/chat/completions", json={"model": MODEL, "max_tokens": 3,
                                   "messages": [{"role": "user", "content": f"Hello {n}"}]})
                        r.raise_for_status()
                        completed.append(r.headers["x-request-id"])
                except (httpx.HTTPError, KeyError) as e:
                    if not stop.is_set():
                        errors.append(repr(e))
                    return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    deadline = time.time() + 90  # a busy machine is slow: wait for enough completions
    while len(completed) < 24 and time.time() < deadline and all(t.is_alive() for t in threads):
        time.sleep(0.1)
    stop.set()  # from here on, failed requests are the kill's doing
    s.proc.kill()  # SIGKILL: no shutdown, no flush, mid-load
    s.proc.wait(10)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(completed) >= 10, f"only {len(completed)} requests completed"
    written = {r["request_id"] for r in records(audit)}
    missing = [i for i in completed if i not in written]
    assert not missing, f"{len(missing)} of {len(completed)} completed requests have no audit line"
    assert len(files(audit)) > 2, "expected the log to rotate under load"
    for f in files(audit):
        v = verify(binary, f)
        assert v.returncode == 0, (f, v.stdout, v.stderr)
        assert v.stdout.startswith("ok: ") and "lines verified" in v.stdout, v.stdout
    seqs = [r["seq"] for r in records(audit)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq runs on across rotated files"

    # A restart continues the chain after whatever the kill left.
    s2 = Server(binary, "--no-embeddings", policy=write(tmp_path, audit_policy(audit, max_bytes=4096, keep=100)))
    try:
        r = httpx.post(s2.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
        assert records(audit)[-1]["request_id"] == r.headers["x-request-id"]
    finally:
        assert s2.stop() == 0
    v = verify(binary, audit)
    assert v.returncode == 0 and "note: the file ends in an incomplete line" not in v.stdout, v.stdout

    # Tampering: an edited line, then a deleted one, is caught by number. The
    # newest file may have just rotated (one line), so take the newest file
    # that holds at least four lines; each file verifies on its own.
    target = next((f for f in reversed(files(audit)) if len(f.read_text().splitlines()) >= 4), None)
    assert target is not None, [len(f.read_text().splitlines()) for f in files(audit)]
    newest = target.read_text().splitlines(keepends=True)
    edited = list(newest)
    rec = json.loads(edited[1])
    rec["status"] = 299
    edited[1] = json.dumps(rec, separators=(",", ":")) + "\n"
    target.write_text("".join(edited))
    v = verify(binary, target)
    assert v.returncode != 0 and "line 3:" in v.stderr and "sha256 of line 2" in v.stderr and "edited" in v.stderr, v.stderr
    target.write_text("".join(newest[:2] + newest[3:]))
    v = verify(binary, target)
    assert v.returncode != 0 and "line 3:" in v.stderr and "missing" in v.stderr, v.stderr
    target.write_text("".join(newest))
    assert verify(binary, target).returncode == 0


def test_a_torn_last_line_is_tolerated_only_at_the_end(binary, tmp_path):
    audit = tmp_path / "audit.jsonl"
    s = Server(binary, "--no-embeddings", policy=write(tmp_path, audit_policy(audit, fsync="interval")))
    try:
        for _ in range(3):
            assert httpx.get(s.url + "/v1/models").status_code == 200
    finally:
        assert s.stop() == 0
    whole = audit.read_text()
    n = len(whole.splitlines())
    assert n >= 3  # the readiness probes have lines too
    audit.write_text(whole + '{"seq":99,"prev":"0a1b')
    v = verify(binary, audit)
    assert v.returncode == 0 and v.stdout.startswith(f"ok: {n} lines verified"), v.stdout
    assert "incomplete line" in v.stdout
    lines = whole.splitlines(keepends=True)
    audit.write_text(lines[0] + '{"seq":2,"prev":"0a1b\n' + "".join(lines[1:]))
    v = verify(binary, audit)
    assert v.returncode != 0 and "line 2:" in v.stderr and "not a JSON line" in v.stderr, v.stderr
