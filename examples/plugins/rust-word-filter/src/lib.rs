//! An output filter that masks a configurable list of words.
//!
//! Config:
//! - `words`: a JSON list of words (or phrases), e.g. `["secret", "top
//!   secret"]`. Matched case-insensitively and as whole words: `secret` is
//!   masked in `the Secret.` but not in `secretive`.
//! - `mask` (optional): what replaces each word, `****` by default.
//!
//! Words split across stream chunks are caught: the filter holds back only
//! the tail from the first place where a listed word may start and is not
//! decided yet, and releases the rest at once. One instance serves one
//! response; the state is per choice index. A bad config aborts the
//! response (fail closed) rather than letting text through unfiltered.

mod mask;

use std::cell::RefCell;
use std::collections::HashMap;

use palisade_plugin_sdk::output_filter::Guest;
use palisade_plugin_sdk::output_filter::palisade::plugin::types::FilterVerdict;
use palisade_plugin_sdk::output_filter::palisade::plugin::{config, log};

use mask::{Masker, Stream};

thread_local! {
    /// The config, read once per instance.
    static MASKER: RefCell<Option<Result<Masker, String>>> = const { RefCell::new(None) };
    static STREAMS: RefCell<HashMap<u32, Stream>> = RefCell::new(HashMap::new());
}

fn process(index: u32, chunk: &str, end: bool) -> FilterVerdict {
    MASKER.with_borrow_mut(|m| {
        let m = m.get_or_insert_with(|| {
            let r = Masker::from_config(
                config::get("words").as_deref(),
                config::get("mask").as_deref(),
            );
            if let Err(e) = &r {
                log::log(log::Level::Error, e);
            }
            r
        });
        let m = match m {
            Ok(m) => m,
            Err(e) => return FilterVerdict::Abort(e.clone()),
        };
        STREAMS.with_borrow_mut(|streams| {
            let out = streams.entry(index).or_default().push(m, chunk, end);
            if end {
                streams.remove(&index);
            }
            FilterVerdict::Emit(out)
        })
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
