//! The engine: push, restore and check. The command line runs it in-process and the daemon runs the very same
//! code; neither knows more about drizzle/ than what is here.

mod checkout;
mod dbcopy;
pub mod diagnosis;
mod prune;
mod push;
mod rebase;
mod restore;
pub mod runner;
mod status;
mod sum;
mod swap;

use std::fs::{self, File, TryLockError};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::dirs::Dirs;
use crate::drizzle::database;
use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::project::Project;
use crate::safefs;
use crate::store::{PushRecord, Store, valid_id};

/// The state directory's format. 1: dreamerd 0.1.0, which wrote no marker; 2: a `format.json` marker, and crash
/// journals and the watch list carry their own format; 3: per-checkout state (`checkouts/`) and the local index of
/// store histories (`index/`). Moving forward changes no file: each is read in its old shape, and a checkout without
/// a state file finds its last push as the earlier release did.
pub const STATE_FORMAT: u32 = 3;

/// How long a lock left to a drizzle-kit that outlived its daemon is waited for once that drizzle-kit is stopped.
const ORPHAN_WAIT: Duration = Duration::from_secs(10);

/// The largest pending record read back.
const MAX_RECORD: u64 = 64 << 20;
/// The largest pending archive read back.
const MAX_ARCHIVE: u64 = 2 << 30;

pub use checkout::{Baseline, Checkout, History, HistoryEntry, Relation, Source, Via};
pub use prune::{PruneReport, Pruned};
pub use push::{PushFailure, PushOptions, PushReport, RUNNING_PUSH, Stage};
pub use rebase::RebaseReport;
pub use restore::{RestoreReport, StoreMigrateReport};
pub use status::{Interrupted, LastPush, ProjectState, ProjectStatus, Scanned, Verified};
pub use sum::Sum;
pub use swap::STAGING;

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
    /// The files the configuration was layered from, for `--json` and `-v`.
    pub sources: Vec<PathBuf>,
    /// Set once the state directory's format was checked (and its marker written) by this engine.
    state_ready: OnceLock<()>,
    /// What the daemon's watch vouched for (`check` asks it): the migration folder is still the tree its last scan
    /// found, so a status of it need not stat every file again.
    pub vouched: Option<status::Scanned>,
    /// Where the time of the current push went (see [`push::Timings`]).
    timings: std::sync::Mutex<push::Timings>,
}

/// A successful push whose backup waits locally for the store, and the store's last answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupWaiting {
    pub push: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Holds a project's operation lock; dropping it releases the lock.
pub struct ProjectLock {
    file: File,
}

impl ProjectLock {
    /// The lock's descriptor, which drizzle-kit inherits so that a drizzle-kit outliving its daemon still holds
    /// the project.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[derive(Serialize, Deserialize)]
struct StateMarker {
    format: u32,
}

impl Engine {
    /// An engine over a loaded configuration.
    pub fn new(config: Config, dirs: Dirs) -> Result<Engine> {
        let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        Engine::with_env(config, dirs, &env)
    }

    /// An engine whose store is reached with the credentials of `env` (the environment of the command that asked).
    pub fn with_env(
        config: Config,
        dirs: Dirs,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Engine> {
        let store = Store::open(&config.store_location(&dirs), Some(dirs.state.join("index")), env)?
            .with_cache(dirs.cache.join("archives"));
        Ok(Engine {
            config,
            dirs,
            store,
            sources: Vec::new(),
            state_ready: OnceLock::new(),
            vouched: None,
            timings: Default::default(),
        })
    }

    /// The engine of one operation on `project`: the user's settings, the project file's, an explicit file's.
    pub fn for_project(settings: &crate::config::Settings, project: &Project, dirs: Dirs) -> Result<Engine> {
        let (config, sources) = Config::layered(settings, project.settings()?.as_ref())?;
        let env: std::collections::BTreeMap<String, String> = match &project.env {
            Some(env) => env.clone(),
            None => std::env::vars().collect(),
        };
        let mut engine = Engine::with_env(config, dirs, &env)?;
        engine.sources = sources;
        Ok(engine)
    }

    /// The format of the state directory: the marker's, 1 for a directory dreamerd 0.1.0 wrote, `None` when there is
    /// no state directory yet. A newer format than this dreamerd knows is an error.
    pub fn state_format(&self) -> Result<Option<u32>> {
        let marker = self.dirs.state.join("format.json");
        let found = match safefs::read_file(&marker, 4096, false) {
            Ok(Some(bytes)) => {
                serde_json::from_slice::<StateMarker>(&bytes)
                    .map_err(|e| Error::Corrupt(format!("{} is unreadable: {e}", marker.display())))?
                    .format
            }
            Ok(None) if self.dirs.state.exists() => 1,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e).ctx("read", &marker),
        };
        check_format(found, STATE_FORMAT, || format!("the state directory {}", self.dirs.state.display()))?;
        Ok(Some(found))
    }

