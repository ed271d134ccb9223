//! The policy file: which plugins exist (path, sha256, config, limits,
//! grants) and which stages guard each route. Typed, unknown keys rejected
//! by name, and checked for coverage: every route the server has must have
//! an auth stage or be marked public, or the policy does not load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HostError;

/// The whole policy.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Runtime settings.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// Audit log settings.
    #[serde(default)]
    pub audit: AuditSection,
    /// Where the counters capability keeps its windows (memory, or Redis
    /// shared by the replicas).
    #[serde(default)]
    pub counters: super::counters::CountersSection,
    /// Plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSpec>,
    /// Route rules, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Where compiled plugins are cached (a private directory).
    pub cache_dir: Option<PathBuf>,
    /// Most plugin instances alive at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Ready instances kept per plugin (made off the request path).
    pub prewarm: usize,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            cache_dir: None,
            max_instances: 512,
            prewarm: 8,
        }
    }
}

/// `[audit]`. Read once, when the server starts (a reload keeps the file
/// and settings it opened).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// JSON-lines file (none: audit records go to the log). Every line
    /// carries `seq` and `prev` (the sha256 of the line before), checked by
    /// `palisade audit verify FILE`.
    pub path: Option<PathBuf>,
    /// Also record the prompt and the completion text (off: records carry
    /// counts, verdicts and timings only).
    pub include_text: bool,
    /// When written lines are forced to disk: `always` (before the
    /// response they belong to completes; lines written together share one
    /// fsync), `interval` (every `fsync_interval_ms`), or `never`. In every
    /// mode a line is in the file before its response completes, so a
    /// crash of the process loses none; the policy is about power loss.
    pub fsync: crate::audit::FsyncPolicy,
    /// With `fsync = "interval"`: most milliseconds a written line waits
    /// for its fsync.
    pub fsync_interval_ms: u64,
    /// Rotate when the file would grow past this many bytes (0: never):
    /// `audit.jsonl` becomes `audit.jsonl.1`, `.1` becomes `.2` ...; the
    /// chain goes on in the new file.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` to `audit.jsonl.KEEP`); older
    /// ones are deleted.
    pub keep: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            path: None,
            include_text: false,
            fsync: crate::audit::FsyncPolicy::Always,
            fsync_interval_ms: 1000,
            max_bytes: 100 << 20,
            keep: 10,
        }
    }
}

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// `authenticator`.
    Authenticator,
    /// `admission`.
    Admission,
    /// `output-filter`.
    OutputFilter,
    /// `tool`.
    Tool,
}

/// One plugin.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The component file (relative paths are relative to the policy file).
    pub path: PathBuf,
    /// Its sha256 (hex); a mismatch refuses to load.
    pub sha256: String,
    /// Which world it implements.
    pub kind: PluginKind,
    /// Values the plugin reads with `config::get`. Strings are passed as
    /// they are; numbers and booleans as their text; arrays and tables as
    /// JSON text.
    #[serde(default, deserialize_with = "config_values")]
    pub config: BTreeMap<String, String>,
    /// Files the host reads for the plugin (at every load and reload; the
    /// plugin itself gets no file access): `NAME = "path"`. A file holding
    /// a JSON object gives one config value per entry, `NAME.KEY` (each
    /// value as JSON text unless it is a string); any other file gives its
    /// whole text as `NAME`.
    #[serde(default)]
    pub config_files: BTreeMap<String, PathBuf>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Capabilities.
    #[serde(default)]
    pub grants: Grants,
}

/// Largest file `config_files` may name.
pub const MAX_CONFIG_FILE: u64 = 64 << 20;

fn config_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, toml::Value> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => serde_json::to_string(&other).unwrap_or_default(),
            };
            (k, text)
        })
        .collect())
}

impl PluginSpec {
    /// The config the plugin sees: `config` plus what `config_files`
    /// expand to (read now, so a reload picks up a changed file).
    pub fn effective_config(&self, name: &str) -> Result<BTreeMap<String, String>, HostError> {
        let mut out = self.config.clone();
        for (key, path) in &self.config_files {
            let err = |e: String| {
                HostError::Policy(format!(
                    "plugin `{name}`: config file `{key}` ({}): {e}",
                    path.display()
                ))
            };
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.len() > MAX_CONFIG_FILE {
                return Err(err(format!("larger than {MAX_CONFIG_FILE} bytes")));
            }
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(map)) => {
                    for (k, v) in map {
                        let v = match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        out.insert(format!("{key}.{k}"), v);
                    }
                }
                _ => {
                    out.insert(key.clone(), text);
                }
            }
        }
        Ok(out)
    }
}

/// Limits of one plugin call.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap in MiB.
    pub memory_mb: u32,
    /// Wall-clock deadline per call in milliseconds.
    pub deadline_ms: u64,
    /// Instruction fuel per call (0: no fuel metering, deadline only).
    pub fuel: u64,
    /// Most bytes of one outgoing HTTP response body (`grants.http`); a
    /// longer body fails with `HTTP-response-body-size` once it passes
    /// this, without reading the rest.
    pub max_http_response_bytes: u64,
}

