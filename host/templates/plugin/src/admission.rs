//! An admission stage: refuses requests whose `max_tokens` is above the
//! `max_tokens` config value (default 256), and flags any request that
//! mentions the `watch_word` config value.

use palisade_plugin_sdk::admission::palisade::plugin::config;
use palisade_plugin_sdk::admission::palisade::plugin::types::{AdmissionVerdict, RequestContext};
use palisade_plugin_sdk::admission::{Guest, deny};

struct Plugin;

impl Guest for Plugin {
    /// Nothing to build ahead of a request: the config is read per call.
    fn prepare() {}

    fn admit(r: RequestContext) -> AdmissionVerdict {
        let max: u32 = match palisade_plugin_sdk::admission::config_as("max_tokens") {
            Ok(v) => v.unwrap_or(256),
            // A bad config is a refusal with a clear message, never a trap.
            Err(e) => return deny(500, "misconfigured", &e),
        };
        if r.max_tokens > max {
            return deny(400, "max_tokens_too_large", &format!("max_tokens above {max}"));
        }
        if let Some(w) = config::get("watch_word")
            && r.messages.iter().any(|m| m.content.contains(&w))
        {
            return AdmissionVerdict::Flag(format!("mentions `{w}`"));
        }
        AdmissionVerdict::Allow
    }

    fn completed(_r: RequestContext, _completion_tokens: u32) {}
}

palisade_plugin_sdk::admission::export_admission!(Plugin);
