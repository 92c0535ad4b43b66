//! Pruning the quarantine (what is older than the retention age goes, everything younger stays) and the database
//! copies (by count, age and total size).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Engine;
use crate::error::{IoContext, Result};
use crate::fsutil;

/// One quarantine folder that prune removed (or, with `--dry-run`, would remove).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pruned {
    pub path: PathBuf,
    /// When it was put in quarantine (RFC 3339).
    pub at: String,
    pub bytes: u64,
}

/// What `dreamerd prune` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    pub ok: bool,
    pub dry_run: bool,
    pub retention_days: u64,
    pub removed: Vec<Pruned>,
    /// Quarantine folders younger than the retention age, kept.
    pub kept: usize,
    pub freed_bytes: u64,
}

impl Engine {
    /// Removes every quarantine folder older than `retention.quarantine_days` (only lists them with `dry_run`).
    pub fn prune(&self, dry_run: bool, now: SystemTime) -> Result<PruneReport> {
        let days = self.config.retention.quarantine_days;
        let cutoff = now.checked_sub(Duration::from_secs(days * 86_400)).unwrap_or(SystemTime::UNIX_EPOCH);
        let base = self.dirs.state.join("quarantine");
        let mut report = PruneReport {
            ok: true,
            dry_run,
            retention_days: days,
            removed: Vec::new(),
            kept: 0,
            freed_bytes: 0,
        };
        for project in list(&base)? {
            for entry in list(&project)? {
                let at = quarantined_at(&entry);
                if at >= cutoff {
                    report.kept += 1;
                    continue;
                }
                let bytes = size_of(&entry);
                if !dry_run {
                    fsutil::remove_any(&entry).ctx("remove", &entry)?;
                }
                report.freed_bytes += bytes;
                report.removed.push(Pruned { path: entry, at: super::rfc3339(at), bytes });
            }
            if !dry_run && fs::read_dir(&project).is_ok_and(|mut d| d.next().is_none()) {
                let _ = fs::remove_dir(&project);
            }
        }
        // Database copies: the newest `retention.database_copies` of each checkout, younger than
        // `retention.database_copy_days`, within `retention.database_copy_max_bytes` in all.
        for checkout in list(&self.dirs.state.join("databases"))? {
            for (path, at, bytes) in self.limit_copies_report(&checkout, Some(now), dry_run) {
                report.freed_bytes += bytes;
                report.removed.push(Pruned { path, at, bytes });
            }
        }
        // Scratch left by a process that died: archives unpacked to read a push's migrations (`tmp/`) and
        // drizzle-kit's answers (`hints/`), an hour old or more. Not listed: nothing of the user's.
        if !dry_run {
            let hour_ago = now.checked_sub(Duration::from_secs(3600)).unwrap_or(SystemTime::UNIX_EPOCH);
            for dir in ["tmp", "hints"] {
                let Ok(entries) = fs::read_dir(self.dirs.state.join(dir)) else { continue };
                for entry in entries.flatten() {
                    let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < hour_ago);
                    if old {
                        let _ = fsutil::remove_any(&entry.path());
                    }
                }
            }
        }
        report.removed.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.path.cmp(&b.path)));
        Ok(report)
    }
}

/// The folders in `dir` (none if it does not exist), never following a link.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("read", dir),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.ctx("read", dir)?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// When a quarantine folder was made: the time its name starts with (`20261123T210000Z-restore`), else its
/// modification time.
fn quarantined_at(dir: &Path) -> SystemTime {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = name.split('-').next().unwrap_or("");
    let parsed = (stamp.len() == 16).then(|| {
        let s = stamp.as_bytes();
        let part = |a: usize, b: usize| std::str::from_utf8(&s[a..b]).unwrap_or("");
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            part(0, 4),
            part(4, 6),
            part(6, 8),
            part(9, 11),
            part(11, 13),
            part(13, 15)
        )
    });
    parsed
        .and_then(|t| humantime::parse_rfc3339(&t).ok())
        .or_else(|| fs::symlink_metadata(dir).and_then(|m| m.modified()).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The bytes of the regular files under `path`, links not followed.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    fs::read_dir(path).map(|d| d.flatten().map(|e| size_of(&e.path())).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_a_dead_process_left_goes_after_an_hour() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = crate::dirs::Dirs {
            config_file: tmp.path().join("config.toml"),
            state: tmp.path().join("state"),
            data: tmp.path().join("data"),
            cache: tmp.path().join("cache"),
            runtime: None,
        };
        let engine = Engine::new(crate::config::Config::default(), dirs).unwrap();
        let scratch = tmp.path().join("state/tmp/push-1-x");
        fs::create_dir_all(scratch.join("meta")).unwrap();
        fs::write(tmp.path().join("state/tmp/push-1-x/meta/_journal.json"), "{}").unwrap();
        fs::create_dir_all(tmp.path().join("state/hints")).unwrap();
        fs::write(tmp.path().join("state/hints/p-1.json"), "[]").unwrap();
        let now = SystemTime::now();
        engine.prune(false, now).unwrap();
        assert!(scratch.exists(), "young scratch stays (a process may be using it)");
        engine.prune(true, now + Duration::from_secs(7200)).unwrap();
        assert!(scratch.exists(), "--dry-run removes nothing");
        engine.prune(false, now + Duration::from_secs(7200)).unwrap();
        assert!(!scratch.exists() && !tmp.path().join("state/hints/p-1.json").exists());
    }

    #[test]
    fn quarantine_times_come_from_the_folder_name() {
        let t = quarantined_at(Path::new("/q/p/20261123T210000Z-restore-2"));
        assert_eq!(super::super::rfc3339(t), "2026-11-23T21:00:00Z");
    }
}