    /// Checks the state directory's format before the first write and brings an older one forward (from 1 there is
    /// nothing to move: every file is read in its old shape), then records the current format.
    fn prepare_state(&self) -> Result<()> {
        if self.state_ready.get().is_some() {
            return Ok(());
        }
        if self.state_format()? != Some(STATE_FORMAT) {
            fsutil::create_private_dir(&self.dirs.state).ctx("create", &self.dirs.state)?;
            let marker = self.dirs.state.join("format.json");
            let json = serde_json::to_vec(&StateMarker { format: STATE_FORMAT }).expect("serialises");
            fsutil::atomic_write(&marker, &json).ctx("write", &marker)?;
        }
        let _ = self.state_ready.set(());
        Ok(())
    }

    fn lock_path(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("locks").join(format!("{}.lock", project.local_key()))
    }

    /// Takes the project's operation lock, or says at once that another push or restore holds it. A lock held only
    /// by a drizzle-kit whose daemon died (an orphan) is not a running operation: that drizzle-kit is stopped first,
    /// so it can never write into a folder that recovery is about to decide on.
    pub fn lock(&self, project: &Project) -> Result<ProjectLock> {
        self.prepare_state()?;
        let path = self.lock_path(project);
        fsutil::create_private_dir(path.parent().expect("has a parent")).ctx("create", &path)?;
        let file = File::options().create(true).truncate(false).write(true).open(&path).ctx("open", &path)?;
        // `is_busy` (status, check) holds a shared lock for an instant; only a lock held past a short grace is
        // a real operation.
        if try_lock_for(&file, Duration::from_millis(200)).ctx("lock", &path)? {
            return Ok(ProjectLock { file });
        }
        let orphaned = self.stop_orphans(project, &path);
        if orphaned && try_lock_for(&file, ORPHAN_WAIT).ctx("lock", &path)? {
            return Ok(ProjectLock { file });
        }
        let holders = lock_holders(&path);
        let by = if holders.is_empty() {
            String::new()
        } else {
            let named: Vec<String> = holders.iter().map(|h| format!("pid {} ({})", h.pid, h.name)).collect();
            format!(" (held by {})", named.join(", "))
        };
        Err(Error::Busy(format!(
            "{} is busy: another push or restore is running on it{by}",
            project.root.display()
        )))
    }

    /// Stops what an interrupted operation left running: the drizzle-kit process group its journal names, when the
    /// process that ran the operation is gone and that group still holds the project's lock. Returns whether it did.
    fn stop_orphans(&self, project: &Project, lock: &Path) -> bool {
        let Ok(Some(journal)) = self.read_journal(project) else { return false };
        let (Some(owner), Some(group)) = (journal.owner, journal.child) else { return false };
        if owner.alive() || !lock_holders(lock).iter().any(|h| h.group == group) {
            return false;
        }
        tracing::warn!(
            project = %project.root.display(),
            group,
            "a drizzle-kit outlived the operation that started it; stopping it before recovery"
        );
        if let Some(pgid) = rustix::process::Pid::from_raw(group) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        true
    }