/// Default of [`Limits::max_http_response_bytes`]: 8 MiB.
pub const DEFAULT_MAX_HTTP_RESPONSE_BYTES: u64 = 8 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            deadline_ms: 50,
            fuel: 0,
            max_http_response_bytes: DEFAULT_MAX_HTTP_RESPONSE_BYTES,
        }
    }
}

/// Capabilities a plugin may use (all off unless granted, but `log`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Write to the host log.
    pub log: bool,
    /// Use the counters capability.
    pub counters: bool,
    /// See the real clock (otherwise it reads zero).
    pub clock: bool,
    /// Hosts the plugin may reach with `wasi:http` (none: every request is
    /// refused with `HTTP-request-denied`).
    pub http: Vec<super::http::HostPattern>,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            log: true,
            counters: false,
            clock: false,
            http: Vec::new(),
        }
    }
}

/// What happens when a stage fails (trap, deadline, limit).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse the request (the default).
    #[default]
    Closed,
    /// Skip the stage and go on.
    Open,
}

/// Stages for the routes matching `path`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A route pattern as the server registers it (`/v1/models/{id}`), or
    /// a prefix ending in `*` (`/v1/*`), or `*` for all.
    pub path: String,
    /// No authentication (only where explicitly wanted, e.g. `/health`).
    #[serde(default)]
    pub public: bool,
    /// The authenticator plugin.
    pub auth: Option<String>,
    /// Scopes the principal must hold.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Admission plugins, in order.
    #[serde(default)]
    pub admission: Vec<String>,
    /// Output filters, in order.
    #[serde(default)]
    pub output: Vec<String>,
    /// Failure mode of these stages.
    #[serde(default)]
    pub failure: FailureMode,
    /// Tool plugins the server may run for the model on these routes
    /// (`/v1/responses`); a call of any other tool is refused.
    #[serde(default)]
    pub tools: Vec<ToolGrant>,
    /// Most model turns that call server tools in one request (1 to 32);
    /// the turn after the last one answers without tools.
    #[serde(default = "default_tool_steps")]
    pub max_tool_steps: u32,
}

fn default_tool_steps() -> u32 {
    4
}

/// One tool a route grants.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolGrant {
    /// The tool plugin (`kind = "tool"`).
    pub plugin: String,
    /// Scopes the principal must hold (beyond the route's) for the tool to
    /// run; empty: everyone the route admits.
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl RouteRule {
    /// Whether this rule covers the route pattern `route`.
    pub fn matches(&self, route: &str) -> bool {
        match self.path.strip_suffix('*') {
            Some(prefix) => route.starts_with(prefix),
            None => self.path == route,
        }
    }
}

/// Routes that are public unless the policy says otherwise.
pub const DEFAULT_PUBLIC: &[&str] = &["/health"];

