//! Rate limits per principal, per tenant and per client address, kept in
//! the host's counters capability (needs `grants.counters`).
//!
//! Config (each dimension optional; a limit left out is not enforced):
//!
//! ```toml
//! [plugins.rate-limit.config]
//! principal = { requests_per_window = 60, tokens_per_window = 20000, concurrent = 4 }
//! tenant = { requests_per_window = 600 }
//! client = { requests_per_window = 120 }
//! window_secs = 60   # the window of the per-window limits (default 60)
//! ```
//!
//! Tokens are reserved up front (prompt tokens plus `max_tokens` for each
//! choice) and settled against actual use when the request completes.
//! Refusals are 429s with `Retry-After` and OpenAI-style `x-ratelimit-*`
//! headers; nothing a refused request counted stays counted. When the
//! counters fail (a shared Redis backend that is down and configured to
//! deny), requests are refused with 503 `rate_limit_unavailable`.

use palisade_plugin_sdk::admission::palisade::plugin::types::{
    AdmissionVerdict, Denial, Pair, RequestContext,
};
use palisade_plugin_sdk::admission::palisade::plugin::{config, counters};
use palisade_plugin_sdk::admission::{Guest, deny};
use serde::Deserialize;

/// Window of the concurrency counters: long enough never to roll over
/// while a request runs.
const CONCURRENCY_WINDOW_MS: u64 = 365 * 86_400_000;

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Limits {
    requests_per_window: Option<i64>,
    tokens_per_window: Option<i64>,
    concurrent: Option<i64>,
}

#[derive(Clone)]
struct Config {
    dims: Vec<(&'static str, Limits)>,
    window_ms: u64,
}

fn load() -> Result<Config, String> {
    let mut dims = Vec::new();
    for dim in ["principal", "tenant", "client"] {
        if let Some(text) = config::get(dim) {
            let l: Limits = serde_json::from_str(&text).map_err(|e| format!("`{dim}`: {e}"))?;
            dims.push((dim, l));
        }
    }
    for p in config::all() {
        if !["principal", "tenant", "client", "window_secs"].contains(&p.name.as_str()) {
            return Err(format!("unknown config key `{}`", p.name));
        }
    }
    let secs: u64 = match config::get("window_secs") {
        Some(s) => s
            .parse()
            .map_err(|_| format!("`window_secs`: `{s}` is not a number"))?,
        None => 60,
    };
    if secs == 0 || secs > 86_400 {
        return Err("`window_secs` must be 1 to 86400".into());
    }
    Ok(Config {
        dims,
        window_ms: secs * 1000,
    })
}

fn who<'a>(dim: &str, r: &'a RequestContext) -> &'a str {
    match dim {
        "principal" => &r.principal.id,
        "tenant" => &r.principal.tenant,
        _ => &r.client_addr,
    }
}

fn reservation(r: &RequestContext) -> i64 {
    i64::from(r.prompt_tokens) + i64::from(r.max_tokens) * i64::from(r.n.max(1))
}

/// One counter bumped during `admit`, to undo on refusal.
struct Bump {
    key: String,
    delta: i64,
    window_ms: u64,
}

fn undo(bumps: &[Bump]) {
    for b in bumps {
        let _ = counters::add(&b.key, -b.delta, b.window_ms);
    }
}

