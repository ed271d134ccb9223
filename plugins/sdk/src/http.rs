//! Outgoing HTTP through `wasi:http/outgoing-handler`. The host refuses
//! every request unless the policy lists the host in the plugin's
//! `grants.http`, and bounds each request by the plugin's deadline.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (at most the `max_body` asked for).
    pub body: Vec<u8>,
}

/// Why a request failed. `Denied` is the host's allow-list refusing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http://host[:port]/path` or `https://...`.
    BadUrl(String),
    /// The host's policy refused the request.
    Denied,
    /// The body was longer than `max_body`.
    TooLarge,
    /// Any other failure, as the host reported it.
    Failed(String),
}

impl core::fmt::Display for HttpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HttpError::BadUrl(u) => write!(f, "not an http(s) URL: {u}"),
            HttpError::Denied => f.write_str("HTTP request denied by the host's policy"),
            HttpError::TooLarge => f.write_str("response body too large"),
            HttpError::Failed(e) => write!(f, "HTTP request failed: {e}"),
        }
    }
}

fn code(e: ErrorCode) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        other => HttpError::Failed(format!("{other:?}")),
    }
}

/// `GET url`, reading at most `max_body` bytes of the body.
pub fn get(url: &str, max_body: usize) -> Result<Response, HttpError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(HttpError::BadUrl(url.into()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::BadUrl(url.into()));
    }
    let req = OutgoingRequest::new(Fields::new());
    let bad = |_| HttpError::BadUrl(url.into());
    req.set_method(&Method::Get).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(path)).map_err(bad)?;
    let body = req
        .body()
        .map_err(|_| HttpError::Failed("request body".into()))?;
    OutgoingBody::finish(body, None).map_err(code)?;
    let pending = outgoing_handler::handle(req, None).map_err(code)?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or_else(|| HttpError::Failed("no response".into()))?
        .map_err(|_| HttpError::Failed("response taken twice".into()))?
        .map_err(code)?;
    let status = resp.status();
    let incoming = resp
        .consume()
        .map_err(|_| HttpError::Failed("response body".into()))?;
    let stream = incoming
        .stream()
        .map_err(|_| HttpError::Failed("response body stream".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => {
                if out.len() + chunk.len() > max_body {
                    return Err(HttpError::TooLarge);
                }
                out.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(HttpError::Failed(e.to_debug_string()));
            }
        }
    }
    Ok(Response { status, body: out })
}
