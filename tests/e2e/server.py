"""Starting and stopping a real `palisade serve` for the tests."""

import os
import signal
import subprocess
import pathlib
import tempfile

import policies
import time

import httpx


class Server:
    """A running `palisade serve` on 127.0.0.1:0."""

    def __init__(self, binary, *args, env=None, wait_ready=True, policy=None):
        if policy is None:
            # Every route public: for tests about the API, not the guard.
            self._policy_dir = tempfile.TemporaryDirectory()
            policy = pathlib.Path(self._policy_dir.name) / "open.toml"
            policy.write_text(policies.OPEN)
        args = [str(a) for a in args]
        # The admin listener (the /admin/* routes) on its own port 0 too,
        # unless the test picks its own.
        admin = [] if "--admin-listen" in args else ["--admin-listen", "127.0.0.1:0"]
        cmd = [str(binary), "serve", "--listen", "127.0.0.1:0", *admin, "--threads", "2", "--policy", str(policy), *args]
        # Logs go to a file: an undrained pipe would block the server.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("palisade listening on "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.logs()}")
        self.url = line.split(" on ", 1)[1].strip()
        self.addr = self.url.split("://", 1)[1]
        self.host, self.port = self.addr.rsplit(":", 1)
        self.port = int(self.port)
        # The second line: the admin listener's address, or that it is off.
        line = self.proc.stdout.readline()
        if line.startswith("palisade admin listening on "):
            self.admin_url = line.split(" on ", 1)[1].strip()
        elif line.startswith("palisade admin listener off"):
            self.admin_url = None
        else:
            self.proc.kill()
            raise RuntimeError(f"no admin listener line: {line!r} {self.logs()}")
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=60, **kw):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2, **kw).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.logs()}")
            time.sleep(0.05)
        raise TimeoutError("server not ready")

    def logs(self):
        self.log.seek(0)
        return self.log.read()

    def admin(self, method, path, key=None, **kw):
        """A request to the admin listener (`path` like `/admin/reload`)."""
        assert self.admin_url, "the admin listener is off"
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.admin_url + path, headers=headers, timeout=kw.pop("timeout", 60), **kw)

    @property
    def v1(self):
        return self.url + "/v1"

    def stop(self, timeout=60):
        """SIGTERM, then the exit code (must be 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def metric(self, name):
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        assert found, f"metric {name} missing"
        return total
