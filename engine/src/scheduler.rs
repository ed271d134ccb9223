//! Continuous batching: many sequences share one paged KV cache and one
//! forward pass per step.
//!
//! Each [`Scheduler::step`] builds a batch within `max_num_batched_tokens`:
//! first every running sequence, oldest first (one token each while
//! decoding, or the next chunk of a prompt: chunked prefill), then waiting
//! sequences in arrival order while fewer than `max_num_seqs` run. A new
//! sequence first takes the cached blocks of its longest cached prefix.
//! When the cache has no block for a running sequence, the newest running
//! sequence is preempted: its blocks are released and it goes back to the
//! head of the queue, to be recomputed from its tokens later (its sampler
//! state is kept, so the output is the same). Nothing is dropped.
//!
//! A sequence's rows in the batch compute exactly what they would alone, so
//! greedy output does not depend on what else runs.
//!
//! ```no_run
//! use palisade_engine::{Engine, EngineOptions, GenerateRequest};
//! use palisade_engine::scheduler::{Scheduler, SchedulerConfig};
//! let engine = Engine::load(&EngineOptions { model: "model.gguf".into(), ..Default::default() })?;
//! let mut s = Scheduler::new(&engine, SchedulerConfig::default())?;
//! for p in ["Hello", "Bonjour"] {
//!     let prompt = engine.tokenizer().encode(p, true, false)?;
//!     s.add(GenerateRequest { prompt, max_tokens: 8, ..Default::default() })?;
//! }
//! let mut out = Vec::new();
//! while s.step(&|_| false, &mut out) {}
//! # Ok::<(), palisade_engine::EngineError>(())
//! ```

use std::collections::VecDeque;

use crate::Engine;
use crate::error::{EngineError, Result};
use crate::generate::{Decoder, GenerateRequest, Step};
use crate::kv::{BLOCK_SIZE, BlockHash, BlockPool, block_hash};
use crate::model::{BatchSeq, Logits, Workspace};

/// A sequence's id, unique within its scheduler.
pub type SeqId = u64;

/// Operator limits of a scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences in one batch.
    pub max_num_seqs: usize,
    /// Most tokens in one batch (decode tokens plus prompt chunks).
    pub max_num_batched_tokens: usize,
    /// Blocks of [`BLOCK_SIZE`] positions in the KV cache.
    pub kv_blocks: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_seqs: 16,
            max_num_batched_tokens: 512,
            kv_blocks: 1024,
        }
    }
}

/// What one step produced for one sequence.
#[derive(Debug)]
pub struct Output {
    /// The sequence.
    pub id: SeqId,
    /// A token (the last one carries `finish`), or the error that ended
    /// the sequence.
    pub event: Result<Step>,
}

/// Live figures of a scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Sequences in the batch.
    pub running: usize,
    /// Sequences queued (new or preempted).
    pub waiting: usize,
    /// Preemptions so far.
    pub preempted: u64,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// KV blocks free (including cached prefixes, which can be evicted).
    pub kv_blocks_free: usize,
    /// Full prompt blocks looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, found.
    pub prefix_hits: u64,
}

struct Seq {
    id: SeqId,
    /// Prompt and generated tokens; all but the last sampled one are
    /// computed when decoding.
    tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    /// Hashes of the first `hashes.len()` full blocks (registered).
    hashes: Vec<BlockHash>,
    decoder: Decoder,
    /// Further choices of the same prompt (`n > 1`): forked from this
    /// sequence once its prompt is computed, sharing its blocks.
    forks: Vec<(SeqId, Decoder)>,
}

/// The continuous-batching scheduler. See the module docs.
pub struct Scheduler<'e> {
    engine: &'e Engine,
    cfg: SchedulerConfig,
    kv: BlockPool,
    ws: Workspace,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: SeqId,
    preempted: u64,
    plan: Vec<(usize, usize)>,
    row: Vec<f32>,
}

