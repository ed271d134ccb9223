//! The guard in front of every route: find the route's policy rule, run
//! its authenticator, check scopes, and hand the handler a [`Scope`] (the
//! policy snapshot the request started with, the principal, the stage
//! records). Writes the audit record of requests whose handler did not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::plugins::bindings::shared::palisade::plugin::types::{Principal, RequestMeta};
use crate::plugins::pipeline::{Pipeline, StageRecord};
use crate::plugins::policy::RouteRule;

/// What a handler knows about the request's security context.
#[derive(Clone)]
pub struct Scope {
    /// The policy the request started with.
    pub pipeline: Arc<Pipeline>,
    /// Its rule for this route.
    pub rule: Arc<RouteRule>,
    /// The caller (None on public routes).
    pub principal: Option<Principal>,
    /// Stages run so far.
    pub records: Arc<Mutex<Vec<StageRecord>>>,
    /// Request id.
    pub request_id: String,
    /// Client address.
    pub client: String,
    /// Route pattern.
    pub route: String,
    /// When the request arrived.
    pub started: Instant,
    /// Set once an audit record is (or will be) written by the handler.
    pub audited: Arc<AtomicBool>,
}

/// One audit line.
#[derive(Serialize)]
pub struct AuditRecord<'a> {
    /// Unix milliseconds.
    pub time_ms: u128,
    /// Request id.
    pub request_id: &'a str,
    /// Principal id.
    pub principal: Option<&'a str>,
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// Client address.
    pub client: &'a str,
    /// Route.
    pub route: &'a str,
    /// Model id (generation routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// Prompt tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<usize>,
    /// Completion tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<usize>,
    /// Stages with verdicts and microseconds.
    pub stages: &'a [StageRecord],
    /// HTTP status (or 200 for completed streams).
    pub status: u16,
    /// `ok`, `denied`, `error`, `aborted`, `cancelled`.
    pub outcome: &'a str,
    /// Total microseconds.
    pub micros: u128,
    /// Prompt and completion text, only when `[audit] include_text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<serde_json::Value>,
}

impl Scope {
    /// Adds stage records.
    pub fn add_records(&self, r: impl IntoIterator<Item = StageRecord>) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(r);
    }

    /// Writes the audit record.
    pub fn audit(
        &self,
        state: &AppState,
        status: u16,
        outcome: &str,
        model: Option<&str>,
        tokens: Option<(usize, usize)>,
        text: Option<serde_json::Value>,
    ) {
        self.audited.store(true, Ordering::Relaxed);
        let stages = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let rec = AuditRecord {
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            request_id: &self.request_id,
            principal: self.principal.as_ref().map(|p| p.id.as_str()),
            tenant: self.principal.as_ref().map(|p| p.tenant.as_str()),
            client: &self.client,
            route: &self.route,
            model,
            prompt_tokens: tokens.map(|t| t.0),
            completion_tokens: tokens.map(|t| t.1),
            stages: &stages,
            status,
            outcome,
            micros: self.started.elapsed().as_micros(),
            text,
        };
        state.audit.write(&rec);
    }
}

/// The guard middleware.
pub async fn guard(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next.run(req).await; // 404/405 fallbacks: nothing to protect
    };
    let pipeline = state.pipeline.load_full();
    let client = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let request_id = req
        .extensions()
        .get::<super::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let Some(rule) = pipeline.rule(&route) else {
        // Coverage is checked when the policy loads; refuse if it ever misses.
        tracing::error!(%route, "no policy rule for this route");
        return crate::api::ApiError::Forbidden("no policy covers this route".into())
            .into_response();
    };
    let mut records = Vec::new();
    let principal = if rule.public {
        None
    } else {
        let meta = RequestMeta {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            route: route.clone(),
            headers: req
                .headers()
                .iter()
                .filter_map(|(k, v)| {
                    v.to_str().ok().map(|v| {
                        crate::plugins::bindings::shared::palisade::plugin::types::Pair {
                            name: k.as_str().to_string(),
                            value: v.to_string(),
                        }
                    })
                })
                .collect(),
            client_addr: client.clone(),
        };
        match pipeline.authenticate(&rule, &meta, &mut records) {
            Ok(p) => p,
            Err(e) => {
                let scope = Scope {
                    pipeline: pipeline.clone(),
                    rule: Arc::new(rule),
                    principal: None,
                    records: Arc::new(Mutex::new(records)),
                    request_id,
                    client,
                    route,
                    started,
                    audited: Arc::default(),
                };
                scope.audit(&state, e.status().as_u16(), "denied", None, None, None);
                return e.into_response();
            }
        }
    };
    let scope = Scope {
        pipeline,
        rule: Arc::new(rule),
        principal,
        records: Arc::new(Mutex::new(records)),
        request_id,
        client,
        route,
        started,
        audited: Arc::new(AtomicBool::new(false)),
    };
    req.extensions_mut().insert(scope.clone());
    let resp = next.run(req).await;
    if !scope.audited.load(Ordering::Relaxed) {
        let status = resp.status().as_u16();
        let denied = scope
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.verdict == "deny");
        scope.audit(
            &state,
            status,
            match status {
                _ if denied => "denied",
                0..400 => "ok",
                _ => "error",
            },
            None,
            None,
            None,
        );
    }
    resp
}

/// The audit sink: a JSON-lines file (flushed per line) or the log.
#[derive(Debug, Default)]
pub struct AuditSink {
    file: Option<Mutex<std::fs::File>>,
    /// Records carry prompt and completion text.
    pub include_text: bool,
}

impl AuditSink {
    /// Opens `path` for appending (mode 0600), or logs when `None`.
    pub fn open(
        path: Option<&std::path::Path>,
        include_text: bool,
    ) -> Result<Self, crate::HostError> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(p) = path else {
            return Ok(AuditSink {
                file: None,
                include_text,
            });
        };
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::ensure_dir(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| crate::HostError::Server(format!("audit log {}: {e}", p.display())))?;
        Ok(AuditSink {
            file: Some(Mutex::new(f)),
            include_text,
        })
    }

    /// Writes one record.
    pub fn write(&self, rec: &AuditRecord<'_>) {
        use std::io::Write;
        let Ok(mut line) = serde_json::to_string(rec) else {
            return;
        };
        match &self.file {
            Some(f) => {
                line.push('\n');
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
                    tracing::error!(error = %e, "audit write failed");
                }
            }
            None => tracing::info!(target: "palisade::audit", "{line}"),
        }
    }
}
