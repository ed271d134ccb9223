//! `palisade doctor`: the checks a server would fail on, run before it
//! starts, from the same configuration and flags as `serve`. One line per
//! check (`ok`, `warn` or `FAIL` and a detail), or JSON with `--json`.
//!
//! `serve` runs the fatal ones itself before it binds ([`preflight`]):
//! private directories, the model manifest and the plugin pins. The port,
//! the model's format and the policy build are checked by `serve` as it
//! starts anyway; the CPU and GPU lines are reports.
//!
//! ```no_run
//! use palisade::config::{ServeConfig, ServeFlags};
//! let cfg = ServeConfig::load(&ServeFlags { policy: Some("policy.toml".into()), ..Default::default() })?;
//! let checks = palisade::doctor::run(&cfg);
//! print!("{}", palisade::doctor::human(&checks));
//! # Ok::<(), palisade::HostError>(())
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::HostError;
use crate::config::{ServeConfig, ServeFlags};
use crate::plugins::policy::Policy;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// The server would refuse to start or would not work.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// The outcome.
    pub status: Status,
    /// What was found (the path, the problem, the fix).
    pub detail: String,
}

impl Check {
    fn new(check: impl Into<String>, status: Status, detail: impl std::fmt::Display) -> Self {
        Check {
            check: check.into(),
            status,
            detail: detail.to_string(),
        }
    }

    fn of(check: impl Into<String>, r: Result<String, HostError>) -> Self {
        match r {
            Ok(d) => Check::new(check, Status::Ok, d),
            Err(e) => Check::new(check, Status::Fail, e),
        }
    }
}

/// Loads the configuration as `serve` would and runs every check; a
/// configuration that does not load is the one (failed) check.
pub fn run_flags(flags: &ServeFlags) -> Vec<Check> {
    match ServeConfig::load(flags) {
        Ok(cfg) => run(&cfg),
        Err(e) => vec![Check::new("config", Status::Fail, e)],
    }
}

/// Every check, in a fixed order.
pub fn run(cfg: &ServeConfig) -> Vec<Check> {
    let mut out = vec![
        listen(cfg),
        tls(cfg),
        model(cfg),
        manifest(cfg, Status::Warn),
    ];
    out.push(embedding_model(cfg));
    let policy = crate::serve::policy_from_config(cfg);
    match &policy {
        Ok(p) => {
            let pins = plugins(p);
            let pinned = pins.iter().all(|c| c.status != Status::Fail);
            out.extend(pins);
            out.push(policy_build(p, pinned));
        }
        Err(e) => out.push(Check::new("policy", Status::Fail, e)),
    }
    out.extend(private_paths(cfg, policy.as_ref().ok()));
    out.push(cpu_features());
    out.push(gpu());
    out
}

/// The checks `serve` refuses to start on: private directories and key
/// files, the model manifest (when configured), every plugin's pin. The
/// error lists each failure.
pub fn preflight(cfg: &ServeConfig) -> Result<(), HostError> {
    let policy = crate::serve::policy_from_config(cfg)?;
    let mut checks = private_paths(cfg, Some(&policy));
    checks.push(manifest(cfg, Status::Ok));
    checks.extend(plugins(&policy));
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("  {}: {}", c.check, c.detail))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(HostError::Preflight(format!(
            "{}\n(`palisade doctor` with the same flags runs every check)",
            failed.join("\n")
        )))
    }
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// One line per check and a summary.
pub fn human(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        // Multi-line details (a manifest's differences) stay indented.
        let detail = c.detail.replace('\n', "\n                               ");
        s.push_str(&format!("{status:<5} {:<24} {detail}\n", c.check));
    }
    let count = |st| checks.iter().filter(|c| c.status == st).count();
    s.push_str(&format!(
        "{} checks: {} failed, {} warnings\n",
        checks.len(),
        count(Status::Fail),
        count(Status::Warn)
    ));
    s
}

/// The checks as a JSON array of `{check, status, detail}`.
pub fn json(checks: &[Check]) -> String {
    serde_json::to_string_pretty(checks).unwrap_or_default() + "\n"
}

fn listen(cfg: &ServeConfig) -> Check {
    let addr = cfg.server.listen;
    if addr.port() == 0 {
        return Check::new(
            "listen",
            Status::Ok,
            format!("{addr}: port 0, any free port"),
        );
    }
    Check::of(
        "listen",
        std::net::TcpListener::bind(addr)
            .map(|_| format!("{addr} is free"))
            .map_err(|e| HostError::Server(format!("cannot listen on {addr}: {e}"))),
    )
}

