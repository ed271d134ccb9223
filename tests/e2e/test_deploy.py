"""The deployment examples (examples/deploy): the systemd unit passes
`systemd-analyze verify` and keeps its hardening; the Kubernetes manifests
parse and keep their security fields; the policies and configs they ship
load in the real binary."""

import configparser
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml
from policies import PLUGINS, ROOT

DEPLOY = ROOT / "examples" / "deploy"
K8S = DEPLOY / "k8s"
INSTALLED_PLUGINS = "/usr/local/lib/palisade/plugins"


def unit():
    # systemd units repeat keys and have no interpolation.
    p = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    p.optionxform = str
    p.read(DEPLOY / "palisade.service")
    return p


def test_systemd_unit_verifies(tmp_path):
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing (make test-e2e installs the systemd package)"
    # The unit names installed paths; verify checks that its commands exist,
    # so point them at a real executable for the check.
    text = (DEPLOY / "palisade.service").read_text().replace("/usr/local/bin/palisade", "/bin/true")
    (tmp_path / "palisade.service").write_text(text)
    out = subprocess.run([exe, "verify", str(tmp_path / "palisade.service")], capture_output=True, text=True, timeout=60)
    warnings = [l for l in (out.stdout + out.stderr).splitlines() if "palisade.service" in l]
    assert out.returncode == 0 and not warnings, out.stdout + out.stderr


def test_systemd_unit_hardening():
    s = unit()["Service"]
    want = {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native",
        "Restart": "on-failure",
        "User": "palisade",
    }
    for k, v in want.items():
        assert s.get(k) == v, f"{k}={s.get(k)!r}, want {v!r}"
    # wasmtime maps the compiled plugins executable: W^X would break it.
    assert "MemoryDenyWriteExecute" not in s
    assert "MemoryDenyWriteExecute= must NOT be set" in (DEPLOY / "palisade.service").read_text()
    assert s["ExecStartPre"] == "/usr/local/bin/palisade doctor --config /etc/palisade/palisade.toml"
    assert s["ExecStart"] == "/usr/local/bin/palisade serve --config /etc/palisade/palisade.toml"
    # Every path the server writes is writable, and nothing else.
    writable = s["ReadWritePaths"].split()
    cfg = tomllib.loads((DEPLOY / "palisade.toml").read_text())
    policy = tomllib.loads((DEPLOY / "policy.toml").read_text())
    for path in [cfg["server"]["keys_file"], policy["runtime"]["cache_dir"], policy["audit"]["path"]]:
        assert any(path.startswith(w + "/") for w in writable), f"{path} is not under {writable}"
    for d in ["StateDirectory", "CacheDirectory", "LogsDirectory"]:
        assert s[d] == "palisade" and s[d + "Mode"] == "0700", d


def docs():
    out = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d and "kind" in d and d["kind"] != "Kustomization":
                out[(d["kind"], d["metadata"]["name"])] = d
    return out


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")


@pytest.mark.parametrize("name", ["palisade", "palisade-redis"])
def test_k8s_workloads_are_locked_down(name):
    d = docs()[("Deployment", name)]
    pod = d["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    mounts_ok = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), c["name"]
        assert not sc.get("privileged"), c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]
        assert c["livenessProbe"] and c["readinessProbe"], c["name"]
        # Writable mounts are scratch space only.
        for m in c["volumeMounts"]:
            assert m.get("readOnly") or m["name"] in mounts_ok, f"{c['name']}: {m} is writable"


def test_k8s_palisade_probes_model_and_cache():
    d = docs()[("Deployment", "palisade")]
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert mounts["models"]["readOnly"] is True
    assert vols["models"].get("persistentVolumeClaim", {}).get("readOnly") is True or "image" in vols["models"]
    assert "emptyDir" in vols["plugin-cache"]
    # The ConfigMap's files land where the container looks for them.
    cm = docs()[("ConfigMap", "palisade-config")]["data"]
    cfg = tomllib.loads(cm["palisade.toml"])
    policy = tomllib.loads(cm["policy.toml"])
    assert c["args"] == ["serve", "--config", mounts["config"]["mountPath"] + "/palisade.toml"]
    assert cfg["server"]["policy"] == mounts["config"]["mountPath"] + "/policy.toml"
    assert cfg["server"]["keys_file"].startswith(mounts["keys"]["mountPath"] + "/")
    assert cfg["model"]["path"].startswith(mounts["models"]["mountPath"] + "/")
    assert policy["runtime"]["cache_dir"].startswith(mounts["plugin-cache"]["mountPath"] + "/")
    assert int(cfg["server"]["listen"].rsplit(":", 1)[1]) == c["ports"][0]["containerPort"]
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg["server"]["shutdown_timeout_secs"]
    # Probes need no key: the policy makes /health and /ready public.
    public = {r["path"] for r in policy["routes"] if r.get("public")}
    assert public == {"/health", "/ready"}, public


