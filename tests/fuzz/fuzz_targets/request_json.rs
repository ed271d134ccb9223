//! Request bodies: the strict serde path every generation, embedding and
//! tokenizer route takes, then validation against a real engine (template
//! rendering, tokenization, limits). Client input must never panic and
//! never become a 5xx; a request that validates must respect the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| palisade_fuzz::targets::request_json(data));
