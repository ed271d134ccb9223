//! The default model against llama.cpp (fixtures made once with
//! llama-cpp-python by `scripts/make_fixtures.py` and committed).
//!
//! Needs the real model: `PALISADE_MODEL` or the cached default
//! (`~/.cache/palisade/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, fetched by
//! `scripts/fetch-model.sh`). Without it the tests fail under CI and are
//! skipped with a message otherwise.

use std::path::PathBuf;

use palisade_engine::model::{KvCache, Workspace};
use palisade_engine::{Engine, EngineOptions, GenerateRequest};
use serde_json::Value;

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("PALISADE_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(".cache/palisade/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            })
        })?;
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the default model is missing at {}: run scripts/fetch-model.sh",
        p.display()
    );
    eprintln!(
        "skipping: the default model is not at {} (run scripts/fetch-model.sh)",
        p.display()
    );
    None
}

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn engine(p: PathBuf) -> Engine {
    Engine::load(&EngineOptions {
        model: p,
        threads: 2,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn tokenization_equals_llama_cpp_and_round_trips() {
    let Some(p) = model_path() else { return };
    let e = engine(p);
    let f = fixture("tokenizer.json");
    let mut n = 0;
    for (list, special) in [("cases", false), ("special_cases", true)] {
        for case in f[list].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let got = e.tokenizer().encode(text, false, special).unwrap();
            assert_eq!(got, ids(&case["ids"]), "text {text:?} (special={special})");
            assert_eq!(
                e.tokenizer().decode(&got, false),
                text,
                "round trip of {text:?}"
            );
            n += 1;
        }
    }
    assert!(n >= 40, "only {n} cases");
}

#[test]
fn chat_template_renders_like_jinja2() {
    let Some(p) = model_path() else { return };
    let e = engine(p);
    let f = fixture("chat_template.json");
    let t = e.chat_template().expect("the default model has a template");
    for case in f["cases"].as_array().unwrap() {
        let msgs = case["messages"].as_array().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            t.render(msgs, agp, None).unwrap(),
            case["rendered"].as_str().unwrap(),
            "messages {msgs:?}"
        );
    }
}

/// The first 32 greedy tokens equal llama.cpp's on at least 5 prompts, and
/// every divergence happens at a near-tie of llama.cpp's logits.
#[test]
fn greedy_tokens_match_llama_cpp() {
    let Some(p) = model_path() else { return };
    let e = engine(p);
    let f = fixture("greedy.json");
    let mut full = 0;
    let mut report = Vec::new();
    for (i, case) in f["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["tokens"]);
        let req = GenerateRequest {
            prompt,
            max_tokens: 32,
            ignore_eos: true,
            ..Default::default()
        };
        let got: Vec<u32> = e
            .generate(req)
            .unwrap()
            .map(|s| s.unwrap().sampled.token)
            .collect();
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => full += 1,
            Some(at) => {
                let margin = case["margins"][at].as_f64().unwrap();
                report.push(format!(
                    "prompt {i}: diverges at step {at} (llama.cpp margin {margin:.4})"
                ));
            }
        }
    }
    eprintln!(
        "{full} of {} prompts match for 32 tokens; {}",
        f["prompts"].as_array().unwrap().len(),
        report.join("; ")
    );
    assert!(
        full >= 5,
        "only {full} prompts match llama.cpp for 32 greedy tokens: {report:?}"
    );
}

/// Teacher forcing: feed llama.cpp's own tokens and count the steps where
/// our argmax is llama.cpp's next token.
#[test]
fn teacher_forced_agreement_is_at_least_97_percent() {
    let Some(p) = model_path() else { return };
    let e = engine(p);
    let f = fixture("greedy.json");
    let vocab = e.model().config.vocab;
    let (mut agree, mut total) = (0usize, 0usize);
    for case in f["prompts"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let generated = ids(&case["tokens"]);
        let seq: Vec<u32> = prompt
            .iter()
            .chain(&generated[..generated.len() - 1])
            .copied()
            .collect();
        let mut ws = Workspace::default();
        let mut cache = KvCache::new(&e.model().config, seq.len());
        let logits = e
            .model()
            .forward(e.pool(), &mut ws, &mut cache, &seq, 0, true)
            .unwrap();
        for (k, &want) in generated.iter().enumerate() {
            let row = prompt.len() - 1 + k;
            let got = palisade_engine::sampling::argmax(&logits[row * vocab..(row + 1) * vocab]);
            agree += usize::from(got == want);
            total += 1;
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "teacher-forced agreement: {agree}/{total} = {:.2}%",
        rate * 100.0
    );
    assert!(rate >= 0.97, "agreement {:.2}% < 97%", rate * 100.0);
}

/// All 24 fixture prompts in one continuous batch (16 at a time, chunked
/// prefill next to decodes, a shared-prefix pair and a forced preemption
/// round): every sequence's greedy tokens equal its run alone, so batched
/// output matches llama.cpp exactly as far as single runs do.
#[test]
fn batched_greedy_equals_each_alone_on_the_default_model() {
    use palisade_engine::{Scheduler, SchedulerConfig};
    let Some(p) = model_path() else { return };
    let e = engine(p);
    let f = fixture("greedy.json");
    let reqs: Vec<GenerateRequest> = f["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, case)| GenerateRequest {
            prompt: ids(&case["prompt_ids"]),
            max_tokens: 8 + i % 9,
            ignore_eos: true,
            ..Default::default()
        })
        .collect();
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| {
            e.generate(r.clone())
                .unwrap()
                .map(|s| s.unwrap().sampled.token)
                .collect()
        })
        .collect();
    for kv_blocks in [512, 12] {
        let mut s = Scheduler::new(
            &e,
            SchedulerConfig {
                max_num_seqs: 16,
                max_num_batched_tokens: 32,
                kv_blocks,
            },
        )
        .unwrap();
        let ids: Vec<_> = reqs.iter().map(|r| s.add(r.clone()).unwrap()).collect();
        let mut out = Vec::new();
        while s.step(&|_| false, &mut out) {}
        for (k, id) in ids.iter().enumerate() {
            let got: Vec<u32> = out
                .iter()
                .filter(|o| o.id == *id)
                .map(|o| o.event.as_ref().unwrap().sampled.token)
                .collect();
            assert_eq!(got, alone[k], "prompt {k} with {kv_blocks} KV blocks");
        }
        if kv_blocks == 12 {
            assert!(
                s.stats().preempted > 0,
                "12 blocks did not force preemption"
            );
        }
    }
}
