//! Continuous batching on a tiny random model: every sequence of a batch
//! produces exactly what it produces alone, through chunked prefill,
//! prefix-cache hits, preemption under memory pressure and cancellation.

use std::collections::HashMap;

use palisade_engine::kv::BLOCK_SIZE;
use palisade_engine::testing::tiny_engine;
use palisade_engine::{
    Engine, EngineError, GenerateRequest, SamplingParams, Scheduler, SchedulerConfig, SeqId,
};
use palisade_kernels::quant::WeightType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn engine(dir: &std::path::Path) -> Engine {
    tiny_engine(dir, WeightType::Q4_1)
}

/// `n` requests with prompts of 1 to 90 tokens (the first `shared` tokens
/// the same in all of them), 1 to 40 output tokens, greedy or seeded
/// sampling.
fn requests(n: usize, shared: usize, seed: u64) -> Vec<GenerateRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let prefix: Vec<u32> = (0..shared).map(|_| rng.random_range(3..250)).collect();
    (0..n)
        .map(|i| {
            let len = rng.random_range(1..90usize);
            let mut prompt = prefix.clone();
            prompt.extend((0..len).map(|_| rng.random_range(3..250u32)));
            let sampling = if i % 3 == 2 {
                SamplingParams {
                    temperature: 0.9,
                    seed: Some(i as u64),
                    ..Default::default()
                }
            } else {
                SamplingParams {
                    temperature: 0.0,
                    ..Default::default()
                }
            };
            GenerateRequest {
                prompt,
                max_tokens: rng.random_range(1..40),
                sampling,
                ignore_eos: true,
                ..Default::default()
            }
        })
        .collect()
}

fn alone(e: &Engine, req: &GenerateRequest) -> Vec<u32> {
    e.generate(req.clone())
        .unwrap()
        .map(|s| s.unwrap().sampled.token)
        .collect()
}

/// Runs every request through one scheduler; returns each one's tokens and
/// the scheduler's final stats.
fn batched(
    e: &Engine,
    reqs: &[GenerateRequest],
    cfg: SchedulerConfig,
) -> (Vec<Vec<u32>>, palisade_engine::SchedulerStats) {
    let mut s = Scheduler::new(e, cfg).unwrap();
    let ids: Vec<SeqId> = reqs.iter().map(|r| s.add(r.clone()).unwrap()).collect();
    let mut got: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut out = Vec::new();
    let mut max_running = 0;
    while s.step(&|_| false, &mut out) {
        max_running = max_running.max(s.stats().running);
        for o in out.drain(..) {
            got.entry(o.id)
                .or_default()
                .push(o.event.unwrap().sampled.token);
        }
    }
    assert!(!s.has_work());
    let stats = s.stats();
    assert_eq!(
        stats.kv_blocks_used, 0,
        "every block is released at the end"
    );
    assert!(max_running <= cfg.max_num_seqs);
    (
        ids.iter()
            .map(|id| got.remove(id).unwrap_or_default())
            .collect(),
        stats,
    )
}

#[test]
fn sixteen_mixed_requests_batched_equal_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let reqs = requests(16, 0, 1);
    let cfg = SchedulerConfig {
        max_num_seqs: 16,
        // Small enough that prompts are prefilled in chunks next to decodes.
        max_num_batched_tokens: 48,
        kv_blocks: 256,
    };
    let (got, stats) = batched(&e, &reqs, cfg);
    for (i, (r, g)) in reqs.iter().zip(&got).enumerate() {
        assert_eq!(g.len(), r.max_tokens, "request {i} length");
        assert_eq!(*g, alone(&e, r), "request {i} differs from its run alone");
    }
    assert_eq!(stats.preempted, 0);
}

#[test]
fn memory_pressure_preempts_and_resumes_with_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let reqs = requests(12, 0, 2);
    let largest = reqs
        .iter()
        .map(|r| (r.prompt.len() + r.max_tokens).div_ceil(BLOCK_SIZE))
        .max()
        .unwrap();
    let cfg = SchedulerConfig {
        max_num_seqs: 12,
        max_num_batched_tokens: 64,
        // Room for the largest request and little more.
        kv_blocks: largest + 2,
    };
    let (got, stats) = batched(&e, &reqs, cfg);
    assert!(stats.preempted > 0, "the cache was not under pressure");
    for (i, (r, g)) in reqs.iter().zip(&got).enumerate() {
        assert_eq!(*g, alone(&e, r), "request {i} after preemption");
    }
}

#[test]
fn shared_prefixes_hit_the_cache_and_give_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    // A 50-token shared prefix: 3 full blocks.
    let reqs = requests(6, 50, 3);
    let cfg = SchedulerConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: 512,
        kv_blocks: 64,
    };
    // One at a time: every request after the first finds the prefix.
    let (got, stats) = batched(&e, &reqs, cfg);
    assert!(stats.prefix_hits >= 5 * 3, "hits: {stats:?}");
    for (i, (r, g)) in reqs.iter().zip(&got).enumerate() {
        assert_eq!(*g, alone(&e, r), "request {i} with a cached prefix");
    }
}

