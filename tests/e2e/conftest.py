"""Shared fixtures: the real `palisade` binary and the real default model."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("PALISADE_BIN", ROOT / "target" / "debug" / "palisade"))
    assert path.exists(), f"{path} is missing: build it with `cargo build` (make test does)"
    return path


@pytest.fixture(scope="session")
def model() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("PALISADE_CACHE_DIR", pathlib.Path.home() / ".cache" / "palisade"))
    path = cache / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.exists(), f"{path} is missing: run scripts/fetch-model.sh (make test does)"
    return path


@pytest.fixture
def run(binary):
    def _run(*args, timeout=300, check=True):
        proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
        return proc

    return _run


@pytest.fixture(scope="session")
def embed_model() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("PALISADE_CACHE_DIR", pathlib.Path.home() / ".cache" / "palisade"))
    path = cache / "all-minilm-l6-v2"
    assert (path / "config.json").exists(), f"{path} is missing: run scripts/fetch-embedding-model.sh (make test does)"
    return path


@pytest.fixture(scope="module")
def server(binary, embed_model):
    from server import Server

    s = Server(binary, "--embedding-model", embed_model)
    yield s
    assert s.stop() == 0


MODEL = "SmolLM2-135M-Instruct.Q4_1"
EMBED = "all-minilm-l6-v2"


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)
