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
pub mod runtime;
pub mod scaffold;
pub mod state;
pub mod tool;

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::HostError;

/// The sha256 of `bytes`, lower-case hex (plugin pins, API key hashes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates `dir` (mode 0700) if needed and refuses it when another user
/// owns it or others can write to it.
pub fn private_dir(dir: &Path) -> Result<(), HostError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| HostError::Plugin(format!("cannot create {}: {e}", dir.display())))?;
    }
    let meta =
        std::fs::metadata(dir).map_err(|e| HostError::Plugin(format!("{}: {e}", dir.display())))?;
    // SAFETY-free: geteuid via the metadata of a file we just created is not
    // available portably; compare with the owner of our own process dir.
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(meta.uid());
    if meta.uid() != me {
        return Err(HostError::Plugin(format!(
            "{} is owned by uid {}, not by this user ({me}); use a directory you own",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(HostError::Plugin(format!(
            "{} is writable by group or others (mode {:o}); fix it with `chmod 700 {}`",
            dir.display(),
            meta.permissions().mode() & 0o777,
            dir.display()
        )));
    }
    Ok(())
}
