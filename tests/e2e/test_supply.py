"""Model supply chain, private directories and `palisade doctor`, with the
real binary, the real default model and the real plugins."""

import json
import os
import shutil
import socket
import subprocess

import pytest
from policies import OPEN, plugin, route, write
from server import Server


def sh(binary, *args, timeout=120):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def serve_refused(binary, *args):
    """Runs `serve` expecting it to refuse to start: returns stderr."""
    p = subprocess.run([str(binary), "serve", "--listen", "127.0.0.1:0", "--threads", "2", "--no-embeddings", *map(str, args)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "listening" not in p.stdout, "it must refuse before binding"
    return p.stderr


@pytest.fixture
def small_model(embed_model, tmp_path):
    """A copy of the small files of the real embedding model directory."""
    d = tmp_path / "model"
    (d / "1_Pooling").mkdir(parents=True)
    for name in ["config.json", "tokenizer_config.json", "vocab.txt", "1_Pooling/config.json"]:
        shutil.copyfile(embed_model / name, d / name)
    return d


def test_manifest_and_verify_a_directory_and_a_tampered_copy(binary, small_model, tmp_path):
    p = sh(binary, "model", "manifest", small_model)
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["format"] == "palisade-model-manifest" and m["version"] == 1
    paths = [f["path"] for f in m["files"]]
    assert paths == sorted(paths) == ["1_Pooling/config.json", "config.json", "tokenizer_config.json", "vocab.txt"]
    vocab = next(f for f in m["files"] if f["path"] == "vocab.txt")
    assert vocab["size"] == (small_model / "vocab.txt").stat().st_size and len(vocab["sha256"]) == 64

    out = tmp_path / "model.manifest.json"
    assert sh(binary, "model", "manifest", small_model, "--out", out).returncode == 0
    assert json.loads(out.read_text()) == m
    ok = sh(binary, "model", "verify", small_model, "--manifest", out)
    assert ok.returncode == 0 and "4 files" in ok.stdout, ok.stderr

    # Same size, one byte flipped; one file gone; one file added.
    flip(small_model / "vocab.txt", 1000)
    (small_model / "tokenizer_config.json").unlink()
    (small_model / "pytorch_model.bin").write_bytes(b"pickle")
    bad = sh(binary, "model", "verify", small_model, "--manifest", out)
    assert bad.returncode != 0
    for want in ["mismatched: vocab.txt has sha256", "missing: tokenizer_config.json", "extra: pytorch_model.bin", str(out)]:
        assert want in bad.stderr, (want, bad.stderr)
    assert "config.json" not in bad.stderr.replace("tokenizer_config.json", ""), "intact files are not named"


def test_serve_refuses_a_tampered_model_and_starts_on_an_intact_one(binary, model, tmp_path):
    copy = tmp_path / "m" / model.name
    copy.parent.mkdir()
    shutil.copyfile(model, copy)  # a real copy: flipping a byte must not touch the cache
    manifest = tmp_path / "smollm2.manifest.json"
    assert sh(binary, "model", "manifest", copy, "--out", manifest).returncode == 0
    policy = write(tmp_path, OPEN, "open.toml")
    # The config key ...
    conf = tmp_path / "palisade.toml"
    conf.write_text(f'[model]\npath = "{copy}"\nmanifest = "{manifest}"\n')
    s = Server(binary, "--config", conf, "--no-embeddings", policy=policy)
    assert s.stop() == 0
    flip(copy, os.path.getsize(copy) // 2)
    err = serve_refused(binary, "--config", conf, "--policy", policy)
    assert str(manifest) in err and f"mismatched: {model.name} has sha256" in err, err
    # ... and the flag.
    err = serve_refused(binary, "--model", copy, "--model-manifest", manifest, "--policy", policy)
    assert str(manifest) in err and model.name in err, err


def test_pickle_weights_are_refused_with_the_reason(run, tmp_path):
    d = tmp_path / "torch"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    p = run("generate", "--model", d, "--prompt", "x", check=False)
    assert p.returncode != 0
    assert "pytorch_model.bin" in p.stderr and "pickle" in p.stderr and "arbitrary code" in p.stderr, p.stderr
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x02pickle")
    p = run("doctor", "--model", pt, "--policy", write(tmp_path, OPEN), "--listen", "127.0.0.1:0", check=False)
    assert p.returncode != 0
    line = next(l for l in p.stdout.splitlines() if l.split()[1:2] == ["model"])
    assert line.startswith("FAIL") and "model.pt" in line and "pickle" in line, p.stdout


def auth_policy(tmp_path, keys_file, sha=None, audit=None):
    text = plugin("auth", "api_key_auth.wasm", "authenticator") + f'config_files = {{ keys = "{keys_file}" }}\n'
    if sha:
        text = "\n".join(f'sha256 = "{sha}"' if l.startswith("sha256 = ") else l for l in text.splitlines()) + "\n"
    if audit:
        text = f'[audit]\npath = "{audit}"\n' + text
    return write(tmp_path, text + route("*", auth="auth", scopes=["admin"]))


def test_world_writable_key_file_and_audit_dir_are_refused_with_the_fix(binary, model, tmp_path):
    keys = tmp_path / "keys.json"
    made = sh(binary, "keys", "create", "--file", keys, "--id", "ops", "--scopes", "admin")
    assert made.returncode == 0
    key = made.stdout.strip().splitlines()[-1]
    assert keys.stat().st_mode & 0o777 == 0o600
    audit_dir = tmp_path / "audit"
    policy = auth_policy(tmp_path, keys, audit=audit_dir / "audit.jsonl")

    keys.chmod(0o666)
    err = serve_refused(binary, "--model", model, "--policy", policy)
    assert f"chmod 600 {keys}" in err and "writable by group and others" in err, err
    listed = sh(binary, "keys", "list", "--file", keys)
    assert listed.returncode != 0 and f"chmod 600 {keys}" in listed.stderr
    keys.chmod(0o600)

    # The server creates the audit directory 0700 ...
    s = Server(binary, "--model", model, "--no-embeddings", policy=policy, wait_ready=False)
    s.wait_ready(headers={"authorization": f"Bearer {key}"})
    assert s.stop() == 0
    assert audit_dir.stat().st_mode & 0o777 == 0o700
    # ... and refuses it once others may write to it.
    audit_dir.chmod(0o777)
    err = serve_refused(binary, "--model", model, "--policy", policy)
    assert f"chmod 700 {audit_dir}" in err, err
    audit_dir.chmod(0o700)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_passes_a_good_setup_and_names_what_is_wrong_in_a_bad_one(binary, model, tmp_path):
    keys = tmp_path / "keys.json"
    assert sh(binary, "keys", "create", "--file", keys, "--id", "ops", "--scopes", "admin").returncode == 0
    manifest = tmp_path / "m.json"
    assert sh(binary, "model", "manifest", model, "--out", manifest).returncode == 0
    good = ["doctor", "--model", model, "--model-manifest", manifest, "--no-embeddings",
            "--policy", auth_policy(tmp_path, keys, audit=tmp_path / "audit" / "a.jsonl"), "--listen", f"127.0.0.1:{free_port()}"]
    p = sh(binary, *good)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = p.stdout.splitlines()[:-1]
    assert rows and all(r.split()[0] in ("ok", "warn") for r in rows), p.stdout
    for name in ["listen", "model ", "model manifest", "plugin auth", "policy", "private: key file", "private: audit dir", "cpu features", "gpu"]:
        assert any(r.startswith("ok    " + name) for r in rows), (name, p.stdout)
    assert " 0 failed" in p.stdout
    j = json.loads(sh(binary, *good, "--json").stdout)
    assert {c["check"] for c in j} >= {"listen", "tls", "model", "model manifest", "plugin auth", "policy", "cpu features", "gpu"}
    assert all(set(c) == {"check", "status", "detail"} for c in j)
    assert all(c["status"] == "ok" for c in j if c["check"] != "embedding model"), j

    # Bad: the port is taken, the plugin's pin is wrong.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    bad_policy = auth_policy(tmp_path, keys, sha="0" * 64)
    bad = ["doctor", "--model", model, "--no-embeddings", "--policy", bad_policy, "--listen", f"127.0.0.1:{port}"]
    try:
        p = sh(binary, *bad)
        assert p.returncode != 0
        fails = [l for l in p.stdout.splitlines() if l.startswith("FAIL")]
        assert any("listen" in l and str(port) in l for l in fails), p.stdout
        assert any("plugin auth" in l and "sha256" in l and "0" * 64 in l for l in fails), p.stdout
        j = json.loads(sh(binary, *bad, "--json").stdout)
        st = {c["check"]: c["status"] for c in j}
        assert st["listen"] == "fail" and st["plugin auth"] == "fail" and st["policy"] == "fail"
        assert st["model manifest"] == "warn" and st["model"] == "ok"
        # serve runs the same pin check before it binds.
        err = serve_refused(binary, "--model", model, "--policy", bad_policy)
        assert "plugin `auth`" in err and "0" * 64 in err, err
    finally:
        taken.close()
