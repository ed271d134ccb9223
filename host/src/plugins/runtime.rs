//! The wasmtime side: one engine with the pooling allocator and epoch
//! interruption; each plugin compiled once (cached on disk in a private
//! directory), pinned by sha256, with its `InstancePre`; fresh single-use
//! instances made ahead of time off the request path; used stores dropped
//! on a background thread.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap,
};

use super::bindings::{admission, authenticator, output_filter, shared, tool};
use super::counters::CounterStore;
use super::policy::{Limits, PluginKind, PluginSpec, RuntimeSection};
use super::state::{PluginInfo, PluginState};
use crate::HostError;

/// One epoch tick; deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Used stores waiting for the reaper thread at most; beyond that a store
/// is dropped where it was released.
pub const REAPER_QUEUE: usize = 128;
/// The reaper is woken when this many stores wait (otherwise it drains on
/// its own every [`REAPER_PERIOD`]): one wake per batch, not per request.
pub const REAPER_BATCH: usize = 16;
/// How often the reaper drains without being woken.
pub const REAPER_PERIOD: Duration = Duration::from_millis(5);

/// Used stores waiting to be dropped off the request path.
#[derive(Default)]
struct Reaper {
    queue: Mutex<Vec<PluginStore>>,
    cv: Condvar,
}

impl Reaper {
    fn push(&self, store: PluginStore) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= REAPER_QUEUE {
            drop(q);
            drop(store);
            return;
        }
        q.push(store);
        if q.len() == REAPER_BATCH {
            self.cv.notify_one();
        }
    }

    fn run(&self, stop: &AtomicBool) {
        let mut batch = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            {
                let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let mut q = if q.len() < REAPER_BATCH {
                    self.cv
                        .wait_timeout(q, REAPER_PERIOD)
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0)
                } else {
                    q
                };
                std::mem::swap(&mut *q, &mut batch);
            }
            batch.clear();
        }
    }
}
/// Largest linear memory any plugin may be granted.
pub const MAX_PLUGIN_MEMORY: usize = 4096 << 20;

/// Why a plugin call failed (a trap, not a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The epoch deadline passed.
    Deadline,
    /// Fuel ran out.
    Fuel,
    /// The memory limit was hit.
    Memory,
    /// Any other trap (panic, unreachable, bad return).
    Trap,
    /// The instance could not be created.
    Instantiate,
}

