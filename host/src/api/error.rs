//! Errors as the OpenAI API shapes them: `{"error": {"message", "type",
//! "param", "code"}}` with the matching HTTP status. The mapping from error
//! to status lives here and only here; [`ApiError::sse_event`] is the one
//! other place an error is rendered (inside a stream).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade_engine::EngineError;
use serde::Serialize;

/// An error returned to an API client.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed or invalid request (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, naming the field and value.
        message: String,
        /// The offending field, as a JSON path.
        param: Option<String>,
    },
    /// No or invalid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the needed scope (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown model (404, code `model_not_found`).
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// Unknown route (404).
    #[error("no route for {method} {path}")]
    RouteNotFound {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// No API key with this id in the key file (404, code `key_not_found`).
    #[error("no key named `{0}`")]
    KeyNotFound(String),
    /// Wrong method on a known route (405).
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// The client was too slow sending the body (408): the whole body must
    /// arrive within `server.body_read_timeout_secs` of the headers.
    #[error(
        "the request body was not received within {secs} s (server.body_read_timeout_secs); send the whole body faster"
    )]
    BodyTimeout {
        /// The configured total body read timeout, in seconds.
        secs: u64,
    },
    /// Body over the configured limit (413).
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Semantically invalid (422), e.g. a prompt that does not fit.
    #[error("{message}")]
    Unprocessable {
        /// Why.
        message: String,
        /// The field.
        param: Option<String>,
    },
    /// Too many requests (429).
    #[error("{message}")]
    RateLimited {
        /// Why.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: Option<u64>,
    },
    /// A plugin refused the request with its own status and code.
    #[error("{message}")]
    Denied {
        /// HTTP status (clamped to 400..=599).
        status: u16,
        /// Machine-readable code.
        code: String,
        /// Message for the client.
        message: String,
        /// Extra headers (e.g. `retry-after`).
        headers: Vec<(String, String)>,
    },
    /// A server fault; details are logged, never sent (500).
    #[error("internal server error")]
    Internal,
    /// Loading, draining, or otherwise unable to serve (503).
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A 400 naming the field.
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::ModelNotFound(_)
            | ApiError::RouteNotFound { .. }
            | ApiError::KeyNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Denied { status, .. } => {
                StatusCode::from_u16((*status).clamp(400, 599)).unwrap_or(StatusCode::FORBIDDEN)
            }
        }
    }

    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::BadRequest { .. } | ApiError::Unprocessable { .. } => {
                ("invalid_request_error", None)
            }
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", Some("request_too_large"))
            }
            ApiError::BodyTimeout { .. } => ("invalid_request_error", Some("request_timeout")),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", Some("method_not_allowed")),
            ApiError::Unauthorized(_) => ("authentication_error", Some("invalid_api_key")),
            ApiError::Forbidden(_) => ("permission_error", Some("insufficient_scope")),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::RouteNotFound { .. } => ("invalid_request_error", Some("unknown_url")),
            ApiError::KeyNotFound(_) => ("invalid_request_error", Some("key_not_found")),
            ApiError::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded")),
            ApiError::Internal => ("server_error", None),
            ApiError::Unavailable(_) => ("server_error", Some("service_unavailable")),
            ApiError::Denied { status, .. } => (
                match *status {
                    401 => "authentication_error",
                    403 => "permission_error",
                    429 => "rate_limit_error",
                    s if s >= 500 => "server_error",
                    _ => "invalid_request_error",
                },
                None,
            ),
        }
    }

    fn code(&self) -> Option<&str> {
        match self {
            ApiError::Denied { code, .. } => Some(code.as_str()),
            _ => self.kind_and_code().1,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { param, .. } | ApiError::Unprocessable { param, .. } => {
                param.as_deref()
            }
            ApiError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    fn body(&self) -> Body<'_> {
        let (kind, _) = self.kind_and_code();
        Body {
            error: Detail {
                message: self.to_string(),
                kind,
                param: self.param(),
                code: self.code(),
            },
        }
    }

    /// The error as the `data:` payload of a server-sent event.
    pub fn sse_event(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| r#"{"error":{"message":"internal server error","type":"server_error","param":null,"code":null}}"#.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body())).into_response();
        if let ApiError::Denied { headers, .. } = &self {
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    resp.headers_mut().insert(k, v);
                }
            }
        }
        if let ApiError::RateLimited {
            retry_after: Some(s),
            ..
        } = &self
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidParameter { field, message } => ApiError::BadRequest {
                message: format!("invalid `{field}`: {message}"),
                param: Some(field.to_string()),
            },
            EngineError::ContextLength { .. } | EngineError::KvCacheTooSmall { .. } => {
                ApiError::BadRequest {
                    message: e.to_string(),
                    param: Some("messages".into()),
                }
            }
            EngineError::InvalidConstraint(m) => ApiError::BadRequest {
                message: format!("invalid `response_format.json_schema.schema`: {m}"),
                param: Some("response_format.json_schema.schema".into()),
            },
            EngineError::Template(m) => ApiError::BadRequest {
                message: format!("the chat template refused the messages: {m}"),
                param: Some("messages".into()),
            },
            EngineError::Tokenizer(m) => ApiError::BadRequest {
                message: format!("could not tokenize the input: {m}"),
                param: None,
            },
            other => {
                tracing::error!(error = %other, "engine failure");
                ApiError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_and_openai_shape() {
        let cases = [
            (ApiError::bad("n", "bad n"), 400, "invalid_request_error"),
            (
                ApiError::Unauthorized("missing key".into()),
                401,
                "authentication_error",
            ),
            (
                ApiError::Forbidden("needs scope admin".into()),
                403,
                "permission_error",
            ),
            (
                ApiError::ModelNotFound("x".into()),
                404,
                "invalid_request_error",
            ),
            (
                ApiError::RouteNotFound {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                404,
                "invalid_request_error",
            ),
            (
                ApiError::MethodNotAllowed("PUT".into()),
                405,
                "invalid_request_error",
            ),
            (
                ApiError::BodyTimeout { secs: 2 },
                408,
                "invalid_request_error",
            ),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "invalid_request_error",
            ),
            (
                ApiError::Unprocessable {
                    message: "m".into(),
                    param: None,
                },
                422,
                "invalid_request_error",
            ),
            (
                ApiError::RateLimited {
                    message: "slow down".into(),
                    retry_after: Some(3),
                },
                429,
                "rate_limit_error",
            ),
            (ApiError::Internal, 500, "server_error"),
            (ApiError::Unavailable("loading".into()), 503, "server_error"),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            let v: serde_json::Value = serde_json::from_str(&e.sse_event()).unwrap();
            assert_eq!(v["error"]["type"], kind);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            let resp = e.clone().into_response();
            if status == 429 {
                assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
            }
        }
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let e: ApiError = EngineError::Io {
            path: "/secret/model.gguf".into(),
            source: std::io::Error::other("disk"),
        }
        .into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.sse_event().contains("secret"));
    }
}
