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
