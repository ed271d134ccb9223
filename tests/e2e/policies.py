"""Policy files for the tests, pinned to the plugins `make test` built."""

import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins" / "target" / "wasm32-wasip2" / "release"


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def plugin(name, file, kind, config=None, limits=None, grants=None):
    path = PLUGINS / file
    assert path.exists(), f"{path} is missing: build the plugins (make plugins)"
    lines = [f"[plugins.{name}]", f'path = "{path}"', f'sha256 = "{sha256(path)}"', f'kind = "{kind}"']
    if config:
        lines.append(f"[plugins.{name}.config]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    if limits:
        lines.append(f"[plugins.{name}.limits]")
        lines += [f"{k} = {v}" for k, v in limits.items()]
    if grants:
        lines.append(f"[plugins.{name}.grants]")
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}" for k, v in grants.items()]
    return "\n".join(lines) + "\n"


def route(path, public=False, auth=None, scopes=(), admission=(), output=(), failure="closed", tools=(),
          max_tool_steps=None):
    """tools: (plugin, scopes) pairs the route grants."""
    lines = ["[[routes]]", f'path = "{path}"']
    if public:
        lines.append("public = true")
    if auth:
        lines.append(f'auth = "{auth}"')
    if scopes:
        lines.append(f"scopes = {json.dumps(list(scopes))}")
    if admission:
        lines.append(f"admission = {json.dumps(list(admission))}")
    if output:
        lines.append(f"output = {json.dumps(list(output))}")
    lines.append(f'failure = "{failure}"')
    if tools:
        grants = ", ".join(f'{{ plugin = "{p}", scopes = {json.dumps(list(sc))} }}' for p, sc in tools)
        lines.append(f"tools = [{grants}]")
    if max_tool_steps is not None:
        lines.append(f"max_tool_steps = {max_tool_steps}")
    return "\n".join(lines) + "\n"


OPEN = route("*", public=True)


def keys_config(keys):
    """keys: list of (key, id, scopes)."""
    return {"keys": json.dumps([{"id": i, "tenant": "t-" + i, "scopes": list(s), "sha256": hashlib.sha256(k.encode()).hexdigest()} for k, i, s in keys])}


def write(tmp_path, text, name="policy.toml"):
    p = pathlib.Path(tmp_path) / name
    p.write_text(text)
    return p
