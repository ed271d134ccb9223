//! `palisade bench`: engine prefill and decode speed, optionally side by
//! side with llama.cpp on the same GGUF and thread count, alternating runs
//! so both see the same machine load. Prints medians and ratios.
//!
//! Ours is measured on the path the server runs (the continuous-batching
//! scheduler over the paged KV cache, one sequence) and, for reference, on
//! the contiguous single-sequence forward pass. llama.cpp runs either as its
//! own `llama-bench` binary (`--llama-bench`, built from the same sources as
//! `llama-server` by `scripts/build_llama_server.sh`) or through
//! llama-cpp-python (`--llama-cpp-python` and `scripts/llama_cpp_bench.py`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use palisade_engine::kv::BLOCK_SIZE;
use palisade_engine::model::{KvCache, Workspace};
use palisade_engine::sampling::argmax;
use palisade_engine::scheduler::{Scheduler, SchedulerConfig};
use palisade_engine::{Engine, EngineOptions, GenerateRequest};

use crate::HostError;

/// The paragraph the benchmark prompt repeats (the same text the llama.cpp
/// script uses, so both evaluate identical token ids).
pub const PARAGRAPH: &str = "The history of computing is a story of steady abstraction. Early machines were programmed by rewiring panels and flipping switches, and every instruction had to be spelled out in the language of the hardware itself. Over the decades, engineers built layer upon layer of tools, from assemblers and compilers to operating systems and high-level languages, so that people could describe what they wanted rather than how the circuits should move each bit. Today a single sentence typed into a text box can set millions of calculations in motion, yet underneath it all the same simple operations of adding, comparing and moving numbers still do the work. ";

/// Arguments of `palisade bench`.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Model path (default: the cached default model).
    pub model: Option<PathBuf>,
    /// Thread counts to measure.
    pub threads: Vec<usize>,
    /// Prompt tokens for the prefill measurement.
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    pub gen_tokens: usize,
    /// Repetitions per configuration (medians are reported).
    pub reps: usize,
    /// Python interpreter with llama-cpp-python, to run llama.cpp alongside.
    pub llama_cpp_python: Option<PathBuf>,
    /// The llama.cpp benchmark script.
    pub script: PathBuf,
    /// llama.cpp's `llama-bench` binary, to run llama.cpp alongside (wins
    /// over `llama_cpp_python`).
    pub llama_bench: Option<PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Speed {
    /// Prompt tokens per second.
    pub prefill: f64,
    /// Generated tokens per second.
    pub decode: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The benchmark prompt: [`PARAGRAPH`] repeated until long enough, cut to
/// exactly `n` tokens.
pub fn prompt_ids(engine: &Engine, n: usize) -> Result<Vec<u32>, HostError> {
    let mut k = 1;
    loop {
        let ids = engine
            .tokenizer()
            .encode(&PARAGRAPH.repeat(k), false, false)?;
        if ids.len() >= n {
            return Ok(ids[..n].to_vec());
        }
        k += 1;
    }
}

/// Measures our engine once on the server's path: one sequence through the
/// continuous-batching scheduler and the paged KV cache. Prefill is the
/// whole of `prompt` in one step (plus sampling its first token); decode is
/// `gen_tokens` greedy steps after a 16-token prompt, end-of-text ignored.
pub fn measure_paged(
    engine: &Engine,
    prompt: &[u32],
    gen_tokens: usize,
) -> Result<Speed, HostError> {
    let cfg = |positions: usize| SchedulerConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: prompt.len().max(16),
        kv_blocks: positions.div_ceil(BLOCK_SIZE) + 1,
    };
    let mut out = Vec::new();
    // A fresh scheduler each time: its prefix cache starts empty.
    let mut s = Scheduler::new(engine, cfg(prompt.len() + 1))?;
    s.add(GenerateRequest {
        prompt: prompt.to_vec(),
        max_tokens: 1,
        ignore_eos: true,
        ..Default::default()
    })?;
    let t = Instant::now();
    while s.step(&|_| false, &mut out) {}
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    check_outputs(&out, 1)?;

    let start = &prompt[..16.min(prompt.len())];
    let mut s = Scheduler::new(engine, cfg(start.len() + gen_tokens + 1))?;
    s.add(GenerateRequest {
        prompt: start.to_vec(),
        max_tokens: gen_tokens + 1,
        ignore_eos: true,
        ..Default::default()
    })?;
    out.clear();
    s.step(&|_| false, &mut out); // the prompt and the first token
    let t = Instant::now();
    while s.step(&|_| false, &mut out) {}
    let decode = gen_tokens as f64 / t.elapsed().as_secs_f64();
    check_outputs(&out, gen_tokens + 1)?;
    Ok(Speed { prefill, decode })
}

