"""Schemathesis against the committed OpenAPI document (host/openapi.json)
and the running server under the default policy, with a key of every scope:
for every operation, generated valid and invalid requests. No answer may be
a 500, every status must be documented, every body must match its schema and
content type, and invalid requests must be refused. Bounded: a few examples
per operation, generation capped at 8 tokens (`--max-tokens 8`)."""

import os
import re
import subprocess

import pytest
import schemathesis
from conftest import ROOT
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server import Server
from test_default_policy import keys

EXAMPLES = int(os.environ.get("PALISADE_SCHEMATHESIS_EXAMPLES", "30"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]

# The admin routes live on the admin listener and change the server (drain,
# key edits): test_admin.py covers them; here only the public listener.
schema = schemathesis.openapi.from_path(ROOT / "host" / "openapi.json").exclude(path_regex="^/admin/")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True, database="none")


@pytest.fixture(scope="module")
def api(binary, embed_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("schemathesis")
    env = {**os.environ, "PALISADE_CONFIG_DIR": str(d / "config"), "PALISADE_STATE_DIR": str(d / "state")}
    subprocess.run(["scripts/dev-policy.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    policy = d / "config" / "policy.toml"
    # The default policy, with request-count limits raised: a fuzzer's pace
    # is not what they are for (429s are still documented and allowed).
    text = re.sub(r"requests_per_window = (\d+)", lambda m: f"requests_per_window = {int(m.group(1)) * 100}", policy.read_text())
    policy.write_text(text)
    key = keys(binary, "create", "--file", d / "config" / "keys.json", "--id", "fuzzer", "--scopes", "inference,embeddings,metrics,admin")
    s = Server(binary, "--embedding-model", embed_model, "--max-tokens", 8, "--max-n", 2, policy=policy, wait_ready=False)
    try:
        s.wait_ready(headers={"authorization": f"Bearer {key}"})
        yield s, key
    finally:
        assert s.stop() == 0


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate], derandomize=True, database=None)
def test_api_conforms_to_its_openapi_document(case, api):
    s, key = api
    case.call_and_validate(base_url=s.url, headers={"authorization": f"Bearer {key}"}, checks=CHECKS, timeout=60)
