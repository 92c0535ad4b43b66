//! The engine: push, restore and check. The command line runs it in-process and the daemon runs the very same
//! code; neither knows more about drizzle/ than what is here.

pub mod diagnosis;
mod push;
mod restore;
pub mod runner;
mod status;
mod swap;

use std::fs::{self, File, TryLockError};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::dirs::Dirs;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::project::Project;
use crate::store::{PushRecord, Store, valid_id};

pub use push::{PushFailure, PushReport, Stage};
pub use restore::RestoreReport;
pub use status::{LastPush, ProjectState, ProjectStatus};

/// Which output stream of a child process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where an operation reports as it goes: drizzle-kit's output line by line, and dreamerd's own steps.
pub trait Sink {
    fn output(&self, stream: Stream, line: &str);
    fn progress(&self, message: &str);
}

/// A sink that drops everything.
pub struct NullSink;

impl Sink for NullSink {
    fn output(&self, _: Stream, _: &str) {}
    fn progress(&self, _: &str) {}
}

/// Configuration, directories and the store: everything an operation needs.
pub struct Engine {
    pub config: Config,
    pub dirs: Dirs,
    pub store: Store,
}

/// Holds a project's operation lock; dropping it releases the lock.
pub struct ProjectLock {
    _file: File,
}

impl Engine {
    /// An engine over a loaded configuration.
    pub fn new(config: Config, dirs: Dirs) -> Result<Engine> {
        let store = Store::open(&config.store_location(&dirs))?;
        Ok(Engine { config, dirs, store })
    }

    fn lock_path(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("locks").join(format!("{}.lock", project.local_key()))
    }

    /// Takes the project's operation lock, or says at once that another push or restore holds it.
    pub fn lock(&self, project: &Project) -> Result<ProjectLock> {
        let path = self.lock_path(project);
        fsutil::create_private_dir(path.parent().expect("has a parent")).ctx("create", &path)?;
        let file = File::options().create(true).truncate(false).write(true).open(&path).ctx("open", &path)?;
        // `is_busy` (status, check) holds a shared lock for an instant; only a lock held past a short grace is
        // a real operation.
        for attempt in 0.. {
            match file.try_lock() {
                Ok(()) => return Ok(ProjectLock { _file: file }),
                Err(TryLockError::WouldBlock) if attempt < 20 => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(TryLockError::WouldBlock) => break,
                Err(TryLockError::Error(e)) => return Err(e).ctx("lock", &path),
            }
        }
        Err(Error::Busy(format!(
            "{} is busy: another push or restore is running on it",
            project.root.display()
        )))
    }

    /// True if another process holds the project's operation lock right now.
    pub fn is_busy(&self, project: &Project) -> bool {
        let Ok(file) = File::open(self.lock_path(project)) else { return false };
        matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
    }

    /// The baseline of a project: the record of its last successful push, if it has one.
    pub fn baseline(&self, project: &Project) -> Result<Option<PushRecord>> {
        let Some(id) = self.project_id(project)? else { return Ok(None) };
        // A push whose backup could not be stored yet is still the last successful push.
        if let Some(record) = self.pending_record(project)?
            && record.project_id == id
        {
            return Ok(Some(record));
        }
        self.store.latest(&id)
    }

    fn remembered_id_path(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("ids").join(project.local_key())
    }

    /// The project's identity: its `.dreamerd.toml`, or, if that file was deleted, the id this checkout had, so
    /// that deleting the file never switches the guarding off or cuts the project from its backups.
    pub fn project_id(&self, project: &Project) -> Result<Option<String>> {
        let path = self.remembered_id_path(project);
        let remembered = fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| valid_id(s));
        match project.id()? {
            Some(id) => {
                if remembered.as_deref() != Some(id.as_str()) {
                    // Best effort: the file in the project stays the source of truth.
                    let _ = fsutil::create_private_dir(path.parent().expect("has a parent"))
                        .and_then(|()| fsutil::atomic_write(&path, id.as_bytes()));
                }
                Ok(Some(id))
            }
            None => Ok(remembered),
        }
    }

    /// The project's identity, created (or its deleted file written again) when it has none.
    pub(crate) fn ensure_project_id(&self, project: &Project) -> Result<String> {
        let id = match self.project_id(project)? {
            Some(id) => project.ensure_id_as(&id)?,
            None => project.ensure_id()?,
        };
        self.project_id(project)?;
        Ok(id)
    }

    fn pending_dir(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("pending").join(project.local_key())
    }

    /// A successful push whose backup is not in the store yet: its record and archive, kept in the state
    /// directory until the store takes them.
    pub(crate) fn pending(&self, project: &Project) -> Result<Option<(PushRecord, Vec<u8>)>> {
        let Some(record) = self.pending_record(project)? else { return Ok(None) };
        let path = self.pending_dir(project).join("archive.tar.zst");
        let archive = fs::read(&path).ctx("read", &path)?;
        Ok(Some((record, archive)))
    }

    /// Only the record of a pending push (status reads it at every rescan; the archive is not needed there).
    fn pending_record(&self, project: &Project) -> Result<Option<PushRecord>> {
        let path = self.pending_dir(project).join("record.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{} is unreadable: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Keeps a push's backup locally when the store refused it.
    pub(crate) fn save_pending(&self, project: &Project, record: &PushRecord, archive: &[u8]) -> Result<()> {
        let dir = self.pending_dir(project);
        fsutil::create_private_dir(&dir).ctx("create", &dir)?;
        fsutil::atomic_write(&dir.join("archive.tar.zst"), archive).ctx("write", &dir)?;
        let json = serde_json::to_vec_pretty(record).expect("records serialise");
        fsutil::atomic_write(&dir.join("record.json"), &json).ctx("write", &dir)
    }

    /// Stores a pending backup, if there is one; it is removed locally only once the store has it.
    pub(crate) fn flush_pending(&self, project: &Project, sink: &dyn Sink) -> Result<()> {
        let Some((record, archive)) = self.pending(project)? else { return Ok(()) };
        sink.progress(&format!("storing the backup of push {} that could not be stored before", record.id));
        self.store.save(&record, &archive)?;
        let dir = self.pending_dir(project);
        fsutil::remove_any(&dir).ctx("remove", &dir)
    }

    /// Makes a new, empty quarantine folder for what an operation is about to replace.
    fn new_quarantine(&self, project: &Project, reason: &str) -> Result<PathBuf> {
        let base = self.dirs.state.join("quarantine").join(project.local_key());
        fsutil::create_private_dir(&base).ctx("create", &base)?;
        let stamp = compact_timestamp(SystemTime::now());
        for n in 0.. {
            let name = if n == 0 { format!("{stamp}-{reason}") } else { format!("{stamp}-{reason}-{n}") };
            let dir = base.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).ctx("create", &dir),
            }
        }
        unreachable!("some suffix is free")
    }
}

/// `2026-11-23T21:00:00Z`
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `20261123T210000Z`: sortable and safe in file names and ids.
pub fn compact_timestamp(t: SystemTime) -> String {
    rfc3339(t).replace(['-', ':'], "")
}

/// The machine's host name, for push records.
pub fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// A stable short text for a path in messages: relative to `drizzle/` with `/`.
pub fn shown_paths(paths: &[String], max: usize) -> String {
    let mut s = paths.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > max {
        s.push_str(&format!(" and {} more", paths.len() - max));
    }
    s
}
