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
    let bytes = std::fs::read(&spec.path).map_err(|e| read_error(name, spec, e))?;
    check_digest(name, spec, sha256_hex(&bytes))?;
    Ok(bytes)
}

/// Checks the component a policy names against its sha256 pin without
/// holding the file in memory (it is hashed as it is read); the digest when
/// it matches. The runtime uses this when a compiled copy of the pinned
/// digest is cached, or the plugin is already loaded: a large component
/// (the code interpreter is 20 MB) then costs no allocation of its size.
pub fn check_pinned(name: &str, spec: &policy::PluginSpec) -> Result<String, HostError> {
    let (digest, _) =
        crate::manifest::hash_file(&spec.path).map_err(|e| read_error(name, spec, e))?;
    check_digest(name, spec, digest)
}

fn read_error(name: &str, spec: &policy::PluginSpec, e: std::io::Error) -> HostError {
    HostError::Plugin(format!("plugin `{name}`: {}: {e}", spec.path.display()))
}

fn check_digest(
    name: &str,
    spec: &policy::PluginSpec,
    digest: String,
) -> Result<String, HostError> {
    if !digest.eq_ignore_ascii_case(&spec.sha256) {
        return Err(HostError::Plugin(format!(
            "plugin `{name}`: {} has sha256 {digest}, the policy pins {}; refusing to load it",
            spec.path.display(),
            spec.sha256
        )));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: std::path::PathBuf, sha256: String) -> policy::PluginSpec {
        policy::PluginSpec {
            path,
            sha256,
            kind: policy::PluginKind::Admission,
            config: Default::default(),
            config_files: Default::default(),
            limits: Default::default(),
            grants: Default::default(),
        }
    }

    #[test]
    fn streaming_and_whole_file_pin_checks_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        // Larger than hash_file's buffer, so the streamed hash spans reads.
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let good = spec(path.clone(), sha256_hex(&bytes).to_uppercase());
        assert_eq!(check_pinned("p", &good).unwrap(), sha256_hex(&bytes));
        assert_eq!(read_pinned("p", &good).unwrap(), bytes);
        let bad = spec(path.clone(), sha256_hex(b"other"));
        for e in [
            check_pinned("p", &bad).unwrap_err(),
            read_pinned("p", &bad).err().unwrap(),
        ] {
            let msg = e.to_string();
            assert!(
                msg.contains("plugin `p`")
                    && msg.contains(&sha256_hex(&bytes))
                    && msg.contains("refusing"),
                "{msg}"
            );
        }
        let gone = spec(dir.path().join("missing.wasm"), sha256_hex(&bytes));
        assert!(
            check_pinned("p", &gone)
                .unwrap_err()
                .to_string()
                .contains("missing.wasm")
        );
    }
}
