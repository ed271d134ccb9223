//! `palisade serve` configuration: a TOML file (`--config`), every option
//! also a command-line flag (flags win). Unknown keys are rejected by name.
//!
//! The reference table in the README is generated from [`REFERENCE`] and a
//! test keeps both in sync with these types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HostError;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Listener, logging and timeouts.
    pub server: ServerSection,
    /// Which models to load and how.
    pub model: ModelSection,
    /// Limits on requests.
    pub limits: LimitsSection,
    /// TLS (off unless `cert` and `key` are set).
    pub tls: TlsSection,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The policy file (plugins and route stages); required.
    pub policy: Option<PathBuf>,
    /// API key file for the policy's `config_files.keys` entries.
    pub keys_file: Option<PathBuf>,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Time a client has to send the request headers.
    pub header_read_timeout_secs: u64,
    /// Time a client has to send the request body.
    pub body_read_timeout_secs: u64,
    /// On SIGTERM/SIGINT (or `POST /admin/drain`), how long in-flight
    /// requests may take to finish.
    pub shutdown_timeout_secs: u64,
    /// Address of the admin listener (the `/admin/*` routes, served
    /// nowhere else); `""` or `"off"` turns it off. Must be a loopback
    /// address unless `admin_allow_remote` is set.
    pub admin_listen: String,
    /// Let `admin_listen` be a non-loopback address.
    pub admin_allow_remote: bool,
}