impl FailureKind {
    /// Label for metrics and audit.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Fuel => "fuel",
            FailureKind::Memory => "memory",
            FailureKind::Trap => "trap",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

/// A failed plugin call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` failed ({}): {detail}", kind.as_str())]
pub struct StageFailure {
    /// Plugin name.
    pub plugin: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// Details for the log (never sent to clients).
    pub detail: String,
}

/// Memory limiter that remembers whether it refused growth.
pub struct Limiter {
    memory: usize,
    /// Set when a growth was refused.
    pub hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

/// A plugin store (the limiter lives in the store data).
pub type PluginStore = Store<PluginState>;

/// An instantiated plugin of some world.
pub enum Instance {
    /// `authenticator`.
    Auth(authenticator::Authenticator),
    /// `admission`.
    Admission(admission::Admission),
    /// `output-filter`.
    Filter(output_filter::OutputFilter),
    /// `tool`.
    Tool(tool::Tool),
}

enum Pre {
    Auth(authenticator::AuthenticatorPre<PluginState>),
    Admission(admission::AdmissionPre<PluginState>),
    Filter(output_filter::OutputFilterPre<PluginState>),
    Tool(tool::ToolPre<PluginState>),
}

/// A compiled, linked plugin with its pool of ready instances.
pub struct LoadedPlugin {
    /// Its name, config and grants.
    pub info: Arc<PluginInfo>,
    /// Its limits.
    pub limits: Limits,
    /// Its world.
    pub kind: PluginKind,
    engine: Engine,
    pre: Pre,
    ready: Mutex<Vec<(PluginStore, Instance)>>,
    prewarm: usize,
    reaper: Arc<Reaper>,
    wake: Arc<(Mutex<bool>, Condvar)>,
    /// A tool's `describe` answer, asked once (see `tool::describe`).
    pub(crate) described:
        std::sync::OnceLock<super::bindings::shared::palisade::plugin::types::ToolDescription>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.info.name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The engine and its helper threads, shared by all plugins of a policy.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    reaper: Arc<Reaper>,
    wake: Arc<(Mutex<bool>, Condvar)>,
    plugins: Arc<Mutex<Vec<Weak<LoadedPlugin>>>>,
    /// What it was built from (see [`Runtime::fits`]).
    settings: (RuntimeSection, usize, bool),
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

fn project(s: &mut PluginState) -> &mut PluginState {
    s
}

impl Runtime {
    /// A runtime sized by `rt`; `fuel` turns on fuel metering (only when a
    /// plugin's limits ask for it, since it slows every call).
    pub fn new(rt: &RuntimeSection, max_memory: usize, fuel: bool) -> Result<Self, HostError> {
        let err = |e: wasmtime::Error| HostError::Plugin(format!("plugin runtime: {e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(rt.max_instances)
            .total_core_instances(rt.max_instances * 4)
            .total_memories(rt.max_instances * 2)
            .total_tables(rt.max_instances * 4)
            .max_memory_size(max_memory.min(MAX_PLUGIN_MEMORY))
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .table_elements(100_000)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            // Reused slots keep their first pages mapped: a fresh instance's
            // first call then does not page-fault its stack and data in.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(fuel)
            .memory_reservation(max_memory as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg).map_err(err)?;
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(err)?;
        shared::palisade::plugin::log::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            project,
        )
        .map_err(err)?;
        shared::palisade::plugin::config::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            project,
        )
        .map_err(err)?;
        shared::palisade::plugin::counters::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            project,
        )
        .map_err(err)?;
        shared::palisade::plugin::types::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            project,
        )
        .map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        // Epoch ticker: deadlines are counted in these ticks.
        let (e2, s2) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("palisade-epoch".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e2.increment_epoch();
                }
            })
            .map_err(|e| HostError::Plugin(e.to_string()))?;
        // Reaper: dropping a used store takes ~10 us; not on the request
        // path. Bounded: when it falls behind, stores are dropped inline, so
        // used instances never pile up against the pool's limit.
        let reaper = Arc::new(Reaper::default());
        let (r2, s4) = (reaper.clone(), stop.clone());
        std::thread::Builder::new()
            .name("palisade-reaper".into())
            .spawn(move || r2.run(&s4))
            .map_err(|e| HostError::Plugin(e.to_string()))?;
        // Prewarmer: keeps each plugin's pool of ready instances filled.
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let plugins: Arc<Mutex<Vec<Weak<LoadedPlugin>>>> = Arc::default();
        let (w2, p2, s3) = (wake.clone(), plugins.clone(), stop.clone());
        std::thread::Builder::new()
            .name("palisade-prewarm".into())
            .spawn(move || prewarm_loop(w2, p2, s3))
            .map_err(|e| HostError::Plugin(e.to_string()))?;
        let cache_dir = cache_dir(rt);
        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            stop,
            reaper,
            wake,
            plugins,
            settings: (rt.clone(), max_memory, fuel),
        })
    }

    /// Whether `Runtime::new(rt, max_memory, fuel)` would build this same
    /// runtime: a reload keeps it (and its loaded plugins) when it would.
    pub fn fits(&self, rt: &RuntimeSection, max_memory: usize, fuel: bool) -> bool {
        let (built_rt, built_memory, built_fuel) = &self.settings;
        built_rt == rt && *built_memory == max_memory && *built_fuel == fuel
    }

    /// Loads `spec` as `name`: checks the sha256 pin, compiles (or reads
    /// the cache), links.
    pub fn load(
        &self,
        name: &str,
        spec: &PluginSpec,
        counters: Arc<dyn CounterStore>,
    ) -> Result<Arc<LoadedPlugin>, HostError> {
        let component = self.compile(name, spec)?;
        let err = |e: wasmtime::Error| HostError::Plugin(format!("plugin `{name}`: {e:#}"));
        let ipre = self.linker.instantiate_pre(&component).map_err(err)?;
        let pre = match spec.kind {
            PluginKind::Authenticator => {
                Pre::Auth(authenticator::AuthenticatorPre::new(ipre).map_err(err)?)
            }
            PluginKind::Admission => {
                Pre::Admission(admission::AdmissionPre::new(ipre).map_err(err)?)
            }
            PluginKind::OutputFilter => {
                Pre::Filter(output_filter::OutputFilterPre::new(ipre).map_err(err)?)
            }
            PluginKind::Tool => Pre::Tool(tool::ToolPre::new(ipre).map_err(err)?),
        };
        let info = Arc::new(PluginInfo {
            name: name.to_string(),
            config: spec.effective_config(name)?,
            grants: spec.grants.clone(),
            deadline: Duration::from_millis(spec.limits.deadline_ms),
            max_http_response_bytes: spec.limits.max_http_response_bytes,
            counters,
        });
        let p = Arc::new(LoadedPlugin {
            info,
            limits: spec.limits,
            kind: spec.kind,
            engine: self.engine.clone(),
            pre,
            ready: Mutex::new(Vec::new()),
            // A tool runs a few times per request at most, and an instance
            // can be large (CPython is about 20 MB): keep one ready, not a
            // pool sized for per-request stages.
            prewarm: if spec.kind == PluginKind::Tool {
                self.settings.0.prewarm.min(1)
            } else {
                self.settings.0.prewarm
            },
            reaper: self.reaper.clone(),
            wake: self.wake.clone(),
            described: std::sync::OnceLock::new(),
        });
        // One instance now proves the plugin instantiates at all.
        let first = p
            .instantiate_outside_async()
            .map_err(|f| HostError::Plugin(f.to_string()))?;
        p.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(first);
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&p));
        p.wake_prewarmer();
        Ok(p)
    }

    /// The compiled component of `spec`. With a cache, the source is only
    /// hashed (streamed) to find the compiled copy of its pinned digest; it
    /// is read whole only to compile it, and then the bytes compiled are the
    /// bytes checked.
    fn compile(&self, name: &str, spec: &PluginSpec) -> Result<Component, HostError> {
        let err = |e: wasmtime::Error| HostError::Plugin(format!("plugin `{name}`: {e:#}"));
        let Some(dir) = &self.cache_dir else {
            let bytes = super::read_pinned(name, spec)?;
            return Component::new(&self.engine, &bytes).map_err(err);
        };
        let digest = super::check_pinned(name, spec)?;
        crate::private::ensure_dir(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let file = dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
        if file.exists() {
            crate::private::check_file(&file)?;
            // SAFETY: the file was written by `precompile_component` of a
            // compatible engine into a directory only we can write (checked
            // by `private::ensure_dir`, the file by `check_file`); its name pins
            // the source's sha256.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, &file) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(plugin = name, error = %e, "ignoring an unreadable plugin cache entry")
                }
            }
        }
        let bytes = super::read_pinned(name, spec)?;
        let compiled = self.engine.precompile_component(&bytes).map_err(err)?;
        drop(bytes);
        let tmp = file.with_extension("tmp");
        if write_private(&tmp, &compiled)
            .and_then(|_| std::fs::rename(&tmp, &file))
            .is_err()
        {
            tracing::warn!(plugin = name, dir = %dir.display(), "could not write the plugin cache");
        }
        // SAFETY: these bytes were just produced by this engine.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(err)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.1.notify_all();
    }
}

