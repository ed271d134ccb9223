//! The writer thread: owns the audit file, appends chained lines, fsyncs
//! per the policy, rotates by size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::{FsyncPolicy, GENESIS, Job, QUEUE, rotated};
use crate::HostError;
use crate::plugins::policy::AuditSection;
use crate::plugins::sha256_hex;

/// The open file and the end of its chain.
struct Chain {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    /// `seq` of the last line written (0: none yet).
    seq: u64,
    /// sha256 of the last line written (or [`GENESIS`]).
    prev: String,
    fsync: FsyncPolicy,
    interval: Duration,
    max_bytes: u64,
    keep: usize,
    /// Lines written since the last fsync.
    dirty: bool,
    last_sync: Instant,
}

fn io_err(p: &Path, e: std::io::Error) -> HostError {
    HostError::Server(format!("audit log {}: {e}", p.display()))
}

fn open_append(p: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(p)
}

/// The last complete line of `f` (without its newline) and the length of
/// an incomplete tail after it (bytes after the last newline).
pub(super) fn last_line(f: &mut File) -> std::io::Result<(Option<Vec<u8>>, u64)> {
    let size = f.seek(SeekFrom::End(0))?;
    let mut want: u64 = 64 << 10;
    loop {
        let start = size.saturating_sub(want);
        let mut buf = Vec::with_capacity((size - start) as usize);
        f.seek(SeekFrom::Start(start))?;
        Read::by_ref(f).take(size - start).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok((None, size));
            }
            want *= 4;
            continue;
        };
        let torn = (buf.len() - end - 1) as u64;
        match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(begin) => return Ok((Some(buf[begin + 1..end].to_vec()), torn)),
            None if start == 0 => return Ok((Some(buf[..end].to_vec()), torn)),
            None => want *= 4,
        }
    }
}

/// `(seq, sha256)` of a line, to chain the next one to it.
fn link(line: &[u8]) -> (u64, String) {
    let seq = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
        .unwrap_or(0);
    (seq, sha256_hex(line))
}

impl Chain {
    /// Opens `path`, drops an incomplete last line left by a crash (it
    /// belongs to a request that never got its response), and finds the
    /// end of the chain: the file's last line, or its rotated
    /// predecessor's, or the genesis.
    fn open(path: &Path, s: &AuditSection) -> Result<Chain, HostError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::ensure_dir(dir)?;
        }
        let mut file = open_append(path).map_err(|e| io_err(path, e))?;
        let (mut last, torn) = last_line(&mut file).map_err(|e| io_err(path, e))?;
        let mut size = file.metadata().map_err(|e| io_err(path, e))?.len();
        if torn > 0 {
            tracing::warn!(path = %path.display(), bytes = torn, "audit log ends in an incomplete line (a crash mid-write); removing it");
            size -= torn;
            file.set_len(size).map_err(|e| io_err(path, e))?;
            file.sync_all().map_err(|e| io_err(path, e))?;
        }
        if last.is_none() {
            let pred = rotated(path, 1);
            if let Ok(mut f) = File::open(&pred) {
                last = last_line(&mut f).map_err(|e| io_err(&pred, e))?.0;
            }
        }
        let (seq, prev) = last.as_deref().map_or((0, GENESIS.to_string()), link);
        Ok(Chain {
            path: path.to_path_buf(),
            file,
            size,
            seq,
            prev,
            fsync: s.fsync,
            interval: Duration::from_millis(s.fsync_interval_ms.max(1)),
            max_bytes: s.max_bytes,
            keep: s.keep,
            dirty: false,
            last_sync: Instant::now(),
        })
    }

    /// `audit.jsonl` becomes `audit.jsonl.1`, `.1` becomes `.2` ... up to
    /// `keep`; the oldest goes. The chain goes on in a fresh file.
    fn rotate(&mut self) -> std::io::Result<()> {
        if self.fsync != FsyncPolicy::Never {
            self.file.sync_all()?;
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        if self.fsync != FsyncPolicy::Never
            && let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Appends one record as the next link of the chain.
    fn append(&mut self, body: &str) -> std::io::Result<()> {
        let line = format!(
            "{{\"seq\":{},\"prev\":\"{}\",{}\n",
            self.seq + 1,
            self.prev,
            &body[1..]
        );
        if self.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            // Leave no partial line for the next one to follow.
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += line.len() as u64;
        self.seq += 1;
        self.prev = sha256_hex(&line.as_bytes()[..line.len() - 1]);
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes a batch, syncs per the policy, then answers every job.
    fn run_batch(&mut self, batch: Vec<Job>) {
        let mut results: Vec<(Job, Result<(), String>)> = batch
            .into_iter()
            .map(|j| {
                let r = self.append(&j.body).map_err(|e| e.to_string());
                (j, r)
            })
            .collect();
        let synced = match self.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval if self.last_sync.elapsed() >= self.interval => self.sync(),
            _ => Ok(()),
        };
        if let Err(e) = synced {
            for (_, r) in results.iter_mut().filter(|(_, r)| r.is_ok()) {
                *r = Err(format!("fsync: {e}"));
            }
        }
        for (job, r) in results {
            let _ = job.done.send(r);
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        loop {
            let first = if self.dirty && self.fsync == FsyncPolicy::Interval {
                let left = self.interval.saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(left) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.sync() {
                            tracing::error!(error = %e, "audit fsync failed");
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            while batch.len() < QUEUE
                && let Ok(j) = rx.try_recv()
            {
                batch.push(j);
            }
            self.run_batch(batch);
        }
        if self.dirty && self.fsync != FsyncPolicy::Never {
            let _ = self.sync();
        }
    }
}

/// Opens the file and starts the writer thread; the sender feeds it.
pub(super) fn start(path: &Path, s: &AuditSection) -> Result<SyncSender<Job>, HostError> {
    let chain = Chain::open(path, s)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("palisade-audit".into())
        .spawn(move || chain.run(rx))
        .map_err(|e| HostError::Server(format!("audit writer thread: {e}")))?;
    Ok(tx)
}
