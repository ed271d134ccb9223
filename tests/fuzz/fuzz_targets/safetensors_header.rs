//! safetensors files from bytes: the JSON header and every tensor's dtype,
//! shape and byte range checked against the file, as a model directory's
//! shards are read.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_engine::hf::read_shard;
use palisade_engine::tensor::MappedFile;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = read_shard(MappedFile::from_bytes(
        Path::new("fuzz.safetensors"),
        data.to_vec(),
    )) else {
        return;
    };
    for (name, t) in tensors {
        assert_eq!(name, t.name);
        let bytes = t.bytes();
        assert!(bytes.len() <= data.len(), "{name}: view larger than the file");
    }
});