/// Writes `bytes` to a new file of mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::private::FILE_MODE)
        .open(path)?
        .write_all(bytes)
}

/// Where compiled plugins are cached: the policy's `[runtime] cache_dir`,
/// else `~/.cache/palisade/plugins` (none without a home directory).
pub fn cache_dir(rt: &RuntimeSection) -> Option<PathBuf> {
    rt.cache_dir.clone().or_else(default_cache_dir)
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/palisade/plugins"))
}

fn prewarm_loop(
    wake: Arc<(Mutex<bool>, Condvar)>,
    plugins: Arc<Mutex<Vec<Weak<LoadedPlugin>>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let list: Vec<Arc<LoadedPlugin>> = {
            let mut l = plugins.lock().unwrap_or_else(|e| e.into_inner());
            l.retain(|w| w.strong_count() > 0);
            l.iter().filter_map(Weak::upgrade).collect()
        };
        for p in &list {
            while p.ready.lock().unwrap_or_else(|e| e.into_inner()).len() < p.prewarm {
                match p.instantiate() {
                    Ok(i) => p.ready.lock().unwrap_or_else(|e| e.into_inner()).push(i),
                    Err(e) => {
                        tracing::warn!(error = %e, "prewarming failed");
                        break;
                    }
                }
            }
        }
        drop(list);
        let (m, cv) = &*wake;
        let mut woken = m.lock().unwrap_or_else(|e| e.into_inner());
        if !*woken {
            woken = cv
                .wait_timeout(woken, Duration::from_millis(500))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }
}

