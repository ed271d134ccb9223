//! A loaded policy: its plugins, and the stages each route runs. Calls
//! plugins under their limits and turns verdicts and failures into typed
//! outcomes, recording each stage (plugin, verdict, microseconds) for the
//! audit record and the metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::bindings::shared::palisade::plugin::types::{
    AdmissionVerdict, Denial, FilterVerdict, Principal, RequestContext, RequestMeta, Rewrite,
};
use super::counters::CounterStore;
use super::policy::{FailureMode, PluginSpec, Policy, RouteRule};
use super::runtime::{Instance, LoadedPlugin, PluginStore, Runtime, StageFailure, timed};
use crate::HostError;
use crate::api::ApiError;

/// One stage as it ran, for the audit record.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    /// `auth`, `admission`, `output`.
    pub stage: &'static str,
    /// Plugin name.
    pub plugin: String,
    /// `allow`, `deny`, `flag`, `rewrite`, `abort`, `redact`, or
    /// `error:<kind>` (`error-open:<kind>` when the failure was skipped).
    pub verdict: String,
    /// Time the call took.
    pub micros: u64,
    /// Flag text, rewrite note or denial code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Default)]
struct Stats {
    outcomes: BTreeMap<(String, &'static str, String), u64>,
    latency: BTreeMap<(String, &'static str), [u64; 9]>,
    sum_micros: BTreeMap<(String, &'static str), (u64, u64)>,
}

const LATENCY_BUCKETS_US: [u64; 8] = [10, 25, 50, 100, 250, 1000, 10_000, 100_000];

/// A policy, loaded and ready.
pub struct Pipeline {
    /// The policy text, parsed.
    pub policy: Policy,
    /// Loaded plugins by name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    counters: Arc<dyn CounterStore>,
    runtime: Arc<Runtime>,
    kept: usize,
    stats: Mutex<Stats>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The client-facing error for a failed closed stage (no details).
fn closed(stage: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "a security check ({stage}) could not run; the request was refused"
    ))
}

fn denied(d: Denial) -> ApiError {
    let mut message = d.message;
    if message.len() > 1024 {
        let mut cut = 1024;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    ApiError::Denied {
        status: d.status,
        code: d.code,
        message,
        headers: d.headers.into_iter().map(|p| (p.name, p.value)).collect(),
    }
}

impl Pipeline {
    /// Loads every plugin of `policy`, with the counters backend its
    /// `[counters]` section names.
    pub fn build(policy: Policy) -> Result<Self, HostError> {
        let counters = policy.counters.open()?;
        Self::build_with(policy, counters)
    }

    /// Loads `policy` to replace `previous`: when both name the same
    /// counters backend, the new pipeline keeps counting in the old one's
    /// store (a reload does not reset rate limits, and requests finishing
    /// on the old policy settle in the same counters). When the runtime's
    /// settings are unchanged it is kept, and so is each plugin whose entry,
    /// config files and component (still checked against its pin) are
    /// unchanged: a reload then compiles and instantiates only what changed.
    pub fn rebuild(policy: Policy, previous: &Pipeline) -> Result<Self, HostError> {
        let counters = if policy.counters == previous.policy.counters {
            previous.counters.clone()
        } else {
            policy.counters.open()?
        };
        Self::assemble(policy, counters, Some(previous))
    }

    /// Loads every plugin of `policy` with a counters backend.
    pub fn build_with(policy: Policy, counters: Arc<dyn CounterStore>) -> Result<Self, HostError> {
        Self::assemble(policy, counters, None)
    }

    fn assemble(
        policy: Policy,
        counters: Arc<dyn CounterStore>,
        previous: Option<&Pipeline>,
    ) -> Result<Self, HostError> {
        let max_mem = policy
            .plugins
            .values()
            .map(|p| (p.limits.memory_mb as usize) << 20)
            .max()
            .unwrap_or(16 << 20);
        let fuel = policy.plugins.values().any(|p| p.limits.fuel > 0);
        let previous = previous.filter(|p| p.runtime.fits(&policy.runtime, max_mem, fuel));
        let runtime = match previous {
            Some(p) => p.runtime.clone(),
            None => Arc::new(Runtime::new(&policy.runtime, max_mem, fuel)?),
        };
        let (mut plugins, mut kept_count) = (BTreeMap::new(), 0);
        for (name, spec) in &policy.plugins {
            let kept = match previous {
                Some(p) => p.unchanged(name, spec, &counters)?,
                None => None,
            };
            let plugin = match kept {
                Some(p) => {
                    kept_count += 1;
                    p
                }
                None => runtime.load(name, spec, counters.clone())?,
            };
            plugins.insert(name.clone(), plugin);
        }
        Ok(Pipeline {
            policy,
            plugins,
            counters,
            runtime,
            kept: kept_count,
            stats: Mutex::default(),
        })
    }

    /// How many of its plugins were kept from the pipeline it replaced
    /// (the rest were loaded).
    pub fn kept_plugins(&self) -> usize {
        self.kept
    }

    /// This pipeline's plugin `name` when `spec` would load it the same:
    /// the same entry, the same counters, the same config (its files are
    /// read again) and a component that still matches its pin (a changed
    /// or missing file fails the reload, as a fresh load would).
    fn unchanged(
        &self,
        name: &str,
        spec: &PluginSpec,
        counters: &Arc<dyn CounterStore>,
    ) -> Result<Option<Arc<LoadedPlugin>>, HostError> {
        let (Some(old), Some(loaded)) = (self.policy.plugins.get(name), self.plugins.get(name))
        else {
            return Ok(None);
        };
        if old != spec || !Arc::ptr_eq(&self.counters, counters) {
            return Ok(None);
        }
        super::check_pinned(name, spec)?;
        Ok((spec.effective_config(name)? == loaded.info.config).then(|| loaded.clone()))
    }

    /// The rule for a route pattern (default-public routes get a public
    /// rule).
    pub fn rule(&self, route: &str) -> Option<RouteRule> {
        self.policy.rule_for(route).cloned().or_else(|| {
            super::policy::DEFAULT_PUBLIC
                .contains(&route)
                .then(|| RouteRule {
                    path: route.to_string(),
                    public: true,
                    auth: None,
                    scopes: vec![],
                    admission: vec![],
                    output: vec![],
                    failure: FailureMode::Closed,
                    tools: vec![],
                    max_tool_steps: 1,
                })
        })
    }

    /// A loaded plugin by name (for tools and the test harness).
    pub fn loaded(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(name)
    }

    fn plugin(&self, name: &str) -> &Arc<LoadedPlugin> {
        // Names were checked against the plugin table when the policy loaded.
        &self.plugins[name]
    }

    fn note(&self, rec: &StageRecord) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = rec.verdict.split(':').next().unwrap_or("").to_string();
        *s.outcomes
            .entry((rec.plugin.clone(), rec.stage, outcome))
            .or_default() += 1;
        let b = s
            .latency
            .entry((rec.plugin.clone(), rec.stage))
            .or_default();
        for (i, lim) in LATENCY_BUCKETS_US.iter().enumerate() {
            if rec.micros <= *lim {
                b[i] += 1;
            }
        }
        b[8] += 1;
        let sm = s
            .sum_micros
            .entry((rec.plugin.clone(), rec.stage))
            .or_default();
        sm.0 += rec.micros;
        sm.1 += 1;
    }

    fn record(
        &self,
        out: &mut Vec<StageRecord>,
        stage: &'static str,
        plugin: &str,
        verdict: String,
        micros: u64,
        detail: Option<String>,
    ) {
        let r = StageRecord {
            stage,
            plugin: plugin.to_string(),
            verdict,
            micros,
            detail,
        };
        self.note(&r);
        out.push(r);
    }

    fn fail(
        &self,
        out: &mut Vec<StageRecord>,
        stage: &'static str,
        f: &StageFailure,
        micros: u64,
        mode: FailureMode,
    ) -> Result<(), ApiError> {
        tracing::warn!(plugin = %f.plugin, stage, kind = f.kind.as_str(), detail = %f.detail, "plugin stage failed");
        let open = mode == FailureMode::Open;
        let verdict = format!(
            "{}:{}",
            if open { "error-open" } else { "error" },
            f.kind.as_str()
        );
        self.record(out, stage, &f.plugin, verdict, micros, None);
        if open { Ok(()) } else { Err(closed(stage)) }
    }

    /// Runs the route's authenticator. `Ok(None)` for public routes.
    pub fn authenticate(
        &self,
        rule: &RouteRule,
        meta: &RequestMeta,
        out: &mut Vec<StageRecord>,
    ) -> Result<Option<Principal>, ApiError> {
        let Some(name) = &rule.auth else {
            return Ok(None);
        };
        let p = self.plugin(name);
        let (r, t) = timed(|| -> Result<Result<Principal, Denial>, StageFailure> {
            let (mut store, inst) = p.checkout()?;
            let Instance::Auth(a) = inst else {
                unreachable!("kind checked at load")
            };
            let r = a
                .call_authenticate(&mut store, meta)
                .map_err(|e| p.classify(&store, e));
            p.dispose(store);
            r
        });
        let us = t.as_micros() as u64;
        match r {
            Ok(Ok(principal)) => {
                self.record(out, "auth", name, "allow".into(), us, None);
                if let Some(missing) = rule.scopes.iter().find(|s| !principal.scopes.contains(s)) {
                    return Err(ApiError::Forbidden(format!(
                        "this route needs the `{missing}` scope, which `{}` does not have",
                        principal.id
                    )));
                }
                Ok(Some(principal))
            }
            Ok(Err(d)) => {
                self.record(out, "auth", name, "deny".into(), us, Some(d.code.clone()));
                Err(denied(d))
            }
            Err(f) => {
                self.fail(out, "auth", &f, us, rule.failure)?;
                // Fail-open authentication: an anonymous principal without scopes.
                if rule.scopes.is_empty() {
                    Ok(Some(Principal {
                        id: "anonymous".into(),
                        tenant: String::new(),
                        scopes: vec![],
                        labels: vec![],
                    }))
                } else {
                    Err(ApiError::Forbidden(
                        "authentication was skipped and this route needs scopes".into(),
                    ))
                }
            }
        }
    }

    /// Runs the admission stages in order; returns the rewrites to apply.
    pub fn admit(
        &self,
        rule: &RouteRule,
        ctx: &RequestContext,
        out: &mut Vec<StageRecord>,
    ) -> Result<Vec<Rewrite>, ApiError> {
        let mut rewrites = Vec::new();
        // Stages that let the request through: told it used nothing when a
        // later stage refuses it, so their reservations do not leak.
        let mut admitted: Vec<&str> = Vec::new();
        for name in &rule.admission {
            let p = self.plugin(name);
            let (r, t) = timed(|| -> Result<AdmissionVerdict, StageFailure> {
                let (mut store, inst) = p.checkout()?;
                let Instance::Admission(a) = inst else {
                    unreachable!("kind checked at load")
                };
                let r = a
                    .call_admit(&mut store, ctx)
                    .map_err(|e| p.classify(&store, e));
                p.dispose(store);
                r
            });
            let us = t.as_micros() as u64;
            match r {
                Ok(AdmissionVerdict::Allow) => {
                    self.record(out, "admission", name, "allow".into(), us, None)
                }
                Ok(AdmissionVerdict::Flag(note)) => {
                    self.record(out, "admission", name, "flag".into(), us, Some(note))
                }
                Ok(AdmissionVerdict::Rewrite(rw)) => {
                    self.record(
                        out,
                        "admission",
                        name,
                        "rewrite".into(),
                        us,
                        Some(rw.note.clone()),
                    );
                    rewrites.push(rw);
                }
                Ok(AdmissionVerdict::Deny(d)) => {
                    self.record(
                        out,
                        "admission",
                        name,
                        "deny".into(),
                        us,
                        Some(d.code.clone()),
                    );
                    self.settle(&admitted, ctx, 0);
                    return Err(denied(d));
                }
                Err(f) => {
                    if let Err(e) = self.fail(out, "admission", &f, us, rule.failure) {
                        self.settle(&admitted, ctx, 0);
                        return Err(e);
                    }
                    continue; // failed open: it reserved nothing to settle
                }
            }
            admitted.push(name.as_str());
        }
        Ok(rewrites)
    }

    /// Tells the admission stages how many tokens the request used
    /// (best effort: failures are logged, not surfaced).
    pub fn completed(&self, rule: &RouteRule, ctx: &RequestContext, tokens: u32) {
        let names: Vec<&str> = rule.admission.iter().map(String::as_str).collect();
        self.settle(&names, ctx, tokens);
    }

    fn settle(&self, names: &[&str], ctx: &RequestContext, tokens: u32) {
        for &name in names {
            let p = self.plugin(name);
            let (r, _) = timed(|| {
                p.checkout().and_then(|(mut store, inst)| {
                    let Instance::Admission(a) = inst else {
                        unreachable!("kind checked at load")
                    };
                    let r = a
                        .call_completed(&mut store, ctx, tokens)
                        .map_err(|e| p.classify(&store, e));
                    p.dispose(store);
                    r
                })
            });
            if let Err(f) = r {
                tracing::warn!(plugin = %f.plugin, kind = f.kind.as_str(), "completion callback failed");
            }
        }
    }

    /// Fresh output-filter instances for one response.
    pub fn output_chain(self: &Arc<Self>, rule: &RouteRule) -> Result<OutputChain, ApiError> {
        let mut stages = Vec::new();
        let mut records = Vec::new();
        for name in &rule.output {
            let p = self.plugin(name).clone();
            match p.checkout() {
                Ok((store, Instance::Filter(f))) => stages.push(FilterStage {
                    plugin: p,
                    store: Some(store),
                    filter: f,
                    failed: false,
                }),
                Ok(_) => unreachable!("kind checked at load"),
                Err(f) => self.fail(&mut records, "output", &f, 0, rule.failure)?,
            }
        }
        Ok(OutputChain {
            pipeline: self.clone(),
            stages,
            mode: rule.failure,
            records,
            calls: BTreeMap::new(),
        })
    }

    /// Per-plugin metrics (and the counters backend's) in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        self.counters.render_metrics(out);
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP palisade_plugin_calls_total Plugin calls by plugin, stage and outcome.\n# TYPE palisade_plugin_calls_total counter"
        );
        for ((plugin, stage, outcome), n) in &s.outcomes {
            let _ = writeln!(
                out,
                "palisade_plugin_calls_total{{plugin=\"{plugin}\",stage=\"{stage}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP palisade_plugin_latency_seconds Plugin call latency.\n# TYPE palisade_plugin_latency_seconds histogram"
        );
        for ((plugin, stage), b) in &s.latency {
            for (i, lim) in LATENCY_BUCKETS_US.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "palisade_plugin_latency_seconds_bucket{{plugin=\"{plugin}\",stage=\"{stage}\",le=\"{}\"}} {}",
                    *lim as f64 / 1e6,
                    b[i]
                );
            }
            let _ = writeln!(
                out,
                "palisade_plugin_latency_seconds_bucket{{plugin=\"{plugin}\",stage=\"{stage}\",le=\"+Inf\"}} {}",
                b[8]
            );
            let (sum, n) = s
                .sum_micros
                .get(&(plugin.clone(), stage))
                .copied()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "palisade_plugin_latency_seconds_sum{{plugin=\"{plugin}\",stage=\"{stage}\"}} {}",
                sum as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "palisade_plugin_latency_seconds_count{{plugin=\"{plugin}\",stage=\"{stage}\"}} {n}"
            );
        }
    }

    /// Kinds of the loaded plugins (for `policy check`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (name, p) in &self.plugins {
            let _ = writeln!(
                s,
                "plugin {name}: {:?}, memory {} MiB, deadline {} ms{}",
                p.kind,
                p.limits.memory_mb,
                p.limits.deadline_ms,
                if p.limits.fuel > 0 {
                    format!(", fuel {}", p.limits.fuel)
                } else {
                    String::new()
                }
            );
        }
        let c = &self.policy.counters;
        let _ = match c.backend {
            super::counters::CounterBackend::Memory => writeln!(s, "counters: in memory"),
            super::counters::CounterBackend::Redis => writeln!(
                s,
                "counters: redis at {} (prefix `{}`, timeout {} ms, when unreachable: {:?})",
                super::redis_counters::redacted(c.url.as_deref().unwrap_or_default()),
                c.key_prefix,
                c.timeout_ms,
                c.on_unavailable
            ),
        };
        s
    }
}

