//! Private files and directories: the plugin artifact cache, the model
//! cache, API key files and the audit log directory hold what decides who
//! gets in and what runs, so nobody but the user running the server may be
//! able to change them.
//!
//! Directories this module creates are made mode 0700 (files the server
//! writes are 0600). An existing path is refused when it is owned by a
//! user other than the effective uid, or when its group or others may
//! write to it; the error names the command that fixes it.
//!
//! ```no_run
//! let dir = std::path::Path::new("/var/lib/palisade/plugins");
//! palisade::private::ensure_dir(dir)?;              // created 0700 when missing
//! palisade::private::check_file(&dir.join("x"))?;   // refused if others may write it
//! # Ok::<(), palisade::HostError>(())
//! ```

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::HostError;

/// Mode of directories this module creates.
pub const DIR_MODE: u32 = 0o700;

/// Mode of files the server writes into private directories.
pub const FILE_MODE: u32 = 0o600;

/// Permission bits that let the group or others write.
const SHARED_WRITE: u32 = 0o022;

/// The effective uid of this process (what the kernel checks writes
/// against; root in CI).
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, reads no memory of ours and
    // cannot fail (POSIX: "shall always be successful").
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

/// The verdict on one path's owner and mode, for a process running as
/// `euid` (pure: the callers read the metadata).
pub fn judge(path: &Path, is_dir: bool, owner: u32, mode: u32, euid: u32) -> Result<(), HostError> {
    let shown = path.display().to_string();
    if owner != euid {
        return Err(HostError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!("is owned by uid {owner}, not by this user (uid {euid})"),
            fix: format!("chown {euid} {shown}"),
        });
    }
    if mode & SHARED_WRITE != 0 {
        let want = if is_dir { DIR_MODE } else { FILE_MODE };
        return Err(HostError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!(
                "is writable by {} (mode {:03o})",
                match (mode & 0o020 != 0, mode & 0o002 != 0) {
                    (true, true) => "group and others",
                    (true, false) => "its group",
                    _ => "others",
                },
                mode & 0o7777
            ),
            fix: format!("chmod {want:o} {shown}"),
        });
    }
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> HostError {
    HostError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Refuses `dir` unless it is a directory this user owns that neither its
/// group nor others can write to.
pub fn check_dir(dir: &Path) -> Result<(), HostError> {
    let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
    if !meta.is_dir() {
        return Err(io(
            dir,
            std::io::Error::other("exists but is not a directory"),
        ));
    }
    judge(dir, true, meta.uid(), meta.permissions().mode(), euid())
}

/// Creates `dir` (and missing parents) mode 0700 when it does not exist,
/// then checks it with [`check_dir`].
pub fn ensure_dir(dir: &Path) -> Result<(), HostError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| io(dir, e))?;
    }
    check_dir(dir)
}

/// Refuses `file` unless it is a regular file this user owns that neither
/// its group nor others can write to.
pub fn check_file(file: &Path) -> Result<(), HostError> {
    let meta = std::fs::metadata(file).map_err(|e| io(file, e))?;
    if !meta.is_file() {
        return Err(io(file, std::io::Error::other("is not a regular file")));
    }
    judge(file, false, meta.uid(), meta.permissions().mode(), euid())
}

/// A private file and the directory holding it (a directory others can
/// write to lets them replace the file): checks whichever exist. Returns
/// whether the file exists.
pub fn check_file_and_dir(file: &Path) -> Result<bool, HostError> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            check_dir(dir)?;
        }
    }
    if file.exists() {
        check_file(file)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn judge_names_the_problem_and_the_fix() {
        let p = Path::new("/srv/cache");
        assert!(judge(p, true, 1000, 0o40700, 1000).is_ok());
        assert!(judge(p, true, 1000, 0o40755, 1000).is_ok());
        assert!(judge(p, false, 1000, 0o100644, 1000).is_ok());
        let e = judge(p, true, 1000, 0o40777, 1000).unwrap_err().to_string();
        assert!(
            e.contains("group and others") && e.contains("chmod 700 /srv/cache"),
            "{e}"
        );
        let e = judge(p, true, 1000, 0o40770, 1000).unwrap_err().to_string();
        assert!(e.contains("its group") && e.contains("(mode 770)"), "{e}");
        let e = judge(p, false, 1000, 0o100666, 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600 /srv/cache"), "{e}");
        let e = judge(p, false, 0, 0o100600, 1000).unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 0") && e.contains("chown 1000 /srv/cache"),
            "{e}"
        );
        // Root is no exception: a file another user owns is theirs to change.
        assert!(judge(p, false, 1000, 0o100600, 0).is_err());
    }

    #[test]
    fn ensure_dir_creates_0700_and_refuses_shared_dirs() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_dir(&d).unwrap();
        for p in [t.path().join("a"), d.clone()] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        chmod(&d, 0o777);
        let e = ensure_dir(&d).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 700 {}", d.display())), "{e}");
        chmod(&d, 0o750);
        check_dir(&d).unwrap();
        chmod(&d, 0o730);
        assert!(check_dir(&d).is_err());
        // A file where a directory is expected.
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(
            check_dir(&f)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn files_and_their_directories_are_checked() {
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o700);
        let f = t.path().join("keys.json");
        assert!(
            !check_file_and_dir(&f).unwrap(),
            "a missing file is not an error"
        );
        std::fs::write(&f, b"{}").unwrap();
        chmod(&f, 0o600);
        assert!(check_file_and_dir(&f).unwrap());
        chmod(&f, 0o646);
        let e = check_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("writable by others") && e.contains(&format!("chmod 600 {}", f.display())),
            "{e}"
        );
        chmod(&f, 0o600);
        chmod(t.path(), 0o777);
        let e = check_file_and_dir(&f).unwrap_err().to_string();
        assert!(
            e.contains(&format!("chmod 700 {}", t.path().display())),
            "{e}"
        );
        chmod(t.path(), 0o700);
    }

    #[test]
    fn a_path_owned_by_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("cache");
        std::fs::create_dir(&f).unwrap();
        chmod(&f, 0o700);
        let other = euid().wrapping_add(4242);
        // Only root may give a file away; CI runs as root. Elsewhere the
        // pure verdict above covers it.
        if std::os::unix::fs::chown(&f, Some(other), None).is_ok() {
            let e = check_dir(&f).unwrap_err().to_string();
            assert!(
                e.contains(&format!("owned by uid {other}")) && e.contains("chown"),
                "{e}"
            );
        } else {
            assert_ne!(euid(), 0, "root could not chown");
        }
    }
}
