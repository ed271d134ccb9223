//! `palisade policy check FILE`: load a policy the way the server would
//! (every plugin compiled and pinned) and print each route's pipeline.

use std::fmt::Write as _;
use std::path::Path;

use super::pipeline::Pipeline;
use super::policy::Policy;
use crate::HostError;
use crate::server::ROUTES;

/// Checks `file` and describes it.
pub fn run(file: &Path) -> Result<String, HostError> {
    let policy = Policy::load(file, &ROUTES.iter().map(|r| r.1).collect::<Vec<_>>())?;
    let p = Pipeline::build(policy)?;
    let mut out = format!("policy {} is valid\n\n{}\n", file.display(), p.describe());
    for (method, route) in ROUTES {
        let Some(rule) = p.rule(route) else { continue };
        let mut stages = Vec::new();
        match &rule.auth {
            Some(a) if rule.scopes.is_empty() => stages.push(format!("auth {a}")),
            Some(a) => stages.push(format!("auth {a} (scopes: {})", rule.scopes.join(", "))),
            None => stages.push("PUBLIC".to_string()),
        }
        stages.extend(rule.admission.iter().map(|a| format!("admission {a}")));
        stages.extend(rule.output.iter().map(|o| format!("output {o}")));
        let _ = writeln!(
            out,
            "{method:<5} {route:<24} {}  [fail-{:?}]",
            stages.join(" -> "),
            rule.failure
        );
    }
    Ok(out)
}
