//! The sensitive-data output filter: finds sensitive data in generated
//! text and replaces each value with `[REDACTED:<kind>]`, or stops the
//! response. It works on streams: a value split across chunks (even one
//! character per chunk) is still caught, and the streamed output is exactly
//! what the whole text would give.
//!
//! Config (every key optional; values are strings, lists are JSON text):
//!
//! ```toml
//! [plugins.sensitive-data.config]
//! action = "redact"        # or "abort": stop the response at the first match
//! detectors = ["credit_card", "us_ssn", "email", "phone", "iban",
//!              "aws_access_key", "private_key", "jwt"]   # default: all
//! patterns = [{ name = "employee_id", regex = "EMP-\\d{6}", max_len = 10 }]
//! ```
//!
//! Built-in detectors:
//!
//! | name | what |
//! |---|---|
//! | `credit_card` | 13 to 19 digits, single spaces or dashes between, Luhn checksum |
//! | `us_ssn` | `ddd-dd-dddd`, no 000/666/9xx area, 00 group or 0000 serial |
//! | `email` | `local@domain.tld` |
//! | `phone` | US `(555) 123-4567`, `555-123-4567`, `+1 555 123 4567`; `+CC` and 7 to 15 digits |
//! | `iban` | country, check digits, up to 30 letters/digits (spaces per 4 allowed), mod 97 |
//! | `aws_access_key` | `AKIA`/`ASIA`/`ABIA`/`ACCA` and 16 upper-case letters/digits |
//! | `private_key` | a PEM `-----BEGIN ... PRIVATE KEY-----` block through its `END` line (or the end of the text) |
//! | `jwt` | three base64url segments, the first two starting `eyJ` |
//!
//! `patterns` adds operator regexes (Rust `regex` syntax, matched
//! case-sensitively unless they say `(?i)`; `\b` is an ASCII word
//! boundary); the placeholder names the pattern. `max_len` (bytes, default
//! 64, at most 1024) bounds a match and so how much text the pattern can
//! hold back.
//!
//! When matches overlap, the one starting first wins, then the longest,
//! then the detector listed first above (operator patterns last).
//!
//! An unknown key or detector, a bad regex or action makes every call
//! abort with `sensitive-data filter misconfigured: <why>`. Held text is
//! bounded: 16 KiB held for one possible match (an open PEM block, an
//! endless token) count as that match.
//!
//! The logic lives in [`scan`] (streams), [`detectors`] (automata and
//! checksums), `automaton` (the regexes, shared with `build.rs`, which
//! compiles the built-ins ahead of time) and [`config`]; this file is the
//! WIT glue.

#![warn(missing_docs)]

mod automaton;
pub mod config;
pub mod detectors;
pub mod scan;

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use palisade_plugin_sdk::output_filter::Guest;
use palisade_plugin_sdk::output_filter::palisade::plugin::config as host_config;
use palisade_plugin_sdk::output_filter::palisade::plugin::types::FilterVerdict;

use scan::{Filter, Verdict};

thread_local! {
    /// The instance's filter (one instance serves one response), built by
    /// `prepare` before any request (or on the first call).
    static FILTER: RefCell<Option<Filter>> = const { RefCell::new(None) };
}

/// Reads the config table and compiles the enabled detectors.
fn load() -> Filter {
    let all = host_config::all();
    let engine = config::Settings::parse(all.iter().map(|p| (p.name.as_str(), p.value.as_str())))
        .and_then(|s| s.compile());
    Filter::new(engine)
}

fn with_filter(f: impl FnOnce(&mut Filter) -> Verdict) -> FilterVerdict {
    let v = FILTER.with_borrow_mut(|slot| f(slot.get_or_insert_with(load)));
    match v {
        Verdict::Emit(text) => FilterVerdict::Emit(text),
        Verdict::Abort(reason) => FilterVerdict::Abort(reason),
    }
}

struct SensitiveData;

impl Guest for SensitiveData {
    fn prepare() {
        FILTER.with_borrow_mut(|slot| {
            slot.get_or_insert_with(load);
        });
    }

    fn filter(index: u32, chunk: String) -> FilterVerdict {
        with_filter(|f| f.filter(index, &chunk))
    }

    fn finish(index: u32) -> FilterVerdict {
        with_filter(|f| f.finish(index))
    }
}

palisade_plugin_sdk::output_filter::export_output_filter!(SensitiveData);