impl ServerSection {
    /// The admin listener's address, `None` when it is off; refuses a
    /// non-loopback address unless `admin_allow_remote`.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, HostError> {
        let text = self.admin_listen.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = |message: String| HostError::Config {
            path: PathBuf::from("server.admin_listen"),
            message,
        };
        let addr: SocketAddr = text.parse().map_err(|e| {
            bad(format!(
                "`{text}`: {e} (give IP:PORT, e.g. 127.0.0.1:8081, or \"off\")"
            ))
        })?;
        if !addr.ip().is_loopback() && !self.admin_allow_remote {
            return Err(bad(format!(
                "`{addr}` is not a loopback address; the admin routes stay on this machine unless `server.admin_allow_remote = true`"
            )));
        }
        Ok(Some(addr))
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            policy: None,
            keys_file: None,
            log_format: LogFormat::Human,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            shutdown_timeout_secs: 30,
            admin_listen: "127.0.0.1:8081".into(),
            admin_allow_remote: false,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[model]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// GGUF file or Hugging Face directory (default: the cached default
    /// model, SmolLM2-135M-Instruct Q4_1).
    pub path: Option<PathBuf>,
    /// A tokenizer.json overriding the model's own.
    pub tokenizer: Option<PathBuf>,
    /// The id clients use in `model` (default: the file or directory name).
    pub name: Option<String>,
    /// Embedding model directory for `/v1/embeddings` (default: the cached
    /// all-MiniLM-L6-v2 if present).
    pub embedding_path: Option<PathBuf>,
    /// Serve no embedding model.
    pub no_embeddings: bool,
    /// Engine compute threads (0: all cores).
    pub threads: usize,
    /// Most prompt + completion tokens per sequence (default: the model's
    /// context length).
    pub max_model_len: Option<usize>,
    /// Bytes of the paged KV cache, allocated once (default: an eighth of
    /// the machine's memory, at most 1 GiB).
    pub kv_cache_bytes: Option<u64>,
    /// A model manifest (`palisade model manifest`): the server refuses to
    /// start unless every file of the model matches it (none: not checked).
    pub manifest: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// Requests generating at once; more wait in a queue.
    pub max_concurrent_requests: usize,
    /// How long a request may wait for a slot before it gets 429 (0: no
    /// waiting).
    pub queue_timeout_ms: u64,
    /// Most sequences in one engine batch; more wait in the engine's queue.
    pub max_num_seqs: usize,
    /// Most tokens in one engine batch (decode tokens plus prompt chunks).
    pub max_num_batched_tokens: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_body_bytes: 2 << 20,
            max_tokens: 4096,
            max_n: 8,
            max_concurrent_requests: 16,
            queue_timeout_ms: 10_000,
            max_num_seqs: 16,
            max_num_batched_tokens: 512,
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate signed
    /// by it (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Every key with its default and meaning, for the README and `--help`.
pub const REFERENCE: &[(&str, &str, &str)] = &[
    (
        "server.listen",
        "\"127.0.0.1:8080\"",
        "address to listen on",
    ),
    (
        "server.policy",
        "none (required)",
        "the policy file: plugins and the stages of every route",
    ),
    (
        "server.keys_file",
        "none",
        "API key file used wherever the policy names `config_files.keys` (created with an admin key, printed once, if missing)",
    ),
    (
        "server.log_format",
        "\"human\"",
        "`human` or `json` log lines",
    ),
    (
        "server.header_read_timeout_secs",
        "10",
        "time a client has to send the request headers",
    ),
    (
        "server.body_read_timeout_secs",
        "30",
        "time a client has to send the request body (408 after)",
    ),
    (
        "server.shutdown_timeout_secs",
        "30",
        "on SIGTERM/SIGINT or `POST /admin/drain`, how long in-flight requests may take to finish",
    ),
    (
        "server.admin_listen",
        "\"127.0.0.1:8081\"",
        "address of the admin listener, the only one serving `/admin/*` (`\"\"` or `\"off\"`: no admin listener); loopback only unless `admin_allow_remote`",
    ),
    (
        "server.admin_allow_remote",
        "false",
        "allow a non-loopback `admin_listen` address",
    ),
    (
        "model.path",
        "cached default model",
        "GGUF file or Hugging Face directory",
    ),
    (
        "model.tokenizer",
        "the model's",
        "a tokenizer.json overriding the model's own",
    ),
    (
        "model.name",
        "file or directory name",
        "the id clients put in `model`",
    ),
    (
        "model.embedding_path",
        "cached all-MiniLM-L6-v2 if present",
        "embedding model directory for `/v1/embeddings`",
    ),
    ("model.no_embeddings", "false", "serve no embedding model"),
    (
        "model.threads",
        "0",
        "engine compute threads (0: all cores)",
    ),
    (
        "model.max_model_len",
        "the model's context length",
        "most prompt + completion tokens per sequence",
    ),
    (
        "model.kv_cache_bytes",
        "1/8 of memory, at most 1 GiB",
        "bytes of the paged KV cache (16-token blocks, allocated once, shared by all sequences)",
    ),
    (
        "model.manifest",
        "none",
        "manifest from `palisade model manifest`; `serve` refuses to start unless the model matches it (sha256 and size of every file)",
    ),
    (
        "limits.max_body_bytes",
        "2097152",
        "largest request body (413 beyond)",
    ),
    (
        "limits.max_tokens",
        "4096",
        "largest `max_tokens` a request may ask for",
    ),
    ("limits.max_n", "8", "largest `n` (choices per request)"),
    (
        "limits.max_concurrent_requests",
        "16",
        "requests generating at once; more wait in a queue",
    ),
    (
        "limits.queue_timeout_ms",
        "10000",
        "how long a request may wait for a slot before 429 (0: no waiting)",
    ),
    (
        "limits.max_num_seqs",
        "16",
        "most sequences in one engine batch; more wait in the engine's queue",
    ),
    (
        "limits.max_num_batched_tokens",
        "512",
        "most tokens in one engine batch (decode tokens plus prompt chunks)",
    ),
    (
        "tls.cert",
        "none",
        "PEM certificate chain; TLS is on when `cert` and `key` are set",
    ),
    ("tls.key", "none", "PEM private key"),
    (
        "tls.client_ca",
        "none",
        "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)",
    ),
];

/// Command-line flags overriding the file (every option has one).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeFlags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// server.listen
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// server.policy
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// server.keys_file
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// server.log_format
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// server.header_read_timeout_secs
    #[arg(long)]
    pub header_read_timeout_secs: Option<u64>,
    /// server.body_read_timeout_secs
    #[arg(long)]
    pub body_read_timeout_secs: Option<u64>,
    /// server.shutdown_timeout_secs
    #[arg(long)]
    pub shutdown_timeout_secs: Option<u64>,
    /// server.admin_listen ("off" or "": no admin listener)
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// server.admin_allow_remote
    #[arg(long)]
    pub admin_allow_remote: bool,
    /// model.path
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// model.tokenizer
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// model.name
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// model.embedding_path
    #[arg(long)]
    pub embedding_model: Option<PathBuf>,
    /// model.no_embeddings
    #[arg(long)]
    pub no_embeddings: bool,
    /// model.threads
    #[arg(long)]
    pub threads: Option<usize>,
    /// model.max_model_len
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// model.kv_cache_bytes
    #[arg(long)]
    pub kv_cache_bytes: Option<u64>,
    /// model.manifest
    #[arg(long)]
    pub model_manifest: Option<PathBuf>,
    /// limits.max_body_bytes
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// limits.max_tokens
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// limits.max_n
    #[arg(long)]
    pub max_n: Option<usize>,
    /// limits.max_concurrent_requests
    #[arg(long)]
    pub max_concurrent_requests: Option<usize>,
    /// limits.queue_timeout_ms
    #[arg(long)]
    pub queue_timeout_ms: Option<u64>,
    /// limits.max_num_seqs
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// limits.max_num_batched_tokens
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// tls.cert
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// tls.key
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// tls.client_ca
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServeConfig {
    /// Parses a TOML document; errors name the unknown or mistyped key.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, HostError> {
        toml::from_str(text).map_err(|e| HostError::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads `--config` (if given) and applies the flags over it.
    pub fn load(flags: &ServeFlags) -> Result<Self, HostError> {
        let mut cfg = match &flags.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| HostError::Config {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                Self::from_toml(&text, p)?
            }
            None => ServeConfig::default(),
        };
        let f = flags.clone();
        macro_rules! set {
            ($src:expr => $dst:expr) => {
                if let Some(v) = $src {
                    $dst = v;
                }
            };
            ($src:expr => opt $dst:expr) => {
                if $src.is_some() {
                    $dst = $src;
                }
            };
        }
        set!(f.listen => cfg.server.listen);
        set!(f.policy => opt cfg.server.policy);
        set!(f.keys_file => opt cfg.server.keys_file);
        set!(f.log_format => cfg.server.log_format);
        set!(f.header_read_timeout_secs => cfg.server.header_read_timeout_secs);
        set!(f.body_read_timeout_secs => cfg.server.body_read_timeout_secs);
        set!(f.shutdown_timeout_secs => cfg.server.shutdown_timeout_secs);
        set!(f.admin_listen => cfg.server.admin_listen);
        cfg.server.admin_allow_remote |= f.admin_allow_remote;
        set!(f.model => opt cfg.model.path);
        set!(f.tokenizer => opt cfg.model.tokenizer);
        set!(f.served_model_name => opt cfg.model.name);
        set!(f.embedding_model => opt cfg.model.embedding_path);
        cfg.model.no_embeddings |= f.no_embeddings;
        set!(f.threads => cfg.model.threads);
        set!(f.max_model_len => opt cfg.model.max_model_len);
        set!(f.kv_cache_bytes => opt cfg.model.kv_cache_bytes);
        set!(f.model_manifest => opt cfg.model.manifest);
        set!(f.max_body_bytes => cfg.limits.max_body_bytes);
        set!(f.max_tokens => cfg.limits.max_tokens);
        set!(f.max_n => cfg.limits.max_n);
        set!(f.max_concurrent_requests => cfg.limits.max_concurrent_requests);
        set!(f.queue_timeout_ms => cfg.limits.queue_timeout_ms);
        set!(f.max_num_seqs => cfg.limits.max_num_seqs);
        set!(f.max_num_batched_tokens => cfg.limits.max_num_batched_tokens);
        set!(f.tls_cert => opt cfg.tls.cert);
        set!(f.tls_key => opt cfg.tls.key);
        set!(f.tls_client_ca => opt cfg.tls.client_ca);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges and combinations.
    pub fn validate(&self) -> Result<(), HostError> {
        let bad = |key: &str, message: String| {
            Err(HostError::Config {
                path: PathBuf::from(key),
                message,
            })
        };
        if self.limits.max_n == 0 || self.limits.max_n > 128 {
            return bad(
                "limits.max_n",
                format!("must be 1 to 128, got {}", self.limits.max_n),
            );
        }
        if self.limits.max_concurrent_requests == 0 {
            return bad(
                "limits.max_concurrent_requests",
                "must be at least 1".into(),
            );
        }
        if self.limits.max_num_seqs == 0 || self.limits.max_num_seqs > 1024 {
            return bad(
                "limits.max_num_seqs",
                format!("must be 1 to 1024, got {}", self.limits.max_num_seqs),
            );
        }
        if self.limits.max_num_batched_tokens < 16 {
            return bad(
                "limits.max_num_batched_tokens",
                format!(
                    "must be at least 16, got {}",
                    self.limits.max_num_batched_tokens
                ),
            );
        }
        if self.model.kv_cache_bytes.is_some_and(|b| b < 1 << 20) {
            return bad("model.kv_cache_bytes", "must be at least 1 MiB".into());
        }
        if self.limits.max_tokens == 0 {
            return bad("limits.max_tokens", "must be at least 1".into());
        }
        if self.limits.max_body_bytes < 1024 {
            return bad(
                "limits.max_body_bytes",
                format!("must be at least 1024, got {}", self.limits.max_body_bytes),
            );
        }
        self.server.admin_addr()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls", "set both `cert` and `key`, or neither".into());
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            return bad(
                "tls.client_ca",
                "needs `cert` and `key` (mTLS is part of TLS)".into(),
            );
        }
        Ok(())
    }

    /// The KV cache size: `model.kv_cache_bytes`, or an eighth of the
    /// machine's memory capped at 1 GiB (256 MiB when memory is unknown).
    pub fn kv_cache_bytes(&self) -> u64 {
        self.model
            .kv_cache_bytes
            .unwrap_or_else(|| total_memory().map_or(256 << 20, |m| (m / 8).min(1 << 30)))
    }

    /// `server.header_read_timeout_secs` as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.server.header_read_timeout_secs.max(1))
    }
}

