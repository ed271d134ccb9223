//! The fetch tool's pure logic: its arguments, its config, and where a
//! redirect leads. No I/O here, so it is tested natively.

use serde::Deserialize;

/// Most body bytes returned by default (config `max_body_bytes`).
pub const DEFAULT_MAX_BODY: usize = 64 << 10;
/// Redirects followed by default (config `max_redirects`): none, a 3xx
/// comes back as the result.
pub const DEFAULT_MAX_REDIRECTS: u32 = 0;
/// The largest `max_redirects` a policy may set.
pub const MAX_REDIRECTS: u32 = 10;
/// Most request body bytes the tool sends.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// The arguments: `{"url": ..., "method": "GET"|"POST", "body"?, "headers"?}`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default = "get")]
    pub method: String,
    /// Request body (text), POST only.
    pub body: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

impl Args {
    /// Parses and checks the arguments.
    pub fn parse(json: &str) -> Result<Args, String> {
        let mut a: Args = serde_json::from_str(json).map_err(|e| format!("bad arguments: {e}"))?;
        a.method = a.method.to_ascii_uppercase();
        if a.method != "GET" && a.method != "POST" {
            return Err(format!("method must be GET or POST, not `{}`", a.method));
        }
        if a.body.is_some() && a.method != "POST" {
            return Err("a body needs method POST".into());
        }
        if a.body.as_ref().is_some_and(|b| b.len() > MAX_REQUEST_BODY) {
            return Err(format!("body larger than {MAX_REQUEST_BODY} bytes"));
        }
        if !(a.url.starts_with("http://") || a.url.starts_with("https://")) {
            return Err(format!(
                "url must start with http:// or https://, not `{}`",
                a.url
            ));
        }
        Ok(a)
    }
}

/// The tool's settings (`[plugins.NAME.config]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Most body bytes returned; beyond, reading stops and the result says
    /// `truncated`.
    pub max_body_bytes: usize,
    /// Redirects followed (each hop is a new request, checked by the host
    /// like the first); 0: none.
    pub max_redirects: u32,
}

impl Config {
    /// From config values (`None`: not set).
    pub fn from_values(
        max_body: Option<&str>,
        max_redirects: Option<&str>,
    ) -> Result<Self, String> {
        let num = |k: &str, v: &str| -> Result<u64, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("config `{k}`: `{v}` is not a number"))
        };
        let max_body_bytes = match max_body {
            Some(v) => num("max_body_bytes", v)? as usize,
            None => DEFAULT_MAX_BODY,
        };
        let max_redirects = match max_redirects {
            Some(v) => num("max_redirects", v)? as u32,
            None => DEFAULT_MAX_REDIRECTS,
        };
        if max_body_bytes == 0 {
            return Err("config `max_body_bytes` must be positive".into());
        }
        if max_redirects > MAX_REDIRECTS {
            return Err(format!("config `max_redirects` is at most {MAX_REDIRECTS}"));
        }
        Ok(Config {
            max_body_bytes,
            max_redirects,
        })
    }
}

/// Whether `status` is a redirect the tool may follow.
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The method after a redirect: 303 (and 301/302 after a POST, as
/// browsers do) turns into GET without a body; 307 and 308 keep both.
pub fn method_after(status: u16, method: &str) -> &'static str {
    match (status, method) {
        (307 | 308, "POST") => "POST",
        _ => "GET",
    }
}

/// The URL a `Location` header points to, from the request `base`:
/// absolute URLs, scheme-relative (`//host/x`), absolute paths (`/x`) and
/// relative paths (`x`).
pub fn resolve(base: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("bad base URL `{base}`"))?;
    if let Some(r) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{r}"));
    }
    if location.contains("://") {
        return Err(format!("redirect to a non-HTTP URL `{location}` refused"));
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok(format!("{scheme}://{authority}{dir}{location}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let a = Args::parse(r#"{"url": "http://x.org/a"}"#).unwrap();
        assert_eq!(a.method, "GET");
        assert!(Args::parse(r#"{"url": "http://x.org/", "method": "post", "body": "hi"}"#).is_ok());
        for bad in [
            r#"{"url": "ftp://x.org/"}"#,
            r#"{"url": "http://x.org/", "method": "DELETE"}"#,
            r#"{"url": "http://x.org/", "body": "x"}"#,
            r#"{"url": "http://x.org/", "extra": 1}"#,
            r#"{"method": "GET"}"#,
            "[1]",
        ] {
            assert!(Args::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_defaults_and_bounds() {
        assert_eq!(
            Config::from_values(None, None).unwrap(),
            Config {
                max_body_bytes: DEFAULT_MAX_BODY,
                max_redirects: 0
            }
        );
        assert_eq!(
            Config::from_values(Some("10"), Some("3"))
                .unwrap()
                .max_redirects,
            3
        );
        assert!(Config::from_values(Some("x"), None).is_err());
        assert!(Config::from_values(Some("0"), None).is_err());
        assert!(Config::from_values(None, Some("11")).is_err());
    }

    #[test]
    fn redirect_targets_resolve() {
        let b = "http://a.org:8080/x/y?q=1";
        assert_eq!(
            resolve(b, "http://169.254.169.254/").unwrap(),
            "http://169.254.169.254/"
        );
        assert_eq!(resolve(b, "/z").unwrap(), "http://a.org:8080/z");
        assert_eq!(resolve(b, "z").unwrap(), "http://a.org:8080/x/z");
        assert_eq!(resolve(b, "//b.org/").unwrap(), "http://b.org/");
        assert_eq!(resolve("http://a.org", "z").unwrap(), "http://a.org/z");
        assert!(resolve(b, "file:///etc/passwd").is_err());
        assert_eq!(method_after(303, "POST"), "GET");
        assert_eq!(method_after(307, "POST"), "POST");
        assert_eq!(method_after(302, "POST"), "GET");
        assert!(is_redirect(308) && !is_redirect(304));
    }
}
