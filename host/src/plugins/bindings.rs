//! Host-side bindings of the `palisade:plugin@0.1.0` worlds. The shared
//! interfaces (types, log, config, counters) are generated once, in
//! [`shared`], and reused by every world.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Imports shared by every world.
pub mod shared {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "shared-imports",
        inline: "
            package palisade:host;
            world shared-imports {
                import palisade:plugin/log@0.1.0;
                import palisade:plugin/config@0.1.0;
                import palisade:plugin/counters@0.1.0;
            }
        ",
    });
}

/// The `authenticator` world.
pub mod authenticator {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "palisade:plugin/authenticator",
        with: {
            "palisade:plugin/types": super::shared::palisade::plugin::types,
            "palisade:plugin/log": super::shared::palisade::plugin::log,
            "palisade:plugin/config": super::shared::palisade::plugin::config,
            "palisade:plugin/counters": super::shared::palisade::plugin::counters,
        },
    });
}

/// The `admission` world.
pub mod admission {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "palisade:plugin/admission",
        with: {
            "palisade:plugin/types": super::shared::palisade::plugin::types,
            "palisade:plugin/log": super::shared::palisade::plugin::log,
            "palisade:plugin/config": super::shared::palisade::plugin::config,
            "palisade:plugin/counters": super::shared::palisade::plugin::counters,
        },
    });
}

/// The `output-filter` world.
pub mod output_filter {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "palisade:plugin/output-filter",
        with: {
            "palisade:plugin/types": super::shared::palisade::plugin::types,
            "palisade:plugin/log": super::shared::palisade::plugin::log,
            "palisade:plugin/config": super::shared::palisade::plugin::config,
        },
    });
}

/// The `tool` world.
pub mod tool {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "palisade:plugin/tool",
        with: {
            "palisade:plugin/types": super::shared::palisade::plugin::types,
            "palisade:plugin/log": super::shared::palisade::plugin::log,
            "palisade:plugin/config": super::shared::palisade::plugin::config,
        },
    });
}