    /// The SQLite database the project migrates: `database.url` (relative to the root) when set, else the URL its
    /// config resolved to (relative to where drizzle-kit runs). `Err` says why there is none to read.
    pub fn database(&self, project: &Project) -> std::result::Result<database::Target, String> {
        let table = project.layout.table.clone();
        let target = |path| database::Target { path, table: table.clone() };
        if let Some(url) = &self.config.database.url {
            return database::from_url(&project.root, url).map(target);
        }
        if project.config.is_none() {
            return Err("the project has no drizzle config naming a database; set database.url".into());
        }
        if !matches!(project.layout.dialect.as_str(), "sqlite" | "turso") {
            return Err(format!("{}: not supported yet", project.layout.dialect));
        }
        match (&project.db_url, &project.problem, &project.env) {
            (Some(url), _, _) => database::from_url(&project.workdir(), url.expose()).map(target),
            (None, Some(problem), _) => Err(format!("the config could not be evaluated: {problem}")),
            (None, None, None) => {
                Err("not checked until the next command: the config needs the environment of \
                                       a command (the daemon has not had one since it started)"
                    .into())
            }
            (None, None, Some(_)) => Err("the config names no dbCredentials.url".into()),
        }
    }

    /// The database whose applied migrations are compared with the folder: the SQLite file of
    /// [`Engine::database`], or the PostgreSQL or MySQL server that `database.url` or the config names.
    pub fn database_to_check(&self, project: &Project) -> std::result::Result<database::Database, String> {
        let Some(dialect) = crate::drizzle::server::Dialect::of(&project.layout.dialect) else {
            return self.database(project).map(database::Database::File);
        };
        let url = match (&self.config.database.url, &project.db_url, &project.problem, &project.env) {
            (Some(url), _, _, _) => crate::project::Secret::new(url.clone()),
            (None, Some(url), _, _) => url.clone(),
            (None, None, Some(problem), _) => {
                return Err(format!("the config could not be evaluated: {problem}"));
            }
            (None, None, None, None) if project.config.is_some() => {
                return Err(
                    "not checked until the next command: the config needs the environment of a command \
                            (the daemon has not had one since it started)"
                        .into(),
                );
            }
            (None, None, _, _) => {
                return Err("the config names no dbCredentials (url, or host and database)".into());
            }
        };
        crate::drizzle::server::Server::new(
            dialect,
            &url,
            &project.layout.table_schema,
            &project.layout.table,
        )
        .map(database::Database::Server)
    }

    /// The migration folder as the manifest sees it: everything in it but what is not a migration (schema files kept
    /// there, and what `drizzle-kit pull` writes).
    pub fn scan_out(&self, project: &Project) -> Result<crate::manifest::Tree> {
        self.scan_seen(project).map(|(tree, _)| tree)
    }

    /// [`Engine::scan_out`], and a [`crate::facts::view`] of what it found, active on this thread until dropped (the
    /// checkout's facts are saved then).
    pub(crate) fn scan_seen(&self, project: &Project) -> Result<(crate::manifest::Tree, crate::facts::View)> {
        let out = project.drizzle();
        self.load_facts(project);
        let (tree, seen) = scan_excluding(&out, &project.not_migrations()).ctx("read", &out)?;
        let view = crate::facts::view(&self.facts_path(project), &out, tree.digest(), seen);
        Ok((tree, view))
    }

    /// Where this checkout's facts (its stat cache) are kept: `facts/<checkout>` with the extensions of
    /// [`crate::facts::load`].
    fn facts_path(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("facts").join(project.local_key())
    }

    /// Whether `check` should ask a watching daemon to vouch for the folder (`check.vouch_min_files`): the round trip
    /// costs more than stat'ing a small folder.
    pub fn worth_vouching(&self, project: &Project) -> bool {
        let min = self.config.check.vouch_min_files;
        min == 0 || crate::facts::saved_files(&self.facts_path(project)) >= min
    }

    /// Loads this checkout's facts, once per process, before anything reads its migration folder.
    pub(crate) fn load_facts(&self, project: &Project) {
        crate::facts::load(&self.facts_path(project));
    }

    /// Loads this checkout's facts and keeps them loaded until the guard is dropped ([`crate::facts::hold`]): for an
    /// operation that looks at the folder several times (a daemon otherwise drops them after each scan).
    pub(crate) fn hold_facts(&self, project: &Project) -> crate::facts::Held {
        let held = crate::facts::hold(&self.facts_path(project), &project.drizzle());
        self.load_facts(project);
        held
    }

