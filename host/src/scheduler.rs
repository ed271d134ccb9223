//! The engine actor: one OS thread owns the engine and all running
//! sequences; request handlers talk to it through a cloneable
//! [`EngineHandle`]. Each sequence streams its tokens back over a bounded
//! channel; a closed channel (the client went away) cancels the sequence
//! at its next step, and a full one (a slow client) pauses only that
//! sequence.
//!
//! This version interleaves sequences one token at a time; continuous
//! batching replaces the loop body, not this interface.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use palisade_engine::{Engine, EngineError, GenerateRequest, Generation, Step};
use tokio::sync::mpsc;

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

struct Job {
    req: GenerateRequest,
    events: mpsc::Sender<SeqEvent>,
}

/// Counters the actor keeps for metrics.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Sequences submitted but not yet started.
    pub waiting: AtomicUsize,
    /// Sequences generating.
    pub running: AtomicUsize,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicUsize,
    /// KV cache positions reserved by running sequences.
    pub kv_positions: AtomicUsize,
}

/// A handle to the engine actor.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    /// Live counters.
    pub stats: Arc<SchedulerStats>,
}

impl EngineHandle {
    /// Starts the actor thread for `engine`, accepting up to `queue`
    /// pending sequences.
    pub fn start(engine: Arc<Engine>, queue: usize) -> Self {
        let (tx, rx) = sync_channel(queue.max(1));
        let stats = Arc::new(SchedulerStats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("palisade-engine".into())
            .spawn(move || run(&engine, rx, &st))
            .expect("spawning the engine thread");
        EngineHandle { tx, stats }
    }

    /// Queues a sequence; its events arrive on the returned receiver.
    /// Dropping the receiver cancels the sequence.
    pub fn submit(&self, req: GenerateRequest) -> Result<mpsc::Receiver<SeqEvent>, ApiError> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Job { req, events }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(ApiError::RateLimited {
                    message: "the engine queue is full; retry shortly".into(),
                    retry_after: Some(1),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                tracing::error!("the engine thread has stopped");
                Err(ApiError::Unavailable("the engine is not running".into()))
            }
        }
    }
}

struct Active<'e> {
    generation: Generation<'e>,
    events: mpsc::Sender<SeqEvent>,
    reserved: usize,
}

fn admit<'e>(engine: &'e Engine, job: Job, active: &mut Vec<Active<'e>>, stats: &SchedulerStats) {
    stats.waiting.fetch_sub(1, Ordering::Relaxed);
    if job.events.is_closed() {
        stats.cancelled.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let reserved = job.req.prompt.len() + job.req.max_tokens;
    match engine.generate(job.req) {
        Ok(generation) => {
            stats.running.fetch_add(1, Ordering::Relaxed);
            stats.kv_positions.fetch_add(reserved, Ordering::Relaxed);
            active.push(Active {
                generation,
                events: job.events,
                reserved,
            });
        }
        Err(e) => {
            let _ = job.events.try_send(SeqEvent::Error(e));
        }
    }
}

fn run(engine: &Engine, rx: Receiver<Job>, stats: &SchedulerStats) {
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        if active.is_empty() {
            match rx.recv() {
                Ok(job) => admit(engine, job, &mut active, stats),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            admit(engine, job, &mut active, stats);
        }
        let mut progressed = false;
        active.retain_mut(|a| {
            let keep = step(a, stats, &mut progressed);
            if !keep {
                stats.running.fetch_sub(1, Ordering::Relaxed);
                stats.kv_positions.fetch_sub(a.reserved, Ordering::Relaxed);
            }
            keep
        });
        if !progressed && !active.is_empty() {
            // Every sequence is waiting for a slow client.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Advances one sequence by a token; false when it is finished.
fn step(a: &mut Active<'_>, stats: &SchedulerStats, progressed: &mut bool) -> bool {
    if a.events.is_closed() {
        stats.cancelled.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if a.events.capacity() == 0 {
        return true;
    }
    *progressed = true;
    match a.generation.next() {
        Some(Ok(step)) => {
            let last = step.finish.is_some();
            // Capacity was checked above and only this thread sends.
            let _ = a.events.try_send(SeqEvent::Step(step));
            !last
        }
        Some(Err(e)) => {
            let _ = a.events.try_send(SeqEvent::Error(e));
            false
        }
        None => false,
    }
}
