//! Decode throughput of the scheduler at 1 and 16 concurrent sequences, in
//! the same run (alternating, medians), without the host server.
//!
//! ```text
//! cargo run --release -p palisade-engine --example batch_bench -- MODEL.gguf [TOKENS] [ROUNDS]
//! ```
//!
//! Each round runs one batch of 1 sequence, then one of 16, each decoding
//! `TOKENS` tokens (default 128) greedily past end-of-text. The first step
//! (prefill of the short prompts and the first token) is not timed; every
//! later step is pure decode. Prints tok/s per round and the median ratio.

use std::time::Instant;

use palisade_engine::scheduler::{Scheduler, SchedulerConfig};
use palisade_engine::{Engine, EngineOptions, GenerateRequest};

/// Decode tok/s of `n` sequences of `tokens` tokens each.
fn run(engine: &Engine, n: usize, tokens: usize) -> f64 {
    let mut s = Scheduler::new(engine, SchedulerConfig::default()).expect("scheduler");
    for i in 0..n {
        let text = format!("Write a short story about robot number {i}.");
        let prompt = engine
            .tokenizer()
            .encode(&text, true, false)
            .expect("tokenize");
        s.add(GenerateRequest {
            prompt,
            max_tokens: tokens,
            ignore_eos: true,
            ..Default::default()
        })
        .expect("add");
    }
    let mut out = Vec::new();
    // Untimed: prefill and the first sampled token of every sequence.
    while out.len() < n && s.step(&|_| false, &mut out) {}
    out.clear();
    let t0 = Instant::now();
    let mut produced = 0;
    while s.step(&|_| false, &mut out) {
        produced += out.len();
        out.clear();
    }
    produced as f64 / t0.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .expect("usage: batch_bench MODEL [TOKENS] [ROUNDS]");
    let tokens = args.get(2).map_or(128, |a| a.parse().expect("TOKENS"));
    let rounds = args.get(3).map_or(3, |a| a.parse().expect("ROUNDS"));
    let engine = Engine::load(&EngineOptions {
        model: model.into(),
        threads: 2,
        ..Default::default()
    })
    .expect("load");
    run(&engine, 1, 8); // warm-up: page the weights in
    let (mut one, mut many, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let a = run(&engine, 1, tokens);
        let b = run(&engine, 16, tokens);
        println!(
            "round {r}: 1 seq {a:.1} tok/s, 16 seqs {b:.1} tok/s, ratio {:.2}",
            b / a
        );
        one.push(a);
        many.push(b);
        ratio.push(b / a);
    }
    println!(
        "median: 1 seq {:.1} tok/s, 16 seqs {:.1} tok/s, ratio {:.2}",
        median(&mut one),
        median(&mut many),
        median(&mut ratio)
    );
}
