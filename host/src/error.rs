//! The host's error type, one enum for the crate.

use std::path::PathBuf;

/// Errors from the host's commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The engine failed (loading, tokenizing, generating).
    #[error(transparent)]
    Engine(#[from] palisade_engine::EngineError),
    /// Writing output failed.
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    /// No `--model` and the default model is not cached.
    #[error(
        "the default model is not at {path}; fetch it with scripts/fetch-model.sh or pass --model"
    )]
    DefaultModelMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A command-line value is out of range.
    #[error("invalid value for --{flag}: {message}")]
    InvalidArgument {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The configuration file or a flag is invalid.
    #[error("configuration {path}: {message}")]
    Config {
        /// The file (or the key, for value errors).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A plugin could not be loaded.
    #[error("{0}")]
    Plugin(String),
    /// A tool call (`palisade tool run`) did not produce a result: the tool
    /// refused, or the sandbox stopped it (deadline, memory, trap).
    #[error("tool `{tool}`: {message}")]
    Tool {
        /// The tool's name in the policy.
        tool: String,
        /// What happened.
        message: String,
    },
    /// The policy file is invalid.
    #[error("policy: {0}")]
    Policy(String),
    /// The server could not start (bind, TLS files).
    #[error("server: {0}")]
    Server(String),
    /// An audit file's hash chain is broken.
    #[error("{path}: line {line}: {reason}")]
    AuditBroken {
        /// The file.
        path: PathBuf,
        /// The first broken line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A path that must be private is not: another user owns it, or its
    /// group or others may write to it.
    #[error("{path} {problem}; fix it with `{fix}`")]
    NotPrivate {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
    /// A model manifest could not be read or written.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model on disk does not match its manifest.
    #[error("model {model} does not match the manifest {manifest}:\n{problems}")]
    ModelMismatch {
        /// The model file or directory.
        model: PathBuf,
        /// The manifest file.
        manifest: PathBuf,
        /// One line per missing, extra or changed file.
        problems: String,
    },
    /// Start-up checks failed (`palisade doctor` runs the same ones).
    #[error("refusing to start:\n{0}")]
    Preflight(String),
    /// The llama.cpp side of the benchmark failed.
    #[error("llama.cpp benchmark: {0}")]
    Peer(String),
}
