//! The counters capability: fixed time windows per key. In this process's
//! memory by default ([`MemoryCounters`]); in Redis, shared by every
//! replica, when the policy's `[counters]` section says so
//! ([`super::redis_counters::RedisCounters`]).
//!
//! ```toml
//! [counters]
//! backend = "redis"
//! url = "redis://127.0.0.1:6379/0"
//! key_prefix = "palisade:"
//! on_unavailable = "deny"   # or "local"
//! timeout_ms = 20
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::redis_counters::RedisCounters;
use crate::HostError;

/// Most distinct counter keys kept in memory; beyond it, expired windows
/// are swept and new keys refused.
pub const MAX_KEYS: usize = 1_000_000;

/// Longest window a counter may use (366 days).
pub const MAX_WINDOW_MS: u64 = 366 * 86_400_000;

/// Windowed counters.
pub trait CounterStore: Send + Sync + std::fmt::Debug {
    /// Adds `delta` to `key` in the current window of `window_ms`; returns
    /// the new value and the milliseconds left in the window.
    fn add(&self, key: &str, delta: i64, window_ms: u64) -> Result<(i64, u64), String>;

    /// Appends this backend's metrics (Prometheus text) to `out`.
    fn render_metrics(&self, _out: &mut String) {}
}

/// Refuses windows outside 1 ms to [`MAX_WINDOW_MS`].
pub fn check_window(window_ms: u64) -> Result<(), String> {
    if window_ms == 0 || window_ms > MAX_WINDOW_MS {
        return Err(format!(
            "window of {window_ms} ms is out of range (1 ms to 366 days)"
        ));
    }
    Ok(())
}

/// `[counters]` in the policy: where the counters capability keeps its
/// windows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CountersSection {
    /// `memory` (this process only; the default) or `redis` (shared by
    /// every replica pointed at the same server).
    pub backend: CounterBackend,
    /// The Redis server, `redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/socket[?db=N]` (required with `backend =
    /// "redis"`).
    pub url: Option<String>,
    /// Put before every Redis key (so several deployments can share one
    /// server).
    pub key_prefix: String,
    /// What a counter call does while Redis cannot be reached: `deny` (the
    /// call returns an error, so the rate limiter refuses the request) or
    /// `local` (count in this process's memory until Redis is back).
    pub on_unavailable: OnUnavailable,
    /// Connect, read and write timeout of one Redis call, in milliseconds
    /// (at most half the `deadline_ms` of every plugin granted counters).
    pub timeout_ms: u64,
}

impl Default for CountersSection {
    fn default() -> Self {
        CountersSection {
            backend: CounterBackend::Memory,
            url: None,
            key_prefix: "palisade:".into(),
            on_unavailable: OnUnavailable::Deny,
            timeout_ms: 20,
        }
    }
}

/// Where counters live.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CounterBackend {
    /// This process's memory.
    #[default]
    Memory,
    /// A Redis server shared by the replicas.
    Redis,
}

/// What counter calls do while the shared backend is unreachable.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Return an error to the plugin (fail closed).
    #[default]
    Deny,
    /// Count in this process's memory meanwhile.
    Local,
}

