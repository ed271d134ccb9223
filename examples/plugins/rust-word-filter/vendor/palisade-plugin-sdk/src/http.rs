//! Outgoing HTTP through `wasi:http/outgoing-handler`. The host refuses
//! every request unless the policy lists the host in the plugin's
//! `grants.http`, refuses non-public addresses that are not listed, never
//! follows redirects itself, bounds each request by the plugin's deadline
//! and caps response bodies (`limits.max_http_response_bytes`).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Header names (lower case) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// Body bytes (at most the `max_body` asked for).
    pub body: Vec<u8>,
    /// The body was longer than `max_body` (only with [`Request::truncate`];
    /// reading stopped there).
    pub truncated: bool,
}

/// Why a request failed. `Denied` is the host's allow-list refusing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http://host[:port]/path` or `https://...`.
    BadUrl(String),
    /// The host's policy refused the request.
    Denied,
    /// The host refused the address the name resolves to (loopback,
    /// private, link-local, ...; not listed in the policy).
    AddressProhibited,
    /// The body was longer than the limit (`max_body`, or the host's cap
    /// when it gives one).
    TooLarge(Option<u64>),
    /// A header could not be set (a forbidden or malformed header).
    BadHeader(String),
    /// Any other failure, as the host reported it.
    Failed(String),
}

impl core::fmt::Display for HttpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HttpError::BadUrl(u) => write!(f, "not an http(s) URL: {u}"),
            HttpError::Denied => f.write_str("HTTP request denied by the host's policy"),
            HttpError::AddressProhibited => f.write_str(
                "HTTP request refused by the host: the destination is a loopback, private or link-local address",
            ),
            HttpError::TooLarge(Some(n)) => write!(f, "response larger than {n} bytes"),
            HttpError::TooLarge(None) => f.write_str("response body too large"),
            HttpError::BadHeader(h) => write!(f, "header `{h}` cannot be sent"),
            HttpError::Failed(e) => write!(f, "HTTP request failed: {e}"),
        }
    }
}

fn code(e: ErrorCode) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        ErrorCode::DestinationIpProhibited => HttpError::AddressProhibited,
        ErrorCode::HttpResponseBodySize(n) => HttpError::TooLarge(n),
        other => HttpError::Failed(format!("{other:?}")),
    }
}

/// A failed body read the host described only in text: its response cap
/// ("... body size exceeds limit: N bytes") becomes [`HttpError::TooLarge`].
fn body_error(text: String) -> HttpError {
    if text.contains("body size exceeds limit") {
        let n = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|t| !t.is_empty())
            .last()
            .and_then(|t| t.parse().ok());
        return HttpError::TooLarge(n);
    }
    HttpError::Failed(text)
}

/// One outgoing request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `POST`, `PUT`, `DELETE`, `HEAD`, `PATCH` or `OPTIONS`.
    pub method: &'a str,
    /// `http://host[:port]/path?query` or `https://...`.
    pub url: &'a str,
    /// Headers to send.
    pub headers: &'a [(String, String)],
    /// Body to send (none: no body).
    pub body: Option<&'a [u8]>,
    /// Most body bytes to read.
    pub max_body: usize,
    /// On a longer body, stop reading at `max_body` and mark the response
    /// `truncated` (otherwise: [`HttpError::TooLarge`]).
    pub truncate: bool,
}

/// `GET url`, reading at most `max_body` bytes of the body.
pub fn get(url: &str, max_body: usize) -> Result<Response, HttpError> {
    send(&Request {
        method: "GET",
        url,
        headers: &[],
        body: None,
        max_body,
        truncate: false,
    })
}

fn method(m: &str) -> Method {
    match m.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    }
}

/// Sends `r` and reads the response (no redirects are followed: a 3xx
/// comes back as it is).
pub fn send(r: &Request<'_>) -> Result<Response, HttpError> {
    let url = r.url;
    let (scheme, rest) = if let Some(x) = url.strip_prefix("http://") {
        (Scheme::Http, x)
    } else if let Some(x) = url.strip_prefix("https://") {
        (Scheme::Https, x)
    } else {
        return Err(HttpError::BadUrl(url.into()));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::BadUrl(url.into()));
    }
    let fields = Fields::new();
    for (k, v) in r.headers {
        fields
            .append(k, v.as_bytes())
            .map_err(|_| HttpError::BadHeader(k.clone()))?;
    }
    // A body goes with its length (not chunked): simple servers need it.
    if let Some(b) = r.body
        && !r
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        fields
            .append("content-length", b.len().to_string().as_bytes())
            .map_err(|_| HttpError::BadHeader("content-length".into()))?;
    }
    let req = OutgoingRequest::new(fields);
    let bad = |_| HttpError::BadUrl(url.into());
    req.set_method(&method(r.method)).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(&path)).map_err(bad)?;
    let body = req
        .body()
        .map_err(|_| HttpError::Failed("request body".into()))?;
    let pending = outgoing_handler::handle(req, None).map_err(code)?;
    if let Some(bytes) = r.body {
        let out = body
            .write()
            .map_err(|_| HttpError::Failed("request body stream".into()))?;
        for chunk in bytes.chunks(4096) {
            out.blocking_write_and_flush(chunk)
                .map_err(|e| HttpError::Failed(format!("sending the body: {e:?}")))?;
        }
        drop(out);
    }
    OutgoingBody::finish(body, None).map_err(code)?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or_else(|| HttpError::Failed("no response".into()))?
        .map_err(|_| HttpError::Failed("response taken twice".into()))?
        .map_err(code)?;
    let status = resp.status();
    let headers = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let incoming = resp
        .consume()
        .map_err(|_| HttpError::Failed("response body".into()))?;
    let stream = incoming
        .stream()
        .map_err(|_| HttpError::Failed("response body stream".into()))?;
    let mut out = Vec::new();
    let mut truncated = false;
    loop {
        let want = (r.max_body - out.len()).clamp(1, 64 << 10) as u64;
        match stream.blocking_read(want) {
            Ok(chunk) => {
                if out.len() + chunk.len() > r.max_body {
                    if !r.truncate {
                        return Err(HttpError::TooLarge(Some(r.max_body as u64)));
                    }
                    out.extend_from_slice(&chunk[..r.max_body - out.len()]);
                    truncated = true;
                    break;
                }
                out.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match wasip2::http::types::http_error_code(&e) {
                    Some(c) => code(c),
                    None => body_error(e.to_debug_string()),
                });
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: out,
        truncated,
    })
}