impl std::fmt::Debug for Scheduler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<'e> Scheduler<'e> {
    /// A scheduler over `engine` with its own KV cache.
    pub fn new(engine: &'e Engine, cfg: SchedulerConfig) -> Result<Self> {
        for (field, v) in [
            ("max_num_seqs", cfg.max_num_seqs),
            ("max_num_batched_tokens", cfg.max_num_batched_tokens),
            ("kv_blocks", cfg.kv_blocks),
        ] {
            if v == 0 {
                return Err(EngineError::InvalidParameter {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        Ok(Scheduler {
            engine,
            cfg,
            kv: BlockPool::new(&engine.model().config, cfg.kv_blocks),
            ws: Workspace::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            preempted: 0,
            plan: Vec::new(),
            row: Vec::new(),
        })
    }

    /// The limits in force.
    pub fn config(&self) -> SchedulerConfig {
        self.cfg
    }

    /// Queues a sequence. Fails (and queues nothing) when the request is
    /// invalid or could never fit in the KV cache.
    pub fn add(&mut self, req: GenerateRequest) -> Result<SeqId> {
        Ok(self.add_group(vec![req])?[0])
    }

    /// Queues the choices of one request (`n > 1`, or one per prompt; their
    /// sampling may differ). Choices with the same prompt compute it once,
    /// then each continues on the shared blocks, copying only the partial
    /// last block when it first writes to it. Ids come back in the order of
    /// `reqs`. All or nothing.
    pub fn add_group(&mut self, reqs: Vec<GenerateRequest>) -> Result<Vec<SeqId>> {
        let mut decoders = Vec::with_capacity(reqs.len());
        for req in &reqs {
            decoders.push(Decoder::new(self.engine, req)?);
            let positions = req.prompt.len() + req.max_tokens;
            if positions.div_ceil(BLOCK_SIZE) > self.kv.capacity() {
                return Err(EngineError::KvCacheTooSmall {
                    prompt: req.prompt.len(),
                    max_tokens: req.max_tokens,
                    needed: positions,
                    capacity: self.kv.capacity() * BLOCK_SIZE,
                });
            }
        }
        let ids: Vec<SeqId> = (0..reqs.len() as u64).map(|i| self.next_id + i).collect();
        self.next_id += reqs.len() as u64;
        let mut heads: Vec<Seq> = Vec::new();
        for ((id, req), decoder) in ids.iter().zip(reqs).zip(decoders) {
            match heads.iter_mut().find(|h| h.tokens == req.prompt) {
                Some(h) => h.forks.push((*id, decoder)),
                None => heads.push(Seq {
                    id: *id,
                    tokens: req.prompt,
                    computed: 0,
                    blocks: Vec::new(),
                    hashes: Vec::new(),
                    decoder,
                    forks: Vec::new(),
                }),
            }
        }
        self.waiting.extend(heads);
        Ok(ids)
    }

    /// Drops a sequence wherever it is; its blocks are free at once.
    /// False when no such sequence is queued or running.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        let found = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            Some(self.running.remove(i))
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i)
        } else {
            // A choice not forked yet.
            for s in self.running.iter_mut().chain(self.waiting.iter_mut()) {
                if let Some(f) = s.forks.iter().position(|f| f.0 == id) {
                    s.forks.remove(f);
                    return true;
                }
            }
            None
        };
        let Some(mut s) = found else { return false };
        self.release(&mut s);
        // Choices waiting to fork from it carry on without it.
        let mut forks = std::mem::take(&mut s.forks).into_iter();
        if let Some((id, decoder)) = forks.next() {
            self.waiting.push_front(Seq {
                id,
                tokens: std::mem::take(&mut s.tokens), // forks exist only before the first token
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                decoder,
                forks: forks.collect(),
            });
        }
        true
    }

    /// True while any sequence is queued or running.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Live figures.
    pub fn stats(&self) -> SchedulerStats {
        let p = self.kv.prefix_stats();
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            preempted: self.preempted,
            kv_blocks_used: self.kv.used_blocks(),
            kv_blocks_free: self.kv.free_blocks(),
            prefix_queries: p.queries,
            prefix_hits: p.hits,
        }
    }

