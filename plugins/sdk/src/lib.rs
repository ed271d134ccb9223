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

/// The `authenticator` world.
pub mod authenticator {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "authenticator",
        pub_export_macro: true,
        export_macro_name: "export_authenticator",
        default_bindings_module: "palisade_plugin_sdk::authenticator",
    });
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

    use palisade::plugin::types::Denial;

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
}
