//! API-key authentication.
//!
//! Config (from the policy):
//! - `keys`: a JSON list of `{"id", "tenant", "scopes": [...], "sha256":
//!   hex, "expires": unix-seconds (optional), "models": [...] (optional)}`.
//!   Only hashes are stored; presented keys are hashed and compared in
//!   constant time.
//!
//! Keys are read from `Authorization: Bearer KEY` or `x-api-key: KEY`.

use palisade_plugin_sdk::authenticator::Guest;
use palisade_plugin_sdk::authenticator::palisade::plugin::config;
use palisade_plugin_sdk::authenticator::palisade::plugin::types::{
    Denial, Pair, Principal, RequestMeta,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Key {
    id: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    scopes: Vec<String>,
    sha256: String,
    #[serde(default)]
    expires: Option<u64>,
    #[serde(default)]
    models: Vec<String>,
}

fn unauthorized(message: &str) -> Denial {
    Denial {
        status: 401,
        code: "invalid_api_key".into(),
        message: message.into(),
        headers: vec![Pair {
            name: "www-authenticate".into(),
            value: "Bearer".into(),
        }],
    }
}

fn presented(req: &RequestMeta) -> Option<String> {
    for h in &req.headers {
        if h.name == "authorization" {
            let v = h.value.trim();
            if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                return Some(v[7..].trim().to_string());
            }
        }
        if h.name == "x-api-key" {
            return Some(h.value.trim().to_string());
        }
    }
    None
}

/// Constant-time equality of two byte strings of equal length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct ApiKeyAuth;

impl Guest for ApiKeyAuth {
    fn authenticate(req: RequestMeta) -> Result<Principal, Denial> {
        let Some(key) = presented(&req) else {
            return Err(unauthorized(
                "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
            ));
        };
        let keys: Vec<Key> = match config::get("keys").map(|k| serde_json::from_str(&k)) {
            Some(Ok(k)) => k,
            _ => {
                return Err(Denial {
                    status: 500,
                    code: "auth_misconfigured".into(),
                    message: "authentication is misconfigured".into(),
                    headers: vec![],
                });
            }
        };
        let digest = hex(&Sha256::digest(key.as_bytes()));
        // Compare against every key (no early exit) so timing does not tell
        // which entry matched.
        let mut found: Option<&Key> = None;
        for k in &keys {
            if ct_eq(k.sha256.to_ascii_lowercase().as_bytes(), digest.as_bytes()) {
                found = Some(k);
            }
        }
        let Some(k) = found else {
            return Err(unauthorized("invalid API key"));
        };
        if let (Some(exp), Some(now)) = (
            k.expires,
            config::get("now").and_then(|n| n.parse::<u64>().ok()),
        ) && now >= exp
        {
            return Err(unauthorized("API key expired"));
        }
        let mut labels = Vec::new();
        if !k.models.is_empty() {
            labels.push(Pair {
                name: "models".into(),
                value: k.models.join(","),
            });
        }
        Ok(Principal {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            scopes: k.scopes.clone(),
            labels,
        })
    }
}

palisade_plugin_sdk::authenticator::export_authenticator!(ApiKeyAuth);
