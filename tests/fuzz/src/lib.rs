//! What the fuzz targets share: an engine to validate requests against and
//! tokenize with, loaded once per process.
//!
//! The default model (SmolLM2, its ChatML template and BPE vocabulary) when
//! it is cached, as in CI after `make model`; otherwise a tiny generated
//! model with the same kind of tokenizer and template.
//!
//! ```no_run
//! let engine = palisade_fuzz::engine();
//! assert!(engine.tokenizer().vocab_size() > 0);
//! ```

use std::path::PathBuf;
use std::sync::OnceLock;

use palisade_engine::testing::{TinySpec, TinyType, write_gguf};
use palisade_engine::{Engine, EngineOptions};
use palisade_kernels::quant::WeightType;

/// The shared engine (loaded on first use; a load failure aborts the run,
/// which is a set-up error, not a finding).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let model = model_path();
        Engine::load(&EngineOptions {
            model: model.clone(),
            threads: 1,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("loading {}: {e}", model.display()))
    })
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_FUZZ_MODEL") {
        return PathBuf::from(p);
    }
    let default = palisade::default_model_path();
    if default.exists() {
        return default;
    }
    let dir = std::env::temp_dir().join(format!("palisade-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    write_gguf(&dir, &TinySpec::default(), TinyType::Native(WeightType::Q8_0))
}
