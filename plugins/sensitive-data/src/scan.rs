//! The streaming scanner: no WIT types, so it is tested natively.
//!
//! Text is scanned byte by byte, once. At every character each detector's
//! anchored DFA is started; a started DFA (a *thread*) is advanced by each
//! later byte until it dies. While alive it records the longest match end
//! so far that passes the detector's check; when it dies that end becomes a
//! *candidate*. The output is defined on the whole text, left to right:
//!
//! 1. the earliest start with a candidate wins, then the longest candidate
//!    there, then the detector listed first;
//! 2. it is replaced by `[REDACTED:<kind>]`, scanning goes on after it, and
//!    candidates and threads starting inside it are dropped.
//!
//! Streaming holds back exactly the text from the earliest live thread on:
//! that is the shortest tail that may still become (part of) a match, and
//! everything before it is final, so chunking never changes the output.
//!
//! Memory is bounded: when the earliest live thread has held
//! [`HOLD_CAP`] bytes (an open PEM block, an endless token), it is treated
//! as a match: the placeholder goes out (or the response aborts) and the
//! rest of it is swallowed until its DFA dies.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use regex_automata::util::primitives::StateID;

use crate::detectors::{Check, Detector};

/// The most a stream holds back before the held text counts as a match.
pub const HOLD_CAP: usize = 16 * 1024;

/// What a call hands back to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Text to send now (possibly empty).
    Emit(String),
    /// Stop the response, with the reason for the audit record.
    Abort(String),
}

/// The compiled detectors and the action, shared by every stream.
pub struct Engine {
    dets: Vec<Detector>,
    abort: bool,
}

impl Engine {
    /// An engine over `dets` (priority order); `abort` stops the response
    /// at the first match instead of redacting.
    pub fn new(dets: Vec<Detector>, abort: bool) -> Engine {
        Engine { dets, abort }
    }

    /// The detectors, in priority order.
    pub fn detectors(&self) -> &[Detector] {
        &self.dets
    }

    /// Redacts a whole text at once (what any chunking of it gives).
    pub fn redact(&self, text: &str) -> Verdict {
        let mut s = Stream::default();
        match s.push(self, text) {
            Verdict::Emit(mut a) => match s.finish(self) {
                Verdict::Emit(b) => {
                    a.push_str(&b);
                    Verdict::Emit(a)
                }
                abort => abort,
            },
            abort => abort,
        }
    }

    fn placeholder(&self, det: usize) -> String {
        format!("[REDACTED:{}]", self.dets[det].kind)
    }

    fn reason(&self, det: usize) -> String {
        format!("sensitive data detected: {}", self.dets[det].kind)
    }
}

/// A match attempt in progress.
#[derive(Clone, Copy)]
struct Thread {
    start: usize,
    det: usize,
    state: StateID,
    /// End of the longest accepted match so far, 0 for none.
    best: usize,
}

/// A settled match: nothing later can change it.
#[derive(Clone, Copy)]
struct Cand {
    start: usize,
    end: usize,
    det: usize,
}

/// A held-too-long match being swallowed until its DFA dies.
struct Swallow {
    det: usize,
    state: StateID,
    /// Last match end (and the byte before it): scanning resumes there.
    end: Option<(usize, Option<u8>)>,
}

/// One choice's stream. Positions are absolute byte offsets in the text.
#[derive(Default)]
pub struct Stream {
    /// Unreleased text, from `base`.
    buf: Vec<u8>,
    base: usize,
    /// Next byte to read.
    scan: usize,
    /// The byte before `scan`.
    prev: Option<u8>,
    /// Live threads, by ascending start.
    threads: Vec<Thread>,
    cands: Vec<Cand>,
    swallow: Option<Swallow>,
    /// Text released by the current call.
    out: Vec<u8>,
    aborted: Option<String>,
}

impl Stream {
    /// Takes the next chunk; returns what may be released now.
    pub fn push(&mut self, eng: &Engine, chunk: &str) -> Verdict {
        if self.aborted.is_none() {
            self.buf.extend_from_slice(chunk.as_bytes());
            let r = self.run(eng).and_then(|()| self.settle(eng));
            self.aborted = r.err();
        }
        self.verdict()
    }