#[test]
fn cancelling_frees_blocks_at_once_and_others_continue() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let reqs = requests(4, 0, 4);
    let mut s = Scheduler::new(
        &e,
        SchedulerConfig {
            max_num_seqs: 4,
            max_num_batched_tokens: 512,
            kv_blocks: 64,
        },
    )
    .unwrap();
    let ids: Vec<SeqId> = reqs
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.max_tokens = 30;
            s.add(r).unwrap()
        })
        .collect();
    let mut out = Vec::new();
    assert!(s.step(&|_| false, &mut out));
    assert_eq!(s.stats().running, 4);
    let used = s.stats().kv_blocks_used;
    assert!(s.cancel(ids[1]));
    assert!(!s.cancel(ids[1]), "already gone");
    assert!(
        s.stats().kv_blocks_used < used,
        "cancel frees its blocks at once"
    );
    assert_eq!(s.stats().running, 3);
    out.clear();
    while s.step(&|_| false, &mut out) {}
    assert!(out.iter().all(|o| o.id != ids[1]));
    for id in [ids[0], ids[2], ids[3]] {
        assert_eq!(out.iter().filter(|o| o.id == id).count(), 29, "seq {id}");
    }
    assert_eq!(s.stats().kv_blocks_used, 0);
}

#[test]
fn paused_sequences_wait_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let reqs = requests(2, 0, 5);
    let mut s = Scheduler::new(&e, SchedulerConfig::default()).unwrap();
    let a = s.add(reqs[0].clone()).unwrap();
    let b = s.add(reqs[1].clone()).unwrap();
    let mut out = Vec::new();
    // `a` is paused for a few steps: only `b` moves.
    for _ in 0..3 {
        s.step(&|id| id == a, &mut out);
    }
    assert!(out.iter().all(|o| o.id == b));
    while s.step(&|_| false, &mut out) {}
    let toks = |id| -> Vec<u32> {
        out.iter()
            .filter(|o| o.id == id)
            .map(|o| o.event.as_ref().unwrap().sampled.token)
            .collect()
    };
    assert_eq!(toks(a), alone(&e, &reqs[0]));
    assert_eq!(toks(b), alone(&e, &reqs[1]));
}

#[test]
fn requests_that_cannot_fit_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let mut s = Scheduler::new(
        &e,
        SchedulerConfig {
            max_num_seqs: 4,
            max_num_batched_tokens: 64,
            kv_blocks: 2,
        },
    )
    .unwrap();
    let req = GenerateRequest {
        prompt: vec![5; 20],
        max_tokens: 20,
        ..Default::default()
    };
    assert!(matches!(
        s.add(req),
        Err(EngineError::KvCacheTooSmall { .. })
    ));
    let zero = GenerateRequest {
        prompt: vec![5; 4],
        max_tokens: 0,
        ..Default::default()
    };
    assert!(matches!(
        s.add(zero),
        Err(EngineError::InvalidParameter { .. })
    ));
    assert!(!s.has_work());
    let bad = SchedulerConfig {
        max_num_seqs: 0,
        ..Default::default()
    };
    assert!(Scheduler::new(&e, bad).is_err());
}

#[test]
fn choices_of_one_prompt_share_its_blocks_and_equal_separate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    // 70 prompt tokens: 4 full blocks and a partial one, shared by 4
    // choices (one greedy, three seeded).
    let prompt: Vec<u32> = (0..70).map(|i| 3 + (i * 37 % 240)).collect();
    let choices: Vec<GenerateRequest> = (0..4)
        .map(|i| GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 12 + i,
            sampling: SamplingParams {
                temperature: if i == 0 { 0.0 } else { 1.0 },
                seed: Some(100 + i as u64),
                ..Default::default()
            },
            ignore_eos: true,
            ..Default::default()
        })
        .collect();
    let mut s = Scheduler::new(&e, SchedulerConfig::default()).unwrap();
    let ids = s.add_group(choices.clone()).unwrap();
    let mut out = Vec::new();
    // The first step computes the prompt once and forks.
    assert!(s.step(&|_| false, &mut out));
    assert_eq!(out.len(), 4, "every choice sampled its first token");
    assert_eq!(s.stats().running, 4);
    assert_eq!(
        s.stats().kv_blocks_used,
        5,
        "the prompt's blocks are shared"
    );
    // The next step copies the shared partial block for all but one.
    assert!(s.step(&|_| false, &mut out));
    assert_eq!(s.stats().kv_blocks_used, 5 + 3);
    while s.step(&|_| false, &mut out) {}
    for (id, req) in ids.iter().zip(&choices) {
        let got: Vec<u32> = out
            .iter()
            .filter(|o| o.id == *id)
            .map(|o| o.event.as_ref().unwrap().sampled.token)
            .collect();
        assert_eq!(got, alone(&e, req), "choice {id}");
    }
    assert_eq!(s.stats().kv_blocks_used, 0);
    // Cancelling a group before it forks keeps the other choices going.
    let ids = s.add_group(choices.clone()).unwrap();
    assert!(s.cancel(ids[0]));
    assert!(s.cancel(ids[2]));
    out.clear();
    while s.step(&|_| false, &mut out) {}
    for (k, id) in ids.iter().enumerate() {
        let n = out.iter().filter(|o| o.id == *id).count();
        let want = if k == 0 || k == 2 {
            0
        } else {
            choices[k].max_tokens
        };
        assert_eq!(n, want, "choice {k}");
    }
}

#[test]
fn a_group_of_different_prompts_runs_each_and_keeps_the_order_of_ids() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let mut reqs = requests(3, 0, 6);
    reqs.push(reqs[0].clone());
    let mut s = Scheduler::new(&e, SchedulerConfig::default()).unwrap();
    let ids = s.add_group(reqs.clone()).unwrap();
    assert_eq!(
        s.stats().waiting,
        3,
        "the repeated prompt forks from the first"
    );
    let mut out = Vec::new();
    while s.step(&|_| false, &mut out) {}
    for (id, r) in ids.iter().zip(&reqs) {
        let got: Vec<u32> = out
            .iter()
            .filter(|o| o.id == *id)
            .map(|o| o.event.as_ref().unwrap().sampled.token)
            .collect();
        assert_eq!(got, alone(&e, r), "seq {id}");
    }
}
