//! The engine actor: one OS thread owns the engine's continuous-batching
//! [`Scheduler`] (and with it the paged KV cache); request handlers talk to
//! it through a cloneable [`EngineHandle`]. Each sequence streams its
//! tokens back over a bounded channel. A closed channel (the client went
//! away, or an output filter aborted) cancels the sequence and frees its KV
//! blocks before the next step; a full one (a slow client) makes only that
//! sequence sit out steps, keeping its blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use palisade_engine::{
    Engine, EngineError, GenerateRequest, Scheduler, SchedulerConfig, SeqId, Step,
};
use tokio::sync::mpsc;

use crate::HostError;
use crate::api::ApiError;

/// Tokens buffered per sequence before the sequence waits for its client.
pub const EVENT_BUFFER: usize = 64;

/// What a sequence sends back.
#[derive(Debug)]
pub enum SeqEvent {
    /// A generated token (the last one carries `finish`).
    Step(Step),
    /// The sequence failed; nothing more follows.
    Error(EngineError),
}

/// The choices of one request (`n` of them, one prompt).
struct Job {
    reqs: Vec<GenerateRequest>,
    events: Vec<mpsc::Sender<SeqEvent>>,
}

/// Counters the actor publishes for metrics (updated after every step).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Sequences submitted but not yet taken by the actor.
    pub queued: AtomicUsize,
    /// Sequences in the scheduler's queue (new or preempted).
    pub waiting: AtomicUsize,
    /// Sequences in the batch.
    pub running: AtomicUsize,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    /// Preemptions (a sequence's blocks freed for others; it is recomputed
    /// later).
    pub preempted: AtomicU64,
    /// KV blocks held by sequences.
    pub kv_blocks_used: AtomicUsize,
    /// KV blocks free (cached prefixes included).
    pub kv_blocks_free: AtomicUsize,
    /// Full prompt blocks looked up in the prefix cache.
    pub prefix_queries: AtomicU64,
    /// Of those, found.
    pub prefix_hits: AtomicU64,
    /// Batches run.
    pub steps: AtomicU64,
}

/// A handle to the engine actor.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    /// Live counters.
    pub stats: Arc<SchedulerStats>,
    /// The scheduler's limits.
    pub config: SchedulerConfig,
}

impl EngineHandle {
    /// Starts the actor thread for `engine` with the scheduler limits
    /// `cfg`, accepting up to `queue` sequences not yet taken by the actor.
    pub fn start(
        engine: Arc<Engine>,
        cfg: SchedulerConfig,
        queue: usize,
    ) -> Result<Self, HostError> {
        // Built here so a bad configuration fails the start, not the thread.
        Scheduler::new(
            &engine,
            SchedulerConfig {
                kv_blocks: 1,
                ..cfg
            },
        )?;
        let (tx, rx) = sync_channel(queue.max(1));
        let stats = Arc::new(SchedulerStats::default());
        stats.kv_blocks_free.store(cfg.kv_blocks, Ordering::Relaxed);
        let st = stats.clone();
        std::thread::Builder::new()
            .name("palisade-engine".into())
            .spawn(move || run(&engine, cfg, rx, &st))?;
        Ok(EngineHandle {
            tx,
            stats,
            config: cfg,
        })
    }

    /// Queues the `n` choices of one request (one prompt); the events of
    /// choice `i` arrive on receiver `i`. Dropping a receiver cancels that
    /// choice.
    pub fn submit(
        &self,
        reqs: Vec<GenerateRequest>,
    ) -> Result<Vec<mpsc::Receiver<SeqEvent>>, ApiError> {
        let (events, rxs): (Vec<_>, Vec<_>) =
            reqs.iter().map(|_| mpsc::channel(EVENT_BUFFER)).unzip();
        let n = reqs.len();
        self.stats.queued.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Job { reqs, events }) {
            Ok(()) => Ok(rxs),
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(n, Ordering::Relaxed);
                Err(ApiError::RateLimited {
                    message: "the engine queue is full; retry shortly".into(),
                    retry_after: Some(1),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(n, Ordering::Relaxed);
                tracing::error!("the engine thread has stopped");
                Err(ApiError::Unavailable("the engine is not running".into()))
            }
        }
    }
}

