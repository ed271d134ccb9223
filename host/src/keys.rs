//! API key files: what `palisade keys create|list|revoke` edit and the
//! api-key plugin reads (through the policy's `config_files.keys`).
//!
//! A key file is a JSON object from each key's sha256 (hex) to its record;
//! keys themselves are never stored. A key is `pal_` and 43 base64url
//! characters (256 random bits); it is shown once, when created. Files are
//! written atomically with mode 0600.
//!
//! ```no_run
//! use palisade::keys::{KeyFile, NewKey};
//! let path = std::path::Path::new("keys.json");
//! let mut file = KeyFile::load_or_empty(path)?;
//! let key = file.create(NewKey { id: "ci".into(), scopes: vec!["inference".into()], ..Default::default() })?;
//! file.save(path)?;
//! println!("{key}");
//! # Ok::<(), palisade::HostError>(())
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use crate::HostError;
use crate::plugins::sha256_hex;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Scopes the server's routes use.
pub const KNOWN_SCOPES: &[&str] = &["inference", "embeddings", "admin", "metrics", "tools"];

/// One key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Its name (unique in the file).
    pub id: String,
    /// Tenant.
    #[serde(default)]
    pub tenant: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Unix seconds after which it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Models it may use (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Unix seconds when it was made.
    #[serde(default)]
    pub created: u64,
}

/// What `create` needs.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Name.
    pub id: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Tenant (default: the id).
    pub tenant: Option<String>,
    /// Expiry, unix seconds.
    pub expires: Option<u64>,
    /// Allowed models.
    pub models: Vec<String>,
}

/// A key file in memory.
#[derive(Debug, Clone, Default)]
pub struct KeyFile {
    /// Records by the key's sha256.
    pub keys: BTreeMap<String, KeyRecord>,
}

fn err(path: &Path, m: impl std::fmt::Display) -> HostError {
    HostError::Config {
        path: path.to_path_buf(),
        message: m.to_string(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
}

impl KeyFile {
    /// Reads `path`, refusing it (and its directory) when another user
    /// owns it or others may write to it (see [`crate::private`]).
    pub fn load(path: &Path) -> Result<Self, HostError> {
        crate::private::check_file_and_dir(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| err(path, e))?;
        let keys = serde_json::from_str(&text).map_err(|e| err(path, e))?;
        Ok(KeyFile { keys })
    }

    /// Reads `path`, or an empty file when it does not exist.
    pub fn load_or_empty(path: &Path) -> Result<Self, HostError> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(KeyFile::default())
        }
    }

    /// Writes atomically, mode 0600, into a private directory (created
    /// 0700 when missing).
    pub fn save(&self, path: &Path) -> Result<(), HostError> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::ensure_dir(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::private::FILE_MODE)
            .open(&tmp)
            .map_err(|e| err(&tmp, e))?;
        let text = serde_json::to_string_pretty(&self.keys).map_err(|e| err(path, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(path, e))
    }

    /// Adds a key; returns the key (the only time it exists in clear).
    pub fn create(&mut self, new: NewKey) -> Result<String, HostError> {
        let bad = |m: String| HostError::InvalidArgument {
            flag: "id",
            message: m,
        };
        if !valid_name(&new.id) {
            return Err(bad(format!(
                "`{}`: use 1 to 64 letters, digits or -_.:@",
                new.id
            )));
        }
        if self.keys.values().any(|k| k.id == new.id) {
            return Err(bad(format!("a key named `{}` exists already", new.id)));
        }
        if new.scopes.is_empty() || new.scopes.iter().any(|s| !valid_name(s)) {
            return Err(HostError::InvalidArgument {
                flag: "scopes",
                message: format!(
                    "give one or more scopes, comma separated (the server's: {})",
                    KNOWN_SCOPES.join(", ")
                ),
            });
        }
        if let Some(m) = new.models.iter().find(|m| m.is_empty()) {
            return Err(HostError::InvalidArgument {
                flag: "models",
                message: format!("empty model name `{m}`"),
            });
        }
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let key = format!(
            "pal_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let digest = sha256_hex(key.as_bytes());
        self.keys.insert(
            digest,
            KeyRecord {
                tenant: new.tenant.unwrap_or_else(|| new.id.clone()),
                id: new.id,
                scopes: new.scopes,
                expires: new.expires,
                models: new.models,
                created: now(),
            },
        );
        Ok(key)
    }

    /// Removes the key named `id`.
    pub fn revoke(&mut self, id: &str) -> Result<(), HostError> {
        let before = self.keys.len();
        self.keys.retain(|_, k| k.id != id);
        if self.keys.len() == before {
            return Err(HostError::InvalidArgument {
                flag: "id",
                message: format!("no key named `{id}`"),
            });
        }
        Ok(())
    }

    /// A table of the keys (no hashes beyond a short prefix).
    pub fn table(&self) -> String {
        let mut out = String::from("id\ttenant\tscopes\texpires\tmodels\tcreated\tsha256\n");
        let mut rows: Vec<(&String, &KeyRecord)> = self.keys.iter().collect();
        rows.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        for (h, k) in rows {
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}…\n",
                k.id,
                k.tenant,
                k.scopes.join(","),
                k.expires.map_or("never".into(), format_date),
                if k.models.is_empty() {
                    "*".into()
                } else {
                    k.models.join(",")
                },
                format_date(k.created),
                &h[..12.min(h.len())]
            ));
        }
        out
    }
}

