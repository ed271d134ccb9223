//! Tool plugins: one call (a fresh instance, `describe`, then `invoke` under
//! the plugin's limits and grants), shared by `palisade plugin test` and
//! `palisade tool run NAME --args JSON --policy FILE`.
//!
//! ```no_run
//! # fn main() -> Result<(), palisade::HostError> {
//! let out = palisade::plugins::tool::run(
//!     std::path::Path::new("policy.toml"),
//!     "code-interpreter",
//!     r#"{"code": "1 + 1"}"#,
//! )?;
//! assert!(out.contains("\"result\": \"2\""));
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::Duration;

use super::bindings::shared::palisade::plugin::types::ToolDescription;
use super::pipeline::Pipeline;
use super::policy::{PluginKind, Policy};
use super::runtime::{FailureKind, Instance, LoadedPlugin, StageFailure, timed};
use crate::HostError;

/// What a tool says it is (name, description, argument schema).
pub type Description = ToolDescription;

/// What one tool call came to (a sandbox failure is the `Err` of
/// [`call`], not this).
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// What the tool says it is.
    pub description: ToolDescription,
    /// The tool's answer: its JSON result, or the error value it returned
    /// (bad arguments, a refusal).
    pub result: Result<String, String>,
    /// How long describe + invoke took.
    pub elapsed: Duration,
}

/// Calls the tool `plugin` with `arguments` (JSON text) on a fresh
/// instance: `describe`, then `invoke`, each under the plugin's deadline
/// (re-armed between them), fuel and memory cap.
pub fn call(plugin: &LoadedPlugin, arguments: &str) -> Result<ToolCall, StageFailure> {
    let (r, elapsed) = timed(|| {
        let (mut store, inst) = plugin.checkout()?;
        let Instance::Tool(t) = inst else {
            let f = StageFailure {
                plugin: plugin.info.name.clone(),
                kind: FailureKind::Instantiate,
                detail: "not a tool plugin".into(),
            };
            plugin.dispose(store);
            return Err(f);
        };
        let r = t
            .call_describe(&mut store)
            .map_err(|e| plugin.classify(&store, e))
            .and_then(|d| {
                plugin.arm(&mut store);
                t.call_invoke(&mut store, arguments)
                    .map(|r| (d, r))
                    .map_err(|e| plugin.classify(&store, e))
            });
        plugin.dispose(store);
        r
    });
    r.map(|(description, result)| ToolCall {
        description,
        result,
        elapsed,
    })
}

/// What the tool `plugin` says it is (asked on a fresh instance once, then
/// remembered for the plugin's life).
pub fn describe(plugin: &LoadedPlugin) -> Result<ToolDescription, StageFailure> {
    if let Some(d) = plugin.described.get() {
        return Ok(d.clone());
    }
    let (mut store, inst) = plugin.checkout()?;
    let Instance::Tool(t) = inst else {
        plugin.dispose(store);
        return Err(StageFailure {
            plugin: plugin.info.name.clone(),
            kind: FailureKind::Instantiate,
            detail: "not a tool plugin".into(),
        });
    };
    let d = t
        .call_describe(&mut store)
        .map_err(|e| plugin.classify(&store, e));
    plugin.dispose(store);
    let d = d?;
    Ok(plugin.described.get_or_init(|| d).clone())
}

/// A sandbox failure in words an operator can act on (which limit, and
/// where it is set).
pub fn explain(plugin: &LoadedPlugin, f: &StageFailure) -> String {
    let l = &plugin.limits;
    match f.kind {
        FailureKind::Deadline => format!(
            "deadline: the call ran longer than {} ms (limits.deadline_ms) and was stopped",
            l.deadline_ms
        ),
        FailureKind::Memory => format!(
            "memory limit: the call needed more than {} MiB (limits.memory_mb) and was stopped ({})",
            l.memory_mb, f.detail
        ),
        FailureKind::Fuel => format!(
            "fuel: the call used its {} units of fuel (limits.fuel) and was stopped",
            l.fuel
        ),
        FailureKind::Trap => format!("trap: the tool crashed ({})", f.detail),
        FailureKind::Instantiate => format!("could not start the tool: {}", f.detail),
    }
}

/// `palisade tool run`: loads the tool `name` of the policy `file` (that
/// plugin only; no ready instances kept beyond the one call) and invokes
/// it with `arguments`. The tool's JSON result, or an error saying whether
/// the tool refused or the sandbox stopped it.
pub fn run(file: &Path, name: &str, arguments: &str) -> Result<String, HostError> {
    let err = |m: String| HostError::Tool {
        tool: name.to_string(),
        message: m,
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(arguments) {
        return Err(err(format!("--args is not JSON: {e}")));
    }
    let mut policy = Policy::load(file, &[])?;
    let Some(spec) = policy.plugins.remove(name) else {
        let tools: Vec<&str> = policy
            .plugins
            .iter()
            .filter(|(_, s)| s.kind == PluginKind::Tool)
            .map(|(n, _)| n.as_str())
            .collect();
        return Err(err(format!(
            "{} defines no plugin of that name (its tools: {})",
            file.display(),
            if tools.is_empty() {
                "none".to_string()
            } else {
                tools.join(", ")
            }
        )));
    };
    if spec.kind != PluginKind::Tool {
        return Err(err(format!("is a {:?} plugin, not a tool", spec.kind)));
    }
    policy.plugins = [(name.to_string(), spec)].into();
    policy.routes.clear();
    policy.runtime.prewarm = 0;
    let pipeline = Pipeline::build(policy)?;
    let plugin = pipeline
        .loaded(name)
        .ok_or_else(|| err("did not load".into()))?;
    match call(plugin, arguments) {
        Ok(ToolCall {
            result: Ok(out), ..
        }) => Ok(out),
        Ok(ToolCall { result: Err(e), .. }) => Err(err(format!("refused: {e}"))),
        Err(f) => Err(err(explain(plugin, &f))),
    }
}
