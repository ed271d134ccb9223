//! GGUF files from bytes: header, metadata, tensor table (every tensor's
//! range checked against the file), then the model configuration and the
//! tokenizer built from the metadata, as `Engine::load` does.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_engine::Tokenizer;
use palisade_engine::config::ModelConfig;
use palisade_engine::gguf::GgufFile;
use palisade_engine::tensor::{MappedFile, TensorSource};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let Ok(g) = GgufFile::parse(MappedFile::from_bytes(path, data.to_vec())) else {
        return;
    };
    for name in g.tensor_names() {
        assert!(g.tensor(name).is_some(), "listed tensor {name} is missing");
    }
    let _ = ModelConfig::from_gguf(&g, path);
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        let ids = t.encode("Hello, world! <|im_start|>", true, true);
        if let Ok(ids) = ids {
            let _ = t.decode(&ids, false);
        }
    }
});
