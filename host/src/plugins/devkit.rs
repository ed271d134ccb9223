//! `palisade plugin test`: runs one plugin against recorded requests or
//! streams from a fixture file, through the same pipeline code the server
//! runs, and prints each case's verdict; no model, no server.
//!
//! A fixture is JSON:
//!
//! ```json
//! {
//!   "kind": "admission",
//!   "config": {"max_tokens": 50},
//!   "grants": {"counters": true},
//!   "cases": [
//!     {"name": "small", "request": {"max_tokens": 10}, "expect": "allow"},
//!     {"name": "big", "request": {"max_tokens": 500}, "expect": "deny", "status": 400}
//!   ]
//! }
//! ```
//!
//! Authenticator cases give `request` as request metadata (`method`,
//! `path`, `headers`, `client_addr`) and may `expect` a `principal` id;
//! admission cases give a partial request context (`model`, `messages`,
//! `prompts`, `prompt_tokens`, `max_tokens`, `n`, `temperature`, `top_p`,
//! `principal`, `client_addr`) and optionally `completion_tokens` to settle
//! with; output-filter cases give `chunks` and may expect the released
//! `text`; tool cases give `request` as the JSON arguments and may expect
//! `ok`, `error` (the tool's error value) or `failure` (deadline, memory,
//! trap: `code` names which) and the `text` returned; any case may ask
//! that its output `contains` some text. Cases run in order and share counters, so rate limits can be
//! tested across cases. Any unmet expectation makes the command fail.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::bindings::shared::palisade::plugin::types::{
    Message, Pair, Principal, RequestContext, RequestMeta, Role, Sampling,
};
use super::pipeline::{OutputStop, Pipeline};
use super::policy::{FailureMode, Grants, Limits, PluginKind, PluginSpec, Policy, RouteRule};
use crate::HostError;
use crate::api::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    kind: Option<PluginKind>,
    #[serde(default)]
    config: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    limits: Limits,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: serde_json::Value,
    #[serde(default)]
    chunks: Vec<String>,
    completion_tokens: Option<u32>,
    expect: Option<String>,
    status: Option<u16>,
    code: Option<String>,
    principal: Option<String>,
    text: Option<String>,
    /// Text the output (or, for a failure, its explanation) must contain.
    contains: Option<String>,
}

/// What a case came to.
#[derive(Default)]
struct Verdict {
    verdict: String,
    status: Option<u16>,
    code: Option<String>,
    principal: Option<String>,
    text: Option<String>,
    detail: String,
}

fn err(m: impl std::fmt::Display) -> HostError {
    HostError::Plugin(format!("plugin test: {m}"))
}

fn config_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn str_field<'a>(v: &'a serde_json::Value, k: &str, default: &'a str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or(default)
}

fn num_field(v: &serde_json::Value, k: &str, default: u64) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(default)
}

