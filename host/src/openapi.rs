//! The OpenAPI document, generated from the request/response types and the
//! handlers' annotations. `palisade openapi` prints it; the committed copy
//! (`host/openapi.json`) is checked against it by a test.
//!
//! Besides what each handler declares, every operation gets the error
//! responses the layers in front of it can give (authentication, scopes,
//! policy stages, body limits, loading and draining), all in OpenAI's error
//! shape, and every route but `/health` requires an API key.

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

use crate::api::types::*;
use crate::server::{admin, generate, routes};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error, as OpenAI's API describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Human-readable explanation, naming the field, limit and value.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending field, as a JSON path.
    pub param: Option<String>,
    /// Machine-readable code (e.g. `model_not_found`, `invalid_api_key`).
    pub code: Option<String>,
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palisade",
        description = "OpenAI-compatible inference API",
        license(name = "Apache-2.0")
    ),
    paths(
        generate::chat_completions,
        crate::server::responses::responses,
        generate::completions,
        routes::embeddings,
        routes::list_models,
        routes::get_model,
        routes::tokenize,
        routes::detokenize,
        routes::health,
        routes::ready,
        routes::metrics,
        admin::reload,
        admin::drain,
        admin::list_keys,
        admin::create_key,
        admin::revoke_key,
    ),
    components(schemas(ChatCompletionChunk, Usage, ErrorResponse, ErrorDetail))
)]
pub struct ApiDoc;

/// Routes that need no key (the policy may still guard them; the default
/// policy does not).
const PUBLIC: &[&str] = &["/health"];

/// Error responses every guarded operation can give, whatever its handler.
const GUARDED_ERRORS: &[(&str, &str)] = &[
    ("401", "no API key, or an invalid or expired one"),
    (
        "403",
        "the key lacks the route's scope, or a policy stage denied the request",
    ),
    (
        "429",
        "rate limited, or every generation slot is busy (see `retry-after`)",
    ),
    (
        "503",
        "the model is loading, the server is draining, or a policy stage failed",
    ),
];

/// Error responses of operations that take a JSON body.
const BODY_ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "malformed JSON, an unknown or wrong-typed field, or a value out of range",
    ),
    ("408", "the request body was not received in time"),
    ("413", "the request body exceeds the configured limit"),
];

fn add_errors(path: &str, op: &mut Operation) {
    let mut errors: Vec<(&str, &str)> = Vec::new();
    if !PUBLIC.contains(&path) {
        errors.extend(GUARDED_ERRORS);
        op.security = None; // the document-wide requirement applies
    } else {
        op.security = Some(vec![SecurityRequirement::default()]);
    }
    if op.request_body.is_some() {
        errors.extend(BODY_ERRORS);
        if !path.starts_with("/admin/") {
            // Every public body route names a model.
            errors.push(("404", "`model` names no model this server serves"));
        }
    }
    for (status, description) in errors {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    }
    // Every error answer, declared here or by the handler, has the error shape.
    for (status, resp) in op.responses.responses.iter_mut() {
        if status.starts_with('2') {
            continue;
        }
        if let RefOr::T(r) = resp
            && r.content.is_empty()
        {
            r.content.insert(
                "application/json".to_string(),
                Content::new(Some(Ref::from_schema_name("ErrorResponse"))),
            );
        }
    }
}

/// The document as pretty JSON.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    if let Some(c) = doc.components.as_mut() {
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
    doc.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::new("api_key", Vec::<String>::new()),
    ]);
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_errors(path, op);
        }
    }
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::document(),
            "host/openapi.json is stale: run `palisade openapi > host/openapi.json`"
        );
    }

    #[test]
    fn every_route_is_documented_with_its_errors() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        for (method, path) in crate::server::ROUTES {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert!(op.is_object(), "{method} {path} is not documented");
            let responses = op["responses"].as_object().unwrap();
            if *path != "/health" {
                for s in ["401", "403", "429", "503"] {
                    assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                }
            } else {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{}]),
                    "/health needs no key"
                );
            }
        }
    }

    #[test]
    fn the_error_schema_matches_what_the_server_sends() {
        use axum::response::IntoResponse;
        let resp = crate::api::ApiError::bad("n", "bad n").into_response();
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .unwrap();
        let real: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let documented = serde_json::to_value(super::ErrorResponse {
            error: super::ErrorDetail {
                message: "bad n".into(),
                kind: "invalid_request_error".into(),
                param: Some("n".into()),
                code: None,
            },
        })
        .unwrap();
        assert_eq!(real, documented);
    }
}