/// If `path` does not exist, creates it with one `admin` key holding every
/// scope and returns that key (to print once).
pub fn bootstrap(path: &Path) -> Result<Option<String>, HostError> {
    if path.exists() {
        return Ok(None);
    }
    let mut f = KeyFile::default();
    let key = f.create(NewKey {
        id: "admin".into(),
        scopes: KNOWN_SCOPES.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })?;
    f.save(path)?;
    Ok(Some(key))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DDTHH:MM:SSZ`, or unix seconds.
pub fn parse_date(s: &str) -> Result<u64, HostError> {
    let bad = || HostError::InvalidArgument {
        flag: "expires",
        message: format!("`{s}`: use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or unix seconds"),
    };
    if s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let p: Vec<&str> = date.split('-').collect();
    let [y, m, d] = p[..] else { return Err(bad()) };
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > dim[m as usize - 1] {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(t) = time {
        let p: Vec<&str> = t.split(':').collect();
        let [h, mi, se] = p[..] else {
            return Err(bad());
        };
        let (h, mi, se): (i64, i64, i64) = (
            h.parse().map_err(|_| bad())?,
            mi.parse().map_err(|_| bad())?,
            se.parse().map_err(|_| bad())?,
        );
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + se;
    }
    Ok(secs as u64)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2000-03-01T12:30:05Z").unwrap(), 951_913_805);
        assert_eq!(format_date(951_913_805), "2000-03-01T12:30:05Z");
        assert_eq!(parse_date("1700000000").unwrap(), 1_700_000_000);
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "yesterday",
            "2024-01-01T25:00:00Z",
            "2024-01-01T10:00:00",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
        assert!(parse_date("2024-02-29").is_ok());
    }

    #[test]
    fn create_list_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/keys.json");
        let admin = bootstrap(&path).unwrap().unwrap();
        assert!(bootstrap(&path).unwrap().is_none());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&admin), "the key itself is never stored");
        assert!(admin.starts_with("pal_") && admin.len() == 47);
        let mut f = KeyFile::load(&path).unwrap();
        let k = f
            .create(NewKey {
                id: "app".into(),
                scopes: vec!["inference".into()],
                models: vec!["m".into()],
                ..Default::default()
            })
            .unwrap();
        assert_ne!(k, admin);
        assert!(
            f.create(NewKey {
                id: "app".into(),
                scopes: vec!["x".into()],
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            f.create(NewKey {
                id: "nos".into(),
                ..Default::default()
            })
            .is_err()
        );
        f.save(&path).unwrap();
        let mut f = KeyFile::load(&path).unwrap();
        assert_eq!(f.keys.len(), 2);
        assert!(f.table().contains("app\tapp\tinference\tnever\tm\t"));
        f.revoke("app").unwrap();
        assert!(f.revoke("app").is_err());
        assert_eq!(f.keys.len(), 1);
        let digest = sha256_hex(admin.as_bytes());
        assert_eq!(f.keys[&digest].scopes, KNOWN_SCOPES);
    }
}
