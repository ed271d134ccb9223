//! Model manifests: the sha256 and size of every file of a model (a GGUF
//! file, or a Hugging Face directory), so an operator can pin the exact
//! weights a server may load. `palisade model manifest` writes one,
//! `palisade model verify` and `serve --model-manifest` check a model
//! against it.
//!
//! A manifest is JSON: a format name, a version, and the files, by path
//! relative to the model directory (for a single file, its name), sorted,
//! `/`-separated. Files are hashed streaming, never read whole.
//!
//! ```no_run
//! use palisade::manifest::Manifest;
//! use std::path::Path;
//! let m = Manifest::of(Path::new("/srv/models/smollm2.gguf"), None)?;
//! std::fs::write("smollm2.manifest.json", m.to_json())?;
//! palisade::manifest::verify(Path::new("/srv/models/smollm2.gguf"), Path::new("smollm2.manifest.json"))?;
//! # Ok::<(), palisade::HostError>(())
//! ```

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::HostError;

/// The `format` field of every manifest.
pub const FORMAT: &str = "palisade-model-manifest";

/// The manifest format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Read buffer for hashing.
const HASH_BUFFER: usize = 1 << 20;

/// Deepest directory nesting walked (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// A model's files with their sizes and digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for manifests this build writes.
    pub version: u32,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the model directory, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
}

/// The sha256 (hex) and size of a file, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> HostError {
    HostError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The files of `target` by relative path: the file itself for a file,
/// every regular file below it for a directory (symlinks followed).
/// `exclude` (a manifest kept inside the directory) is left out.
pub fn list_files(
    target: &Path,
    exclude: Option<&Path>,
) -> Result<BTreeMap<String, PathBuf>, HostError> {
    let meta = std::fs::metadata(target).map_err(|e| io_err(target, e))?;
    let mut out = BTreeMap::new();
    if !meta.is_dir() {
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io_err(target, "not a file name in UTF-8"))?;
        out.insert(name.to_string(), target.to_path_buf());
        return Ok(out);
    }
    let exclude = exclude.and_then(|p| std::fs::canonicalize(p).ok());
    walk(target, "", 0, exclude.as_deref(), &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    exclude: Option<&Path>,
    out: &mut BTreeMap<String, PathBuf>,
) -> Result<(), HostError> {
    if depth > MAX_DEPTH {
        return Err(io_err(
            dir,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io_err(&path, "not a file name in UTF-8"))?;
        let rel = format!("{prefix}{name}");
        let meta = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            walk(&path, &format!("{rel}/"), depth + 1, exclude, out)?;
        } else if meta.is_file() {
            if exclude.is_some() && std::fs::canonicalize(&path).ok().as_deref() == exclude {
                continue;
            }
            out.insert(rel, path);
        }
    }
    Ok(())
}

impl Manifest {
    /// Hashes every file of `target` (see [`list_files`]).
    pub fn of(target: &Path, exclude: Option<&Path>) -> Result<Self, HostError> {
        let mut files = Vec::new();
        for (rel, path) in list_files(target, exclude)? {
            let (sha256, size) = hash_file(&path).map_err(|e| io_err(&path, e))?;
            files.push(FileEntry {
                path: rel,
                size,
                sha256,
            });
        }
        Ok(Manifest {
            format: FORMAT.into(),
            version: VERSION,
            files,
        })
    }

    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let bad = |message: String| HostError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if m.format != FORMAT {
            return Err(bad(format!("format is `{}`, not `{FORMAT}`", m.format)));
        }
        if m.version != VERSION {
            return Err(bad(format!(
                "version {} is not supported (this build reads version {VERSION})",
                m.version
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &m.files {
            if f.path.is_empty()
                || f.path.starts_with('/')
                || f.path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(bad(format!("`{}` is not a plain relative path", f.path)));
            }
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!("`{}`: sha256 is not 64 hex digits", f.path)));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(bad(format!("`{}` is listed twice", f.path)));
            }
        }
        Ok(m)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Total bytes of the files listed.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// What differs between this manifest and `target` on disk: one line
    /// per missing, extra or changed file (empty when they match). Sizes
    /// are compared first; only files of the right size are hashed.
    pub fn differences(
        &self,
        target: &Path,
        exclude: Option<&Path>,
    ) -> Result<Vec<String>, HostError> {
        let mut disk = list_files(target, exclude)?;
        let mut problems = Vec::new();
        for f in &self.files {
            let Some(path) = disk.remove(&f.path) else {
                problems.push(format!("missing: {}", f.path));
                continue;
            };
            let size = std::fs::metadata(&path)
                .map_err(|e| io_err(&path, e))?
                .len();
            if size != f.size {
                problems.push(format!(
                    "mismatched: {} is {size} bytes, the manifest says {}",
                    f.path, f.size
                ));
                continue;
            }
            let (sha, _) = hash_file(&path).map_err(|e| io_err(&path, e))?;
            if !sha.eq_ignore_ascii_case(&f.sha256) {
                problems.push(format!(
                    "mismatched: {} has sha256 {sha}, the manifest says {}",
                    f.path, f.sha256
                ));
            }
        }
        problems.extend(
            disk.into_keys()
                .map(|p| format!("extra: {p} (not in the manifest)")),
        );
        Ok(problems)
    }
}