/// The configuration reference as a Markdown table (for the README).
pub fn reference_markdown() -> String {
    let mut s = String::from("| key | default | meaning |\n|---|---|---|\n");
    for (k, d, m) in REFERENCE {
        s.push_str(&format!("| `{k}` | {d} | {m} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde knows, read from its "expected one of" message.
    fn known_keys(section: &str) -> Vec<String> {
        let doc = if section.is_empty() {
            "zzz_unknown = 1".to_string()
        } else {
            format!("[{section}]\nzzz_unknown = 1")
        };
        let err = ServeConfig::from_toml(&doc, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        let list = err
            .split("expected one of")
            .nth(1)
            .unwrap_or_else(|| panic!("{err}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(|k| k.to_string())
            .collect()
    }

    #[test]
    fn reference_lists_exactly_the_config_keys() {
        let mut keys = Vec::new();
        for section in known_keys("") {
            for k in known_keys(&section) {
                keys.push(format!("{section}.{k}"));
            }
        }
        let mut documented: Vec<String> = REFERENCE.iter().map(|r| r.0.to_string()).collect();
        keys.sort();
        documented.sort();
        assert_eq!(keys, documented);
    }

    #[test]
    fn readme_holds_the_current_reference() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        assert!(
            readme.contains(&reference_markdown()),
            "README's configuration table is stale: paste `palisade config-reference` into it"
        );
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let e = ServeConfig::from_toml("[limits]\nmax_toknes = 5", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_toknes") && e.contains("c.toml"), "{e}");
        let e = ServeConfig::from_toml("[limits]\nmax_n = \"many\"", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_n"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[limits]\nmax_n = 3\nmax_tokens = 100\n[server]\nlisten = \"127.0.0.1:9000\"",
        )
        .unwrap();
        let flags = ServeFlags {
            config: Some(p),
            max_n: Some(5),
            ..Default::default()
        };
        let c = ServeConfig::load(&flags).unwrap();
        assert_eq!(c.limits.max_n, 5);
        assert_eq!(c.limits.max_tokens, 100);
        assert_eq!(c.server.listen.port(), 9000);
    }

    #[test]
    fn admin_listener_is_loopback_unless_allowed() {
        let mut s = ServerSection::default();
        assert_eq!(
            s.admin_addr().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 8081)))
        );
        for off in ["", "off", "OFF"] {
            s.admin_listen = off.into();
            assert_eq!(s.admin_addr().unwrap(), None);
        }
        s.admin_listen = "0.0.0.0:8081".into();
        let e = s.admin_addr().unwrap_err().to_string();
        assert!(
            e.contains("admin_allow_remote") && e.contains("0.0.0.0:8081"),
            "{e}"
        );
        s.admin_allow_remote = true;
        assert!(s.admin_addr().unwrap().is_some());
        s.admin_listen = "[::1]:0".into();
        s.admin_allow_remote = false;
        assert!(s.admin_addr().unwrap().is_some());
        s.admin_listen = "localhost".into();
        assert!(s.admin_addr().unwrap_err().to_string().contains("off"));
    }

    #[test]
    fn tls_needs_both_files() {
        let flags = ServeFlags {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(
            ServeConfig::load(&flags)
                .unwrap_err()
                .to_string()
                .contains("both")
        );
    }
}

/// Total memory from `/proc/meminfo` (Linux), in bytes.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
