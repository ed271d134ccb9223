"""The `palisade` command line on the real default model."""

import shutil


def test_chat_prompt_gets_a_sensible_answer(run, model):
    out = run("generate", "--model", model, "--chat", "--prompt", "What is the capital of France? Answer in one sentence.", "--max-tokens", "24", "--threads", "2").stdout
    assert "Paris" in out


def test_default_model_is_used_without_model_flag(run):
    out = run("generate", "--prompt", "The capital of France is", "--max-tokens", "8").stdout
    assert out.strip(), "no text generated"


def test_greedy_is_deterministic_and_seeds_reproduce(run, model):
    args = ["generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "24"]
    assert run(*args).stdout == run(*args).stdout
    sampled = args + ["--temperature", "1.0", "--seed"]
    a, b, c = run(*sampled, "7").stdout, run(*sampled, "7").stdout, run(*sampled, "8").stdout
    assert a == b
    assert a != c


def test_stop_string_is_not_emitted(run, model):
    base = ["generate", "--model", model, "--chat", "--prompt", "What is the capital of France? Answer in one sentence.", "--max-tokens", "24"]
    full = run(*base).stdout
    assert "Paris" in full
    cut = run(*base, "--stop", "Paris").stdout
    assert "Paris" not in cut
    assert full.startswith(cut.rstrip("\n"))


def test_max_tokens_bounds_the_output(run, model):
    out = run("generate", "--model", model, "--prompt", "Count: one, two, three,", "--max-tokens", "3").stdout
    assert 0 < len(out.strip()) < 40


def test_missing_model_is_a_clear_error(run, tmp_path):
    p = run("generate", "--model", tmp_path / "nope.gguf", "--prompt", "x", check=False)
    assert p.returncode != 0
    assert "nope.gguf" in p.stderr


def test_truncated_model_names_file_and_tensor(run, model, tmp_path):
    bad = tmp_path / "cut.gguf"
    with open(model, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read(8 << 20))
    p = run("generate", "--model", bad, "--prompt", "x", check=False)
    assert p.returncode != 0
    assert "cut.gguf" in p.stderr and "truncated" in p.stderr and "tensor" in p.stderr


def test_wrong_magic_and_pickle_are_refused(run, model, tmp_path):
    bad = tmp_path / "zip.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    p = run("generate", "--model", bad, "--prompt", "x", check=False)
    assert p.returncode != 0 and "not a GGUF file" in p.stderr
    pt = tmp_path / "model.pt"
    shutil.copy(bad, pt)
    p = run("generate", "--model", pt, "--prompt", "x", check=False)
    assert p.returncode != 0 and "pickle" in p.stderr


def test_chat_repl_keeps_the_conversation(binary, model):
    import subprocess

    proc = subprocess.run(
        [str(binary), "chat", "--model", str(model), "--temperature", "0", "--max-tokens", "20"],
        input="What is the capital of France? Answer in one sentence.\nAnd of Italy?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert len(lines) >= 2
    assert "Paris" in lines[0]


def test_bench_prints_a_table(run, model):
    out = run("bench", "--model", model, "--threads", "1", "--prompt-tokens", "32", "--gen-tokens", "8", "--reps", "1").stdout
    assert "| 1 | prefill 32 |" in out and "| 1 | decode 8 |" in out
