//! `palisade audit verify FILE`: walks the hash chain of an audit file.
//!
//! Each line must be a JSON object whose `seq` is one more than the line
//! before's and whose `prev` is the sha256 of the line before. The first
//! line chains to [`GENESIS`] (then its `seq` is 1) or to the last line of
//! the rotated predecessor (`FILE.1` for `FILE`, `FILE.3` for `FILE.2`),
//! checked when that file is there. A deleted, inserted, reordered or
//! edited line breaks the chain at the line after it.
//!
//! One exception: an incomplete last line (bytes after the last newline)
//! is what a crash in the middle of a write leaves; it belonged to a
//! request whose response never completed, so it is reported and not
//! counted, but only as the very end of the file. What the chain cannot
//! show alone: lines cut off the end of the newest file (nothing follows
//! them), and a whole rewrite of the chain by someone with write access
//! (ship the lines off the machine for that).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::writer::last_line;
use super::{GENESIS, rotated};
use crate::HostError;
use crate::plugins::sha256_hex;

/// A file whose chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Complete lines checked.
    pub lines: usize,
    /// `seq` of the first and the last of them.
    pub seqs: Option<(u64, u64)>,
    /// Bytes of an incomplete last line (a torn write), not counted.
    pub torn_bytes: usize,
    /// Remarks that are not failures (e.g. a predecessor that was rotated
    /// away).
    pub notes: Vec<String>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok: {} lines verified", self.lines)?;
        if let Some((a, b)) = self.seqs {
            write!(f, " (seq {a} to {b})")?;
        }
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        if self.torn_bytes > 0 {
            write!(
                f,
                "\nnote: the file ends in an incomplete line ({} bytes, a write cut short by a crash); not counted",
                self.torn_bytes
            )?;
        }
        Ok(())
    }
}

/// The file rotated just before `path`: `FILE.n` -> `FILE.n+1`, else
/// `FILE.1`.
pub fn predecessor(path: &Path) -> PathBuf {
    let s = path.to_string_lossy();
    if let Some((base, n)) = s.rsplit_once('.')
        && !n.is_empty()
        && n.chars().all(|c| c.is_ascii_digit())
        && let Ok(n) = n.parse::<usize>()
    {
        return rotated(Path::new(base), n + 1);
    }
    rotated(path, 1)
}

fn field<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    v.as_object().and_then(|o| o.get(name))
}

