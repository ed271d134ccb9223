//! The routes other than generation: models, embeddings, tokenizer,
//! health, readiness, metrics, and the 404/405 fallbacks.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::IntoResponse;
use base64::Engine as _;

use super::{ApiResult, AppState, json};
use crate::api::ApiError;
use crate::api::json::StrictJson;
use crate::api::types::*;
use crate::api::validate::chat_messages;

fn card(state: &AppState, id: &str) -> ModelCard {
    ModelCard {
        id: id.to_string(),
        object: "model",
        created: state.created,
        owned_by: "palisade",
    }
}

/// `GET /v1/models`.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> ApiResult {
    let l = state.loaded()?;
    let mut data = vec![card(&state, &l.model_name)];
    if let Some((_, name)) = &l.embed {
        data.push(card(&state, name));
    }
    Ok(json(&ModelList {
        object: "list",
        data,
    }))
}

/// `GET /v1/models/{id}`.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "model id")),
    responses((status = 200, body = ModelCard), (status = 404, description = "unknown model")))]
pub async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let l = state.loaded()?;
    let known = id == l.model_name || l.embed.as_ref().is_some_and(|(_, n)| *n == id);
    if !known {
        return Err(ApiError::ModelNotFound(id));
    }
    Ok(json(&card(&state, &id)))
}

/// `POST /v1/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest, responses((status = 200, body = EmbeddingResponse)))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    StrictJson(req): StrictJson<EmbeddingRequest>,
) -> ApiResult {
    let l = state.loaded()?;
    let Some((model, name)) = l.embed.as_ref().filter(|(_, n)| *n == req.model) else {
        return Err(ApiError::ModelNotFound(req.model));
    };
    if let Some(d) = req.dimensions
        && d as usize != model.dim()
    {
        return Err(ApiError::bad(
            "dimensions",
            format!(
                "this model produces {} dimensions, `dimensions` asked for {d}",
                model.dim()
            ),
        ));
    }
    let inputs: Vec<Vec<u32>> = match req.input {
        EmbeddingInput::Text(t) => vec![model.tokenize(&t)?],
        EmbeddingInput::Texts(ts) => ts
            .iter()
            .map(|t| model.tokenize(t))
            .collect::<Result<_, _>>()?,
        EmbeddingInput::Tokens(ids) => vec![ids],
        EmbeddingInput::TokenLists(l) => l,
    };
    const MAX_INPUTS: usize = 2048;
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::bad(
            "input",
            format!(
                "`input` must hold 1 to {MAX_INPUTS} items, got {}",
                inputs.len()
            ),
        ));
    }
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let _slot = state
        .embed_slot
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
    let m = model.clone();
    let vectors = tokio::task::spawn_blocking(move || m.embed(&inputs))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "embedding task failed");
            ApiError::Internal
        })??;
    let base64 = req.encoding_format == Some(EncodingFormat::Base64);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| EmbeddingData {
            object: "embedding",
            index: i as u32,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(v)
            },
        })
        .collect();
    state
        .metrics
        .prompt_tokens
        .fetch_add(tokens as u64, std::sync::atomic::Ordering::Relaxed);
    let usage = EmbeddingUsage {
        prompt_tokens: tokens as u32,
        total_tokens: tokens as u32,
    };
    Ok(json(&EmbeddingResponse {
        object: "list",
        data,
        model: name.clone(),
        usage,
    }))
}

fn check_model(l: &super::Loaded, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if *m != l.model_name => Err(ApiError::ModelNotFound(m.clone())),
        _ => Ok(()),
    }
}

/// `POST /tokenize`: token ids of a prompt or of rendered chat messages.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, responses((status = 200, body = TokenizeResponse)))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    StrictJson(req): StrictJson<TokenizeRequest>,
) -> ApiResult {
    let l = state.loaded()?;
    check_model(l, &req.model)?;
    let tokens = match (req.prompt, req.messages) {
        (Some(p), None) => {
            l.engine
                .tokenizer()
                .encode(&p, req.add_special_tokens.unwrap_or(true), false)?
        }
        (None, Some(m)) => chat_messages(&l.engine, &m)?.1,
        _ => {
            return Err(ApiError::bad(
                "prompt",
                "give exactly one of `prompt` and `messages`",
            ));
        }
    };
    Ok(json(&TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: l.engine.max_context(),
    }))
}

/// `POST /detokenize`.
#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest, responses((status = 200, body = DetokenizeResponse)))]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    StrictJson(req): StrictJson<DetokenizeRequest>,
) -> ApiResult {
    let l = state.loaded()?;
    check_model(l, &req.model)?;
    let vocab = l.engine.tokenizer().vocab_size() as u32;
    if let Some(bad) = req.tokens.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::bad(
            "tokens",
            format!("token id {bad} is outside the vocabulary (0..{vocab})"),
        ));
    }
    Ok(json(&DetokenizeResponse {
        prompt: l.engine.tokenizer().decode(&req.tokens, false),
    }))
}

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Status)))]
pub async fn health() -> ApiResult {
    Ok(json(&Status { status: "ok" }))
}

/// `GET /ready`: 200 once the models are loaded; 503 while loading or
/// draining.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Status), (status = 503, body = Status)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> ApiResult {
    if state.is_ready() {
        return Ok(json(&Status { status: "ok" }));
    }
    let status = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        "draining"
    } else {
        "loading"
    };
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(Status { status }),
    )
        .into_response())
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> ApiResult {
    let loaded = state.loaded().ok();
    let mut text = state.metrics.render(loaded.map(|l| &*l.handle.stats));
    state.pipeline.load().render_metrics(&mut text);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `POST /admin/reload`: rebuild the policy and swap it in.
#[utoipa::path(post, path = "/admin/reload", responses((status = 200, body = Status), (status = 422, description = "the new policy failed to load; the old one stays")))]
pub async fn reload(State(state): State<Arc<AppState>>) -> ApiResult {
    match state.reload().await {
        Ok(()) => Ok(json(&Status { status: "reloaded" })),
        Err(e) => {
            tracing::error!(error = %e, "policy reload failed; keeping the current policy");
            Err(ApiError::Unprocessable {
                message: format!("policy not reloaded: {e}"),
                param: None,
            })
        }
    }
}

/// Unknown route: 404 in OpenAI's shape.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// Known route, wrong method: 405.
pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