fn check_outputs(out: &[palisade_engine::scheduler::Output], want: usize) -> Result<(), HostError> {
    if let Some(e) = out.iter().find_map(|o| o.event.as_ref().err()) {
        return Err(HostError::Peer(format!("benchmark sequence failed: {e}")));
    }
    if out.len() != want {
        return Err(HostError::Peer(format!(
            "benchmark sequence produced {} tokens, expected {want}",
            out.len()
        )));
    }
    Ok(())
}

/// Measures our engine once on the contiguous single-sequence forward pass
/// (the engine's reference path): a prefill of `prompt`, then `gen` greedy
/// decode steps after a 16-token prompt.
pub fn measure_ours(
    engine: &Engine,
    prompt: &[u32],
    gen_tokens: usize,
) -> Result<Speed, HostError> {
    let m = engine.model();
    let mut ws = Workspace::default();
    let mut cache = KvCache::new(&m.config, prompt.len().max(16 + gen_tokens) + 1);
    let t = Instant::now();
    m.forward(engine.pool(), &mut ws, &mut cache, prompt, 0, false)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    cache.truncate(0);
    let start = &prompt[..16.min(prompt.len())];
    let mut tok = argmax(m.forward(engine.pool(), &mut ws, &mut cache, start, 0, false)?);
    let mut pos = start.len();
    let t = Instant::now();
    for _ in 0..gen_tokens {
        tok = argmax(m.forward(engine.pool(), &mut ws, &mut cache, &[tok], pos, false)?);
        pos += 1;
    }
    let decode = gen_tokens as f64 / t.elapsed().as_secs_f64();
    Ok(Speed { prefill, decode })
}

