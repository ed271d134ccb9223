//! An output filter: replaces the `word` config value (default `secret`)
//! with `[REDACTED]`, even when the word arrives split across stream
//! chunks. It holds back only the shortest tail that could still become
//! the word. One instance serves one response; state is per choice index.

use std::cell::RefCell;
use std::collections::HashMap;

use palisade_plugin_sdk::output_filter::Guest;
use palisade_plugin_sdk::output_filter::palisade::plugin::config;
use palisade_plugin_sdk::output_filter::palisade::plugin::types::FilterVerdict;

thread_local! {
    static HELD: RefCell<HashMap<u32, String>> = RefCell::new(HashMap::new());
}

fn process(index: u32, chunk: &str, end: bool) -> FilterVerdict {
    let word = config::get("word").unwrap_or_else(|| "secret".into());
    HELD.with_borrow_mut(|held| {
        let buf = held.entry(index).or_default();
        buf.push_str(chunk);
        *buf = buf.replace(&word, "[REDACTED]");
        let mut keep = 0;
        if !end {
            for (i, _) in word.char_indices().skip(1) {
                if buf.ends_with(&word[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = buf.len() - keep;
        let out = buf[..cut].to_string();
        buf.drain(..cut);
        FilterVerdict::Emit(out)
    })
}

struct Plugin;

impl Guest for Plugin {
    /// Nothing to build ahead of a request: the config is read per call.
    fn prepare() {}

    fn filter(index: u32, chunk: String) -> FilterVerdict {
        process(index, &chunk, false)
    }

    fn finish(index: u32) -> FilterVerdict {
        process(index, "", true)
    }
}

palisade_plugin_sdk::output_filter::export_output_filter!(Plugin);