impl CountersSection {
    /// Checks the section; `deadlines` are the `deadline_ms` of the plugins
    /// granted counters, by name.
    pub fn check<'a>(
        &self,
        deadlines: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<(), HostError> {
        let bad = |m: String| Err(HostError::Policy(format!("[counters]: {m}")));
        match self.backend {
            CounterBackend::Memory => {
                if self.url.is_some() {
                    return bad("`url` is set but `backend` is \"memory\"; set `backend = \"redis\"` or remove `url`".into());
                }
                Ok(())
            }
            CounterBackend::Redis => {
                if self.url.is_none() {
                    return bad(
                        "`backend = \"redis\"` needs `url` (e.g. \"redis://127.0.0.1:6379/0\")"
                            .into(),
                    );
                }
                if self.timeout_ms == 0 || self.timeout_ms > 10_000 {
                    return bad(format!(
                        "`timeout_ms` is {}; it must be 1 to 10000",
                        self.timeout_ms
                    ));
                }
                if self.key_prefix.len() > 256 {
                    return bad("`key_prefix` is longer than 256 bytes".into());
                }
                for (name, deadline) in deadlines {
                    if self.timeout_ms * 2 > deadline {
                        return bad(format!(
                            "`timeout_ms` ({}) must be at most half of plugin `{name}`'s `deadline_ms` ({deadline}): a call waiting on Redis would otherwise run past the plugin's deadline",
                            self.timeout_ms
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Opens the configured backend. Redis is not contacted here beyond
    /// one probe: an unreachable server is logged and handled per
    /// `on_unavailable`, never a startup failure.
    pub fn open(&self) -> Result<Arc<dyn CounterStore>, HostError> {
        match self.backend {
            CounterBackend::Memory => Ok(Arc::new(MemoryCounters::default())),
            CounterBackend::Redis => Ok(Arc::new(RedisCounters::open(self)?)),
        }
    }
}

/// Counters in this process's memory.
#[derive(Debug)]
pub struct MemoryCounters {
    start: Instant,
    map: Mutex<HashMap<(String, u64), (u64, i64)>>,
}

impl Default for MemoryCounters {
    fn default() -> Self {
        MemoryCounters {
            start: Instant::now(),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl CounterStore for MemoryCounters {
    fn add(&self, key: &str, delta: i64, window_ms: u64) -> Result<(i64, u64), String> {
        check_window(window_ms)?;
        let now = self.start.elapsed().as_millis() as u64;
        let window = now / window_ms;
        let reset = (window + 1) * window_ms - now;
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_KEYS {
            m.retain(|(_, w), (win, _)| *win == now / *w);
            if m.len() >= MAX_KEYS {
                return Err("too many counters".into());
            }
        }
        let e = m.entry((key.to_string(), window_ms)).or_insert((window, 0));
        if e.0 != window {
            *e = (window, 0);
        }
        e.1 = e.1.saturating_add(delta);
        Ok((e.1, reset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<CountersSection, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_is_typed_and_checked() {
        let d = section("").unwrap();
        assert_eq!(d, CountersSection::default());
        assert!(
            d.check([("rate-limit", 50)]).is_ok(),
            "memory needs nothing"
        );
        let r = section("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\non_unavailable = \"local\"\ntimeout_ms = 25").unwrap();
        assert_eq!(
            (r.backend, r.on_unavailable, r.timeout_ms),
            (CounterBackend::Redis, OnUnavailable::Local, 25)
        );
        assert!(r.check([("rate-limit", 50)]).is_ok());
        let e = r.check([("rate-limit", 40)]).unwrap_err().to_string();
        assert!(
            e.contains("rate-limit") && e.contains("deadline_ms") && e.contains("40"),
            "{e}"
        );
        let e = section("backend = \"redis\"")
            .unwrap()
            .check([])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `url`"), "{e}");
        let e = section("url = \"redis://x\"")
            .unwrap()
            .check([])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"memory\""), "{e}");
        assert!(section("backend = \"etcd\"").unwrap_err().contains("etcd"));
        assert!(
            section("on_unavailable = \"allow\"")
                .unwrap_err()
                .contains("allow")
        );
        assert!(section("urls = \"x\"").unwrap_err().contains("urls"));
        let zero = section("backend = \"redis\"\nurl = \"redis://x\"\ntimeout_ms = 0").unwrap();
        assert!(
            zero.check([])
                .unwrap_err()
                .to_string()
                .contains("timeout_ms")
        );
        // A URL the client cannot use is a load error, naming the section.
        let bad = section("backend = \"redis\"\nurl = \"http://x\"").unwrap();
        assert!(bad.open().unwrap_err().to_string().contains("[counters]"));
    }

    #[test]
    fn counts_within_a_window_and_resets() {
        let c = MemoryCounters::default();
        assert_eq!(c.add("a", 2, 60_000).unwrap().0, 2);
        assert_eq!(c.add("a", 3, 60_000).unwrap().0, 5);
        assert_eq!(c.add("b", 1, 60_000).unwrap().0, 1);
        assert!(c.add("a", 1, 0).is_err());
        let (v, _) = c.add("short", 1, 20).unwrap();
        assert_eq!(v, 1);
        std::thread::sleep(std::time::Duration::from_millis(45));
        assert_eq!(
            c.add("short", 1, 20).unwrap().0,
            1,
            "a new window starts at zero"
        );
    }
}
