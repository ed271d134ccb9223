//! GGUF files from bytes: header, metadata, tensor table (every tensor's
//! range checked against the file), then the model configuration and the
//! tokenizer built from the metadata, as `Engine::load` does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| palisade_fuzz::targets::gguf_header(data));
