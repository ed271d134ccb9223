//! The sandbox behind the Responses API's built-in `code_interpreter`: which
//! granted tool plugin serves it, whether the caller's scopes let it run,
//! and one call of it (on a blocking thread, under the plugin's limits).

use std::sync::Arc;

use serde_json::{Value, json};

use super::guard::Scope;
use crate::api::responses::CODE_INTERPRETER;
use crate::api::tools::Function;
use crate::plugins::runtime::LoadedPlugin;
use crate::plugins::tool;

/// The granted plugin behind the built-in `code_interpreter`, and whether
/// the caller may run it (`Err` holds the refusal).
pub(super) type Sandbox = (Result<Arc<LoadedPlugin>, String>, tool::Description);

pub(super) fn granted_sandbox(scope: &Scope) -> Option<Sandbox> {
    let held: &[String] = scope.principal.as_ref().map_or(&[], |p| &p.scopes);
    for g in &scope.rule.tools {
        let Some(p) = scope.pipeline.loaded(&g.plugin) else {
            continue;
        };
        let Ok(d) = tool::describe(p) else { continue };
        if d.name != CODE_INTERPRETER {
            continue;
        }
        let missing: Vec<&str> = g
            .scopes
            .iter()
            .filter(|s| !held.contains(s))
            .map(String::as_str)
            .collect();
        let access = if missing.is_empty() {
            Ok(p.clone())
        } else {
            Err(format!(
                "refused by policy: running `{CODE_INTERPRETER}` needs the scope {} this key does not hold",
                missing.join(", ")
            ))
        };
        return Some((access, d));
    }
    None
}

pub(super) fn sandbox_function(name: &str, d: Option<&tool::Description>) -> Function {
    match d {
        Some(d) => Function::new(
            name,
            &d.description,
            serde_json::from_str(&d.parameters_schema)
                .unwrap_or_else(|_| json!({"type": "object"})),
        ),
        None => Function::new(
            name,
            "Runs Python code in a sandbox and returns its output.",
            json!({"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}),
        ),
    }
}

/// What one tool call came to.
pub(super) struct ToolOutcome {
    /// The tool ran and answered (its answer may be a Python error).
    pub ok: bool,
    /// What the model is told.
    pub for_model: String,
    /// Audit verdict.
    pub verdict: String,
    /// How long the call took.
    pub micros: u64,
}

/// Runs the code interpreter (or reports the policy's refusal).
pub(super) async fn run_tool(
    access: Result<Arc<LoadedPlugin>, String>,
    arguments: &str,
) -> ToolOutcome {
    let refused = |m: String| ToolOutcome {
        ok: false,
        for_model: m,
        verdict: "refused".into(),
        micros: 0,
    };
    let plugin = match access {
        Err(m) => return refused(m),
        Ok(p) => p,
    };
    let args = arguments.to_string();
    let p = plugin.clone();
    let r = tokio::task::spawn_blocking(move || tool::call(&p, &args)).await;
    match r {
        Ok(Ok(call)) => ToolOutcome {
            ok: call.result.is_ok(),
            verdict: if call.result.is_ok() {
                "ok"
            } else {
                "tool-error"
            }
            .into(),
            micros: call.elapsed.as_micros() as u64,
            for_model: call
                .result
                .unwrap_or_else(|e| format!("the tool refused the call: {e}")),
        },
        Ok(Err(f)) => ToolOutcome {
            ok: false,
            verdict: format!("error:{}", f.kind.as_str()),
            micros: 0,
            for_model: format!(
                "the sandbox stopped the call: {}",
                tool::explain(&plugin, &f)
            ),
        },
        Err(e) => ToolOutcome {
            ok: false,
            verdict: "error:panic".into(),
            micros: 0,
            for_model: format!("the tool call failed: {e}"),
        },
    }
}

/// The text of a code interpreter result (`stdout`, `stderr`, the last
/// expression's value, the error), or the message itself.
pub(super) fn logs(result: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(result) else {
        return result.to_string();
    };
    let mut out = String::new();
    for key in ["stdout", "stderr", "result", "error"] {
        if let Some(s) = v[key].as_str().filter(|s| !s.is_empty()) {
            out.push_str(s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}
