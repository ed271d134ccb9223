//! An admission plugin that misbehaves on purpose, chosen by its `mode`
//! config value: `trap`, `loop`, `alloc` (without bound), `huge` (returns a
//! 100 MB string), `ungranted` (calls counters without the grant),
//! `socket` (tries to connect), `file` (tries to read /etc/passwd),
//! `env` (reads the environment), `clock` (reads the clock), `http`
//! (GETs the `url` config value and denies with what happened), or `ok`
//! (allows).

use palisade_plugin_sdk::admission::palisade::plugin::types::{AdmissionVerdict, RequestContext};
use palisade_plugin_sdk::admission::palisade::plugin::{config, counters, log};
use palisade_plugin_sdk::admission::{Guest, deny};

struct Misbehave;

impl Guest for Misbehave {
    fn prepare() {
        if config::get("mode").as_deref() == Some("trap-prepare") {
            panic!("deliberate trap in prepare");
        }
    }

    fn admit(_r: RequestContext) -> AdmissionVerdict {
        let mode = config::get("mode").unwrap_or_default();
        match mode.as_str() {
            "trap" => panic!("deliberate trap"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![1u8; 1 << 20]);
                }
            }
            "huge" => deny(400, "huge", &"x".repeat(100 << 20)),
            "ungranted" => match counters::add("k", 1, 60_000) {
                Ok(w) => deny(400, "counted", &format!("counter reached {}", w.value)),
                Err(e) => deny(403, "refused", &e),
            },
            "socket" => match std::net::TcpStream::connect("127.0.0.1:22") {
                Ok(_) => deny(400, "escaped", "connected to 127.0.0.1:22"),
                Err(e) => deny(403, "contained", &format!("socket refused: {e}")),
            },
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => deny(400, "escaped", &s),
                Err(e) => deny(403, "contained", &format!("file refused: {e}")),
            },
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                deny(403, "contained", &format!("environment: {vars:?}"))
            }
            "http" => {
                let url = config::get("url").unwrap_or_default();
                match palisade_plugin_sdk::http::get(&url, 1 << 20) {
                    Ok(r) => deny(
                        418,
                        "fetched",
                        &format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)),
                    ),
                    Err(e) => deny(403, "contained", &format!("http refused: {e}")),
                }
            }
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                deny(403, "contained", &format!("clock: {now}"))
            }
            _ => {
                log::log(log::Level::Info, "misbehave: ok");
                AdmissionVerdict::Allow
            }
        }
    }

    fn completed(_r: RequestContext, _t: u32) {}
}

palisade_plugin_sdk::admission::export_admission!(Misbehave);