fn tls(cfg: &ServeConfig) -> Check {
    Check::of(
        "tls",
        crate::server::listener::tls_acceptor(&cfg.tls).map(|a| match (a, &cfg.tls.cert) {
            (Some(_), Some(c)) => format!(
                "on: {}{}",
                c.display(),
                if cfg.tls.client_ca.is_some() {
                    ", client certificates required"
                } else {
                    ""
                }
            ),
            _ => "off (plain HTTP)".into(),
        }),
    )
}

fn model(cfg: &ServeConfig) -> Check {
    let describe = || -> Result<String, HostError> {
        let path = crate::resolve_model(cfg.model.path.as_ref())?;
        if path.is_dir() {
            if !path.join("config.json").is_file() {
                return Err(HostError::Config {
                    path: path.join("config.json"),
                    message: "missing: a Hugging Face model directory needs config.json".into(),
                });
            }
            palisade_engine::hf::SafetensorsDir::open(&path)?;
            Ok(format!(
                "{}: Hugging Face directory (safetensors)",
                path.display()
            ))
        } else {
            palisade_engine::hf::refuse_pickle(&path)?;
            palisade_engine::gguf::GgufFile::open(&path)?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            Ok(format!("{}: GGUF, {} MiB", path.display(), size >> 20))
        }
    };
    Check::of("model", describe())
}

/// The `model manifest` check; `unset` is the status when none is
/// configured (doctor warns, the start-up checks do not).
fn manifest(cfg: &ServeConfig, unset: Status) -> Check {
    let Some(m) = &cfg.model.manifest else {
        return Check::new(
            "model manifest",
            unset,
            "not configured: set model.manifest (`palisade model manifest MODEL --out FILE` writes one)",
        );
    };
    let verify = || -> Result<String, HostError> {
        let path = crate::resolve_model(cfg.model.path.as_ref())?;
        let v = crate::manifest::verify(&path, m)?;
        Ok(format!(
            "{} matches {} ({} files, {} bytes)",
            path.display(),
            m.display(),
            v.files.len(),
            v.total_size()
        ))
    };
    Check::of("model manifest", verify())
}

fn embedding_model(cfg: &ServeConfig) -> Check {
    if cfg.model.no_embeddings {
        return Check::new("embedding model", Status::Ok, "off (model.no_embeddings)");
    }
    match &cfg.model.embedding_path {
        Some(d) if d.join("config.json").is_file() => {
            Check::new("embedding model", Status::Ok, d.display())
        }
        Some(d) => Check::new(
            "embedding model",
            Status::Fail,
            format!("{}: no config.json (model.embedding_path)", d.display()),
        ),
        None => {
            let d = crate::serve::default_embedding_dir();
            if d.join("config.json").is_file() {
                Check::new("embedding model", Status::Ok, d.display())
            } else {
                Check::new(
                    "embedding model",
                    Status::Warn,
                    format!(
                        "none cached at {}: /v1/embeddings will answer 404 (scripts/fetch-embedding-model.sh)",
                        d.display()
                    ),
                )
            }
        }
    }
}

fn plugins(policy: &Policy) -> Vec<Check> {
    policy
        .plugins
        .iter()
        .map(|(name, spec)| {
            Check::of(
                format!("plugin {name}"),
                crate::plugins::read_pinned(name, spec)
                    .map(|_| format!("{} matches its sha256 pin", spec.path.display())),
            )
        })
        .collect()
}

fn policy_build(policy: &Policy, pinned: bool) -> Check {
    if !pinned {
        return Check::new(
            "policy",
            Status::Fail,
            "not built: a plugin above failed its check",
        );
    }
    // A key file the first start creates cannot be read yet.
    let missing: Vec<PathBuf> = crate::serve::key_files(policy)
        .into_iter()
        .filter(|k| !k.exists())
        .collect();
    if let Some(k) = missing.first() {
        return Check::new(
            "policy",
            Status::Warn,
            format!(
                "valid, not built: key file {} does not exist yet (serve creates it with an admin key at its first start)",
                k.display()
            ),
        );
    }
    Check::of(
        "policy",
        crate::plugins::pipeline::Pipeline::build(policy.clone()).map(|p| {
            format!(
                "valid: {} plugins compiled and instantiated, {} route rules",
                p.plugins.len(),
                policy.routes.len()
            )
        }),
    )
}

/// A private directory: refused when it exists and is not private, fine
/// (created 0700 at start) when it does not exist yet.
fn private_dir(check: &str, dir: &Path) -> Check {
    if !dir.exists() {
        return Check::new(
            check,
            Status::Ok,
            format!("{} (created 0700 at start)", dir.display()),
        );
    }
    Check::of(
        check,
        crate::private::check_dir(dir).map(|_| dir.display().to_string()),
    )
}