    /// [`database::check`] of the project, taken from the checkout's memo when the folder (as this thread's
    /// [`crate::facts::view`] found it) and the database file are the very ones it was computed from. A database server
    /// is always asked.
    fn remembered_check(&self, project: &Project) -> (Vec<crate::drizzle::Drift>, database::Checked) {
        const KIND: &str = "database-check";
        let drizzle = project.drizzle();
        let db = self.database_to_check(project);
        let (Some(tree), Some((print, settled))) = (crate::facts::view_tree(), database::fingerprint(&db))
        else {
            return database::check(&drizzle, db);
        };
        // Bump "memo N" whenever the journal faults or the drift change.
        let key = crate::facts::memo_key("memo 2", &[drizzle.as_os_str().as_encoded_bytes(), &tree, &print]);
        if let Some(found) = crate::facts::memo(KIND, &key) {
            return found;
        }
        let found = database::check(&drizzle, db);
        // Kept only for a state that cannot change without its key changing: a database file whose times are older
        // than the margin, no fault that depends on the clock, and the folder still the one scanned (nothing wrote
        // to it while it was read).
        let timeless = !found.0.iter().any(|d| d.code == "journal-future");
        if settled
            && timeless
            && scan_excluding(&drizzle, &project.not_migrations()).is_ok_and(|(t, _)| t.digest() == tree)
        {
            crate::facts::remember(KIND, key, &found);
        }
        found
    }

    /// Journal faults and the drift between the migration folder and the database.
    pub fn drift(&self, project: &Project) -> Vec<crate::drizzle::Drift> {
        self.database_check(project).0
    }

    /// [`Engine::drift`], and whether the database was compared at all.
    pub fn database_check(&self, project: &Project) -> (Vec<crate::drizzle::Drift>, database::Checked) {
        let (drift, checked, _) = self.checked_drift(project);
        (drift, checked)
    }

    /// [`Engine::database_check`], and how many known faults were left out. Left out too: the pending state of an
    /// open custom migration, which is what it is for until the next push applies it. Every path that reports drift
    /// (check, the daemon's status, push) goes through here.
    pub(crate) fn checked_drift(
        &self,
        project: &Project,
    ) -> (Vec<crate::drizzle::Drift>, database::Checked, usize) {
        let open = self.checkout(project).ok().flatten().and_then(|c| c.open);
        // The folder as it is now, scanned once: the check reads the files as the scan found them, and takes the
        // checkout's memo of the very same folder and database (the daemon's status asks this at every request).
        let _view = self.scan_seen(project).ok().map(|(_, view)| view);
        self.checked_drift_open(project, open.as_ref())
    }

    /// [`Engine::checked_drift`] with the checkout's open custom migration already read.
    pub(crate) fn checked_drift_open(
        &self,
        project: &Project,
        open: Option<&checkout::OpenCustom>,
    ) -> (Vec<crate::drizzle::Drift>, database::Checked, usize) {
        let (mut drift, checked) = self.remembered_check(project);
        drift.extend(kit_mismatch(project));
        let (mut drift, left_out) = self.new_faults(project, drift);
        if let Some(open) = open {
            drift.retain(|d| {
                !(d.code == "migration-pending" && d.migration.as_ref() == Some(&open.migration))
            });
        }
        (drift, checked, left_out)
    }

    /// Drift without the faults the project file records as known (its history's, accepted at the first push), and
    /// how many were left out.
    pub fn new_faults(
        &self,
        project: &Project,
        drift: Vec<crate::drizzle::Drift>,
    ) -> (Vec<crate::drizzle::Drift>, usize) {
        let known = project.known_faults().unwrap_or_default();
        let before = drift.len();
        let new: Vec<_> = drift.into_iter().filter(|d| !known.iter().any(|k| k.is(d))).collect();
        let left_out = before - new.len();
        (new, left_out)
    }

