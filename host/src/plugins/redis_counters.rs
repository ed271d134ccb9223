//! The counters capability in Redis, shared by every replica pointed at the
//! same server.
//!
//! Windows are aligned to the wall clock (window `i` of `window_ms` covers
//! unix milliseconds `[i * window_ms, (i + 1) * window_ms)`), so replicas
//! agree on which window a call falls in without talking to each other.
//! Each window is its own key, `{key_prefix}{plugin}/{key}:{window_ms}:{i}`,
//! and one add is one atomic Lua script: `INCRBY`, then `PEXPIRE` when the
//! key has no expiry yet (it was just made), returning the value and the
//! key's `PTTL`.
//!
//! Calls are synchronous with the configured timeout: plugin calls already
//! run outside the async workers' cooperative scheduling (`block_in_place`,
//! see [`super::runtime::timed`]). Connections are kept in a small pool.
//! When Redis cannot be reached the backend stops trying for
//! [`RETRY_AFTER`] (so a plugin making several calls waits for at most one
//! timeout), and meanwhile each call either fails (`on_unavailable =
//! "deny"`) or counts in this process's memory (`"local"`). Outages are
//! logged when they start and end, and at most every [`LOG_EVERY`] in
//! between; metrics count them.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::counters::{CounterStore, CountersSection, MemoryCounters, OnUnavailable, check_window};
use crate::HostError;

/// After a failed Redis call, how long calls skip Redis before trying it
/// again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// While Redis stays unreachable, how often the outage is logged again.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Idle connections kept for reuse.
pub const POOL_IDLE: usize = 16;
/// Longest key a plugin may use (bytes, before the prefix).
pub const MAX_KEY_BYTES: usize = 1024;
/// Extra lifetime of a window's key past the window's end, so a replica
/// whose clock lags a little still finds the key rather than a fresh one.
pub const EXPIRY_GRACE_MS: u64 = 5_000;

/// The add: one atomic script. KEYS[1] the window's key, ARGV[1] the
/// delta, ARGV[2] the expiry to set on a key that has none (milliseconds).
/// Returns `{value, pttl}`.
const ADD_SCRIPT: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
local t = redis.call('PTTL', KEYS[1])
if t < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  t = tonumber(ARGV[2])
end
return {v, t}
";

/// Where `now_ms` (unix milliseconds) falls for a window of `window_ms`:
/// the window's index and the milliseconds left in it (at least 1).
pub fn window_at(now_ms: u64, window_ms: u64) -> (u64, u64) {
    let index = now_ms / window_ms;
    (index, (index + 1) * window_ms - now_ms)
}

/// The Redis key of `key` (already carrying the plugin's name) in window
/// `index` of `window_ms`.
pub fn redis_key(prefix: &str, key: &str, window_ms: u64, index: u64) -> String {
    format!("{prefix}{key}:{window_ms}:{index}")
}

/// The expiry given to a new window key: the rest of the window plus
/// [`EXPIRY_GRACE_MS`].
pub fn expiry_ms(left_ms: u64) -> u64 {
    left_ms + EXPIRY_GRACE_MS
}

/// The milliseconds left in the window, from the key's `PTTL` (which
/// includes the grace), within `1..=window_ms`.
pub fn reset_from_pttl(pttl: i64, window_ms: u64) -> u64 {
    let left = u64::try_from(pttl)
        .unwrap_or(0)
        .saturating_sub(EXPIRY_GRACE_MS);
    left.clamp(1, window_ms)
}

fn unix_ms() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| "the system clock is before 1970".to_string())
}

/// Outage bookkeeping.
#[derive(Debug, Default)]
struct Health {
    /// Redis is skipped until then.
    down_until: Option<Instant>,
    /// When the outage was last logged.
    logged: Option<Instant>,
    /// Calls answered without Redis since the last log line.
    unlogged: u64,
}

/// Counters in Redis.
pub struct RedisCounters {
    client: redis::Client,
    /// The URL without any password, for logs.
    server: String,
    prefix: String,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    script: redis::Script,
    pool: Mutex<Vec<redis::Connection>>,
    health: Mutex<Health>,
    /// Set while Redis is considered down (the fast path reads only this).
    down: AtomicBool,
    local: MemoryCounters,
    /// Redis calls that failed (connect, timeout, protocol).
    errors: AtomicU64,
    /// Counter calls answered without Redis, refused.
    denied: AtomicU64,
    /// Counter calls answered without Redis, counted locally.
    local_calls: AtomicU64,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            let user = cred.split(':').next().unwrap_or("");
            if cred.contains(':') {
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            } else {
                format!("{}***{}", &url[..s + 3], &url[at..])
            }
        }
        _ => url.to_string(),
    }
}