/// Checks `path`'s chain: the first broken line (1-based) and why, as
/// [`HostError::AuditBroken`].
pub fn verify(path: &Path) -> Result<Verified, HostError> {
    let io = |p: &Path, e: std::io::Error| HostError::Server(format!("{}: {e}", p.display()));
    let broken = |line: usize, reason: String| HostError::AuditBroken {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut r = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| io(path, e))?);
    let mut out = Verified {
        lines: 0,
        seqs: None,
        torn_bytes: 0,
        notes: vec![],
    };
    let mut prev: Option<(u64, String)> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf).map_err(|e| io(path, e))? == 0 {
            break;
        }
        let n = out.lines + 1;
        if buf.last() != Some(&b'\n') {
            out.torn_bytes = buf.len();
            break;
        }
        let line = &buf[..buf.len() - 1];
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| broken(n, format!("not a JSON line ({e})")))?;
        let seq = field(&v, "seq")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| broken(n, "no `seq` number".into()))?;
        let back = field(&v, "prev")
            .and_then(|s| s.as_str())
            .ok_or_else(|| broken(n, "no `prev` hash".into()))?;
        match &prev {
            Some((pseq, phash)) => {
                if seq != pseq + 1 {
                    return Err(broken(
                        n,
                        if seq > pseq + 1 {
                            format!(
                                "seq {seq} follows seq {pseq}: {} line(s) missing (deleted)",
                                seq - pseq - 1
                            )
                        } else {
                            format!("seq {seq} follows seq {pseq}: lines out of order or inserted")
                        },
                    ));
                }
                if back != phash {
                    return Err(broken(
                        n,
                        format!(
                            "`prev` is not the sha256 of line {}: that line was edited (or replaced)",
                            n - 1
                        ),
                    ));
                }
            }
            None if back == GENESIS => {
                if seq != 1 {
                    return Err(broken(
                        n,
                        format!("the chain starts (genesis) at seq {seq}, not 1"),
                    ));
                }
            }
            None => {
                let pred = predecessor(path);
                match std::fs::File::open(&pred) {
                    Ok(mut f) => {
                        let last = last_line(&mut f).map_err(|e| io(&pred, e))?.0;
                        let ok = last.as_deref().is_some_and(|l| {
                            sha256_hex(l) == back
                                && serde_json::from_slice::<serde_json::Value>(l)
                                    .ok()
                                    .and_then(|v| field(&v, "seq").and_then(|s| s.as_u64()))
                                    .is_some_and(|ps| ps + 1 == seq)
                        });
                        if !ok {
                            return Err(broken(
                                n,
                                format!(
                                    "does not chain to the last line of {} (lines deleted or edited at the rotation)",
                                    pred.display()
                                ),
                            ));
                        }
                    }
                    Err(_) => out.notes.push(format!(
                        "line 1 (seq {seq}) chains to an earlier file that is not here ({})",
                        pred.display()
                    )),
                }
            }
        }
        let first = out.seqs.map_or(seq, |s| s.0);
        out.seqs = Some((first, seq));
        out.lines = n;
        prev = Some((seq, sha256_hex(line)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditSink, FsyncPolicy};
    use crate::plugins::policy::AuditSection;

    fn section(path: &Path, max_bytes: u64, keep: usize) -> AuditSection {
        AuditSection {
            path: Some(path.to_path_buf()),
            max_bytes,
            keep,
            ..Default::default()
        }
    }

    async fn write_n(s: &AuditSection, from: usize, n: usize) {
        let sink = AuditSink::open(s).unwrap();
        for i in from..from + n {
            sink.write(
                &serde_json::json!({"request_id": format!("req-{i}"), "pad": "x".repeat(40)}),
            )
            .await;
        }
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn broken_at(p: &Path) -> (usize, String) {
        match verify(p) {
            Err(HostError::AuditBroken { line, reason, .. }) => (line, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lines_chain_across_restarts_and_edits_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/audit.jsonl");
        let s = section(&p, 0, 3);
        write_n(&s, 0, 3).await;
        write_n(&s, 3, 2).await; // a restart continues the chain
        let v = verify(&p).unwrap();
        assert_eq!((v.lines, v.seqs, v.torn_bytes), (5, Some((1, 5)), 0), "{v}");
        let l = lines(&p);
        assert!(l[0].starts_with(&format!("{{\"seq\":1,\"prev\":\"{GENESIS}\",")));
        assert!(l[4].contains("\"seq\":5") && l[4].contains("req-4"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&l[3]).unwrap()["prev"],
            sha256_hex(l[2].as_bytes())
        );

        // An edited line breaks the chain at the next one.
        let edited = l.join("\n").replacen("req-1", "req-X", 1) + "\n";
        std::fs::write(&p, edited).unwrap();
        let (line, why) = broken_at(&p);
        assert_eq!(line, 3, "{why}");
        assert!(why.contains("sha256 of line 2"), "{why}");

        // A deleted line: the seq jumps.
        let mut d = l.clone();
        d.remove(2);
        std::fs::write(&p, d.join("\n") + "\n").unwrap();
        let (line, why) = broken_at(&p);
        assert_eq!(line, 3, "{why}");
        assert!(why.contains("1 line(s) missing"), "{why}");

        // The first line deleted: without a predecessor file to check, this
        // looks like a rotated-away head, and says so.
        std::fs::write(&p, l[1..].join("\n") + "\n").unwrap();
        let v = verify(&p).unwrap();
        assert!(
            v.notes[0].contains("(seq 2) chains to an earlier file"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn a_torn_line_is_tolerated_only_at_the_end_and_dropped_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let s = section(&p, 0, 3);
        write_n(&s, 0, 3).await;
        let whole = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{whole}{{\"seq\":4,\"prev\":\"ab")).unwrap();
        let v = verify(&p).unwrap();
        assert_eq!((v.lines, v.torn_bytes), (3, 19), "{v}");
        assert!(v.to_string().contains("incomplete line"), "{v}");
        // Not in the middle: a line that does not parse is broken.
        let l = lines(&p);
        std::fs::write(
            &p,
            format!("{}\n{{\"seq\":2,\"pr\n{}\n", l[0], l[1..3].join("\n")),
        )
        .unwrap();
        assert_eq!(broken_at(&p).0, 2);
        // A restart drops the torn tail and chains to the last whole line.
        std::fs::write(&p, format!("{whole}{{\"seq\":4,\"prev\":\"ab")).unwrap();
        write_n(&s, 3, 1).await;
        let v = verify(&p).unwrap();
        assert_eq!((v.lines, v.seqs, v.torn_bytes), (4, Some((1, 4)), 0), "{v}");
    }

    #[tokio::test]
    async fn rotation_keeps_the_chain_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut s = section(&p, 400, 2);
        s.fsync = FsyncPolicy::Interval;
        write_n(&s, 0, 12).await;
        assert!(rotated(&p, 1).exists() && rotated(&p, 2).exists());
        assert!(!rotated(&p, 3).exists(), "only `keep` rotated files stay");
        let newest = verify(&p).unwrap();
        let middle = verify(&rotated(&p, 1)).unwrap();
        let oldest = verify(&rotated(&p, 2)).unwrap();
        assert!(newest.notes.is_empty() && middle.notes.is_empty());
        assert_eq!(oldest.notes.len(), 1, "{oldest}");
        assert_eq!(middle.seqs.unwrap().1 + 1, newest.seqs.unwrap().0);
        assert_eq!(newest.seqs.unwrap().1, 12);
        for f in [&p, &rotated(&p, 1)] {
            assert!(std::fs::metadata(f).unwrap().len() <= 400);
        }
        // The first line of the newest file must chain to the last of `.1`.
        let l = lines(&p);
        std::fs::write(&p, l[1..].join("\n") + "\n").unwrap();
        assert!(broken_at(&p).1.contains("audit.jsonl.1"));
        assert_eq!(predecessor(&rotated(&p, 1)), rotated(&p, 2));
    }
}