    /// The project's operation lock if nobody holds it right now (never waits).
    pub(crate) fn try_lock_now(&self, project: &Project) -> Result<Option<ProjectLock>> {
        self.prepare_state()?;
        let path = self.lock_path(project);
        fsutil::create_private_dir(path.parent().expect("has a parent")).ctx("create", &path)?;
        let file = File::options().create(true).truncate(false).write(true).open(&path).ctx("open", &path)?;
        Ok(try_lock_for(&file, Duration::ZERO).ctx("lock", &path)?.then_some(ProjectLock { file }))
    }

    /// True if another process holds the project's operation lock right now.
    pub fn is_busy(&self, project: &Project) -> bool {
        let Ok(file) = File::open(self.lock_path(project)) else { return false };
        matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
    }

    /// The baseline of a checkout: the record of the push its folder must hold (see [`Engine::baseline_of`]).
    pub fn baseline(&self, project: &Project) -> Result<Option<PushRecord>> {
        Ok(self.baseline_of(project)?.map(|b| b.record))
    }

    fn remembered_id_path(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("ids").join(project.local_key())
    }

    /// A push's record kept in the state directory, refusing one of a newer format.
    fn read_record(path: &Path) -> Result<Option<PushRecord>> {
        let bytes = match safefs::read_file(path, MAX_RECORD, false) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e).ctx("read", path),
        };
        let record: PushRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{} is unreadable: {e}", path.display())))?;
        check_format(record.format, crate::store::RECORD_FORMAT, || {
            format!("the push record {}", path.display())
        })?;
        Ok(Some(record))
    }

    /// The project's identity: its `.dreamerd.toml`, or, if that file was deleted, the id this checkout had, so
    /// that deleting the file never switches the guarding off or cuts the project from its backups.
    pub fn project_id(&self, project: &Project) -> Result<Option<String>> {
        let path = self.remembered_id_path(project);
        let remembered = safefs::read_file(&path, 4096, false)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| valid_id(s));
        match project.id()? {
            Some(id) => Ok(Some(id)),
            None => Ok(remembered),
        }
    }

    /// Remembers this checkout's id in the state directory (at a push): deleting the project file then switches
    /// nothing off, and a store that vanishes afterwards is noticed.
    fn remember_id(&self, project: &Project, id: &str) -> Result<()> {
        let path = self.remembered_id_path(project);
        let known = safefs::read_file(&path, 4096, false).ok().flatten();
        if known.as_deref() == Some(id.as_bytes()) {
            return Ok(());
        }
        self.prepare_state()?;
        fsutil::create_private_dir(path.parent().expect("has a parent")).ctx("create", &path)?;
        fsutil::atomic_write(&path, id.as_bytes()).ctx("write", &path)
    }

    /// Refuses a store that is gone: a local store folder that does not exist while `store.url` names it, or while
    /// this checkout has pushed to it; a store that no longer holds the push this checkout stands on (emptied,
    /// replaced, another store at the same place). Never read as "never pushed", which would take hand-made files for
    /// a baseline.
    pub fn require_store(&self, project: &Project) -> Result<()> {
        self.require_store_reachable(project)?;
        if !self.store.reachable()? {
            return Ok(());
        }
        if let Some(checkout) = self.checkout(project)?
            && checkout.push.generation.is_some()
            && !self.store.history(&checkout.push.project_id)?.iter().any(|g| g.push == checkout.push.id)
        {
            return Err(Error::Usage(format!(
                "{} does not hold push {}, which this checkout stands on: the store was emptied, \
                 replaced, or is another one than before. Put it back (or fix store.url); nothing was changed. \
                 `dreamerd restore --push ID` still restores a push the store holds",
                self.store.describe(),
                checkout.push.id
            )));
        }
        Ok(())
    }

    /// [`Engine::require_store`] without the check that the store holds the checkout's push (a restore of a named
    /// push needs only that push).
    pub fn require_store_reachable(&self, project: &Project) -> Result<()> {
        if !self.store.reachable()? {
            let named = self.config.store.url.is_some();
            if named || self.remembered_id_path(project).exists() {
                return Err(Error::Usage(format!(
                    "{} does not exist, but {}: it was moved, deleted or mistyped. Put it back (or fix store.url); \
                     nothing was changed",
                    self.store.describe(),
                    if named { "store.url names it" } else { "this checkout's pushes were stored there" }
                )));
            }
        }
        Ok(())
    }

    /// The project's identity, created (or its deleted file written again) when it has none.
    pub(crate) fn ensure_project_id(&self, project: &Project) -> Result<String> {
        let id = match self.project_id(project)? {
            Some(id) => project.ensure_id_as(&id)?,
            None => project.ensure_id()?,
        };
        self.remember_id(project, &id)?;
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
        let archive = safefs::read_file(&path, MAX_ARCHIVE, false)
            .ctx("read", &path)?
            .ok_or_else(|| Error::Corrupt(format!("{} is missing beside its record", path.display())))?;
        Ok(Some((record, archive)))
    }

    /// Only the record of a pending push (status reads it at every rescan; the archive is not needed there).
    fn pending_record(&self, project: &Project) -> Result<Option<PushRecord>> {
        Self::read_record(&self.pending_dir(project).join("record.json"))
    }

    /// Keeps a push's backup locally when the store refused it.
    pub(crate) fn save_pending(&self, project: &Project, record: &PushRecord, archive: &[u8]) -> Result<()> {
        self.prepare_state()?;
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
        let n = self.store.save(&record, &archive)?;
        if let Some(mut checkout) = self.checkout(project)?
            && checkout.push.id == record.id
            && checkout.push.generation.is_none()
        {
            checkout.push.generation = Some(n);
            self.set_last_push(project, &checkout.push, checkout.via, None)?;
        }
        let dir = self.pending_dir(project);
        fsutil::remove_any(&dir).ctx("remove", &dir)
    }

    /// Stores a waiting backup if there is one and no operation runs on the project (the daemon, in the
    /// background). Returns the push stored.
    pub fn upload_waiting(&self, project: &Project) -> Result<Option<String>> {
        let Some(record) = self.pending_record(project)? else { return Ok(None) };
        let Some(_lock) = self.try_lock_now(project)? else { return Ok(None) };
        let tried = self.store.reachable().and_then(|_| self.flush_pending(project, &NullSink));
        if let Err(e) = tried {
            self.note_pending_reason(project, &e.to_string());
            return Err(e);
        }
        Ok(Some(record.id))
    }

    /// Why the waiting backup is not stored yet (the store's last answer), for status.
    pub(crate) fn note_pending_reason(&self, project: &Project, reason: &str) {
        let path = self.pending_dir(project).join("reason.txt");
        let _ = fsutil::atomic_write_mode(&path, reason.as_bytes(), 0o600);
    }

    /// A waiting backup and why it waits, as status shows it.
    pub(crate) fn backup_waiting(&self, project: &Project) -> Option<BackupWaiting> {
        let record = self.pending_record(project).ok().flatten()?;
        let reason = safefs::read_file(&self.pending_dir(project).join("reason.txt"), 4096, false)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        Some(BackupWaiting { push: record.id, reason })
    }

    /// Makes a new, empty quarantine folder for what an operation is about to replace.
    fn new_quarantine(&self, project: &Project, reason: &str) -> Result<PathBuf> {
        self.prepare_state()?;
        let base = self.dirs.state.join("quarantine").join(project.local_key());
        let stamp = compact_timestamp(SystemTime::now());
        make_quarantine(&base, &stamp, reason, &mut || {}).ctx("create", &base)
    }
}