/// `palisade model manifest`: the manifest of `target`, written to `out`
/// when given. Returns what goes to standard output (the JSON when there
/// is no `out`) and a note for standard error.
pub fn write(target: &Path, out: Option<&Path>) -> Result<(String, String), HostError> {
    let m = Manifest::of(target, out)?;
    let Some(o) = out else {
        return Ok((m.to_json(), String::new()));
    };
    std::fs::write(o, m.to_json()).map_err(|e| HostError::Manifest {
        path: o.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((
        String::new(),
        format!(
            "wrote {} ({} files, {} bytes)\n",
            o.display(),
            m.files.len(),
            m.total_size()
        ),
    ))
}

/// Checks `target` against the manifest file `manifest`; returns the
/// manifest when every file matches, else an error naming each problem.
pub fn verify(target: &Path, manifest: &Path) -> Result<Manifest, HostError> {
    let m = Manifest::load(manifest)?;
    let problems = m.differences(target, Some(manifest))?;
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(HostError::ModelMismatch {
            model: target.to_path_buf(),
            manifest: manifest.to_path_buf(),
            problems: problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("config.json"), b"{}").unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/b.safetensors"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(t.path().join("a.safetensors"), b"weights").unwrap();
        t
    }

    #[test]
    fn hashes_stream_and_match_known_digests() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let (h, n) = hash_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Larger than the buffer: same digest as hashing it whole.
        let big = vec![1u8; HASH_BUFFER * 2 + 17];
        std::fs::write(&p, &big).unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            (crate::plugins::sha256_hex(&big), big.len() as u64)
        );
    }

    #[test]
    fn manifest_lists_relative_sorted_paths_and_round_trips() {
        let t = model_dir();
        let m = Manifest::of(t.path(), None).unwrap();
        let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.safetensors", "config.json", "sub/b.safetensors"]);
        assert_eq!(m.files[2].size, 3 << 20);
        assert_eq!(m.version, VERSION);
        let out = t.path().join("manifest.json");
        std::fs::write(&out, m.to_json()).unwrap();
        // The manifest kept inside the directory is not part of it.
        assert_eq!(verify(t.path(), &out).unwrap(), m);
        // A single file: its name alone.
        let f = Manifest::of(&t.path().join("config.json"), None).unwrap();
        assert_eq!(f.files.len(), 1);
        assert_eq!(f.files[0].path, "config.json");
    }

    #[test]
    fn verify_names_missing_extra_and_changed_files() {
        let t = model_dir();
        let m = Manifest::of(t.path(), None).unwrap();
        let mp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(mp.path(), m.to_json()).unwrap();
        // Same size, one byte flipped: only the hash can tell.
        let mut b = std::fs::read(t.path().join("sub/b.safetensors")).unwrap();
        b[1 << 20] ^= 1;
        std::fs::write(t.path().join("sub/b.safetensors"), b).unwrap();
        std::fs::write(t.path().join("a.safetensors"), b"weights!").unwrap();
        std::fs::remove_file(t.path().join("config.json")).unwrap();
        std::fs::write(t.path().join("pytorch_model.bin"), b"pickle").unwrap();
        let e = verify(t.path(), mp.path()).unwrap_err().to_string();
        for want in [
            "missing: config.json",
            "extra: pytorch_model.bin",
            "mismatched: sub/b.safetensors has sha256",
            "mismatched: a.safetensors is 8 bytes, the manifest says 7",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
        assert!(e.contains(&mp.path().display().to_string()), "{e}");
    }

    #[test]
    fn malformed_manifests_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.json");
        let sha = "0".repeat(64);
        for (body, want) in [
            (
                format!(r#"{{"format":"x","version":1,"files":[]}}"#),
                "format is `x`",
            ),
            (
                format!(r#"{{"format":"{FORMAT}","version":9,"files":[]}}"#),
                "version 9",
            ),
            (
                format!(
                    r#"{{"format":"{FORMAT}","version":1,"files":[{{"path":"../etc/passwd","size":1,"sha256":"{sha}"}}]}}"#
                ),
                "plain relative path",
            ),
            (
                format!(
                    r#"{{"format":"{FORMAT}","version":1,"files":[{{"path":"a","size":1,"sha256":"xyz"}}]}}"#
                ),
                "64 hex digits",
            ),
            (
                format!(r#"{{"format":"{FORMAT}","version":1,"files":[],"extra":1}}"#),
                "extra",
            ),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = Manifest::load(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("m.json"), "{want}: {e}");
        }
    }
}