fn meta(v: &serde_json::Value) -> RequestMeta {
    let headers = v
        .get("headers")
        .and_then(|h| h.as_object())
        .map(|h| {
            h.iter()
                .map(|(k, v)| Pair {
                    name: k.to_ascii_lowercase(),
                    value: v.as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let path = str_field(v, "path", "/v1/chat/completions");
    RequestMeta {
        method: str_field(v, "method", "POST").into(),
        path: path.into(),
        route: str_field(v, "route", path).into(),
        headers,
        client_addr: str_field(v, "client_addr", "127.0.0.1").into(),
    }
}

fn role(s: &str) -> Role {
    match s {
        "system" => Role::System,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    }
}

fn context(v: &serde_json::Value, i: usize) -> RequestContext {
    let messages: Vec<Message> = v
        .get("messages")
        .and_then(|m| m.as_array())
        .map(|m| {
            m.iter()
                .map(|m| Message {
                    role: role(str_field(m, "role", "user")),
                    content: str_field(m, "content", "").into(),
                })
                .collect()
        })
        .unwrap_or_default();
    let prompts: Vec<String> = v
        .get("prompts")
        .and_then(|m| m.as_array())
        .map(|m| {
            m.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let chars: usize = messages.iter().map(|m| m.content.len()).sum::<usize>()
        + prompts.iter().map(String::len).sum::<usize>();
    let p = v.get("principal").cloned().unwrap_or_default();
    let labels = p
        .get("labels")
        .and_then(|l| l.as_object())
        .map(|l| {
            l.iter()
                .map(|(k, v)| Pair {
                    name: k.clone(),
                    value: config_text(v.clone()),
                })
                .collect()
        })
        .unwrap_or_default();
    let f = |k: &str, d: f32| v.get(k).and_then(|x| x.as_f64()).map_or(d, |x| x as f32);
    RequestContext {
        principal: Principal {
            id: str_field(&p, "id", "test").into(),
            tenant: str_field(&p, "tenant", "test").into(),
            scopes: vec!["inference".into()],
            labels,
        },
        route: str_field(v, "route", "/v1/chat/completions").into(),
        model: str_field(v, "model", "model").into(),
        prompt_tokens: num_field(v, "prompt_tokens", (chars / 4 + 8) as u64) as u32,
        max_tokens: num_field(v, "max_tokens", 16) as u32,
        n: num_field(v, "n", 1) as u32,
        messages,
        prompts,
        sampling: Sampling {
            temperature: f("temperature", 1.0),
            top_p: f("top_p", 1.0),
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        },
        client_addr: str_field(v, "client_addr", "127.0.0.1").into(),
        request_id: format!("case-{i}"),
    }
}

fn refused(e: ApiError) -> Verdict {
    match e {
        ApiError::Denied {
            status,
            code,
            message,
            ..
        } => Verdict {
            verdict: "deny".into(),
            status: Some(status),
            code: Some(code),
            principal: None,
            text: None,
            detail: message,
        },
        other => Verdict {
            verdict: "failure".into(),
            status: Some(other.status().as_u16()),
            code: None,
            principal: None,
            text: None,
            detail: other.to_string(),
        },
    }
}

/// Describes the tool, then invokes it with `arguments` (JSON).
fn tool_case(
    p: &Pipeline,
    name: &str,
    arguments: &serde_json::Value,
) -> Result<Verdict, HostError> {
    let plugin = p.loaded(name).ok_or_else(|| err("the tool did not load"))?;
    let mut v = Verdict::default();
    match super::tool::call(plugin, &arguments.to_string()) {
        Ok(c) => {
            let (verdict, text) = match c.result {
                Ok(out) => ("ok", out),
                Err(e) => ("error", e),
            };
            v.verdict = verdict.into();
            v.detail = format!("tool `{}`", c.description.name);
            v.text = Some(text);
        }
        Err(f) => {
            v.verdict = "failure".into();
            v.code = Some(f.kind.as_str().into());
            v.detail = super::tool::explain(plugin, &f);
        }
    }
    Ok(v)
}

/// Runs `fixture` against `plugin`; the report, or an error naming the
/// failed expectations.
pub fn run(plugin: &Path, fixture: &Path, kind: Option<PluginKind>) -> Result<String, HostError> {
    let text =
        std::fs::read_to_string(fixture).map_err(|e| err(format!("{}: {e}", fixture.display())))?;
    let fx: Fixture =
        serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", fixture.display())))?;
    let kind = kind
        .or(fx.kind)
        .ok_or_else(|| err("give the plugin's kind (--kind, or \"kind\" in the fixture)"))?;
    let bytes = std::fs::read(plugin).map_err(|e| err(format!("{}: {e}", plugin.display())))?;
    let name = "under-test".to_string();
    let spec = PluginSpec {
        path: plugin.to_path_buf(),
        sha256: super::sha256_hex(&bytes),
        kind,
        config: fx
            .config
            .into_iter()
            .map(|(k, v)| (k, config_text(v)))
            .collect(),
        config_files: BTreeMap::new(),
        limits: fx.limits,
        grants: fx.grants,
    };
    let n = Some(name.clone());
    let rule = RouteRule {
        path: "*".into(),
        public: kind != PluginKind::Authenticator,
        auth: n.clone().filter(|_| kind == PluginKind::Authenticator),
        scopes: vec![],
        admission: n
            .iter()
            .filter(|_| kind == PluginKind::Admission)
            .cloned()
            .collect(),
        output: n
            .iter()
            .filter(|_| kind == PluginKind::OutputFilter)
            .cloned()
            .collect(),
        failure: FailureMode::Closed,
        tools: vec![],
        max_tool_steps: 1,
    };
    let policy = Policy {
        plugins: BTreeMap::from([(name, spec)]),
        routes: vec![rule.clone()],
        ..Default::default()
    };
    let tool_name = "under-test".to_string();
    let pipeline = Arc::new(Pipeline::build(policy)?);
    let mut out = String::new();
    let mut failed = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let mut recs = Vec::new();
        let v = match kind {
            PluginKind::Authenticator => {
                match pipeline.authenticate(&rule, &meta(&case.request), &mut recs) {
                    Ok(p) => Verdict {
                        verdict: "allow".into(),
                        status: None,
                        code: None,
                        detail: p
                            .as_ref()
                            .map(|p| format!("scopes {:?}", p.scopes))
                            .unwrap_or_default(),
                        principal: p.map(|p| p.id),
                        text: None,
                    },
                    Err(e) => refused(e),
                }
            }
            PluginKind::Admission => {
                let ctx = context(&case.request, i);
                let r = pipeline.admit(&rule, &ctx, &mut recs);
                if r.is_ok() {
                    pipeline.completed(&rule, &ctx, case.completion_tokens.unwrap_or(0));
                }
                match r {
                    Ok(_) => {
                        let rec = recs.last();
                        Verdict {
                            verdict: rec.map_or("allow".into(), |r| r.verdict.clone()),
                            status: None,
                            code: None,
                            principal: None,
                            text: None,
                            detail: rec.and_then(|r| r.detail.clone()).unwrap_or_default(),
                        }
                    }
                    Err(e) => refused(e),
                }
            }
            PluginKind::Tool => tool_case(&pipeline, &tool_name, &case.request)?,
            PluginKind::OutputFilter => {
                let mut chain = pipeline
                    .output_chain(&rule)
                    .map_err(|e| err(e.to_string()))?;
                let mut released = String::new();
                let mut stop = None;
                for c in &case.chunks {
                    match chain.filter(0, c) {
                        Ok(t) => released.push_str(&t),
                        Err(s) => {
                            stop = Some(s);
                            break;
                        }
                    }
                }
                if stop.is_none() {
                    match chain.finish(0) {
                        Ok(t) => released.push_str(&t),
                        Err(s) => stop = Some(s),
                    }
                }
                let (verdict, detail) = match stop {
                    None => ("emit", String::new()),
                    Some(OutputStop::Abort(r)) => ("abort", r),
                    Some(OutputStop::Failed) => ("failure", "the filter failed".into()),
                };
                Verdict {
                    verdict: verdict.into(),
                    status: None,
                    code: None,
                    principal: None,
                    text: Some(released),
                    detail,
                }
            }
        };
        let mut wrong = Vec::new();
        let mut want = |what: &str, exp: Option<String>, got: Option<String>| {
            if let Some(e) = exp
                && Some(&e) != got.as_ref()
            {
                wrong.push(format!(
                    "{what}: expected {e:?}, got {:?}",
                    got.unwrap_or_default()
                ));
            }
        };
        want("verdict", case.expect.clone(), Some(v.verdict.clone()));
        want(
            "status",
            case.status.map(|s| s.to_string()),
            v.status.map(|s| s.to_string()),
        );
        want("code", case.code.clone(), v.code.clone());
        want("principal", case.principal.clone(), v.principal.clone());
        want("text", case.text.clone(), v.text.clone());
        if let Some(c) = &case.contains {
            let seen = format!("{} {}", v.text.as_deref().unwrap_or(""), v.detail);
            if !seen.contains(c.as_str()) {
                wrong.push(format!("expected the output to contain {c:?}"));
            }
        }
        let checked = case.expect.is_some()
            || case.text.is_some()
            || case.status.is_some()
            || case.contains.is_some();
        let mark = match (wrong.is_empty(), checked) {
            (false, _) => "FAIL",
            (true, true) => "pass",
            (true, false) => "----",
        };
        let _ = write!(out, "{mark} {}: {}", case.name, v.verdict);
        if let Some(s) = v.status {
            let _ = write!(out, " {s}");
        }
        if let Some(c) = &v.code {
            let _ = write!(out, " {c}");
        }
        if let Some(p) = &v.principal {
            let _ = write!(out, " principal={p}");
        }
        if let Some(t) = &v.text {
            let _ = write!(out, " text={t:?}");
        }
        if !v.detail.is_empty() {
            let _ = write!(out, " ({})", v.detail);
        }
        out.push('\n');
        for w in &wrong {
            let _ = writeln!(out, "     {w}");
        }
        if !wrong.is_empty() {
            failed.push(case.name.clone());
        }
    }
    let _ = writeln!(out, "{} cases, {} failed", fx.cases.len(), failed.len());
    if failed.is_empty() {
        Ok(out)
    } else {
        print!("{out}");
        Err(err(format!("failed: {}", failed.join(", "))))
    }
}