/// A new private folder `<stamp>-<reason>` (or `-1`, `-2`... when taken) in `base`, made first. A prune (the
/// daemon's, at its start and then daily, or `dreamerd prune`) removes a project's empty quarantine folder, so the
/// one just made may be gone before the new folder is made in it: it is made again. `between` runs once `base` is
/// made (a test removes it there).
fn make_quarantine(
    base: &Path,
    stamp: &str,
    reason: &str,
    between: &mut dyn FnMut(),
) -> std::io::Result<PathBuf> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut remade = 0;
    'again: loop {
        match fsutil::create_private_dir(base) {
            Err(e) if gone(&e) && remade < 3 => {
                remade += 1;
                continue;
            }
            made => made?,
        }
        between();
        for n in 0.. {
            let name = if n == 0 { format!("{stamp}-{reason}") } else { format!("{stamp}-{reason}-{n}") };
            let dir = base.join(name);
            match fsutil::create_dir_durable(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) if gone(&e) && remade < 3 => {
                    remade += 1;
                    continue 'again;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A tree scanned without the entries at `excluded` (paths relative to it), and the files it found.
pub(crate) fn scan_excluding(
    dir: &Path,
    excluded: &[String],
) -> std::io::Result<(crate::manifest::Tree, Vec<crate::manifest::Seen>)> {
    let (mut tree, ids) = crate::manifest::scan_known(dir)?;
    for name in excluded {
        if matches!(tree.nodes.get(name), Some(crate::manifest::Node::File { .. })) {
            tree.nodes.remove(name);
        }
    }
    Ok((tree, ids))
}

/// Tries to take `file`'s exclusive lock for up to `wait`; false if it stays held.
fn try_lock_for(file: &File, wait: Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// A process that has a lock file open.
struct Holder {
    pid: i32,
    group: i32,
    name: String,
}

/// Every process (of those this user may inspect) that has `lock` open, found through /proc. Only dreamerd and the
/// drizzle-kit it runs ever open a lock file.
fn lock_holders(lock: &Path) -> Vec<Holder> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else { return out };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        if !fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == lock)) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let group = stat[close + 1..].split_whitespace().nth(2).and_then(|g| g.parse().ok()).unwrap_or(0);
        out.push(Holder { pid, group, name: stat[open + 1..close].to_string() });
    }
    out
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