    /// Ends the stream: releases everything still held.
    pub fn finish(&mut self, eng: &Engine) -> Verdict {
        if self.aborted.is_none() {
            let r = self.end(eng);
            self.aborted = r.err();
        }
        self.verdict()
    }

    /// Bytes held back right now.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    fn verdict(&mut self) -> Verdict {
        if let Some(reason) = &self.aborted {
            self.out.clear();
            return Verdict::Abort(reason.clone());
        }
        let out = std::mem::take(&mut self.out);
        // Every cut is at a character boundary; lossy is only a fallback.
        Verdict::Emit(
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }

    /// Reads every unread byte.
    fn run(&mut self, eng: &Engine) -> Result<(), String> {
        while self.scan < self.base + self.buf.len() {
            let p = self.scan;
            let b = self.buf[p - self.base];
            self.scan += 1;
            if self.swallow.is_some() {
                self.swallow_byte(eng, p, b);
                continue;
            }
            self.advance(eng, p, b);
            if b & 0xC0 != 0x80 {
                for (d, det) in eng.dets.iter().enumerate() {
                    if let Some(state) = det.first(self.prev, b) {
                        self.threads.push(Thread {
                            start: p,
                            det: d,
                            state,
                            best: 0,
                        });
                    }
                }
            }
            self.prev = Some(b);
            if self
                .threads
                .first()
                .is_some_and(|t| self.scan - t.start > HOLD_CAP)
            {
                self.force(eng)?;
            }
        }
        if let Some(sw) = &self.swallow {
            // Keep only what scanning may resume from.
            let keep = sw.end.map_or(self.scan, |e| e.0);
            self.drain_to(keep);
        }
        Ok(())
    }

    /// Advances every live thread by byte `b` at `p`.
    fn advance(&mut self, eng: &Engine, p: usize, b: u8) {
        let Stream {
            buf,
            base,
            threads,
            cands,
            ..
        } = self;
        threads.retain_mut(|t| {
            let det = &eng.dets[t.det];
            t.state = det.step(t.state, b);
            if det.is_match(t.state) && p > t.start && det.accepts(&buf[t.start - *base..p - *base])
            {
                t.best = p;
            }
            let alive = !det.is_over(t.state) && det.max_len.is_none_or(|m| p + 1 - t.start <= m);
            if !alive && t.best > 0 {
                cands.push(Cand {
                    start: t.start,
                    end: t.best,
                    det: t.det,
                });
            }
            alive
        });
    }

    /// Reads byte `b` at `p` while swallowing.
    fn swallow_byte(&mut self, eng: &Engine, p: usize, b: u8) {
        let Some(sw) = &mut self.swallow else { return };
        let det = &eng.dets[sw.det];
        sw.state = det.step(sw.state, b);
        if det.is_match(sw.state) && det.check == Check::None {
            sw.end = Some((p, self.prev));
        } else if sw.end.is_some_and(|(e, _)| p - e > HOLD_CAP) {
            sw.end = None;
        }
        if det.is_over(sw.state) {
            // Resume at the last match end, or at the byte that ended it.
            let (at, prev) = sw.end.unwrap_or((p, self.prev));
            self.swallow = None;
            self.resume(at, prev);
        } else {
            self.prev = Some(b);
        }
    }

    /// Scans again from `at` (a swallow ended there).
    fn resume(&mut self, mut at: usize, mut prev: Option<u8>) {
        while at < self.base + self.buf.len() && self.buf[at - self.base] & 0xC0 == 0x80 {
            prev = Some(self.buf[at - self.base]);
            at += 1;
        }
        self.drain_to(at);
        self.scan = at;
        self.prev = prev;
    }

