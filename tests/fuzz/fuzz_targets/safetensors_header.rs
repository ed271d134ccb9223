//! safetensors files from bytes: the JSON header and every tensor's dtype,
//! shape and byte range checked against the file, as a model directory's
//! shards are read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| palisade_fuzz::targets::safetensors_header(data));
