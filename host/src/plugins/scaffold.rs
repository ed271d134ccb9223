//! `palisade plugin new`: a buildable plugin with recorded test cases,
//! standalone (the WIT contract and the SDK are vendored into it).
//!
//! ```no_run
//! use palisade::plugins::{policy::PluginKind, scaffold};
//! let dir = scaffold::create(std::path::Path::new("."), "no-secrets", PluginKind::OutputFilter)?;
//! println!("{}", dir.display());
//! # Ok::<(), palisade::HostError>(())
//! ```

use std::path::{Path, PathBuf};

use super::policy::PluginKind;
use crate::HostError;

const WIT: &str = include_str!("../../../wit/plugin.wit");
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_HTTP: &str = include_str!("../../../plugins/sdk/src/http.rs");
const SDK_CARGO: &str = include_str!("../../templates/plugin/sdk-Cargo.toml.tmpl");
const CARGO: &str = include_str!("../../templates/plugin/Cargo.toml.tmpl");
const CARGO_CONFIG: &str = include_str!("../../templates/plugin/cargo-config.toml.tmpl");
const MAKEFILE: &str = include_str!("../../templates/plugin/Makefile.tmpl");
const README: &str = include_str!("../../templates/plugin/README.md.tmpl");
/// The wit-bindgen the vendored SDK is written against.
pub const WIT_BINDGEN: &str = "0.63";

fn sources(kind: PluginKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        PluginKind::Admission => (
            "admission",
            include_str!("../../templates/plugin/src/admission.rs"),
            include_str!("../../templates/plugin/tests/admission.json"),
        ),
        PluginKind::OutputFilter => (
            "output-filter",
            include_str!("../../templates/plugin/src/output-filter.rs"),
            include_str!("../../templates/plugin/tests/output-filter.json"),
        ),
        PluginKind::Authenticator => (
            "authenticator",
            include_str!("../../templates/plugin/src/authenticator.rs"),
            include_str!("../../templates/plugin/tests/authenticator.json"),
        ),
        PluginKind::Tool => (
            "tool",
            include_str!("../../templates/plugin/src/tool.rs"),
            include_str!("../../templates/plugin/tests/tool.json"),
        ),
    }
}

/// Writes a new plugin project `parent/name`; returns its directory.
/// Refuses names that are not crate names and directories that exist.
pub fn create(parent: &Path, name: &str, kind: PluginKind) -> Result<PathBuf, HostError> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(HostError::InvalidArgument {
            flag: "name",
            message: format!(
                "`{name}`: use lower-case letters, digits, - and _, starting with a letter"
            ),
        });
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(HostError::InvalidArgument {
            flag: "name",
            message: format!("{} exists already", dir.display()),
        });
    }
    let (kind_name, lib, fixture) = sources(kind);
    let crate_name = name.replace('-', "_");
    let fill = |t: &str| {
        t.replace("@NAME@", name)
            .replace("@CRATE@", &crate_name)
            .replace("@KIND@", kind_name)
            .replace("@WIT_BINDGEN@", WIT_BINDGEN)
    };
    let files: [(&str, String); 10] = [
        ("Cargo.toml", fill(CARGO)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        ("Makefile", fill(MAKEFILE)),
        ("README.md", fill(README)),
        (".gitignore", "/target\n".to_string()),
        ("src/lib.rs", lib.to_string()),
        ("tests/fixture.json", fixture.to_string()),
        ("wit/plugin.wit", WIT.to_string()),
        ("vendor/palisade-plugin-sdk/Cargo.toml", fill(SDK_CARGO)),
        ("vendor/palisade-plugin-sdk/src/lib.rs", SDK_LIB.to_string()),
    ];
    let write = |rel: &str, text: &str| -> Result<(), HostError> {
        let p = dir.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, text)?;
        Ok(())
    };
    for (rel, text) in &files {
        write(rel, text)?;
    }
    write("vendor/palisade-plugin-sdk/src/http.rs", SDK_HTTP)?;
    Ok(dir)
}