    /// The earliest live thread has held too much: treat it as a match.
    fn force(&mut self, eng: &Engine) -> Result<(), String> {
        self.settle(eng)?;
        let Some(&t) = self.threads.first() else {
            return Ok(());
        };
        if self.scan - t.start <= HOLD_CAP {
            return Ok(());
        }
        if eng.abort {
            return Err(eng.reason(t.det));
        }
        // `settle` released everything before `t.start`.
        self.out
            .extend_from_slice(eng.placeholder(t.det).as_bytes());
        let end = (t.best > 0).then(|| (t.best, Some(self.buf[t.best - 1 - self.base])));
        self.swallow = Some(Swallow {
            det: t.det,
            state: t.state,
            end,
        });
        self.threads.clear();
        self.cands.clear();
        Ok(())
    }

    /// Commits every candidate that is final, then releases the text before
    /// the earliest live thread.
    fn settle(&mut self, eng: &Engine) -> Result<(), String> {
        if self.swallow.is_some() {
            return Ok(());
        }
        loop {
            let hold = self.threads.first().map_or(usize::MAX, |t| t.start);
            let best = self
                .cands
                .iter()
                .copied()
                .min_by_key(|c| (c.start, Reverse(c.end), c.det));
            let Some(c) = best.filter(|c| c.start < hold) else {
                break;
            };
            if eng.abort {
                return Err(eng.reason(c.det));
            }
            self.release(c.start);
            self.out
                .extend_from_slice(eng.placeholder(c.det).as_bytes());
            self.drain_to(c.end);
            self.cands.retain(|x| x.start >= c.end);
            self.threads.retain(|t| t.start >= c.end);
        }
        let hold = self.threads.first().map_or(self.scan, |t| t.start);
        self.release(hold.min(self.scan));
        Ok(())
    }

    /// Ends the stream: the text ends here, so `$` and `\b` resolve.
    fn end(&mut self, eng: &Engine) -> Result<(), String> {
        self.run(eng)?;
        while let Some(sw) = self.swallow.take() {
            let det = &eng.dets[sw.det];
            let eoi = det.eoi(sw.state);
            let end = if det.is_match(eoi) && det.check == Check::None {
                None
            } else {
                sw.end
            };
            match end {
                Some((at, prev)) => {
                    self.resume(at, prev);
                    self.run(eng)?;
                }
                None => self.drain_to(self.scan),
            }
        }
        let Stream {
            buf,
            base,
            scan,
            threads,
            cands,
            ..
        } = self;
        for t in threads.drain(..) {
            let det = &eng.dets[t.det];
            let mut best = t.best;
            if det.is_match(det.eoi(t.state))
                && *scan > t.start
                && det.accepts(&buf[t.start - *base..])
            {
                best = *scan;
            }
            if best > 0 {
                cands.push(Cand {
                    start: t.start,
                    end: best,
                    det: t.det,
                });
            }
        }
        self.settle(eng)?;
        self.buf = Vec::new();
        Ok(())
    }

    /// Moves the clear text before `to` into the output.
    fn release(&mut self, to: usize) {
        if to > self.base {
            self.out.extend_from_slice(&self.buf[..to - self.base]);
            self.drain_to(to);
        }
    }

    /// Drops the held text before `to`.
    fn drain_to(&mut self, to: usize) {
        if to > self.base {
            self.buf.drain(..to - self.base);
            self.base = to;
        }
    }
}

/// Every choice's stream of one response, plus the engine (or why there is
/// none: then every call aborts).
pub struct Filter {
    engine: Result<Engine, String>,
    streams: BTreeMap<u32, Stream>,
}

impl Filter {
    /// A filter over a compiled engine or a configuration error.
    pub fn new(engine: Result<Engine, String>) -> Filter {
        Filter {
            engine,
            streams: BTreeMap::new(),
        }
    }

    /// New text for choice `index`.
    pub fn filter(&mut self, index: u32, chunk: &str) -> Verdict {
        match &self.engine {
            Ok(eng) => self.streams.entry(index).or_default().push(eng, chunk),
            Err(why) => misconfigured(why),
        }
    }

    /// End of choice `index`.
    pub fn finish(&mut self, index: u32) -> Verdict {
        match &self.engine {
            Ok(eng) => self.streams.remove(&index).unwrap_or_default().finish(eng),
            Err(why) => misconfigured(why),
        }
    }
}

fn misconfigured(why: &str) -> Verdict {
    Verdict::Abort(format!("sensitive-data filter misconfigured: {why}"))
}