impl RedisCounters {
    /// A backend for `section` (which [`CountersSection::check`] passed).
    /// Probes the server once; an unreachable server is logged, not an
    /// error.
    pub fn open(section: &CountersSection) -> Result<Self, HostError> {
        let url = section.url.as_deref().unwrap_or_default();
        let server = redacted(url);
        let client = redis::Client::open(url)
            .map_err(|e| HostError::Policy(format!("[counters]: `url` {server}: {e}")))?;
        let me = RedisCounters {
            client,
            server,
            prefix: section.key_prefix.clone(),
            timeout: Duration::from_millis(section.timeout_ms.max(1)),
            on_unavailable: section.on_unavailable,
            script: redis::Script::new(ADD_SCRIPT),
            pool: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
            down: AtomicBool::new(false),
            local: MemoryCounters::default(),
            errors: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            local_calls: AtomicU64::new(0),
        };
        match me.connection() {
            Ok(c) => {
                tracing::info!(server = %me.server, "counters in redis");
                me.give_back(c);
            }
            Err(e) => me.mark_down(&e),
        }
        Ok(me)
    }

    fn connection(&self) -> Result<redis::Connection, redis::RedisError> {
        if let Some(c) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    fn give_back(&self, c: redis::Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_IDLE {
            pool.push(c);
        }
    }

    /// One add in Redis: (value, pttl).
    fn redis_add(
        &self,
        key: &str,
        delta: i64,
        expiry: u64,
    ) -> Result<(i64, i64), redis::RedisError> {
        let mut c = self.connection()?;
        let r = self
            .script
            .key(key)
            .arg(delta)
            .arg(expiry)
            .invoke::<(i64, i64)>(&mut c);
        // A connection that failed may hold half a reply: drop it.
        if r.is_ok() {
            self.give_back(c);
        }
        r
    }

    /// Whether Redis is being skipped after a recent failure.
    fn skipping(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return false;
        }
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.down_until.is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self, error: &redis::RedisError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let now = Instant::now();
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let starting = h.down_until.is_none();
        h.down_until = Some(now + RETRY_AFTER);
        self.down.store(true, Ordering::Relaxed);
        if starting || h.logged.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            let unlogged = std::mem::take(&mut h.unlogged);
            h.logged = Some(now);
            drop(h);
            let action = match self.on_unavailable {
                OnUnavailable::Deny => "refusing counter calls",
                OnUnavailable::Local => "counting in this process's memory",
            };
            tracing::warn!(server = %self.server, error = %error, calls_without_redis = unlogged,
                "redis for shared counters is unreachable; {action} until it is back");
        }
    }

    fn mark_up(&self) {
        if !self.down.load(Ordering::Relaxed) {
            return;
        }
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.down_until.take().is_some() {
            self.down.store(false, Ordering::Relaxed);
            let unlogged = std::mem::take(&mut h.unlogged);
            h.logged = None;
            drop(h);
            tracing::info!(server = %self.server, calls_without_redis = unlogged,
                "redis for shared counters is reachable again");
        }
    }

    /// A call answered without Redis.
    fn unavailable(&self, key: &str, delta: i64, window_ms: u64) -> Result<(i64, u64), String> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unlogged += 1;
        match self.on_unavailable {
            OnUnavailable::Deny => {
                self.denied.fetch_add(1, Ordering::Relaxed);
                Err("shared counters are unavailable (redis cannot be reached)".into())
            }
            OnUnavailable::Local => {
                self.local_calls.fetch_add(1, Ordering::Relaxed);
                self.local.add(key, delta, window_ms)
            }
        }
    }
}

