//! `palisade serve`: load the configuration, bind the public and the admin
//! listener, load the models in the background (the server answers 503
//! until they are ready), serve until SIGTERM/SIGINT or `POST
//! /admin/drain`, drain, exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_engine::embed::EmbeddingModel;
use palisade_engine::kv::BlockPool;
use palisade_engine::{Engine, EngineOptions, SchedulerConfig};

use crate::HostError;
use crate::config::ServeConfig;
use crate::plugins::pipeline::Pipeline;
use crate::plugins::policy::Policy;
use crate::scheduler::EngineHandle;
use crate::server::{AppState, Loaded, ROUTES, admin_router, listener, router};

/// Reads the configured policy file (required) with its key files pointed
/// at `server.keys_file` when one is set.
pub fn policy_from_config(cfg: &ServeConfig) -> Result<Policy, HostError> {
    let Some(path) = &cfg.server.policy else {
        return Err(HostError::Policy(
            "no policy file: pass --policy FILE (examples/policy.toml is the default policy); no route is served without one".into(),
        ));
    };
    let mut policy = Policy::load(path, &ROUTES.iter().map(|r| r.1).collect::<Vec<_>>())?;
    if let Some(k) = &cfg.server.keys_file {
        for spec in policy.plugins.values_mut() {
            if let Some(keys) = spec.config_files.get_mut("keys") {
                keys.clone_from(k);
            }
        }
    }
    Ok(policy)
}

