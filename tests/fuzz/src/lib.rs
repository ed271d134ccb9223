//! What the fuzz targets share: their bodies ([`targets`]) and an engine to
//! validate requests against and tokenize with, loaded once per process.
//!
//! ```no_run
//! let engine = palisade_fuzz::engine();
//! assert!(engine.tokenizer().vocab_size() > 0);
//! ```

pub mod targets;

pub use targets::engine;