fn header(name: &str, value: String) -> Pair {
    Pair {
        name: name.into(),
        value,
    }
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

fn refuse(kind: &str, what: &str, limit: i64, value: i64, reset_ms: u64, dim: &str) -> Denial {
    let remaining = (limit - value).max(0);
    Denial {
        status: 429,
        code: "rate_limit_exceeded".into(),
        message: format!(
            "rate limit reached for {what} per {dim}: limit {limit}; try again in {}s",
            secs(reset_ms)
        ),
        headers: vec![
            header("retry-after", secs(reset_ms).to_string()),
            header(&format!("x-ratelimit-limit-{kind}"), limit.to_string()),
            header(
                &format!("x-ratelimit-remaining-{kind}"),
                remaining.to_string(),
            ),
            header(
                &format!("x-ratelimit-reset-{kind}"),
                format!("{}s", secs(reset_ms)),
            ),
        ],
    }
}

fn misconfigured(why: &str) -> AdmissionVerdict {
    deny(
        500,
        "rate_limit_misconfigured",
        &format!("rate limiter misconfigured: {why}"),
    )
}

/// The counters could not be used (a shared backend that is down, or the
/// capability not granted): refuse, fail closed.
fn unavailable(why: &str) -> AdmissionVerdict {
    deny(
        503,
        "rate_limit_unavailable",
        &format!("rate limits cannot be checked right now, so the request was refused: {why}"),
    )
}

thread_local! {
    /// The parsed config, built by `prepare` before any request.
    static CONFIG: std::cell::OnceCell<Result<Config, String>> = const { std::cell::OnceCell::new() };
}

/// The instance's config (parsed once; an instance lives for one request).
fn config_ref() -> Result<Config, String> {
    CONFIG.with(|c| c.get_or_init(load).clone())
}

struct RateLimit;

impl Guest for RateLimit {
    fn prepare() {
        CONFIG.with(|c| {
            c.get_or_init(load);
        });
    }

    fn admit(r: RequestContext) -> AdmissionVerdict {
        let cfg = match config_ref() {
            Ok(c) => c,
            Err(e) => return misconfigured(&e),
        };
        let mut bumps: Vec<Bump> = Vec::new();
        let need = reservation(&r);
        for (dim, l) in &cfg.dims {
            let id = who(dim, &r);
            let checks = [
                (
                    "requests",
                    "requests",
                    l.requests_per_window,
                    1,
                    cfg.window_ms,
                ),
                ("tokens", "tokens", l.tokens_per_window, need, cfg.window_ms),
                (
                    "concurrent",
                    "concurrent requests",
                    l.concurrent,
                    1,
                    CONCURRENCY_WINDOW_MS,
                ),
            ];
            for (kind, what, limit, delta, window_ms) in checks {
                let Some(limit) = limit else { continue };
                if kind == "tokens" && need > limit {
                    undo(&bumps);
                    return deny(
                        429,
                        "tokens_exceed_budget",
                        &format!(
                            "this request reserves {need} tokens (prompt + max_tokens x n), above the budget of {limit} per {dim}; lower max_tokens"
                        ),
                    );
                }
                let key = format!("{kind}:{dim}:{id}");
                let w = match counters::add(&key, delta, window_ms) {
                    Ok(w) => w,
                    Err(e) => {
                        undo(&bumps);
                        return unavailable(&e);
                    }
                };
                bumps.push(Bump {
                    key,
                    delta,
                    window_ms,
                });
                if w.value > limit {
                    undo(&bumps);
                    let reset = if kind == "concurrent" {
                        1000
                    } else {
                        w.reset_ms
                    };
                    return AdmissionVerdict::Deny(refuse(
                        kind,
                        what,
                        limit,
                        w.value - delta,
                        reset,
                        dim,
                    ));
                }
            }
        }
        AdmissionVerdict::Allow
    }

    fn completed(r: RequestContext, completion_tokens: u32) {
        let Ok(cfg) = config_ref() else { return };
        let used = i64::from(r.prompt_tokens) + i64::from(completion_tokens);
        for (dim, l) in &cfg.dims {
            let id = who(dim, &r);
            if l.tokens_per_window.is_some() {
                let _ = counters::add(
                    &format!("tokens:{dim}:{id}"),
                    used - reservation(&r),
                    cfg.window_ms,
                );
            }
            if l.concurrent.is_some() {
                let _ = counters::add(&format!("concurrent:{dim}:{id}"), -1, CONCURRENCY_WINDOW_MS);
            }
        }
    }
}

palisade_plugin_sdk::admission::export_admission!(RateLimit);
