//! The audit log: one JSON line per request, written and flushed before
//! the response completes, hash-chained so a deleted or edited line is
//! detected, rotated by size.
//!
//! Every line starts with `"seq"` (1, 2, 3 ... across files and restarts)
//! and `"prev"`, the sha256 (hex) of the line before it (without its
//! newline). The first line ever chains to [`GENESIS`]; the first line of a
//! file after a rotation chains to the last line of the rotated
//! predecessor (`audit.jsonl.1`). [`verify::verify`] (`palisade audit
//! verify FILE`) walks the chain.
//!
//! Writes go through one dedicated writer thread, never a tokio worker: a
//! request hands its record over and awaits a completion signal, which
//! comes once the line is in the file (and, with `fsync = "always"`, on
//! disk). Records arriving together share one fsync (group commit).
//!
//! ```no_run
//! # async fn f() -> Result<(), palisade::HostError> {
//! use palisade::audit::AuditSink;
//! use palisade::plugins::policy::AuditSection;
//! let sink = AuditSink::open(&AuditSection { path: Some("audit.jsonl".into()), ..Default::default() })?;
//! sink.write(&serde_json::json!({"request_id": "req-1"})).await;
//! # Ok(()) }
//! ```

pub mod verify;
mod writer;

use std::sync::mpsc::{SyncSender, TrySendError};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::HostError;
use crate::plugins::policy::AuditSection;

/// What the first line of a chain points back to (64 zeros).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records waiting for the writer thread at most; more wait for room.
pub const QUEUE: usize = 1024;

/// When the writer asks the kernel to put written lines on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before any request waiting on a line is answered (group commit:
    /// one fsync for all lines written together). Survives power loss.
    #[default]
    Always,
    /// At most `fsync_interval_ms` after a line is written; a response can
    /// complete before its line is on disk (it is in the kernel, so a
    /// crash of the process loses nothing; a power loss may).
    Interval,
    /// Never; the kernel writes back when it likes.
    Never,
}

/// One record on its way to the writer thread.
struct Job {
    /// The record as a JSON object (`{...}`), without `seq` and `prev`.
    body: String,
    /// Told once the line is written (and synced, per the policy).
    done: oneshot::Sender<Result<(), String>>,
}

/// Where audit records go: a hash-chained JSON-lines file (through the
/// writer thread) or the log.
#[derive(Debug, Default)]
pub struct AuditSink {
    file: Option<SyncSender<Job>>,
    /// Records carry prompt and completion text.
    pub include_text: bool,
}

impl AuditSink {
    /// Opens `[audit] path` (mode 0600, in a private directory) and starts
    /// its writer thread, or logs the records when no path is set.
    pub fn open(section: &AuditSection) -> Result<Self, HostError> {
        let file = match &section.path {
            Some(p) => Some(writer::start(p, section)?),
            None => None,
        };
        Ok(AuditSink {
            file,
            include_text: section.include_text,
        })
    }

    /// Writes one record and waits until it is written (and synced, per
    /// the policy). Failures are logged: the request goes on.
    pub async fn write<T: Serialize + ?Sized>(&self, rec: &T) {
        let body = match serde_json::to_string(rec) {
            Ok(b) if b.starts_with('{') && b.len() > 2 => b,
            Ok(_) => {
                tracing::error!("audit record is not a non-empty JSON object; not written");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be serialized");
                return;
            }
        };
        let Some(tx) = &self.file else {
            tracing::info!(target: "palisade::audit", "{body}");
            return;
        };
        let (done, wait) = oneshot::channel();
        let job = Job { body, done };
        let sent = match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => {
                // The queue is full: wait for room off the async workers.
                let tx = tx.clone();
                match tokio::task::spawn_blocking(move || tx.send(job)).await {
                    Ok(r) => r.map_err(|_| ()),
                    Err(_) => Err(()),
                }
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            tracing::error!("audit writer is gone; record not written");
            return;
        }
        match wait.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit write failed"),
            Err(_) => tracing::error!("audit writer stopped before writing the record"),
        }
    }
}

/// The name of the `n`th rotated file of `path` (`audit.jsonl.n`).
pub fn rotated(path: &std::path::Path, n: usize) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    s.into()
}
