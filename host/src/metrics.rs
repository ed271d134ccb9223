//! Prometheus metrics, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::scheduler::SchedulerStats;

/// A histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation in seconds.
    pub fn observe(&self, secs: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const TPOT_BUCKETS: &[f64] = &[0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 1.0];

/// All server metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub completion_tokens: AtomicU64,
    /// Requests waiting for a concurrency slot.
    pub queued_requests: AtomicU64,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time per output token after the first.
    pub tpot: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            queued_requests: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    /// The Prometheus text.
    pub fn render(&self, sched: Option<&SchedulerStats>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP palisade_requests_total Requests by route and status.\n# TYPE palisade_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "palisade_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "palisade_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "palisade_completion_tokens_total",
            "Tokens generated.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        self.ttft.render(
            "palisade_time_to_first_token_seconds",
            "Time from request to first token.",
            &mut out,
        );
        self.tpot.render(
            "palisade_time_per_output_token_seconds",
            "Time between output tokens.",
            &mut out,
        );
        let load = |f: fn(&SchedulerStats) -> u64| sched.map(f).unwrap_or(0);
        let waiting =
            load(|s| (s.queued.load(Ordering::Relaxed) + s.waiting.load(Ordering::Relaxed)) as u64);
        let queued = self.queued_requests.load(Ordering::Relaxed) + waiting;
        gauge(
            &mut out,
            "palisade_queue_depth",
            "Requests waiting for a slot plus sequences waiting for the batch.",
            queued as f64,
        );
        gauge(
            &mut out,
            "palisade_waiting_sequences",
            "Sequences waiting for the batch (new or preempted).",
            waiting as f64,
        );
        gauge(
            &mut out,
            "palisade_running_sequences",
            "Sequences in the batch.",
            load(|s| s.running.load(Ordering::Relaxed) as u64) as f64,
        );
        counter(
            &mut out,
            "palisade_cancelled_sequences_total",
            "Sequences stopped because the client went away or a filter aborted.",
            load(|s| s.cancelled.load(Ordering::Relaxed)),
        );
        counter(
            &mut out,
            "palisade_preempted_sequences_total",
            "Preemptions: a sequence's KV blocks freed for others, recomputed later.",
            load(|s| s.preempted.load(Ordering::Relaxed)),
        );
        counter(
            &mut out,
            "palisade_batch_steps_total",
            "Engine batches run.",
            load(|s| s.steps.load(Ordering::Relaxed)),
        );
        let used = load(|s| s.kv_blocks_used.load(Ordering::Relaxed) as u64);
        let free = load(|s| s.kv_blocks_free.load(Ordering::Relaxed) as u64);
        gauge(
            &mut out,
            "palisade_kv_cache_blocks_used",
            "KV cache blocks held by sequences.",
            used as f64,
        );
        gauge(
            &mut out,
            "palisade_kv_cache_blocks_free",
            "KV cache blocks free (cached prefixes included: they can be evicted).",
            free as f64,
        );
        let total = used + free;
        gauge(
            &mut out,
            "palisade_kv_cache_usage_ratio",
            "KV cache blocks held over all blocks.",
            if total > 0 {
                used as f64 / total as f64
            } else {
                0.0
            },
        );
        let (q, h) = (
            load(|s| s.prefix_queries.load(Ordering::Relaxed)),
            load(|s| s.prefix_hits.load(Ordering::Relaxed)),
        );
        counter(
            &mut out,
            "palisade_prefix_cache_queries_total",
            "Full prompt blocks looked up in the prefix cache.",
            q,
        );
        counter(
            &mut out,
            "palisade_prefix_cache_hits_total",
            "Full prompt blocks found in the prefix cache.",
            h,
        );
        gauge(
            &mut out,
            "palisade_prefix_cache_hit_rate",
            "Prefix cache hits over lookups so far.",
            if q > 0 { h as f64 / q as f64 } else { 0.0 },
        );
        out
    }
}
