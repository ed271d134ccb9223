//! Output filter used by the tests: replaces `word` (config) with
//! `[REDACTED]`, or aborts the response when `action = "abort"`. Holds back
//! the shortest tail that could still become the word, so a word split over
//! stream chunks is still caught. State lives in the instance (one per
//! response), per choice index.

use std::cell::RefCell;
use std::collections::HashMap;

use palisade_plugin_sdk::output_filter::Guest;
use palisade_plugin_sdk::output_filter::palisade::plugin::config;
use palisade_plugin_sdk::output_filter::palisade::plugin::types::FilterVerdict;

thread_local! {
    static HELD: RefCell<HashMap<u32, String>> = RefCell::new(HashMap::new());
}

fn word() -> String {
    config::get("word").unwrap_or_else(|| "secret".into())
}

fn process(index: u32, chunk: &str, end: bool) -> FilterVerdict {
    let w = word();
    let abort = config::get("action").as_deref() == Some("abort");
    HELD.with_borrow_mut(|held| {
        let buf = held.entry(index).or_default();
        buf.push_str(chunk);
        if buf.contains(&w) {
            if abort {
                return FilterVerdict::Abort(format!("the word `{w}` appeared"));
            }
            *buf = buf.replace(&w, "[REDACTED]");
        }
        // Keep the longest suffix that is a proper prefix of the word.
        let mut keep = 0;
        if !end {
            for (i, _) in w.char_indices().skip(1) {
                if buf.ends_with(&w[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = buf.len() - keep;
        let out: String = buf[..cut].to_string();
        buf.drain(..cut);
        FilterVerdict::Emit(out)
    })
}

struct RedactWord;

impl Guest for RedactWord {
    /// Nothing to build ahead of a request: the config is read per call.
    fn prepare() {}

    fn filter(index: u32, chunk: String) -> FilterVerdict {
        process(index, &chunk, false)
    }
    fn finish(index: u32) -> FilterVerdict {
        process(index, "", true)
    }
}

palisade_plugin_sdk::output_filter::export_output_filter!(RedactWord);