impl LoadedPlugin {
    /// Wakes the prewarmer unless it is already awake: one futex wake per
    /// refill, not per request.
    fn wake_prewarmer(&self) {
        let (m, cv) = &*self.wake;
        let mut woken = m.lock().unwrap_or_else(|e| e.into_inner());
        if !*woken {
            *woken = true;
            cv.notify_one();
        }
    }

    fn failure(&self, kind: FailureKind, detail: String) -> StageFailure {
        StageFailure {
            plugin: self.info.name.clone(),
            kind,
            detail,
        }
    }

    fn instantiate(&self) -> Result<(PluginStore, Instance), StageFailure> {
        let limiter = Limiter {
            memory: (self.limits.memory_mb as usize) << 20,
            hit: false,
        };
        let state = PluginState::new(self.info.clone(), limiter);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.limits.deadline_ms.max(1));
        store.epoch_deadline_trap();
        if self.limits.fuel > 0 {
            let _ = store.set_fuel(self.limits.fuel);
        } else {
            let _ = store.set_fuel(u64::MAX);
        }
        let r = match &self.pre {
            Pre::Auth(p) => p.instantiate(&mut store).map(Instance::Auth),
            Pre::Admission(p) => p.instantiate(&mut store).map(Instance::Admission),
            Pre::Filter(p) => p.instantiate(&mut store).map(Instance::Filter),
            Pre::Tool(p) => p.instantiate(&mut store).map(Instance::Tool),
        };
        let inst = r.map_err(|e| self.failure(FailureKind::Instantiate, format!("{e:#}")))?;
        // `prepare`: config-derived state, built before any request and,
        // for pooled instances, off the request path.
        let prepared = match &inst {
            Instance::Auth(i) => i.call_prepare(&mut store),
            Instance::Admission(i) => i.call_prepare(&mut store),
            Instance::Filter(i) => i.call_prepare(&mut store),
            Instance::Tool(i) => i.call_prepare(&mut store),
        };
        if let Err(e) = prepared {
            let mut f = self.classify(&store, e);
            f.detail = format!("in prepare: {}", f.detail);
            return Err(f);
        }
        Ok((store, inst))
    }

    /// `instantiate` on a thread outside any async runtime: `prepare` may
    /// call WASI imports (a panic message to stderr, say) that block on
    /// wasmtime-wasi's own runtime, which panics inside another one. Used
    /// when loading and when the ready pool is empty (rare: the prewarmer,
    /// a plain thread, keeps it filled).
    fn instantiate_outside_async(&self) -> Result<(PluginStore, Instance), StageFailure> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.instantiate();
        }
        std::thread::scope(|s| {
            s.spawn(|| self.instantiate()).join().unwrap_or_else(|_| {
                Err(self.failure(FailureKind::Instantiate, "instantiation panicked".into()))
            })
        })
    }

    /// A fresh, never-used instance (from the ready pool when possible),
    /// with its deadline and fuel reset for a call starting now.
    pub fn checkout(&self) -> Result<(PluginStore, Instance), StageFailure> {
        let (pooled, left) = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            let p = ready.pop();
            (p, ready.len())
        };
        // Refill in batches: wake the prewarmer once half the pool is used.
        if left * 2 <= self.prewarm {
            self.wake_prewarmer();
        }
        let (mut store, inst) = match pooled {
            Some(x) => x,
            None => self.instantiate_outside_async()?,
        };
        self.arm(&mut store);
        Ok((store, inst))
    }

    /// Resets the deadline (and fuel) before another call on this store.
    pub fn arm(&self, store: &mut PluginStore) {
        store.set_epoch_deadline(self.limits.deadline_ms.max(1));
        if self.limits.fuel > 0 {
            let _ = store.set_fuel(self.limits.fuel);
        }
    }

    /// Hands a used store to the background reaper.
    pub fn dispose(&self, store: PluginStore) {
        self.reaper.push(store);
    }

    /// Turns a call error into a classified failure.
    pub fn classify(&self, store: &PluginStore, e: wasmtime::Error) -> StageFailure {
        let kind = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureKind::Deadline,
            Some(Trap::OutOfFuel) => FailureKind::Fuel,
            _ if store.data().limiter.hit => FailureKind::Memory,
            _ => FailureKind::Trap,
        };
        self.failure(kind, format!("{e:#}"))
    }

    /// Ready instances right now (for tests and metrics).
    pub fn ready_count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Times a plugin call. On a tokio worker thread the call runs under
/// `block_in_place`: wasmtime-wasi's synchronous imports block on their own
/// futures, which is only allowed outside the runtime's async context.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    };
    (r, t.elapsed())
}