impl Policy {
    /// Reads and checks a policy file against the server's routes.
    pub fn load(path: &Path, routes: &[&str]) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HostError::Policy(format!("{}: {e}", path.display())))?;
        Self::parse(&text, path, routes)
    }

    /// Parses and checks policy text read from `path` (named in errors;
    /// relative plugin and config file paths are resolved against its
    /// directory).
    pub fn parse(text: &str, path: &Path, routes: &[&str]) -> Result<Self, HostError> {
        let mut p: Policy = toml::from_str(text)
            .map_err(|e| HostError::Policy(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for spec in p.plugins.values_mut() {
            if spec.path.is_relative() {
                spec.path = base.join(&spec.path);
            }
            for f in spec.config_files.values_mut() {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        p.check(routes)?;
        Ok(p)
    }

    /// Checks references, kinds, limits and route coverage.
    pub fn check(&self, routes: &[&str]) -> Result<(), HostError> {
        let bad = |m: String| Err(HostError::Policy(m));
        for (name, spec) in &self.plugins {
            if spec.sha256.len() != 64 || !spec.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return bad(format!("plugin `{name}`: sha256 must be 64 hex digits"));
            }
            let l = spec.limits;
            if l.memory_mb == 0
                || l.memory_mb > 4096
                || l.deadline_ms == 0
                || l.deadline_ms > 60_000
                || l.max_http_response_bytes == 0
            {
                return bad(format!(
                    "plugin `{name}`: limits out of range (memory_mb 1..=4096, deadline_ms 1..=60000, max_http_response_bytes at least 1)"
                ));
            }
        }
        self.counters.check(
            self.plugins
                .iter()
                .filter(|(_, s)| s.grants.counters)
                .map(|(n, s)| (n.as_str(), s.limits.deadline_ms)),
        )?;
        let kind_of = |name: &str, want: PluginKind, rule: &RouteRule| -> Result<(), HostError> {
            match self.plugins.get(name) {
                None => Err(HostError::Policy(format!(
                    "route `{}` names plugin `{name}`, which is not defined",
                    rule.path
                ))),
                Some(s) if s.kind != want => Err(HostError::Policy(format!(
                    "route `{}` uses `{name}` as {want:?}, but it is a {:?} plugin",
                    rule.path, s.kind
                ))),
                Some(_) => Ok(()),
            }
        };
        for rule in &self.routes {
            if rule.public && rule.auth.is_some() {
                return bad(format!(
                    "route `{}` is both public and has an auth stage",
                    rule.path
                ));
            }
            if !rule.public && rule.auth.is_none() {
                return bad(format!(
                    "route `{}` has no auth stage; give it one or mark it `public = true`",
                    rule.path
                ));
            }
            if rule.public && !rule.scopes.is_empty() {
                return bad(format!(
                    "route `{}` is public but requires scopes",
                    rule.path
                ));
            }
            if let Some(a) = &rule.auth {
                kind_of(a, PluginKind::Authenticator, rule)?;
            }
            for a in &rule.admission {
                kind_of(a, PluginKind::Admission, rule)?;
            }
            for o in &rule.output {
                kind_of(o, PluginKind::OutputFilter, rule)?;
            }
            for t in &rule.tools {
                kind_of(&t.plugin, PluginKind::Tool, rule)?;
            }
            if !(1..=32).contains(&rule.max_tool_steps) {
                return bad(format!(
                    "route `{}`: max_tool_steps must be 1 to 32, got {}",
                    rule.path, rule.max_tool_steps
                ));
            }
        }
        let uncovered: Vec<&str> = routes
            .iter()
            .copied()
            .filter(|r| self.rule_for(r).is_none() && !DEFAULT_PUBLIC.contains(r))
            .collect();
        if !uncovered.is_empty() {
            return bad(format!(
                "these routes have no policy entry (give each an auth stage or `public = true`): {}",
                uncovered.join(", ")
            ));
        }
        Ok(())
    }

    /// The rule governing `route` (first match).
    pub fn rule_for(&self, route: &str) -> Option<&RouteRule> {
        self.routes.iter().find(|r| r.matches(route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[&str] = &["/v1/chat/completions", "/metrics", "/health"];

    fn parse(s: &str) -> Result<Policy, HostError> {
        let p: Policy = toml::from_str(s).map_err(|e| HostError::Policy(e.to_string()))?;
        p.check(ROUTES)?;
        Ok(p)
    }

    const AUTH: &str = "[plugins.keys]\npath = \"k.wasm\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nkind = \"authenticator\"\n";

    #[test]
    fn uncovered_routes_are_named() {
        let e = parse(&format!(
            "{AUTH}[[routes]]\npath = \"/v1/*\"\nauth = \"keys\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/metrics") && !e.contains("/health") && !e.contains("/v1/chat"),
            "{e}"
        );
    }

    #[test]
    fn a_full_policy_loads() {
        let p = parse(&format!("{AUTH}[[routes]]\npath = \"/v1/*\"\nauth = \"keys\"\nscopes = [\"inference\"]\n[[routes]]\npath = \"/metrics\"\nauth = \"keys\"\nscopes = [\"metrics\"]\n")).unwrap();
        assert_eq!(
            p.rule_for("/v1/chat/completions").unwrap().scopes,
            ["inference"]
        );
    }

    #[test]
    fn unknown_keys_kinds_and_names_are_refused() {
        let e = parse(&format!(
            "{AUTH}[[routes]]\npath = \"*\"\nauth = \"keys\"\nscope = [\"x\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("scope"), "{e}");
        let e = parse(&format!(
            "{AUTH}[[routes]]\npath = \"*\"\nauth = \"nokeys\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("nokeys"), "{e}");
        let e = parse(&format!(
            "{AUTH}[[routes]]\npath = \"*\"\nauth = \"keys\"\nadmission = [\"keys\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("Authenticator"), "{e}");
        let e = parse("[[routes]]\npath = \"*\"\n").unwrap_err().to_string();
        assert!(e.contains("public = true"), "{e}");
    }

    #[test]
    fn tool_grants_name_tool_plugins_and_bound_the_steps() {
        let tool = "[plugins.py]\npath = \"p.wasm\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nkind = \"tool\"\n";
        let ok = parse(&format!(
            "{AUTH}{tool}[[routes]]\npath = \"*\"\nauth = \"keys\"\ntools = [{{ plugin = \"py\", scopes = [\"tools\"] }}]\nmax_tool_steps = 2\n"
        ))
        .unwrap();
        let rule = ok.rule_for("/v1/chat/completions").unwrap();
        assert_eq!(rule.tools[0].scopes, ["tools"]);
        assert_eq!(rule.max_tool_steps, 2);
        let e = parse(&format!(
            "{AUTH}{tool}[[routes]]\npath = \"*\"\nauth = \"keys\"\ntools = [{{ plugin = \"keys\" }}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("Authenticator"), "{e}");
        let e = parse(&format!(
            "{AUTH}{tool}[[routes]]\npath = \"*\"\nauth = \"keys\"\nmax_tool_steps = 0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_tool_steps"), "{e}");
    }
}
