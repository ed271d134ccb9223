//! The Palisade plugin SDK: Rust bindings for each world of the
//! `palisade:plugin@0.1.0` WIT package, plus small helpers.
//!
//! ```ignore
//! use palisade_plugin_sdk::admission::{Guest, palisade::plugin::types::*};
//! struct Guard;
//! impl Guest for Guard {
//!     fn prepare() {}
//!     fn admit(r: RequestContext) -> AdmissionVerdict {
//!         if r.max_tokens > 512 { palisade_plugin_sdk::admission::deny(400, "too_long", "max_tokens above 512") } else { AdmissionVerdict::Allow }
//!     }
//!     fn completed(_: RequestContext, _: u32) {}
//! }
//! palisade_plugin_sdk::admission::export_admission!(Guard);
//! ```

pub mod http;

/// Typed helpers shared by every world's module.
macro_rules! helpers {
    () => {
        /// The config value `key` parsed as `T` (numbers, booleans, ...);
        /// `Err` names the key when it does not parse.
        pub fn config_as<T: core::str::FromStr>(key: &str) -> Result<Option<T>, String> {
            match palisade::plugin::config::get(key) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("config `{key}`: `{v}` is not a valid value")),
            }
        }

        /// The config value `key` as a list: JSON arrays (what the policy
        /// passes for TOML arrays) or comma-separated text.
        pub fn config_list(key: &str) -> Vec<String> {
            let Some(v) = palisade::plugin::config::get(key) else {
                return Vec::new();
            };
            let t = v.trim();
            if let Some(inner) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                return inner
                    .split(',')
                    .map(|x| x.trim().trim_matches('"').to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
            }
            t.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        }
    };
}

/// The `authenticator` world.
pub mod authenticator {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "authenticator",
        pub_export_macro: true,
        export_macro_name: "export_authenticator",
        default_bindings_module: "palisade_plugin_sdk::authenticator",
    });

    helpers!();
}

/// The `admission` world.
pub mod admission {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "admission",
        pub_export_macro: true,
        export_macro_name: "export_admission",
        default_bindings_module: "palisade_plugin_sdk::admission",
    });

    helpers!();

    use palisade::plugin::types::Denial;

    /// A denial verdict with extra response headers (e.g. `retry-after`).
    pub fn deny_with_headers(
        status: u16,
        code: &str,
        message: &str,
        headers: &[(&str, &str)],
    ) -> AdmissionVerdict {
        AdmissionVerdict::Deny(Denial {
            status,
            code: code.into(),
            message: message.into(),
            headers: headers
                .iter()
                .map(|(n, v)| palisade::plugin::types::Pair {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        })
    }

    /// A denial verdict with no extra headers.
    pub fn deny(status: u16, code: &str, message: &str) -> AdmissionVerdict {
        AdmissionVerdict::Deny(Denial {
            status,
            code: code.into(),
            message: message.into(),
            headers: vec![],
        })
    }
}

/// The `output-filter` world.
pub mod output_filter {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "output-filter",
        pub_export_macro: true,
        export_macro_name: "export_output_filter",
        default_bindings_module: "palisade_plugin_sdk::output_filter",
    });

    helpers!();
}

/// The `tool` world.
pub mod tool {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tool",
        pub_export_macro: true,
        export_macro_name: "export_tool",
        default_bindings_module: "palisade_plugin_sdk::tool",
    });

    helpers!();
}
