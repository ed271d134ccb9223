//! The counters capability: fixed time windows per key. In memory here;
//! another backend (Redis) can implement [`CounterStore`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Most distinct counter keys kept in memory; beyond it, expired windows
/// are swept and new keys refused.
pub const MAX_KEYS: usize = 1_000_000;

/// Windowed counters.
pub trait CounterStore: Send + Sync + std::fmt::Debug {
    /// Adds `delta` to `key` in the current window of `window_ms`; returns
    /// the new value and the milliseconds left in the window.
    fn add(&self, key: &str, delta: i64, window_ms: u64) -> Result<(i64, u64), String>;
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
        if window_ms == 0 || window_ms > 366 * 86_400_000 {
            return Err(format!(
                "window of {window_ms} ms is out of range (1 ms to 366 days)"
            ));
        }
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
