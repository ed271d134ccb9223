//! The admin routes, served only by the admin listener
//! (`server.admin_listen`, loopback by default), never by the public one:
//! policy reload, drain, and the API keys of the configured key file.
//! They go through the guard like every route (the policy's `/admin/*`
//! rule: its authenticator and the `admin` scope).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiResult, AppState, json};
use crate::HostError;
use crate::api::ApiError;
use crate::api::json::StrictJson;
use crate::api::types::Status;
use crate::keys::{KeyFile, KeyRecord, NewKey, parse_date};

/// `POST /admin/reload`: rebuild the policy and swap it in.
#[utoipa::path(post, path = "/admin/reload", responses((status = 200, body = Status), (status = 422, description = "the new policy failed to load; the old one stays")))]
pub async fn reload(State(state): State<Arc<AppState>>) -> ApiResult {
    match state.reload().await {
        Ok(()) => Ok(json(&Status { status: "reloaded" })),
        Err(e) => Err(reload_failed(e)),
    }
}

fn reload_failed(e: HostError) -> ApiError {
    tracing::error!(error = %e, "policy reload failed; keeping the current policy");
    ApiError::Unprocessable {
        message: format!("policy not reloaded: {e}"),
        param: None,
    }
}

/// `POST /admin/drain`: the graceful shutdown SIGTERM starts. `/ready`
/// answers 503 and new generations are refused at once; in-flight
/// requests finish (up to `server.shutdown_timeout_secs`); then the server
/// exits 0.
#[utoipa::path(post, path = "/admin/drain", responses((status = 202, body = Status)))]
pub async fn drain(State(state): State<Arc<AppState>>) -> ApiResult {
    tracing::info!("drain requested through the admin listener");
    state.begin_drain();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Status { status: "draining" }),
    )
        .into_response())
}

/// One key as the admin API shows it: no key, no hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyInfo {
    /// Its name.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Unix seconds after which it is refused (none: never).
    pub expires: Option<u64>,
    /// Models it may use (empty: all).
    pub models: Vec<String>,
    /// Unix seconds when it was made.
    pub created: u64,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(k: &KeyRecord) -> Self {
        KeyInfo {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            scopes: k.scopes.clone(),
            expires: k.expires,
            models: k.models.clone(),
            created: k.created,
        }
    }
}

/// `GET /admin/keys`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyList {
    /// Always `list`.
    pub object: &'static str,
    /// The keys, by id.
    pub data: Vec<KeyInfo>,
}

/// `POST /admin/keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Its name (1 to 64 letters, digits or `-_.:@`), unique in the file.
    pub id: String,
    /// Scopes (`inference`, `embeddings`, `metrics`, `admin`).
    pub scopes: Vec<String>,
    /// Tenant (default: the id).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Expiry: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or unix seconds.
    #[serde(default)]
    pub expires: Option<String>,
    /// Models the key may use (default: all).
    #[serde(default)]
    pub models: Vec<String>,
}

/// The answer to `POST /admin/keys`: the key, shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The new key's record.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The key itself; only its sha256 is stored.
    pub key: String,
    /// Whether the policy reloaded, so the key works already.
    pub reloaded: bool,
    /// Why the reload failed, if it did (the key is saved and works after
    /// the next successful reload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
}

/// The key file the running policy reads (`config_files.keys`, which
/// `server.keys_file` overrides).
fn key_file(state: &AppState) -> Result<PathBuf, ApiError> {
    let pipeline = state.pipeline.load();
    let mut files: Vec<&PathBuf> = pipeline
        .policy
        .plugins
        .values()
        .filter_map(|p| p.config_files.get("keys"))
        .collect();
    files.sort();
    files.dedup();
    match files[..] {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::Unprocessable {
            message: "the policy reads no key file (`config_files.keys`); keys given inline in a plugin's config are not managed here".into(),
            param: None,
        }),
        _ => Err(ApiError::Unprocessable {
            message: "the policy names several key files; edit them with `palisade keys --file`".into(),
            param: None,
        }),
    }
}

fn key_error(e: HostError) -> ApiError {
    match e {
        HostError::InvalidArgument { flag, message } => ApiError::bad(flag, message),
        other => {
            tracing::error!(error = %other, "key file");
            ApiError::Internal
        }
    }
}

/// Runs `f` on the key file off the async workers, one edit at a time.
async fn with_keys<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&std::path::Path) -> Result<T, HostError> + Send + 'static,
) -> Result<T, ApiError> {
    let path = key_file(state)?;
    let _one_at_a_time = state.admin_lock.lock().await;
    tokio::task::spawn_blocking(move || f(&path))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "key file task failed");
            ApiError::Internal
        })?
        .map_err(key_error)
}

/// `GET /admin/keys`: ids, tenants, scopes, expiry, models (never keys or
/// hashes).
#[utoipa::path(get, path = "/admin/keys", responses((status = 200, body = KeyList)))]
pub async fn list_keys(State(state): State<Arc<AppState>>) -> ApiResult {
    let mut data: Vec<KeyInfo> = with_keys(&state, KeyFile::load)
        .await?
        .keys
        .values()
        .map(KeyInfo::from)
        .collect();
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(json(&KeyList {
        object: "list",
        data,
    }))
}

/// `POST /admin/keys`: adds a key to the key file and reloads the policy;
/// the answer holds the key, the only time it is shown.
#[utoipa::path(post, path = "/admin/keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, description = "invalid id, scopes or expiry, or the id exists")))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    StrictJson(req): StrictJson<CreateKey>,
) -> ApiResult {
    let expires = req
        .expires
        .as_deref()
        .map(parse_date)
        .transpose()
        .map_err(key_error)?;
    let new = NewKey {
        id: req.id.clone(),
        scopes: req.scopes,
        tenant: req.tenant,
        expires,
        models: req.models,
    };
    let (key, info) = with_keys(&state, move |p| {
        let mut f = KeyFile::load_or_empty(p)?;
        let key = f.create(new)?;
        f.save(p)?;
        let info = f.keys.values().find(|k| k.id == req.id).map(KeyInfo::from);
        Ok((key, info))
    })
    .await?;
    let info = info.ok_or(ApiError::Internal)?;
    tracing::info!(id = %info.id, "API key created through the admin listener");
    let reload_error = state
        .reload()
        .await
        .err()
        .map(|e| reload_failed(e).to_string());
    let body = CreatedKey {
        info,
        key,
        reloaded: reload_error.is_none(),
        reload_error,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `DELETE /admin/keys/{id}`: removes the key and reloads the policy, so
/// it stops working at once.
#[utoipa::path(delete, path = "/admin/keys/{id}", params(("id" = String, Path, description = "the key's name")),
    responses((status = 200, body = Status), (status = 404, description = "no key with this id"),
              (status = 422, description = "revoked, but the policy did not reload")))]
pub async fn revoke_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let name = id.clone();
    let found = with_keys(&state, move |p| {
        let mut f = KeyFile::load(p)?;
        if f.revoke(&name).is_err() {
            return Ok(false);
        }
        f.save(p)?;
        Ok(true)
    })
    .await?;
    if !found {
        return Err(ApiError::KeyNotFound(id));
    }
    tracing::info!(%id, "API key revoked through the admin listener");
    state.reload().await.map_err(reload_failed)?;
    Ok(json(&Status { status: "revoked" }))
}