def test_k8s_counters_use_the_redis_service():
    all_docs = docs()
    policy = tomllib.loads(all_docs[("ConfigMap", "palisade-config")]["data"]["policy.toml"])
    counters = policy["counters"]
    assert counters["backend"] == "redis" and counters["on_unavailable"] in ("deny", "local")
    m = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", counters["url"])
    assert m, counters["url"]
    svc = all_docs[("Service", m.group(1))]
    assert int(m.group(2)) in [p["port"] for p in svc["spec"]["ports"]]
    assert svc["spec"]["selector"] == all_docs[("Deployment", m.group(1))]["spec"]["template"]["metadata"]["labels"]
    # The rate limiter's deadline leaves room for one Redis timeout.
    rl = policy["plugins"]["rate-limit"]
    assert rl["grants"]["counters"] and 2 * counters["timeout_ms"] <= rl["limits"]["deadline_ms"]


def render(template, tmp_path, keys_file):
    """A deploy policy as the binary here can load it: pins filled in by
    render-policy.sh, install paths pointed at the plugins just built."""
    out = subprocess.run([str(DEPLOY / "render-policy.sh"), str(template), str(PLUGINS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout.replace(INSTALLED_PLUGINS, str(PLUGINS))
    text = re.sub(r'cache_dir = "[^"]*"', f'cache_dir = "{tmp_path / "cache"}"', text)
    text = re.sub(r'keys = "[^"]*"', f'keys = "{keys_file}"', text)
    # No name resolution in the test: a loopback port that refuses.
    text = text.replace("redis://palisade-redis:6379/0", "redis://127.0.0.1:1/0")
    return text


def test_the_deploy_policies_load(binary, tmp_path):
    keys_file = tmp_path / "keys.json"
    subprocess.run([str(binary), "keys", "create", "--file", str(keys_file), "--id", "ops", "--scopes", "admin"],
                   check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
    (tmp_path / "k8s-policy.toml").write_text(cm["data"]["policy.toml"])
    for name, template, counters in [("systemd", DEPLOY / "policy.toml", "counters: in memory"),
                                     ("k8s", tmp_path / "k8s-policy.toml", "counters: redis at redis://127.0.0.1:1/0 (prefix `palisade:`, timeout 20 ms, when unreachable: Deny)")]:
        p = tmp_path / f"{name}-rendered.toml"
        p.write_text(render(template, tmp_path, keys_file))
        out = subprocess.run([str(binary), "policy", "check", str(p)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"{name}: {out.stderr}"
        assert counters in out.stdout, out.stdout
        assert re.search(r"GET\s+/ready\s+PUBLIC", out.stdout), out.stdout
        assert re.search(r"POST\s+/v1/chat/completions\s+auth api-key \(scopes: inference\) -> admission rate-limit", out.stdout), out.stdout
    # An unfilled pin refuses to render.
    (tmp_path / "empty").mkdir()
    out = subprocess.run([str(DEPLOY / "render-policy.sh"), str(DEPLOY / "policy.toml"), str(tmp_path / "empty")], capture_output=True, text=True)
    assert out.returncode != 0 and "@SHA256:rate_limit.wasm@" in out.stderr


@pytest.mark.parametrize("where", ["systemd", "k8s"])
def test_the_deploy_configs_parse(binary, tmp_path, where):
    """The binary reads the shipped serve configs: it gets past the config
    to the (here missing) policy file."""
    if where == "systemd":
        text = (DEPLOY / "palisade.toml").read_text()
    else:
        text = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]["palisade.toml"]
    cfg = tmp_path / "palisade.toml"
    cfg.write_text(text)
    missing = tmp_path / "no-such-policy.toml"
    out = subprocess.run([str(binary), "serve", "--config", str(cfg), "--policy", str(missing), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "no-such-policy.toml" in out.stderr and "configuration" not in out.stderr, out.stderr
