//! The filter's configuration: parsed from the plugin's config table
//! (string values; lists as JSON text) and compiled into an [`Engine`].

use serde::Deserialize;

use crate::detectors::{Detector, builtin_names};
use crate::scan::Engine;

/// Keys the filter understands; any other key is a misconfiguration.
pub const KEYS: &[&str] = &["action", "detectors", "patterns"];

/// Longest match an operator pattern may have when it names none.
pub const DEFAULT_MAX_LEN: usize = 64;

/// The largest `max_len` an operator pattern may ask for (larger values
/// are lowered to it).
pub const MAX_MAX_LEN: usize = 1024;

/// What to do when sensitive data shows up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Replace it with `[REDACTED:<kind>]` and go on.
    Redact,
    /// Stop the response.
    Abort,
}

/// An operator-defined pattern.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// The kind the placeholder names.
    pub name: String,
    /// The regex (Rust `regex` syntax; `\b` is an ASCII word boundary).
    pub regex: String,
    /// Longest match in bytes (default 64, at most 1024).
    #[serde(default)]
    pub max_len: Option<usize>,
}

/// The parsed configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Redact or abort.
    pub action: Action,
    /// Enabled built-in detectors, in priority order.
    pub detectors: Vec<&'static str>,
    /// Operator patterns, after the built-ins in priority.
    pub patterns: Vec<Pattern>,
}

impl Settings {
    /// Parses the config entries (`name`, `value`); errors say what is
    /// wrong, for the audit record.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Settings, String> {
        let mut s = Settings {
            action: Action::Redact,
            detectors: builtin_names().collect(),
            patterns: Vec::new(),
        };
        for (key, value) in entries {
            match key {
                "action" => {
                    s.action = match value.trim() {
                        "redact" => Action::Redact,
                        "abort" => Action::Abort,
                        other => {
                            return Err(format!(
                                "action must be `redact` or `abort`, not `{other}`"
                            ));
                        }
                    }
                }
                "detectors" => s.detectors = parse_detectors(value)?,
                "patterns" => s.patterns = parse_patterns(value)?,
                other => return Err(format!("unknown config key `{other}`")),
            }
        }
        Ok(s)
    }

    /// Compiles the enabled detectors into an engine.
    pub fn compile(&self) -> Result<Engine, String> {
        let mut dets = Vec::with_capacity(self.detectors.len() + self.patterns.len());
        for name in &self.detectors {
            dets.push(
                Detector::builtin(name).ok_or_else(|| format!("unknown detector `{name}`"))??,
            );
        }
        for p in &self.patterns {
            let max = p.max_len.unwrap_or(DEFAULT_MAX_LEN).min(MAX_MAX_LEN);
            dets.push(Detector::pattern(&p.name, &p.regex, max)?);
        }
        Ok(Engine::new(dets, self.action == Action::Abort))
    }
}

/// A JSON list of detector names (a comma-separated list also works).
fn parse_detectors(value: &str) -> Result<Vec<&'static str>, String> {
    let names: Vec<String> = if value.trim_start().starts_with('[') {
        serde_json::from_str(value)
            .map_err(|e| format!("detectors: not a JSON list of names: {e}"))?
    } else {
        value
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect()
    };
    // Keep the built-in priority order whatever order the list uses.
    for n in &names {
        if !builtin_names().any(|b| b == n) {
            let known: Vec<_> = builtin_names().collect();
            return Err(format!(
                "unknown detector `{n}` (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(builtin_names()
        .filter(|b| names.iter().any(|n| n == b))
        .collect())
}

/// A JSON list of `{"name", "regex", "max_len"?}` objects.
fn parse_patterns(value: &str) -> Result<Vec<Pattern>, String> {
    let list: Vec<Pattern> = serde_json::from_str(value)
        .map_err(|e| format!("patterns: not a JSON list of {{name, regex, max_len?}}: {e}"))?;
    for p in &list {
        let ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(format!(
                "pattern name `{}` must be 1 to 64 of [A-Za-z0-9_.-]",
                p.name
            ));
        }
        if p.max_len == Some(0) {
            return Err(format!("pattern `{}`: max_len must be at least 1", p.name));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Filter, Verdict};

    #[test]
    fn settings_parse() {
        let s = Settings::parse([
            ("action", "abort"),
            ("detectors", r#"["jwt", "credit_card"]"#),
        ])
        .unwrap();
        assert_eq!(s.action, Action::Abort);
        // Built-in priority order, whatever the list's order.
        assert_eq!(s.detectors, ["jwt", "credit_card"]);
        let s = Settings::parse([]).unwrap();
        assert_eq!(s.action, Action::Redact);
        assert_eq!(s.detectors.len(), 8);
    }

    fn misconfigured(cfg: &[(&str, &str)], why: &str) {
        let engine = Settings::parse(cfg.iter().copied()).and_then(|s| s.compile());
        let err = engine
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{cfg:?} accepted"));
        assert!(err.contains(why), "{err:?} lacks {why:?}");
        let mut f = Filter::new(engine);
        for v in [f.filter(0, "hello"), f.filter(1, "x"), f.finish(0)] {
            match v {
                Verdict::Abort(r) => assert!(
                    r.starts_with("sensitive-data filter misconfigured: "),
                    "{r}"
                ),
                v => panic!("{v:?}"),
            }
        }
    }

    #[test]
    fn misconfiguration_aborts_every_call() {
        misconfigured(&[("action", "block")], "action must be");
        misconfigured(
            &[("detectors", r#"["credit_card", "passport"]"#)],
            "unknown detector `passport`",
        );
        misconfigured(&[("detectors", "[1, 2]")], "not a JSON list");
        misconfigured(
            &[("patterns", r#"[{"name": "x", "regex": "a("}]"#)],
            "pattern `x`",
        );
        misconfigured(
            &[("patterns", r#"[{"name": "x", "regex": "a", "kind": 1}]"#)],
            "unknown field",
        );
        misconfigured(
            &[("patterns", r#"[{"name": "bad name", "regex": "a"}]"#)],
            "pattern name",
        );
        misconfigured(
            &[("patterns", r#"[{"name": "x", "regex": "a", "max_len": 0}]"#)],
            "max_len",
        );
        misconfigured(&[("patterns", r#"{"name": "x"}"#)], "not a JSON list");
        misconfigured(
            &[(
                "patterns",
                r#"[{"name": "x", "regex": "\\w{500}\\w{500}"}]"#,
            )],
            "pattern `x`",
        );
        misconfigured(&[("word", "secret")], "unknown config key `word`");
    }
}
