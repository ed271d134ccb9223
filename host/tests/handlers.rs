//! Handler tests without a socket: the router driven with `oneshot` on a
//! tiny random model the test writes itself.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use palisade::config::ServeConfig;
use palisade::plugins::pipeline::Pipeline;
use palisade::plugins::policy::Policy;
use palisade::server::{AppState, router};
use palisade_engine::testing::{TinySpec, TinyType, write_gguf};
use palisade_kernels::quant::WeightType;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
}

fn fixture(edit: impl FnOnce(&mut ServeConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gguf(
        dir.path(),
        &TinySpec::default(),
        TinyType::Native(WeightType::Q8_0),
    );
    let mut cfg = ServeConfig::default();
    cfg.model.path = Some(path);
    cfg.model.no_embeddings = true;
    cfg.model.name = Some("tiny".into());
    cfg.model.threads = 1;
    edit(&mut cfg);
    let state = AppState::new(cfg.clone(), open_policy()).unwrap();
    state.set_loaded(palisade::serve::load_models(&cfg).unwrap());
    Fixture { _dir: dir, state }
}

/// Every route public: these tests are about the handlers, not the guard.
fn open_policy() -> Pipeline {
    let policy: Policy = toml::from_str("[[routes]]\npath = \"*\"\npublic = true\n").unwrap();
    Pipeline::build(policy).unwrap()
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    let req = req
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

fn chat(extra: Value) -> Value {
    let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[tokio::test]
async fn chat_completion_has_openai_shape() {
    let f = fixture(|_| {});
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({}))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["finish_reason"].is_string());
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn stream_ends_with_done() {
    let f = fixture(|_| {});
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({"stream": true}))),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn errors_have_status_and_shape() {
    let f = fixture(|c| c.limits.max_body_bytes = 4096);
    let cases: Vec<(&str, &str, Option<Value>, StatusCode, Option<&str>)> = vec![
        (
            "POST",
            "/v1/chat/completions",
            Some(chat(json!({"model": "other"}))),
            StatusCode::NOT_FOUND,
            Some("model"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(chat(json!({"n": 0}))),
            StatusCode::BAD_REQUEST,
            Some("n"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(chat(json!({"max_tokens": 1_000_000}))),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(chat(
                json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]}),
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "GET",
            "/v1/chat/completions",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
        ("GET", "/nothing/here", None, StatusCode::NOT_FOUND, None),
        (
            "POST",
            "/v1/embeddings",
            Some(json!({"model": "tiny", "input": "x"})),
            StatusCode::NOT_FOUND,
            Some("model"),
        ),
    ];
    for (method, path, body, status, param) in cases {
        let (s, v) = call(&f.state, method, path, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{v}");
        }
    }
}

#[tokio::test]
async fn not_ready_until_loaded() {
    let state = AppState::new(ServeConfig::default(), open_policy()).unwrap();
    let (s, v) = call(&state, "GET", "/ready", None).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("loading"))
    );
    let (s, _) = call(
        &state,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({}))),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = call(&state, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn tokenize_round_trip_and_metrics() {
    let f = fixture(|_| {});
    let (s, v) = call(
        &f.state,
        "POST",
        "/tokenize",
        Some(json!({"prompt": "the theory"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let toks = v["tokens"].clone();
    let (_, v) = call(
        &f.state,
        "POST",
        "/detokenize",
        Some(json!({"tokens": toks})),
    )
    .await;
    assert_eq!(v["prompt"], "the theory");
    let (_, v) = call(&f.state, "GET", "/metrics", None).await;
    let text = v.as_str().unwrap();
    assert!(
        text.contains("palisade_requests_total{route=\"/tokenize\",status=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn completions_accept_token_prompts_and_reject_bad_ids() {
    let f = fixture(|_| {});
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/completions",
        Some(json!({"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/completions",
        Some(json!({"model": "tiny", "prompt": [5, 999999]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("999999"));
}

#[tokio::test]
async fn admin_routes_are_served_by_the_admin_router_only() {
    let f = fixture(|_| {});
    for (method, path) in [
        ("POST", "/admin/reload"),
        ("POST", "/admin/drain"),
        ("GET", "/admin/keys"),
    ] {
        let (status, v) = call(&f.state, method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    let drain = Request::builder()
        .method("POST")
        .uri("/admin/drain")
        .body(Body::empty())
        .unwrap();
    let resp = palisade::server::admin_router(f.state.clone())
        .oneshot(drain)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let models = Request::builder()
        .uri("/v1/models")
        .body(Body::empty())
        .unwrap();
    let resp = palisade::server::admin_router(f.state.clone())
        .oneshot(models)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "no public routes there"
    );
    let (status, v) = call(&f.state, "GET", "/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v, json!({"status": "draining"}));
    let (status, _) = call(
        &f.state,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({}))),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no new generations while draining"
    );
}
