//! The plugin runtime: WIT bindings, the wasmtime engine and instance
//! pools, the policy file, and the pipeline of stages each route runs.

pub mod bench;
pub mod bindings;
pub mod check;
pub mod counters;
pub mod devkit;
pub mod http;
pub mod http_send;
pub mod pipeline;
pub mod policy;
pub mod redis_counters;
pub mod runtime;
pub mod scaffold;
pub mod state;
pub mod tool;

use sha2::{Digest, Sha256};

use crate::HostError;

/// The sha256 of `bytes`, lower-case hex (plugin pins, API key hashes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the component a policy names and checks it against its sha256
/// pin: the bytes when they match, else an error naming the plugin, the
/// file and both digests (the runtime loads through this, and
/// `palisade doctor` and the start-up checks use it too).
pub fn read_pinned(name: &str, spec: &policy::PluginSpec) -> Result<Vec<u8>, HostError> {
    let bytes = std::fs::read(&spec.path)
        .map_err(|e| HostError::Plugin(format!("plugin `{name}`: {}: {e}", spec.path.display())))?;
    let digest = sha256_hex(&bytes);
    if !digest.eq_ignore_ascii_case(&spec.sha256) {
        return Err(HostError::Plugin(format!(
            "plugin `{name}`: {} has sha256 {digest}, the policy pins {}; refusing to load it",
            spec.path.display(),
            spec.sha256
        )));
    }
    Ok(bytes)
}