fn measure_llama_cpp(
    python: &PathBuf,
    script: &PathBuf,
    model: &PathBuf,
    threads: usize,
    a: &BenchArgs,
) -> Result<Speed, HostError> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--model", &model.to_string_lossy()])
        .args(["--threads", &threads.to_string()])
        .args(["--prompt-tokens", &a.prompt_tokens.to_string()])
        .args(["--gen-tokens", &a.gen_tokens.to_string()])
        .args(["--reps", "1"]);
    let line = peer_output(cmd, python, script)?;
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| HostError::Peer(format!("unreadable output {line:?}: {e}")))?;
    Ok(Speed {
        prefill: v["prefill_tok_s"].as_f64().unwrap_or(f64::NAN),
        decode: v["decode_tok_s"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Runs a llama.cpp benchmark command (`program`, reporting failures as
/// `what`'s) and returns its standard output.
fn peer_output(mut cmd: Command, program: &Path, what: &Path) -> Result<String, HostError> {
    let out = cmd
        .output()
        .map_err(|e| HostError::Peer(format!("running {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(HostError::Peer(format!(
            "{} exited with {}: {}",
            what.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `llama-bench` run (`-r 1`): prompt processing of `prompt_tokens`
/// and generation of `gen_tokens`, read from its JSON output.
fn measure_llama_bench(
    bin: &PathBuf,
    model: &PathBuf,
    threads: usize,
    a: &BenchArgs,
) -> Result<Speed, HostError> {
    let mut cmd = Command::new(bin);
    cmd.args(["-m", &model.to_string_lossy()])
        .args(["-t", &threads.to_string()])
        .args(["-p", &a.prompt_tokens.to_string()])
        .args(["-n", &a.gen_tokens.to_string()])
        .args(["-r", "1", "-o", "json"]);
    let text = peer_output(cmd, bin, bin)?;
    let runs: Vec<serde_json::Value> = serde_json::from_str(text.trim())
        .map_err(|e| HostError::Peer(format!("unreadable llama-bench output {text:?}: {e}")))?;
    let pick = |prompt: u64, gen_: u64| {
        runs.iter()
            .find(|r| r["n_prompt"].as_u64() == Some(prompt) && r["n_gen"].as_u64() == Some(gen_))
            .and_then(|r| r["avg_ts"].as_f64())
            .unwrap_or(f64::NAN)
    };
    Ok(Speed {
        prefill: pick(a.prompt_tokens as u64, 0),
        decode: pick(0, a.gen_tokens as u64),
    })
}

/// Runs the benchmark and returns the table as Markdown.
pub fn run_bench(a: &BenchArgs) -> Result<String, HostError> {
    let model = crate::resolve_model(a.model.as_ref())?;
    if a.reps == 0 || a.prompt_tokens < 16 {
        return Err(HostError::InvalidArgument {
            flag: "reps",
            message: "need at least 1 rep and 16 prompt tokens".into(),
        });
    }
    let mut table = String::new();
    table.push_str(&format!(
        "model: {}\nkernels: {}; prompt {} tokens, decode {} tokens, {} reps (medians)\n\n",
        model.display(),
        palisade_kernels::cpu::isa().name(),
        a.prompt_tokens,
        a.gen_tokens,
        a.reps
    ));
    let with_peer = a.llama_cpp_python.is_some() || a.llama_bench.is_some();
    if let Some(b) = &a.llama_bench {
        table.push_str(&format!("llama.cpp: {} (llama-bench)\n\n", b.display()));
    }
    table.push_str(if with_peer {
        "| threads | metric | palisade tok/s (server path: paged, scheduler) | palisade tok/s (contiguous) | llama.cpp tok/s | palisade / llama.cpp |\n|---:|---|---:|---:|---:|---:|\n"
    } else {
        "| threads | metric | palisade tok/s (server path: paged, scheduler) | palisade tok/s (contiguous) |\n|---:|---|---:|---:|\n"
    });
    for &threads in &a.threads {
        let engine = Engine::load(&EngineOptions {
            model: model.clone(),
            threads,
            ..Default::default()
        })?;
        let prompt = prompt_ids(&engine, a.prompt_tokens)?;
        measure_ours(&engine, &prompt[..64.min(prompt.len())], 8)?; // warm-up
        measure_paged(&engine, &prompt[..64.min(prompt.len())], 8)?;
        let (mut ours, mut contiguous, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..a.reps {
            ours.push(measure_paged(&engine, &prompt, a.gen_tokens)?);
            contiguous.push(measure_ours(&engine, &prompt, a.gen_tokens)?);
            if let Some(b) = &a.llama_bench {
                theirs.push(measure_llama_bench(b, &model, threads, a)?);
            } else if let Some(py) = &a.llama_cpp_python {
                theirs.push(measure_llama_cpp(py, &a.script, &model, threads, a)?);
            }
            eprintln!(
                "threads {threads} rep {}: ours {:?} contiguous {:?} llama.cpp {:?}",
                rep + 1,
                ours.last(),
                contiguous.last(),
                theirs.last()
            );
        }
        for (name, pick) in [
            ("prefill", (|s: &Speed| s.prefill) as fn(&Speed) -> f64),
            ("decode", |s: &Speed| s.decode),
        ] {
            let label = if name == "prefill" {
                format!("prefill {}", a.prompt_tokens)
            } else {
                format!("decode {}", a.gen_tokens)
            };
            let o = median(ours.iter().map(pick).collect());
            let c = median(contiguous.iter().map(pick).collect());
            if with_peer {
                let t = median(theirs.iter().map(pick).collect());
                table.push_str(&format!(
                    "| {threads} | {label} | {o:.1} | {c:.1} | {t:.1} | {:.2}x |\n",
                    o / t
                ));
            } else {
                table.push_str(&format!("| {threads} | {label} | {o:.1} | {c:.1} |\n"));
            }
        }
    }
    Ok(table)
}