fn run(engine: &Engine, cfg: SchedulerConfig, rx: Receiver<Job>, stats: &SchedulerStats) {
    let mut sched = match Scheduler::new(engine, cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the engine scheduler could not start");
            return;
        }
    };
    let mut chans: HashMap<SeqId, mpsc::Sender<SeqEvent>> = HashMap::new();
    let mut out = Vec::new();
    loop {
        if !sched.has_work() {
            match rx.recv() {
                Ok(job) => add(&mut sched, &mut chans, job, stats),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            add(&mut sched, &mut chans, job, stats);
        }
        chans.retain(|&id, tx| {
            if tx.is_closed() {
                sched.cancel(id);
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
        // A full channel: that sequence waits for its reader.
        let paused = |id: SeqId| chans.get(&id).is_none_or(|tx| tx.capacity() == 0);
        let progressed = sched.step(&paused, &mut out);
        for o in out.drain(..) {
            let Some(tx) = chans.get(&o.id) else { continue };
            let (event, last) = match o.event {
                Ok(step) => {
                    let last = step.finish.is_some();
                    (SeqEvent::Step(step), last)
                }
                Err(e) => (SeqEvent::Error(e), true),
            };
            // Capacity was checked before the step and only this thread
            // sends; a reader that left since is cancelled next round.
            let _ = tx.try_send(event);
            if last {
                chans.remove(&o.id);
            }
        }
        publish(&sched, stats);
        if progressed {
            stats.steps.fetch_add(1, Ordering::Relaxed);
        } else if sched.has_work() {
            // Every sequence waits for a slow client: doze, but wake for
            // new work.
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(job) => add(&mut sched, &mut chans, job, stats),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

fn add(
    sched: &mut Scheduler<'_>,
    chans: &mut HashMap<SeqId, mpsc::Sender<SeqEvent>>,
    job: Job,
    stats: &SchedulerStats,
) {
    stats.queued.fetch_sub(job.events.len(), Ordering::Relaxed);
    if job.events.iter().all(|e| e.is_closed()) {
        stats
            .cancelled
            .fetch_add(job.events.len() as u64, Ordering::Relaxed);
        return;
    }
    match sched.add_group(job.reqs) {
        Ok(ids) => chans.extend(ids.into_iter().zip(job.events)),
        Err(e) => {
            for tx in &job.events[1..] {
                let _ = tx.try_send(SeqEvent::Error(same_error(&e)));
            }
            let _ = job.events[0].try_send(SeqEvent::Error(e));
        }
    }
}

/// A copy of a refusal `Scheduler::add_group` gives, for every choice.
fn same_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::InvalidParameter { field, message } => EngineError::InvalidParameter {
            field,
            message: message.clone(),
        },
        &EngineError::ContextLength {
            prompt,
            max_tokens,
            context,
        } => EngineError::ContextLength {
            prompt,
            max_tokens,
            context,
        },
        &EngineError::KvCacheTooSmall {
            prompt,
            max_tokens,
            needed,
            capacity,
        } => EngineError::KvCacheTooSmall {
            prompt,
            max_tokens,
            needed,
            capacity,
        },
        EngineError::InvalidConstraint(m) => EngineError::InvalidConstraint(m.clone()),
        other => EngineError::Batch(other.to_string()),
    }
}

/// Copies the scheduler's figures into the shared counters.
fn publish(sched: &Scheduler<'_>, stats: &SchedulerStats) {
    let s = sched.stats();
    stats.running.store(s.running, Ordering::Relaxed);
    stats.waiting.store(s.waiting, Ordering::Relaxed);
    stats.preempted.store(s.preempted, Ordering::Relaxed);
    stats
        .kv_blocks_used
        .store(s.kv_blocks_used, Ordering::Relaxed);
    stats
        .kv_blocks_free
        .store(s.kv_blocks_free, Ordering::Relaxed);
    stats
        .prefix_queries
        .store(s.prefix_queries, Ordering::Relaxed);
    stats.prefix_hits.store(s.prefix_hits, Ordering::Relaxed);
}