fn private_paths(cfg: &ServeConfig, policy: Option<&Policy>) -> Vec<Check> {
    let mut out = Vec::new();
    if cfg.model.path.is_none() {
        let model = crate::default_model_path();
        let mut dirs = vec![crate::cache_dir()];
        dirs.extend(model.parent().map(Path::to_path_buf));
        if cfg.model.embedding_path.is_none() && !cfg.model.no_embeddings {
            dirs.push(crate::serve::default_embedding_dir());
        }
        for d in dirs.into_iter().filter(|d| d.exists()) {
            out.push(private_dir("private: model cache", &d));
        }
    }
    let Some(policy) = policy else { return out };
    match crate::plugins::runtime::cache_dir(&policy.runtime) {
        Some(d) => out.push(private_dir("private: plugin cache", &d)),
        None => out.push(Check::new(
            "private: plugin cache",
            Status::Warn,
            "none (no HOME, no [runtime] cache_dir): plugins compile at every start",
        )),
    }
    for k in crate::serve::key_files(policy) {
        out.push(Check::of(
            "private: key file",
            crate::private::check_file_and_dir(&k).map(|exists| {
                if exists {
                    k.display().to_string()
                } else {
                    format!("{} (created 0600 at first start)", k.display())
                }
            }),
        ));
    }
    if let Some(dir) = policy
        .audit
        .path
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        out.push(private_dir("private: audit dir", dir));
    }
    out
}

/// The x86 features this binary was compiled to use (`cfg!`) against
/// what the CPU has (`is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
fn cpu_features() -> Check {
    macro_rules! features {
        ($($f:tt),*) => {
            [$(($f, cfg!(target_feature = $f), std::is_x86_feature_detected!($f))),*]
        };
    }
    let all = features!(
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi1",
        "bmi2",
        "lzcnt",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni"
    );
    let built: Vec<&str> = all.iter().filter(|f| f.1).map(|f| f.0).collect();
    let lacking: Vec<&str> = all.iter().filter(|f| f.1 && !f.2).map(|f| f.0).collect();
    if lacking.is_empty() {
        Check::new(
            "cpu features",
            Status::Ok,
            format!(
                "built for {}; this CPU has them all (run-time kernels: {})",
                if built.is_empty() {
                    "baseline x86-64".to_string()
                } else {
                    built.join(" ")
                },
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    "avx2"
                } else {
                    "scalar"
                }
            ),
        )
    } else {
        Check::new(
            "cpu features",
            Status::Fail,
            format!(
                "built for {} but this CPU lacks {}: rebuild here, or with RUSTFLAGS=\"-C target-cpu=x86-64-v2\"",
                built.join(" "),
                lacking.join(" ")
            ),
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_features() -> Check {
    Check::new(
        "cpu features",
        Status::Ok,
        "not x86-64: features are fixed by the target",
    )
}

/// No configuration key selects a GPU yet: the engine runs on the CPU.
/// What the CUDA probe says is reported for information.
fn gpu() -> Check {
    let probe = match palisade_kernels::cuda::CudaDevice::open(0) {
        Ok(d) => format!("CUDA device 0: {}", d.name()),
        Err(e) => e.to_string(),
    };
    Check::new(
        "gpu",
        Status::Ok,
        format!("not configured (the engine runs on the CPU); {probe}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_and_json_carry_every_check() {
        let checks = vec![
            Check::new("listen", Status::Ok, "127.0.0.1:1 is free"),
            Check::new("plugin a", Status::Fail, "x has sha256 y\nsecond line"),
            Check::new("model manifest", Status::Warn, "not configured"),
        ];
        let h = human(&checks);
        assert!(h.starts_with("ok    listen"), "{h}");
        assert!(
            h.contains("FAIL  plugin a") && h.contains("warn  model manifest"),
            "{h}"
        );
        assert!(h.ends_with("3 checks: 1 failed, 1 warnings\n"), "{h}");
        let j: serde_json::Value = serde_json::from_str(&json(&checks)).unwrap();
        assert_eq!(j[1]["status"], "fail");
        assert_eq!(j[2]["check"], "model manifest");
        assert!(failed(&checks));
        assert!(!failed(&checks[..1]));
    }

    #[test]
    fn a_taken_port_fails_and_port_zero_passes() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = ServeConfig::default();
        cfg.server.listen = taken.local_addr().unwrap();
        let c = listen(&cfg);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains(&cfg.server.listen.to_string()), "{c:?}");
        cfg.server.listen.set_port(0);
        assert_eq!(listen(&cfg).status, Status::Ok);
    }

    #[test]
    fn the_cpu_has_what_the_binary_was_built_for() {
        // This binary runs on the machine that built it.
        let c = cpu_features();
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }
}
