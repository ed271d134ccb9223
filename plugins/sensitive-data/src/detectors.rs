//! Compiled detectors: the automaton a scan steps, the check a match must
//! pass, and the checksums themselves.
//!
//! Built-in automata are compiled by `build.rs` and embedded in the
//! component, so an instance only deserializes (and validates) them;
//! operator patterns are compiled when the instance loads its config.

use regex_automata::Anchored;
use regex_automata::dfa::{Automaton, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;

pub use crate::automaton::{BUILTINS, Check};

/// Bytes with the alignment a serialized DFA needs.
#[repr(C)]
struct Aligned<B: ?Sized> {
    _align: [u32; 0],
    bytes: B,
}

/// The built-in DFAs, serialized by `build.rs`, in [`BUILTINS`] order.
static BUILTIN_DFAS: &[&Aligned<[u8]>] = &include!(concat!(env!("OUT_DIR"), "/dfas.rs"));

/// The names of the built-in detectors, in priority order.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.0)
}

/// One compiled detector.
pub struct Detector {
    /// What the placeholder says: `[REDACTED:<kind>]`.
    pub kind: String,
    /// Longest match considered, in bytes (operator patterns); a prefix
    /// that grows past it is dropped.
    pub max_len: Option<usize>,
    /// The extra check a match must pass.
    pub check: Check,
    dfa: dense::DFA<&'static [u32]>,
    /// Anchored start states by what precedes: text start, `\n`, `\r`, a
    /// word byte, another byte.
    starts: [StateID; 5],
    /// One byte of each byte class the DFA distinguishes.
    reps: Vec<u8>,
}

impl Detector {
    /// The built-in detector `name`, or `None` if there is none.
    pub fn builtin(name: &str) -> Option<Result<Detector, String>> {
        let i = BUILTINS.iter().position(|b| b.0 == name)?;
        let (kind, _, check) = BUILTINS[i];
        // SAFETY: these bytes are exactly what `DFA::to_bytes_little_endian`
        // wrote in `build.rs`, with the regex-automata this crate links (one
        // version in the lock file), so the tables are valid; the label,
        // version and endianness are still checked (a mismatch is an error,
        // not UB), and a test loads each one with full validation. Skipping
        // that validation saves tens of microseconds per instance.
        let dfa = unsafe { dense::DFA::from_bytes_unchecked(&BUILTIN_DFAS[i].bytes) }
            .map(|(dfa, _)| dfa)
            .map_err(|e| format!("built-in `{kind}` does not load: {e}"));
        Some(dfa.and_then(|dfa| Detector::new(kind, dfa, check, None)))
    }

    /// Compiles an operator pattern.
    pub fn pattern(name: &str, regex: &str, max_len: usize) -> Result<Detector, String> {
        let dfa =
            crate::automaton::build(regex, true).map_err(|e| format!("pattern `{name}`: {e}"))?;
        // One instance serves one response, then all of its memory goes;
        // leaking gives the same `'static` table type as the built-ins.
        let dfa: &'static dense::DFA<Vec<u32>> = Box::leak(Box::new(dfa));
        Detector::new(name, dfa.as_ref(), Check::None, Some(max_len))
    }

    fn new(
        kind: &str,
        dfa: dense::DFA<&'static [u32]>,
        check: Check,
        max_len: Option<usize>,
    ) -> Result<Detector, String> {
        let mut starts = [StateID::ZERO; 5];
        for (slot, prev) in
            starts
                .iter_mut()
                .zip([None, Some(b'\n'), Some(b'\r'), Some(b'a'), Some(b' ')])
        {
            let cfg = start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(prev);
            *slot = dfa
                .start_state(&cfg)
                .map_err(|e| format!("`{kind}`: {e}"))?;
        }
        let classes = dfa.byte_classes();
        let mut seen = vec![false; classes.alphabet_len()];
        let mut reps = Vec::new();
        for b in 0..=255u8 {
            let class = usize::from(classes.get(b));
            if !std::mem::replace(&mut seen[class], true) {
                reps.push(b);
            }
        }
        Ok(Detector {
            kind: kind.to_string(),
            max_len,
            check,
            dfa,
            starts,
            reps,
        })
    }

