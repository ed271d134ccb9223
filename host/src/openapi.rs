//! The OpenAPI document, generated from the request/response types and the
//! handlers' annotations. `palisade openapi` prints it; the committed copy
//! (`host/openapi.json`) is checked against it by a test.

use utoipa::OpenApi;

use crate::api::types::*;
use crate::server::{admin, generate, routes};

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
    components(schemas(ChatCompletionChunk, Usage))
)]
pub struct ApiDoc;

/// The document as pretty JSON.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
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
}
