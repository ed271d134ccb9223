//! Palisade: an OpenAI-compatible LLM inference server whose security logic
//! runs as WebAssembly components.
//!
//! This crate holds the `palisade` binary: `serve` (the OpenAI-compatible
//! HTTP server), `generate` and `chat` (the engine from the command line),
//! and `bench` (engine speed, optionally side by side with llama.cpp).
//!
//! ```no_run
//! use palisade::generate::{GenerateArgs, run_generate};
//! let args = GenerateArgs { prompt: "Hello".into(), max_tokens: 8, ..Default::default() };
//! run_generate(&args, &mut std::io::stdout())?;
//! # Ok::<(), palisade::HostError>(())
//! ```

pub mod api;
pub mod audit;
pub mod bench;
pub mod config;
pub mod doctor;
pub mod error;
pub mod generate;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod openapi;
pub mod plugins;
pub mod private;
pub mod scheduler;
pub mod serve;
pub mod server;

use std::path::PathBuf;

pub use error::HostError;

/// The model cache: `$PALISADE_CACHE_DIR`, else `~/.cache/palisade` (the
/// fetch scripts create it 0700; `serve` refuses it when others can write
/// to it).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PALISADE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache/palisade")
        })
}

/// Where `scripts/fetch-model.sh` caches the default model.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The model to use: the one given, or the cached default (with a clear
/// error naming the fetch script when it is missing).
pub fn resolve_model(given: Option<&PathBuf>) -> Result<PathBuf, HostError> {
    match given {
        Some(p) => Ok(p.clone()),
        None => {
            let p = default_model_path();
            if p.exists() {
                Ok(p)
            } else {
                Err(HostError::DefaultModelMissing { path: p })
            }
        }
    }
}