/// The API key files the policy's plugins read (`config_files.keys`).
pub fn key_files(policy: &Policy) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = policy
        .plugins
        .values()
        .filter_map(|s| s.config_files.get("keys").cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// [`policy_from_config`], refusing key files (or their directories) that
/// another user owns or others may write to: at start and on every reload.
pub fn read_policy(cfg: &ServeConfig) -> Result<Policy, HostError> {
    let policy = policy_from_config(cfg)?;
    for k in key_files(&policy) {
        crate::private::check_file_and_dir(&k)?;
    }
    Ok(policy)
}

/// Loads and builds the configured policy at start. First start: a key
/// file the policy names that does not exist yet is created with an admin
/// key, shown once (a reload never does this: a missing file fails it).
pub fn load_policy(cfg: &ServeConfig) -> Result<Pipeline, HostError> {
    let policy = read_policy(cfg)?;
    for spec in policy.plugins.values() {
        if let Some(keys) = spec.config_files.get("keys") {
            if let Some(key) = crate::keys::bootstrap(keys)? {
                eprintln!(
                    "created {} with an admin key (all scopes); it is shown once:\n{key}",
                    keys.display()
                );
            }
        }
    }
    Pipeline::build(policy)
}

/// Where `scripts/fetch-embedding-model.sh` caches the embedding model.
pub fn default_embedding_dir() -> PathBuf {
    crate::default_model_path()
        .parent()
        .and_then(|p| p.parent())
        .map(|c| c.join("all-minilm-l6-v2"))
        .unwrap_or_default()
}

/// Loads the models named by the configuration.
pub fn load_models(cfg: &ServeConfig) -> Result<Loaded, HostError> {
    let path = crate::resolve_model(cfg.model.path.as_ref())?;
    let engine = Arc::new(Engine::load(&EngineOptions {
        model: path,
        tokenizer: cfg.model.tokenizer.clone(),
        threads: cfg.model.threads,
        max_model_len: cfg.model.max_model_len,
    })?);
    let model_name = cfg
        .model
        .name
        .clone()
        .unwrap_or_else(|| engine.name().to_string());
    let embed = if cfg.model.no_embeddings {
        None
    } else {
        let dir = cfg
            .model
            .embedding_path
            .clone()
            .unwrap_or_else(default_embedding_dir);
        if cfg.model.embedding_path.is_none() && !dir.join("config.json").exists() {
            tracing::warn!(dir = %dir.display(), "no embedding model cached; /v1/embeddings will answer 404 (run scripts/fetch-embedding-model.sh)");
            None
        } else {
            let m = EmbeddingModel::load(&dir)?;
            let name = m.name().to_string();
            Some((Arc::new(m), name))
        }
    };
    let queue = cfg.limits.max_concurrent_requests * cfg.limits.max_n * 4;
    let kv_bytes = cfg.kv_cache_bytes();
    let block = BlockPool::bytes_per_block(&engine.model().config) as u64;
    let sched = SchedulerConfig {
        max_num_seqs: cfg.limits.max_num_seqs,
        max_num_batched_tokens: cfg.limits.max_num_batched_tokens,
        kv_blocks: (kv_bytes / block).max(1) as usize,
    };
    tracing::info!(
        kv_cache_bytes = kv_bytes,
        kv_blocks = sched.kv_blocks,
        kv_positions = sched.kv_blocks * palisade_engine::kv::BLOCK_SIZE,
        max_num_seqs = sched.max_num_seqs,
        max_num_batched_tokens = sched.max_num_batched_tokens,
        "KV cache allocated"
    );
    let handle = EngineHandle::start(engine.clone(), sched, queue)?;
    Ok(Loaded {
        engine,
        handle,
        model_name,
        embed,
    })
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Runs the server until a shutdown signal, then drains.
pub async fn run(cfg: ServeConfig) -> Result<(), HostError> {
    crate::doctor::preflight(&cfg)?;
    let tls = listener::tls_acceptor(&cfg.tls)?;
    let pipeline = load_policy(&cfg)?;
    let tcp = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| HostError::Server(format!("cannot listen on {}: {e}", cfg.server.listen)))?;
    let addr = listener::local_addr(&tcp)?;
    let admin_tcp = match cfg.server.admin_addr()? {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
            HostError::Server(format!("cannot listen on {a} (server.admin_listen): {e}"))
        })?),
        None => None,
    };
    let state = AppState::new(cfg.clone(), pipeline)?;
    #[cfg(unix)]
    {
        let st = state.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the policy");
                if let Err(e) = st.reload().await {
                    tracing::error!(error = %e, "policy reload failed; keeping the current policy");
                }
            }
        });
    }
    let app = router(state.clone());
    // The first line on stdout names the address, the second the admin
    // listener's (tests bind port 0).
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("palisade listening on {scheme}://{addr}");
    match &admin_tcp {
        Some(t) => {
            let a = listener::local_addr(t)?;
            println!("palisade admin listening on {scheme}://{a}");
            tracing::info!(addr = %a, "admin listener (the /admin/* routes)");
        }
        None => println!("palisade admin listener off"),
    }
    tracing::info!(%addr, tls = tls.is_some(), "listening; loading models");
    let loader_state = state.clone();
    let loader_cfg = cfg.clone();
    let loading = tokio::task::spawn_blocking(move || {
        // Lets tests observe the loading state (readiness probes).
        if let Some(ms) = std::env::var("PALISADE_TEST_LOAD_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        load_models(&loader_cfg).map(|l| loader_state.set_loaded(l))
    });
    let drain = Duration::from_secs(cfg.server.shutdown_timeout_secs);
    let shutdown_state = state.clone();
    let (load_err_tx, mut load_err_rx) = tokio::sync::oneshot::channel::<HostError>();
    tokio::spawn(async move {
        match loading.await {
            Ok(Ok(())) => tracing::info!("models loaded; ready"),
            Ok(Err(e)) => {
                let _ = load_err_tx.send(e);
            }
            Err(e) => {
                let _ = load_err_tx.send(HostError::Server(format!("model loading panicked: {e}")));
            }
        }
    });
    let mut load_error = None;
    let load_failed = async {
        match (&mut load_err_rx).await {
            Ok(e) => e,
            // Loading succeeded (the sender was dropped): never fires.
            Err(_) => std::future::pending().await,
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<Duration>);
    let stop = async {
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutdown signal received"),
            _ = shutdown_state.drain_requested() => {}
            e = load_failed => {
                tracing::error!(error = %e, "model loading failed; shutting down");
                load_error = Some(e);
            }
        }
        // Draining: /ready is 503 and new generations are refused, but
        // both listeners keep answering until in-flight requests are done.
        shutdown_state.begin_drain();
        let started = std::time::Instant::now();
        if tokio::time::timeout(drain, shutdown_state.idle())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached with requests still generating");
        }
        tracing::info!("in-flight requests done; closing the listeners");
        stop_tx.send_replace(Some(drain.saturating_sub(started.elapsed())));
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<Option<Duration>>| async move {
        match rx.wait_for(|d| d.is_some()).await {
            Ok(d) => {
                let left: Option<Duration> = *d;
                left.unwrap_or_default()
            }
            Err(_) => Duration::ZERO,
        }
    };
    let public = listener::serve(
        tcp,
        app,
        tls.clone(),
        cfg.header_timeout(),
        stopped(stop_rx.clone()),
    );
    let admin = async {
        if let Some(t) = admin_tcp {
            let app = admin_router(state.clone());
            listener::serve(t, app, tls.clone(), cfg.header_timeout(), stopped(stop_rx)).await;
        }
    };
    tokio::join!(stop, public, admin);
    match load_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