/// The layout of the project's migration folder, when it holds migrations.
pub fn migration_layout(project: &Project) -> Option<crate::drizzle::journal::Layout> {
    crate::drizzle::journal::layout(&project.drizzle())
}

/// A migration folder of one drizzle-kit generation in a project that installs the other: 1.0 refuses a journal
/// ("run drizzle-kit up"), and 0.x would start a new journal beside 1.0's folders.
pub(crate) fn kit_mismatch(project: &Project) -> Option<crate::drizzle::Drift> {
    use crate::drizzle::journal::Layout;
    let layout = migration_layout(project)?;
    let version = crate::project::layout::drizzle_kit_version(&project.workdir())?;
    let kit = Layout::of_kit(&version)?;
    if kit == layout {
        return None;
    }
    let message = match kit {
        Layout::Folders => format!(
            "{} is in {}, but the project installs drizzle-kit {version}, whose migrate refuses a journal and whose \
             generate needs the folder converted: run `dreamerd up` (it backs up the folder and the database, runs \
             drizzle-kit up, and checks every migration kept its SQL)",
            project.out_shown(),
            layout.described()
        ),
        Layout::Journal => format!(
            "{} is in {}, but the project installs drizzle-kit {version}, which neither reads nor writes it (it would \
             start a new journal beside the folders): install drizzle-kit 1.0 again",
            project.out_shown(),
            layout.described()
        ),
    };
    Some(crate::drizzle::Drift::new("layout-kit-mismatch", message, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantine_folder_removed_by_a_prune_meanwhile_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("quarantine").join("proj-1");
        // As a prune does between the two mkdirs: the empty project folder goes, once.
        let mut pruned = false;
        let dir = make_quarantine(&base, "20261126T000000Z", "restore", &mut || {
            if !pruned {
                pruned = true;
                fs::remove_dir(&base).unwrap();
            }
        })
        .unwrap();
        assert!(pruned);
        assert_eq!(dir, base.join("20261126T000000Z-restore"));
        assert!(dir.is_dir());
        // A taken name gets a suffix.
        let again = make_quarantine(&base, "20261126T000000Z", "restore", &mut || {}).unwrap();
        assert_eq!(again, base.join("20261126T000000Z-restore-1"));
        // A base that cannot be made is still an error, not a loop.
        fs::write(tmp.path().join("file"), "x").unwrap();
        assert!(make_quarantine(&tmp.path().join("file/q"), "s", "r", &mut || {}).is_err());
    }
}
