//! The request guard: caps and ranges on what a request may ask for,
//! allowed models and roles, repetitive padding, and deny-listed patterns.
//!
//! Config (every key optional):
//!
//! ```toml
//! [plugins.guard.config]
//! max_messages = 64
//! max_message_chars = 32000
//! max_prompt_tokens = 1536
//! max_tokens = 1024
//! max_n = 4
//! temperature = [0.0, 2.0]
//! top_p = [0.0, 1.0]
//! models = ["smollm2-135m-instruct"]      # allowed models (default: any)
//! roles = ["system", "user", "assistant"] # allowed roles (default: any)
//! repetition = { min_chars = 1024, min_unique_ratio = 0.2 }  # or false
//! deny_patterns = ["(?i)ignore (all )?previous instructions"]
//! pattern_action = "deny"                 # or "flag" (audit only)
//! ```
//!
//! A principal with a `models` label (an API key limited to some models)
//! may only use those. Refusals are 400 (out-of-range parameters), 403
//! (model, role or content policy) values; a bad config refuses every
//! request with a 500 that names the key.

mod checks;

use palisade_plugin_sdk::admission::palisade::plugin::config;
use palisade_plugin_sdk::admission::palisade::plugin::types::{AdmissionVerdict, RequestContext};
use palisade_plugin_sdk::admission::{Guest, deny};

use checks::{Config, Outcome};

const KNOWN: &[&str] = &[
    "max_messages",
    "max_message_chars",
    "max_prompt_tokens",
    "max_tokens",
    "max_n",
    "temperature",
    "top_p",
    "models",
    "roles",
    "repetition",
    "deny_patterns",
    "pattern_action",
];

fn load() -> Result<Config, String> {
    let all = config::all();
    if let Some(p) = all.iter().find(|p| !KNOWN.contains(&p.name.as_str())) {
        return Err(format!("unknown config key `{}`", p.name));
    }
    Config::parse(all.iter().map(|p| (p.name.as_str(), p.value.as_str())))
}

thread_local! {
    /// The parsed config (patterns compiled), built by `prepare` before any
    /// request reaches this instance.
    static CONFIG: std::cell::OnceCell<Result<Config, String>> = const { std::cell::OnceCell::new() };
}

struct Guard;

impl Guest for Guard {
    fn prepare() {
        CONFIG.with(|c| {
            if let Ok(cfg) = c.get_or_init(load) {
                cfg.warm_up();
            }
        });
    }

    fn admit(r: RequestContext) -> AdmissionVerdict {
        CONFIG.with(|c| match c.get_or_init(load) {
            Err(e) => deny(
                500,
                "guard_misconfigured",
                &format!("request guard misconfigured: {e}"),
            ),
            Ok(cfg) => match checks::check(cfg, &r) {
                Outcome::Allow => AdmissionVerdict::Allow,
                Outcome::Flag(note) => AdmissionVerdict::Flag(note),
                Outcome::Deny(status, code, message) => deny(status, code, &message),
            },
        })
    }

    fn completed(_r: RequestContext, _completion_tokens: u32) {}
}

palisade_plugin_sdk::admission::export_admission!(Guard);