struct FilterStage {
    plugin: Arc<LoadedPlugin>,
    store: Option<PluginStore>,
    filter: super::bindings::output_filter::OutputFilter,
    failed: bool,
}

/// The output filters of one response (one instance each, kept for the
/// whole stream so held-back text lives in the instance).
pub struct OutputChain {
    pipeline: Arc<Pipeline>,
    stages: Vec<FilterStage>,
    mode: FailureMode,
    /// Records of stages that failed to start.
    pub records: Vec<StageRecord>,
    calls: BTreeMap<String, (u64, u64, String)>,
}

/// Why an output chain stopped the response.
#[derive(Debug, Clone)]
pub enum OutputStop {
    /// A filter aborted (reason for the audit).
    Abort(String),
    /// A filter failed and the route fails closed.
    Failed,
}

impl OutputChain {
    /// Whether any filter runs.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    fn run(&mut self, index: u32, text: String, finish: bool) -> Result<String, OutputStop> {
        let mut text = text;
        for i in 0..self.stages.len() {
            let st = &mut self.stages[i];
            if st.failed {
                continue;
            }
            let mut emitted = String::new();
            // At the end, a stage first filters what earlier stages released,
            // then flushes what it holds.
            let calls: Vec<bool> = if finish {
                vec![false, true]
            } else {
                vec![false]
            };
            for is_finish in calls {
                let Some(store) = st.store.as_mut() else {
                    break;
                };
                st.plugin.arm(store);
                let (r, t) = timed(|| {
                    if is_finish {
                        st.filter.call_finish(&mut *store, index)
                    } else {
                        st.filter.call_filter(&mut *store, index, &text)
                    }
                });
                let e =
                    self.calls
                        .entry(st.plugin.info.name.clone())
                        .or_insert((0, 0, "pass".into()));
                e.0 += 1;
                e.1 += t.as_micros() as u64;
                match r {
                    Ok(FilterVerdict::Emit(s)) => emitted.push_str(&s),
                    Ok(FilterVerdict::Abort(reason)) => {
                        e.2 = "abort".into();
                        return Err(OutputStop::Abort(reason));
                    }
                    Err(err) => {
                        let f = st.plugin.classify(store, err);
                        tracing::warn!(plugin = %f.plugin, kind = f.kind.as_str(), detail = %f.detail, "output filter failed");
                        e.2 = format!("error:{}", f.kind.as_str());
                        if self.mode == FailureMode::Closed {
                            return Err(OutputStop::Failed);
                        }
                        // A trapped instance cannot be entered again: skip it.
                        st.failed = true;
                        emitted = text.clone();
                        break;
                    }
                }
                if !is_finish {
                    text = String::new();
                }
            }
            text = emitted;
        }
        Ok(text)
    }

    /// New text of choice `index`; returns what may be sent now.
    pub fn filter(&mut self, index: u32, text: &str) -> Result<String, OutputStop> {
        if self.stages.is_empty() {
            return Ok(text.to_string());
        }
        self.run(index, text.to_string(), false)
    }

    /// End of choice `index`: flushes held text.
    pub fn finish(&mut self, index: u32) -> Result<String, OutputStop> {
        if self.stages.is_empty() {
            return Ok(String::new());
        }
        self.run(index, String::new(), true)
    }

    /// The stage records of this response (one per filter: calls, total
    /// microseconds, last outcome).
    pub fn into_records(mut self) -> Vec<StageRecord> {
        let mut out = std::mem::take(&mut self.records);
        for (plugin, (calls, us, verdict)) in std::mem::take(&mut self.calls) {
            let r = StageRecord {
                stage: "output",
                plugin,
                verdict,
                micros: us,
                detail: Some(format!("{calls} calls")),
            };
            self.pipeline.note(&r);
            out.push(r);
        }
        out
    }
}

impl Drop for OutputChain {
    fn drop(&mut self) {
        for st in &mut self.stages {
            if let Some(s) = st.store.take() {
                st.plugin.dispose(s);
            }
        }
    }
}
