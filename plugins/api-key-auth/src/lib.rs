//! API-key authentication.
//!
//! Keys come from the policy in either of two forms (only sha256 hashes,
//! never keys):
//! - a key file (`palisade keys create` writes it) named in the policy as
//!   `config_files.keys`: a JSON object from each key's sha256 (hex) to
//!   `{"id", "tenant", "scopes": [...], "expires": unix-seconds
//!   (optional), "models": [...] (optional)}`. The host expands it into
//!   config values `keys.<sha256>`, so a lookup costs the same with one key
//!   or a million;
//! - inline, `config.keys`: a JSON list of the same records, each with its
//!   `"sha256"`, compared in constant time against every entry.
//!
//! Keys are read from `Authorization: Bearer KEY` or `x-api-key: KEY`.
//! Keys with `expires` need `grants.clock`; without it they are refused
//! (fail closed). `models` become the principal's `models` label, which
//! the request guard enforces.

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
    #[serde(default)]
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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn misconfigured() -> Denial {
    Denial {
        status: 500,
        code: "auth_misconfigured".into(),
        message: "authentication is misconfigured".into(),
        headers: vec![],
    }
}

/// The key whose hash is `digest`: from the key file's expansion, else
/// from the inline list. `Err` when the config cannot be read.
fn lookup(digest: &str) -> Result<Option<Key>, ()> {
    if let Some(rec) = config::get(&format!("keys.{digest}")) {
        return serde_json::from_str(&rec).map(Some).map_err(|_| ());
    }
    let Some(inline) = config::get("keys") else {
        return Ok(None);
    };
    let keys: Vec<Key> = serde_json::from_str(&inline).map_err(|_| ())?;
    // Compare against every key (no early exit) so timing does not tell
    // which entry matched.
    let mut found = None;
    for k in keys {
        if ct_eq(k.sha256.to_ascii_lowercase().as_bytes(), digest.as_bytes()) {
            found = Some(k);
        }
    }
    Ok(found)
}

struct ApiKeyAuth;

impl Guest for ApiKeyAuth {
    /// Nothing to build ahead of a request: the config is read per call.
    fn prepare() {}

    fn authenticate(req: RequestMeta) -> Result<Principal, Denial> {
        let Some(key) = presented(&req) else {
            return Err(unauthorized(
                "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
            ));
        };
        let digest = hex(&Sha256::digest(key.as_bytes()));
        let k = match lookup(&digest) {
            Ok(Some(k)) => k,
            Ok(None) => return Err(unauthorized("invalid API key")),
            Err(()) => return Err(misconfigured()),
        };
        if let Some(exp) = k.expires {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if now == 0 {
                // The clock is not granted: expiry cannot be checked.
                return Err(misconfigured());
            }
            if now >= exp {
                return Err(unauthorized("API key expired"));
            }
        }
        let mut labels = Vec::new();
        if !k.models.is_empty() {
            labels.push(Pair {
                name: "models".into(),
                value: k.models.join(","),
            });
        }
        Ok(Principal {
            id: k.id,
            tenant: k.tenant,
            scopes: k.scopes,
            labels,
        })
    }
}

palisade_plugin_sdk::authenticator::export_authenticator!(ApiKeyAuth);
