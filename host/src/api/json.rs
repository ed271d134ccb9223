//! A JSON extractor with our error shape: malformed bodies, unknown fields
//! and wrong types become 400s naming the field (as a JSON path) and what
//! was expected; bodies over the limit 413; slow bodies 408.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::server::body_deadline::BodyDeadlineElapsed;

/// Deserializes the body strictly into `T`.
#[derive(Debug, Clone)]
pub struct StrictJson<T>(pub T);

/// The configured body limit, stored in the request extensions by the
/// router so the 413 message can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.is_empty() && !ct.to_ascii_lowercase().starts_with("application/json") {
            return Err(ApiError::bad(
                "content-type",
                format!("expected `Content-Type: application/json`, got `{ct}`"),
            ));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(0);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rej| classify(rej, limit))?;
        parse(&bytes).map(StrictJson)
    }
}

fn classify(rej: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rej);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge { limit };
        }
        if let Some(d) = e.downcast_ref::<BodyDeadlineElapsed>() {
            return ApiError::BodyTimeout {
                secs: d.timeout.as_secs(),
            };
        }
        source = e.source();
    }
    if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge { limit };
    }
    ApiError::BadRequest {
        message: format!("could not read the request body: {rej}"),
        param: None,
    }
}

/// Parses JSON bytes into `T` with field-naming errors.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest {
            message: "the request body is empty; expected a JSON object".into(),
            param: None,
        });
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest {
            message: "the request body is not valid UTF-8".into(),
            param: None,
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            // serde_json appends " at line L column C"; keep it, it helps.
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::BadRequest {
                    message: format!("malformed JSON: {msg}"),
                    param: None,
                });
            }
            let param = if path == "." {
                None
            } else {
                Some(path.clone())
            };
            let message = match &param {
                Some(p) => format!("invalid value for `{p}`: {msg}"),
                None => format!("invalid request: {msg}"),
            };
            Err(ApiError::BadRequest { message, param })
        }
    }
}
