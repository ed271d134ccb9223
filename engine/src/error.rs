//! The engine's error type. Every message names the file, tensor or field
//! involved and what was expected.

use std::path::PathBuf;

/// Errors from loading models and running generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model file is malformed (bad magic, truncated, inconsistent).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with offsets or values.
        message: String,
    },
    /// A tensor has a storage type this engine cannot compute with.
    #[error("{path}: tensor `{tensor}` has unsupported type {ty}")]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// The type as the file names it.
        ty: String,
    },
    /// A tensor the architecture needs is not in the model.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The file or directory.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
    },
    /// A tensor's shape does not fit the model's configuration.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Shape the configuration implies (rows, cols).
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// A metadata key or config field is missing or has the wrong type.
    #[error("{path}: {key}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Metadata key or config field.
        key: String,
        /// What was expected.
        message: String,
    },
    /// The model's architecture is not one this engine implements.
    #[error("{path}: unsupported architecture `{arch}` (supported: llama, mistral, qwen2, smollm)")]
    UnsupportedArchitecture {
        /// The file or directory.
        path: PathBuf,
        /// Architecture name.
        arch: String,
    },
    /// Pickle-based or unknown weight files.
    #[error("{path}: {message}")]
    UnsupportedFormat {
        /// The file or directory.
        path: PathBuf,
        /// Why it is refused.
        message: String,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt plus generation does not fit the context window.
    #[error(
        "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context length {context}"
    )]
    ContextLength {
        /// Prompt tokens.
        prompt: usize,
        /// Requested completion tokens.
        max_tokens: usize,
        /// Context window.
        context: usize,
    },
    /// A generation parameter is out of range.
    #[error("invalid parameter `{field}`: {message}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// Allowed range and the value given.
        message: String,
    },
    /// A constraint's JSON schema or grammar cannot be compiled.
    #[error("invalid constraint: {0}")]
    InvalidConstraint(String),
    /// The sequence needs more KV cache than the whole cache holds.
    #[error(
        "prompt of {prompt} tokens plus max_tokens {max_tokens} needs {needed} KV cache positions; the cache holds {capacity} (raise --kv-cache-bytes or lower max_tokens)"
    )]
    KvCacheTooSmall {
        /// Prompt tokens.
        prompt: usize,
        /// Requested completion tokens.
        max_tokens: usize,
        /// Positions needed.
        needed: usize,
        /// Positions the cache holds.
        capacity: usize,
    },
    /// A batch step failed; the sequences in it end (an engine bug).
    #[error("the batch failed: {0}")]
    Batch(String),
    /// A kernel rejected its inputs (a bug or a corrupt model).
    #[error(transparent)]
    Kernel(#[from] palisade_kernels::KernelError),
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EngineError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}
