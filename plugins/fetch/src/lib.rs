//! The fetch tool: HTTP GET or POST through `wasi:http`, so every request
//! (and every redirect hop) goes through the host's checks: the plugin's
//! `grants.http` allow-list, no loopback, private or link-local address
//! unless the policy lists it, a connection to the very address that was
//! checked, the deadline, and the host's response cap.
//!
//! Arguments: `{"url": "https://api.example.com/x", "method": "GET"|"POST",
//! "body"?: "text", "headers"?: {"name": "value"}}`. Result:
//! `{"status": 200, "headers": {"content-type": "..."}, "body": "...",
//! "truncated": false, "url": "<final URL>", "redirects": 0}`; the body is
//! text (invalid UTF-8 replaced), at most `max_body_bytes`. A refusal or a
//! failure is the tool's error value: "HTTP request denied by the host's
//! policy", "response larger than N bytes", ...
//!
//! Config: `max_body_bytes` (default 65536), `max_redirects` (default 0:
//! a 3xx is returned as it is; at most 10).

mod args;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use palisade_plugin_sdk::http::{self, Request};
use palisade_plugin_sdk::tool::Guest;
use palisade_plugin_sdk::tool::palisade::plugin::config;
use palisade_plugin_sdk::tool::palisade::plugin::types::ToolDescription;

use args::{Args, Config};

static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();

fn settings() -> Result<Config, String> {
    CONFIG
        .get_or_init(|| {
            Config::from_values(
                config::get("max_body_bytes").as_deref(),
                config::get("max_redirects").as_deref(),
            )
        })
        .clone()
}

const SCHEMA: &str = r#"{"type":"object","properties":{"url":{"type":"string","description":"http:// or https:// URL"},"method":{"type":"string","enum":["GET","POST"]},"body":{"type":"string"},"headers":{"type":"object","additionalProperties":{"type":"string"}}},"required":["url"],"additionalProperties":false}"#;

struct Fetch;

fn fetch(a: Args, cfg: Config) -> Result<String, String> {
    let headers: Vec<(String, String)> = a.headers.into_iter().collect();
    let mut url = a.url;
    let mut method: &str = &a.method;
    let mut body = a.body;
    let mut redirects = 0;
    loop {
        let r = http::send(&Request {
            method,
            url: &url,
            headers: &headers,
            body: body.as_deref().map(str::as_bytes),
            max_body: cfg.max_body_bytes,
            truncate: true,
        })
        .map_err(|e| {
            if redirects > 0 {
                format!("{e} (after {redirects} redirect(s), at {url})")
            } else {
                e.to_string()
            }
        })?;
        let location = r
            .headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone());
        if args::is_redirect(r.status) && redirects < cfg.max_redirects {
            if let Some(loc) = location {
                url = args::resolve(&url, &loc)?;
                method = args::method_after(r.status, method);
                if method == "GET" {
                    body = None;
                }
                redirects += 1;
                continue;
            }
        }
        let mut hs = BTreeMap::new();
        for (k, v) in r.headers {
            hs.entry(k)
                .and_modify(|x: &mut String| {
                    x.push_str(", ");
                    x.push_str(&v);
                })
                .or_insert(v);
        }
        return Ok(serde_json::json!({
            "status": r.status,
            "headers": hs,
            "body": String::from_utf8_lossy(&r.body),
            "truncated": r.truncated,
            "url": url,
            "redirects": redirects,
        })
        .to_string());
    }
}

impl Guest for Fetch {
    fn prepare() {
        let _ = settings();
    }

    fn describe() -> ToolDescription {
        ToolDescription {
            name: "fetch".into(),
            description: "Fetches a URL (GET or POST) from the hosts the operator allows; returns the status, headers and body text".into(),
            parameters_schema: SCHEMA.into(),
        }
    }

    fn invoke(arguments: String) -> Result<String, String> {
        let cfg = settings()?;
        fetch(Args::parse(&arguments)?, cfg)
    }
}

palisade_plugin_sdk::tool::export_tool!(Fetch);
