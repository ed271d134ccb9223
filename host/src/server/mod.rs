//! The HTTP server: shared state, the router, and the middleware every
//! request passes (request id, body limit, a total body read deadline,
//! metrics). Two
//! routers: the public one ([`router`]) and the admin one
//! ([`admin_router`], for the admin listener only).

pub mod admin;
pub mod body_deadline;
pub mod generate;
pub mod guard;
pub mod listener;
pub mod responses;
pub mod routes;
mod sandbox;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use palisade_engine::Engine;
use palisade_engine::embed::EmbeddingModel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::api::json::BodyLimit;
use crate::audit::AuditSink;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::plugins::pipeline::Pipeline;
use crate::scheduler::EngineHandle;
use arc_swap::ArcSwap;

/// The request id, set by the outermost middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What is available once the models have loaded.
pub struct Loaded {
    /// The generation engine (tokenizer, template, model).
    pub engine: Arc<Engine>,
    /// The engine actor.
    pub handle: EngineHandle,
    /// The id clients use for the generation model.
    pub model_name: String,
    /// The embedding model and its id, if served.
    pub embed: Option<(Arc<EmbeddingModel>, String)>,
}

/// State shared by all handlers.
pub struct AppState {
    /// The configuration the server started with.
    pub config: ServeConfig,
    loaded: OnceLock<Loaded>,
    /// Set when shutdown begins.
    pub draining: AtomicBool,
    /// Concurrency limit on generating requests.
    pub slots: Arc<Semaphore>,
    /// Embedding work runs one batch at a time.
    pub embed_slot: Arc<Semaphore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Unix seconds when the server started.
    pub created: u64,
    /// The current policy; requests keep the one they started with.
    pub pipeline: ArcSwap<Pipeline>,
    /// Where audit records go.
    pub audit: AuditSink,
    /// Set to true to start a drain (`POST /admin/drain`).
    drain: tokio::sync::watch::Sender<bool>,
    /// Admin edits of the key file run one at a time.
    pub admin_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ready", &self.loaded.get().is_some())
            .finish()
    }
}

impl AppState {
    /// State for `config` under `pipeline`; the models are attached later
    /// with [`AppState::set_loaded`].
    pub fn new(config: ServeConfig, pipeline: Pipeline) -> Result<Arc<Self>, crate::HostError> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let audit = AuditSink::open(&pipeline.policy.audit)?;
        Ok(Arc::new(AppState {
            pipeline: ArcSwap::from_pointee(pipeline),
            audit,
            drain: tokio::sync::watch::Sender::new(false),
            admin_lock: tokio::sync::Mutex::new(()),
            slots: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            embed_slot: Arc::new(Semaphore::new(1)),
            config,
            loaded: OnceLock::new(),
            draining: AtomicBool::new(false),
            metrics: Metrics::default(),
            created,
            next_id: AtomicU64::new(rand::random::<u32>() as u64),
        }))
    }

    /// Rebuilds the pipeline from the policy file and swaps it in; on any
    /// error the old one stays and the error says why.
    pub async fn reload(self: &Arc<Self>) -> Result<(), crate::HostError> {
        let cfg = self.config.clone();
        let previous = self.pipeline.load_full();
        let built = tokio::task::spawn_blocking(move || {
            Pipeline::rebuild(crate::serve::read_policy(&cfg)?, &previous)
        })
        .await
        .map_err(|e| crate::HostError::Policy(format!("reload task failed: {e}")))??;
        let (kept, all) = (built.kept_plugins(), built.plugins.len());
        self.pipeline.store(Arc::new(built));
        tracing::info!(
            "policy reloaded: {kept} of {all} plugins kept, {} loaded",
            all - kept
        );
        Ok(())
    }

    /// Starts a graceful drain, as SIGTERM does: `/ready` answers 503 and
    /// new generations are refused at once; the server stops once the
    /// in-flight requests are done.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain.send_replace(true);
    }

    /// Resolves once [`AppState::begin_drain`] was called.
    pub async fn drain_requested(&self) {
        let mut rx = self.drain.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Resolves once no request holds or waits for a generation or
    /// embedding slot.
    pub async fn idle(&self) {
        let all = self.config.limits.max_concurrent_requests;
        while self.slots.available_permits() < all
            || self.embed_slot.available_permits() < 1
            || self.metrics.queued_requests.load(Ordering::Relaxed) > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Marks the models loaded (ready).
    pub fn set_loaded(&self, l: Loaded) {
        let _ = self.loaded.set(l);
    }

    /// The loaded models, or 503 while loading or draining.
    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        self.loaded.get().ok_or_else(|| {
            ApiError::Unavailable("the model is still loading; retry shortly".into())
        })
    }

    /// Whether the models are loaded.
    pub fn is_ready(&self) -> bool {
        self.loaded.get().is_some() && !self.draining.load(Ordering::Relaxed)
    }

    /// A fresh response id with `prefix` (`chatcmpl`, `cmpl`).
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), n as u32)
    }

    /// Identifies the build and model (`system_fingerprint`).
    pub fn fingerprint(&self) -> String {
        format!("palisade-{}", env!("CARGO_PKG_VERSION"))
    }

    /// Waits for a generation slot, up to the configured queue timeout.
    pub async fn acquire_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let wait = Duration::from_millis(self.config.limits.queue_timeout_ms);
        let busy = || ApiError::RateLimited {
            message: format!(
                "all {} generation slots are busy; retry shortly",
                self.config.limits.max_concurrent_requests
            ),
            retry_after: Some(1),
        };
        if wait.is_zero() {
            return Err(busy());
        }
        self.metrics.queued_requests.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.metrics.queued_requests.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ApiError::Unavailable("the server is shutting down".into())),
            Err(_) => Err(busy()),
        }
    }
}

/// Every route the server serves, on either listener: (method, path). The
/// policy must cover each; tests probe each.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/drain"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/{id}"),
];

/// Builds the public router with all middleware (no admin routes: they
/// answer 404 here).
pub fn router(state: Arc<AppState>) -> Router {
    let r = Router::new()
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/models", get(routes::list_models))
        .route("/v1/models/{id}", get(routes::get_model))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics));
    layered(r, state)
}

/// Builds the admin listener's router: the `/admin/*` routes alone, with
/// the same middleware (the policy's auth stage and scopes included).
pub fn admin_router(state: Arc<AppState>) -> Router {
    let r = Router::new()
        .route("/admin/reload", post(admin::reload))
        .route("/admin/drain", post(admin::drain))
        .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key));
    layered(r, state)
}

fn layered(r: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let limit = state.config.limits.max_body_bytes;
    let body_timeout = Duration::from_secs(state.config.server.body_read_timeout_secs.max(1));
    r.fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            (body_timeout, limit),
            body_deadline::limit,
        ))
        .layer(axum::Extension(BodyLimit(limit)))
        .with_state(state)
}

/// Request id header.
pub const REQUEST_ID: &str = "x-request-id";

async fn record(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let id = state.new_id("req");
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let mut resp = next.run(req).await;
    state.metrics.request(&route, resp.status().as_u16());
    tracing::info!(request_id = %id, %method, %route, status = resp.status().as_u16(), "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// A convenience for handlers returning either a response or an error.
pub type ApiResult = Result<Response, ApiError>;

/// Turns any serializable value into a 200 JSON response.
pub fn json<T: serde::Serialize>(v: &T) -> Response {
    axum::Json(v).into_response()
}