    /// The state after reading `byte` from a match attempt starting right
    /// after `prev`, or `None` if no match can start there.
    #[inline]
    pub fn first(&self, prev: Option<u8>, byte: u8) -> Option<StateID> {
        let class = match prev {
            None => 0,
            Some(b'\n') => 1,
            Some(b'\r') => 2,
            Some(b) if b.is_ascii_alphanumeric() || b == b'_' => 3,
            Some(_) => 4,
        };
        let next = self.dfa.next_state(self.starts[class], byte);
        (!self.dfa.is_dead_state(next)).then_some(next)
    }

    /// The state after reading `byte`.
    #[inline]
    pub fn step(&self, state: StateID, byte: u8) -> StateID {
        self.dfa.next_state(state, byte)
    }

    /// The state after the end of the text.
    pub fn eoi(&self, state: StateID) -> StateID {
        self.dfa.next_eoi_state(state)
    }

    /// Whether no continuation can match any more.
    #[inline]
    pub fn is_dead(&self, state: StateID) -> bool {
        self.dfa.is_dead_state(state)
    }

    /// Whether an attempt in `state` is over: dead, or a match that no
    /// byte can extend (so waiting for the next byte would gain nothing).
    #[inline]
    pub fn is_over(&self, state: StateID) -> bool {
        self.dfa.is_dead_state(state)
            || (self.dfa.is_match_state(state)
                && !self.dfa.is_match_state(self.dfa.next_eoi_state(state))
                && self
                    .reps
                    .iter()
                    .all(|&b| self.dfa.is_dead_state(self.dfa.next_state(state, b))))
    }

    /// Whether a match ended just before the last byte read (DFA matches
    /// are reported one byte late, or at the end of the text).
    #[inline]
    pub fn is_match(&self, state: StateID) -> bool {
        self.dfa.is_match_state(state)
    }

    /// Whether `text`, a match of the regex, counts: within `max_len` and
    /// passing the check.
    pub fn accepts(&self, text: &[u8]) -> bool {
        if self.max_len.is_some_and(|m| text.len() > m) {
            return false;
        }
        match self.check {
            Check::None => true,
            Check::Luhn => luhn(text),
            Check::Ssn => ssn(text),
            Check::Iban => iban(text),
        }
    }
}

/// Loads every built-in automaton with full validation (for tests).
#[cfg(test)]
pub fn validate_builtins() -> Result<(), String> {
    for (i, b) in BUILTINS.iter().enumerate() {
        dense::DFA::from_bytes(&BUILTIN_DFAS[i].bytes).map_err(|e| format!("{}: {e}", b.0))?;
    }
    Ok(())
}

/// Luhn checksum over the ASCII digits of `text` (other bytes skipped);
/// an all-zero number does not count.
pub fn luhn(text: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut nonzero = false;
    for (i, d) in text.iter().rev().filter(|b| b.is_ascii_digit()).enumerate() {
        let mut v = u32::from(d - b'0');
        nonzero |= v != 0;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    nonzero && sum.is_multiple_of(10)
}

/// US SSN rules on `ddd-dd-dddd`.
pub fn ssn(text: &[u8]) -> bool {
    let d: Vec<u8> = text
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    if d.len() != 9 {
        return false;
    }
    let area = &d[0..3];
    area != [0, 0, 0] && area != [6, 6, 6] && area[0] != 9 && d[3..5] != [0, 0] && d[5..9] != [0; 4]
}

/// IBAN check: spaces removed, 15 to 34 characters, then mod 97 of the
/// rearranged number (country and check digits moved to the end, letters
/// as 10 to 35) must be 1.
pub fn iban(text: &[u8]) -> bool {
    let s: Vec<u8> = text.iter().copied().filter(|&b| b != b' ').collect();
    if !(15..=34).contains(&s.len()) || !s[..2].iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    let mut rem = 0u32;
    for &b in s[4..].iter().chain(&s[..4]) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}
