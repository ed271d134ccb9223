//! The data each plugin store carries, and the host side of the imports
//! (log, config, counters, and `wasi:http` through [`super::http`]). Capabilities are checked here: an import the
//! policy did not grant answers with an error value (or, for `log`, drops
//! the line); nothing traps for a refusal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::shared::palisade::plugin::{config, counters, log, types::Pair};
use super::counters::CounterStore;
use super::policy::Grants;

/// Most bytes of one log line a plugin may write.
pub const MAX_LOG_LINE: usize = 4096;

/// What a plugin's stores share: its name, config and grants.
#[derive(Debug)]
pub struct PluginInfo {
    /// Name in the policy.
    pub name: String,
    /// Its `config` table.
    pub config: BTreeMap<String, String>,
    /// Its grants.
    pub grants: Grants,
    /// The counters backend (used only when granted).
    pub counters: Arc<dyn CounterStore>,
    /// Its per-call deadline (bounds each outgoing HTTP request).
    pub deadline: Duration,
    /// Most bytes of one outgoing HTTP response body.
    pub max_http_response_bytes: u64,
}

/// The data of one store (one plugin instance).
pub struct PluginState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_guard: super::http::HttpGuard,
    table: ResourceTable,
    /// Memory/table/instance limits of the store.
    pub limiter: super::runtime::Limiter,
    /// The plugin.
    pub info: Arc<PluginInfo>,
}

/// A clock stuck at the epoch: what a plugin sees without the clock grant.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl PluginState {
    /// A locked-down store: no files, no environment, no arguments, no
    /// sockets, no name lookups, no stdio, and a frozen clock unless the
    /// clock is granted.
    pub fn new(info: Arc<PluginInfo>, limiter: super::runtime::Limiter) -> Self {
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
        if !info.grants.clock {
            b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        let http_guard = super::http::HttpGuard::new(info.clone());
        PluginState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            http_guard,
            table: ResourceTable::new(),
            limiter,
            info,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_guard,
        }
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        if !self.info.grants.log {
            return;
        }
        let mut m = message;
        if m.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        let plugin = &self.info.name;
        match level {
            log::Level::Debug => tracing::debug!(%plugin, "{m}"),
            log::Level::Info => tracing::info!(%plugin, "{m}"),
            log::Level::Warn => tracing::warn!(%plugin, "{m}"),
            log::Level::Error => tracing::error!(%plugin, "{m}"),
        }
    }
}

impl config::Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        self.info.config.get(&key).cloned()
    }
    fn all(&mut self) -> Vec<Pair> {
        self.info
            .config
            .iter()
            .map(|(k, v)| Pair {
                name: k.clone(),
                value: v.clone(),
            })
            .collect()
    }
}

impl counters::Host for PluginState {
    fn add(&mut self, key: String, delta: i64, window_ms: u64) -> Result<counters::Window, String> {
        if !self.info.grants.counters {
            return Err(format!(
                "capability `counters` is not granted to plugin `{}`",
                self.info.name
            ));
        }
        let key = format!("{}/{key}", self.info.name);
        self.info
            .counters
            .add(&key, delta, window_ms)
            .map(|(value, reset_ms)| counters::Window { value, reset_ms })
    }
    fn get(&mut self, key: String, window_ms: u64) -> Result<counters::Window, String> {
        counters::Host::add(self, key, 0, window_ms)
    }
}

impl super::bindings::shared::palisade::plugin::types::Host for PluginState {}
