//! `palisade bench-plugins`: what the plugin stages of a route cost, in
//! one run: the request-side chain (auth + admission) against no stages,
//! and an output filter per streamed chunk. Prints medians, p99 and means.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::bindings::shared::palisade::plugin::types::{
    Pair, Principal, RequestContext, RequestMeta, Sampling,
};
use super::pipeline::Pipeline;
use super::policy::Policy;
use crate::HostError;
use crate::server::ROUTES;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn row(out: &mut String, name: &str, v: &mut [f64]) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
    let _ = writeln!(out, "| {name} | {p50:.1} | {p99:.1} | {mean:.1} |");
}

/// Runs the benchmark on `route` of `policy_file` with `key` as the API
/// key, `iterations` requests and a stream of `chunks` chunks.
pub fn run(
    policy_file: &Path,
    route: &str,
    key: &str,
    iterations: usize,
    chunks: usize,
) -> Result<String, HostError> {
    let pace_us: u64 = std::env::var("PALISADE_BENCH_PACE_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let policy = Policy::load(policy_file, &ROUTES.iter().map(|r| r.1).collect::<Vec<_>>())?;
    let pipeline = Arc::new(Pipeline::build(policy)?);
    let rule = pipeline
        .rule(route)
        .ok_or_else(|| HostError::Policy(format!("no rule for {route}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| HostError::Server(e.to_string()))?;
    let key = key.to_string();
    let route_s = route.to_string();
    let p2 = pipeline.clone();
    let r2 = rule.clone();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            let meta = RequestMeta {
                method: "POST".into(),
                path: route_s.clone(),
                route: route_s.clone(),
                headers: vec![
                    Pair {
                        name: "authorization".into(),
                        value: format!("Bearer {key}"),
                    },
                    Pair {
                        name: "content-type".into(),
                        value: "application/json".into(),
                    },
                ],
                client_addr: "127.0.0.1".into(),
            };
            let ctx = RequestContext {
                principal: Principal {
                    id: "bench".into(),
                    tenant: "bench".into(),
                    scopes: vec!["inference".into()],
                    labels: vec![],
                },
                route: route_s.clone(),
                model: "m".into(),
                messages: vec![super::bindings::shared::palisade::plugin::types::Message {
                    role: super::bindings::shared::palisade::plugin::types::Role::User,
                    content: "Write a haiku about the sea.".into(),
                }],
                prompts: vec![],
                prompt_tokens: 40,
                max_tokens: 128,
                n: 1,
                sampling: Sampling {
                    temperature: 0.7,
                    top_p: 1.0,
                    seed: None,
                    presence_penalty: 0.0,
                    frequency_penalty: 0.0,
                },
                client_addr: "127.0.0.1".into(),
                request_id: "req-bench".into(),
            };
            let (mut chain_us, mut auth_us, mut adm_us, mut base_us) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..iterations + 200 {
                // Pace like a server would (prewarming runs between requests).
                if pace_us > 0 {
                    tokio::time::sleep(std::time::Duration::from_micros(pace_us)).await;
                }
                let t0 = Instant::now();
                let mut recs = Vec::new();
                let a = p2.authenticate(&r2, &meta, &mut recs);
                let t1 = Instant::now();
                let b = p2.admit(&r2, &ctx, &mut recs);
                let t2 = Instant::now();
                let t3 = Instant::now(); // the same bookkeeping with no stages
                let _ = std::hint::black_box(Vec::<u8>::new());
                let t4 = Instant::now();
                if b.is_ok() {
                    // Settle reservations (rate limits) off the clock, as the
                    // server does when a response ends.
                    p2.completed(&r2, &ctx, 16);
                }
                if a.is_err() || b.is_err() {
                    return Err(format!(
                        "a stage refused the benchmark request: {:?} {:?}",
                        a.err(),
                        b.err()
                    ));
                }
                if i >= 200 {
                    chain_us.push(t2.duration_since(t0).as_secs_f64() * 1e6);
                    auth_us.push(t1.duration_since(t0).as_secs_f64() * 1e6);
                    adm_us.push(t2.duration_since(t1).as_secs_f64() * 1e6);
                    base_us.push(t4.duration_since(t3).as_secs_f64() * 1e6);
                }
            }
            let mut per_chunk = Vec::new();
            let mut per_stream_setup = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let mut chain = p2.output_chain(&r2).map_err(|e| e.to_string())?;
                per_stream_setup.push(t.elapsed().as_secs_f64() * 1e6);
                if chain.is_empty() {
                    break;
                }
                for c in 0..chunks {
                    let text = if c % 7 == 0 { " the sea" } else { " waves" };
                    let t = Instant::now();
                    let _ = chain.filter(0, text);
                    per_chunk.push(t.elapsed().as_secs_f64() * 1e6);
                }
                let _ = chain.finish(0);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Ok((
                chain_us,
                auth_us,
                adm_us,
                base_us,
                per_chunk,
                per_stream_setup,
            ))
        })
        .await
        .map_err(|e| e.to_string())?
    });
    let (mut chain, mut auth, mut adm, mut base, mut chunk, mut setup) =
        result.map_err(HostError::Server)?;
    let mut out = format!(
        "policy {}, route {route}: auth {:?}, admission {:?}, output {:?}; {iterations} requests, {} chunks per stream\n\n| measurement | p50 us | p99 us | mean us |\n|---|---:|---:|---:|\n",
        policy_file.display(),
        rule.auth,
        rule.admission,
        rule.output,
        chunks
    );
    row(&mut out, "no stages (baseline)", &mut base);
    row(&mut out, "auth", &mut auth);
    row(&mut out, "admission (all stages)", &mut adm);
    row(
        &mut out,
        "request-side chain (auth + admission)",
        &mut chain,
    );
    if !chunk.is_empty() {
        row(&mut out, "output filter chain, per chunk", &mut chunk);
        row(
            &mut out,
            "output filter chain, per stream setup",
            &mut setup,
        );
    }
    Ok(out)
}