impl CounterStore for RedisCounters {
    fn add(&self, key: &str, delta: i64, window_ms: u64) -> Result<(i64, u64), String> {
        check_window(window_ms)?;
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("counter key longer than {MAX_KEY_BYTES} bytes"));
        }
        if self.skipping() {
            return self.unavailable(key, delta, window_ms);
        }
        let (index, left) = window_at(unix_ms()?, window_ms);
        let rkey = redis_key(&self.prefix, key, window_ms, index);
        match self.redis_add(&rkey, delta, expiry_ms(left)) {
            Ok((value, pttl)) => {
                self.mark_up();
                Ok((value, reset_from_pttl(pttl, window_ms)))
            }
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                // Redis answered with an error (e.g. the key holds another
                // type): the server is up, the call is refused.
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(server = %self.server, error = %e, "redis refused a counter call");
                Err("shared counters refused the call".into())
            }
            Err(e) => {
                self.mark_down(&e);
                self.unavailable(key, delta, window_ms)
            }
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let up = u8::from(!self.down.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP palisade_counters_redis_up Whether the last call to the shared counters' redis succeeded.\n# TYPE palisade_counters_redis_up gauge\npalisade_counters_redis_up {up}"
        );
        let _ = writeln!(
            out,
            "# HELP palisade_counters_redis_errors_total Calls to the shared counters' redis that failed.\n# TYPE palisade_counters_redis_errors_total counter\npalisade_counters_redis_errors_total {}",
            self.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP palisade_counters_unavailable_total Counter calls answered without redis, by what was done.\n# TYPE palisade_counters_unavailable_total counter\npalisade_counters_unavailable_total{{action=\"deny\"}} {}\npalisade_counters_unavailable_total{{action=\"local\"}} {}",
            self.denied.load(Ordering::Relaxed),
            self.local_calls.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_unix_clock() {
        assert_eq!(window_at(0, 60_000), (0, 60_000));
        assert_eq!(window_at(59_999, 60_000), (0, 1));
        assert_eq!(window_at(60_000, 60_000), (1, 60_000));
        // Two replicas a few ms apart inside one minute share the window.
        let t = 1_764_650_000_123;
        assert_eq!(window_at(t, 60_000).0, window_at(t + 5, 60_000).0);
        assert_eq!(window_at(t, 60_000).1, 60_000 - t % 60_000);
        assert_eq!(window_at(t, 1), (t, 1));
    }

    #[test]
    fn keys_name_prefix_key_window_and_index() {
        assert_eq!(
            redis_key(
                "palisade:",
                "rate-limit/requests:principal:app",
                60_000,
                29_410_833
            ),
            "palisade:rate-limit/requests:principal:app:60000:29410833"
        );
        // Different windows of the same key never share a Redis key.
        assert_ne!(
            redis_key("p:", "k", 60_000, 1),
            redis_key("p:", "k", 1_000, 1)
        );
    }

    #[test]
    fn expiry_covers_the_window_and_reset_undoes_the_grace() {
        let (_, left) = window_at(1_000_250, 1_000);
        assert_eq!(left, 750);
        assert_eq!(expiry_ms(left), 750 + EXPIRY_GRACE_MS);
        assert_eq!(reset_from_pttl(expiry_ms(left) as i64, 1_000), 750);
        // A key in its grace period or with no expiry still reports a
        // window that has not ended; never more than the window.
        assert_eq!(reset_from_pttl(100, 1_000), 1);
        assert_eq!(reset_from_pttl(-1, 1_000), 1);
        assert_eq!(reset_from_pttl(10_000_000, 1_000), 1_000);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://:s3cret@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(
            redacted("redis://user:s3cret@db/0"),
            "redis://user:***@db/0"
        );
        assert_eq!(redacted("redis://tok@db/0"), "redis://***@db/0");
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn an_unreachable_server_is_denied_or_counted_locally() {
        // Port 1 on loopback refuses at once: no Redis is needed to see
        // what the backend does without one.
        let section = |on| CountersSection {
            backend: super::super::counters::CounterBackend::Redis,
            url: Some("redis://127.0.0.1:1/0".into()),
            on_unavailable: on,
            ..CountersSection::default()
        };
        let deny = RedisCounters::open(&section(OnUnavailable::Deny)).unwrap();
        let e = deny.add("p/k", 1, 60_000).unwrap_err();
        assert!(e.contains("unavailable"), "{e}");
        assert!(deny.skipping(), "a failure pauses redis calls");
        let local = RedisCounters::open(&section(OnUnavailable::Local)).unwrap();
        assert_eq!(local.add("p/k", 2, 60_000).unwrap().0, 2);
        assert_eq!(local.add("p/k", 3, 60_000).unwrap().0, 5);
        let mut m = String::new();
        local.render_metrics(&mut m);
        assert!(m.contains("palisade_counters_redis_up 0"), "{m}");
        assert!(
            m.contains("palisade_counters_unavailable_total{action=\"local\"} 2"),
            "{m}"
        );
        assert!(deny.add("p/k", 1, 0).is_err(), "windows are checked first");
        assert!(deny.add(&"k".repeat(MAX_KEY_BYTES + 1), 1, 1_000).is_err());
    }
}