    /// Runs one batch. Sequences for which `paused` is true (their reader
    /// is full) sit this step out and keep their blocks. Appends one
    /// [`Output`] per sequence that sampled a token or failed; finished
    /// sequences leave. Returns false when nothing could run (no work, or
    /// every sequence paused).
    pub fn step(&mut self, paused: &dyn Fn(SeqId) -> bool, out: &mut Vec<Output>) -> bool {
        self.schedule(paused);
        if self.plan.is_empty() {
            return false;
        }
        let Scheduler {
            engine,
            kv,
            ws,
            running,
            plan,
            row,
            ..
        } = self;
        let seqs: Vec<BatchSeq<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &running[i];
                BatchSeq {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    start: s.computed,
                    blocks: &s.blocks,
                    logits: if s.computed + n == s.tokens.len() {
                        Logits::Last
                    } else {
                        Logits::None
                    },
                }
            })
            .collect();
        let result = engine
            .model()
            .forward_batch(engine.pool(), ws, kv, &seqs)
            .map(|l| l.to_vec());
        drop(seqs);
        let (mut finished, mut forked, mut finished_forks) = (Vec::new(), Vec::new(), Vec::new());
        match result {
            Err(e) => {
                tracing::error!(error = %e, "a batch failed; its sequences end");
                for &(i, _) in plan.iter() {
                    out.push(Output {
                        id: running[i].id,
                        event: Err(EngineError::Batch(e.to_string())),
                    });
                    finished.push(i);
                }
            }
            Ok(logits) => {
                let vocab = engine.model().config.vocab;
                let mut r = 0;
                for &(i, n) in plan.iter() {
                    let s = &mut running[i];
                    s.computed += n;
                    register_full_blocks(kv, s);
                    if s.computed < s.tokens.len() {
                        continue;
                    }
                    let l = &logits[r * vocab..(r + 1) * vocab];
                    r += 1;
                    // Choices of the same prompt fork here, sharing every
                    // block; each samples from its own copy of the logits.
                    for (id, mut decoder) in std::mem::take(&mut s.forks) {
                        for &b in &s.blocks {
                            kv.share(b);
                        }
                        row.clear();
                        row.extend_from_slice(l);
                        let step = decoder.accept(engine.tokenizer(), row);
                        let mut tokens = s.tokens.clone();
                        tokens.push(step.sampled.token);
                        if step.finish.is_some() {
                            finished_forks.push(id);
                        }
                        out.push(Output {
                            id,
                            event: Ok(step),
                        });
                        forked.push(Seq {
                            id,
                            tokens,
                            computed: s.computed,
                            blocks: s.blocks.clone(),
                            hashes: s.hashes.clone(),
                            decoder,
                            forks: Vec::new(),
                        });
                    }
                    row.clear();
                    row.extend_from_slice(l);
                    let step = s.decoder.accept(engine.tokenizer(), row);
                    s.tokens.push(step.sampled.token);
                    if step.finish.is_some() {
                        finished.push(i);
                    }
                    out.push(Output {
                        id: s.id,
                        event: Ok(step),
                    });
                }
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let mut s = self.running.remove(i);
            self.release(&mut s);
        }
        for mut s in forked {
            if finished_forks.contains(&s.id) {
                self.release(&mut s);
            } else {
                self.running.push(s);
            }
        }
        true
    }

    /// Fills `self.plan` with (running index, tokens) for this step.
    fn schedule(&mut self, paused: &dyn Fn(SeqId) -> bool) {
        self.plan.clear();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if paused(self.running[i].id) {
                i += 1;
                continue;
            }
            let s = &self.running[i];
            let n = (s.tokens.len() - s.computed).min(budget);
            if self.reserve(i, n) {
                self.plan.push((i, n));
                budget -= n;
                i += 1;
                continue;
            }
            // Out of blocks: preempt the newest sequence (this one, if it
            // is the newest) and try again.
            let victim = self.running.len() - 1;
            self.preempt(victim);
        }
        let mut w = 0;
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs && w < self.waiting.len() {
            if paused(self.waiting[w].id) {
                w += 1;
                continue;
            }
            // A group needs room for all its choices (alone, it runs
            // anyway).
            let group = 1 + self.waiting[w].forks.len();
            if !self.running.is_empty() && self.running.len() + group > self.cfg.max_num_seqs {
                break;
            }
            let Some(mut s) = self.waiting.remove(w) else {
                break;
            };
            if s.blocks.is_empty() {
                self.take_cached_prefix(&mut s);
            }
            let n = (s.tokens.len() - s.computed).min(budget);
            self.running.push(s);
            let i = self.running.len() - 1;
            if !self.reserve(i, n) {
                // No room: back to its place, holding nothing, and no one
                // behind it jumps the queue.
                let mut s = self.running.pop().expect("just pushed");
                self.release(&mut s);
                self.waiting.insert(w, s);
                break;
            }
            self.plan.push((i, n));
            budget -= n;
        }
    }

    /// Makes positions `computed..computed + n` of running sequence `i`
    /// writable: allocates missing blocks and copies a shared partial
    /// block. All or nothing.
    fn reserve(&mut self, i: usize, n: usize) -> bool {
        let s = &self.running[i];
        let end = s.computed + n;
        let missing = end.div_ceil(BLOCK_SIZE).saturating_sub(s.blocks.len());
        let first = s.computed / BLOCK_SIZE;
        let cow = s.computed % BLOCK_SIZE != 0
            && s.blocks.get(first).is_some_and(|&b| self.kv.refs(b) > 1);
        if self.kv.free_blocks() < missing + usize::from(cow) {
            return false;
        }
        let s = &mut self.running[i];
        if cow {
            let b = self
                .kv
                .make_unique(s.blocks[first], s.computed % BLOCK_SIZE)
                .expect("a free block was counted");
            s.blocks[first] = b;
        }
        for _ in 0..missing {
            s.blocks
                .push(self.kv.allocate().expect("free blocks were counted"));
        }
        true
    }

    /// Takes the cached blocks of the longest cached prefix of a new
    /// sequence's tokens (always leaving at least one token to compute).
    fn take_cached_prefix(&mut self, s: &mut Seq) {
        let full = (s.tokens.len() - 1) / BLOCK_SIZE;
        for b in 0..full {
            let h = block_hash(
                s.hashes.last(),
                &s.tokens[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE],
            );
            match self.kv.lookup(&h) {
                Some(block) => {
                    s.blocks.push(block);
                    s.hashes.push(h);
                }
                None => break,
            }
        }
        s.computed = s.blocks.len() * BLOCK_SIZE;
    }

    fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        tracing::debug!(
            seq = s.id,
            tokens = s.tokens.len(),
            "preempted: out of KV blocks"
        );
        self.release(&mut s);
        self.preempted += 1;
        self.waiting.push_front(s);
    }

    /// Returns a sequence's blocks to the pool; it will be recomputed.
    fn release(&mut self, s: &mut Seq) {
        for b in s.blocks.drain(..) {
            self.kv.release(b);
        }
        s.hashes.clear();
        s.computed = 0;
    }
}

/// Registers the sequence's newly filled blocks in the prefix cache.
fn register_full_blocks(kv: &mut BlockPool, s: &mut Seq) {
    let full = s.computed / BLOCK_SIZE;
    for b in s.hashes.len()..full {
        let h = block_hash(
            s.hashes.last(),
            &s.tokens[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE],
        );
        kv.register(s.blocks[b], h);
        s.hashes.push(h);
    }
}
