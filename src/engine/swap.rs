//! Replacing `drizzle/` atomically, and finishing a replacement that a crash interrupted.
//!
//! The new tree is unpacked and verified beside `drizzle/` (same filesystem), then swapped in with one
//! `renameat2(RENAME_EXCHANGE)`; where the filesystem cannot exchange, two renames do it. A journal in the state
//! directory records what is being installed, so the next operation on the project completes the swap and
//! moves whatever was replaced to quarantine. Nothing the user had is ever deleted.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Engine, Sink};
use crate::archive::{self, Limits};
use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::manifest::{self, FileEntry};
use crate::project::Project;
use crate::safefs;

/// The transient folder beside `drizzle/` where a new tree is built; it exists only during a swap.
pub const STAGING: &str = ".dreamerd-tmp";

/// The crash journal's format. 1: dreamerd 0.1.0 (no `format`, `owner` or `child`); 2: adds them; 3: the
/// `database` phase of `restore --with-database` and its `database_copy`; 4: `borrowed`, the files a swap moves
/// from drizzle/ into the new tree instead of writing them again.
pub(crate) const OP_FORMAT: u32 = 4;

/// Which operation a crash journal belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    Push,
    Restore,
}

/// Where an operation was; each phase has its own recovery rule (see [`Engine::recover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// drizzle-kit generate may be writing drizzle/; the database is untouched. Rule: roll back.
    Generate,
    /// drizzle-kit migrate may be applying. Rule: the database decides (its pending migrations run in one
    /// transaction): all applied, complete the push; none, roll back.
    Migrate,
    /// migrate succeeded; the backup is being stored. Rule: complete the push.
    Backup,
    /// drizzle/ is being replaced by `target`. Rule: finish the replacement (then the database, with
    /// `database_copy`).
    Swap,
    /// `restore --with-database`: drizzle/ is in place; the database is being put back from `database_copy`.
    /// Rule: finish it (the database it replaces is kept in quarantine first, once).
    Database,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Push => "push",
            Op::Restore => "restore",
        }
    }
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Generate => "generate",
            Phase::Migrate => "migrate",
            Phase::Backup => "backup",
            Phase::Swap => "swap",
            Phase::Database => "database",
        }
    }
}

/// The process that runs an operation: a journal whose owner is gone belongs to an interrupted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub pid: i32,
    /// Its start time (clock ticks since boot), so a reused pid is not taken for it.
    pub start: u64,
}

impl Owner {
    pub fn me() -> Owner {
        let pid = std::process::id() as i32;
        Owner { pid, start: process_start(pid).unwrap_or(0) }
    }

    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        process_start(self.pid).is_some_and(|start| start == self.start)
    }
}

/// A running process's start time from /proc, or `None` if it does not exist or has exited (a zombie nobody has
/// reaped yet is gone too: a daemon killed after its parent command exited may stay one).
fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// What an operation in progress is doing, persisted so a crash can be finished at the next start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    #[serde(default = "first_format")]
    pub format: u32,
    pub op: Op,
    pub phase: Phase,
    pub root: PathBuf,
    /// Where replaced files go.
    pub quarantine: Option<PathBuf>,
    /// The files being installed; `None` with phase `swap` means drizzle/ is being removed.
    pub target: Option<Vec<FileEntry>>,
    /// For a push: what drizzle/ held before it (its archive sits beside the journal).
    pub before: Option<Vec<FileEntry>>,
    pub before_existed: bool,
    /// The process running the operation (absent in journals of dreamerd 0.1.0).
    #[serde(default)]
    pub owner: Option<Owner>,
    /// The process group of the drizzle-kit run in progress, killed if it outlives its owner.
    #[serde(default)]
    pub child: Option<i32>,
    /// `restore --with-database`: the copy the database is put back from once drizzle/ is in place (format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_copy: Option<PathBuf>,
    /// Files of the target that drizzle/ already held, byte for byte: moved from it into the new tree rather than
    /// written again (format 4). A swap that stops before the exchange moves them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub borrowed: Vec<String>,
    /// The stored push the replaced tree was, byte for byte (format 4): what is left of it after the swap is not
    /// kept in quarantine, since the store has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_push: Option<String>,
}

fn first_format() -> u32 {
    1
}

impl Journal {
    /// A new journal for an operation this process runs.
    pub fn new(op: Op, phase: Phase, root: &Path) -> Journal {
        Journal {
            format: OP_FORMAT,
            op,
            phase,
            root: root.to_path_buf(),
            quarantine: None,
            target: None,
            before: None,
            before_existed: false,
            owner: Some(Owner::me()),
            child: None,
            database_copy: None,
            borrowed: Vec::new(),
            replaced_push: None,
        }
    }
}

/// The largest crash journal read (it lists two trees' files).
const MAX_JOURNAL: u64 = 256 << 20;

impl Engine {
    pub(crate) fn ops_dir(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("ops").join(project.local_key())
    }

    /// The crash journal of the project's operation in progress, or of one a crash interrupted.
    pub(crate) fn journal_path(&self, project: &Project) -> PathBuf {
        self.ops_dir(project).join("journal.json")
    }

    pub(crate) fn snapshot_path(&self, project: &Project) -> PathBuf {
        self.ops_dir(project).join("before-push.tar.zst")
    }

    /// The archive of the tree from before a push, kept beside its journal.
    fn read_snapshot(&self, project: &Project) -> Result<Vec<u8>> {
        let path = self.snapshot_path(project);
        safefs::read_file(&path, archive::Limits::default().max_total * 2, false)
            .ctx("read", &path)?
            .ok_or_else(|| Error::Corrupt(format!("{} is missing beside its journal", path.display())))
    }

    pub(crate) fn write_journal(&self, project: &Project, journal: &Journal) -> Result<()> {
        let dir = self.ops_dir(project);
        fsutil::create_private_dir(&dir).ctx("create", &dir)?;
        let path = dir.join("journal.json");
        let json = serde_json::to_vec_pretty(&Journal { format: OP_FORMAT, ..journal.clone() })
            .expect("journal serialises");
        fsutil::atomic_write(&path, &json).ctx("write", &path)
    }

    /// Removes the journal, then what it protected: a crash in between leaves a harmless snapshot, never a journal
    /// without its snapshot.
    pub(crate) fn clear_journal(&self, project: &Project) -> Result<()> {
        let dir = self.ops_dir(project);
        let journal = dir.join("journal.json");
        match fs::remove_file(&journal) {
            Ok(()) => fsutil::fsync_dir(&dir).ctx("sync", &dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove", &journal),
        }
        fsutil::remove_any(&dir).ctx("remove", &dir)
    }

    /// The journal of an interrupted operation, if any. One that cannot be read, or comes from a newer dreamerd, is
    /// an error that keeps everything: nothing is ever deleted on a guess.
    pub(crate) fn read_journal(&self, project: &Project) -> Result<Option<Journal>> {
        let path = self.journal_path(project);
        let unreadable = |why: String| Error::Failed {
            message: format!(
                "the journal of an interrupted operation, {}, cannot be read ({why}); nothing was deleted",
                path.display()
            ),
            hint: Some(format!(
                "push and restore of this project wait until it is dealt with: check drizzle/ (the tree from before \
                 the push is in {}), then move the folder {} away",
                self.snapshot_path(project).display(),
                self.ops_dir(project).display()
            )),
        };
        let bytes = match safefs::read_file(&path, MAX_JOURNAL, false) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(unreadable(e.to_string())),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
        let format = value.get("format").and_then(serde_json::Value::as_u64).unwrap_or(1);
        check_format(u32::try_from(format).unwrap_or(u32::MAX), OP_FORMAT, || {
            format!("the journal of an interrupted operation, {}", path.display())
        })?;
        serde_json::from_value(value).map(Some).map_err(|e| unreadable(e.to_string()))
    }

    /// Replaces drizzle/ with `target` (an archive and its files), or removes it when `target` is `None`.
    /// What was there goes to `quarantine/drizzle`. The caller holds the project lock.
    pub(crate) fn install(
        &self,
        project: &Project,
        target: Option<(&[u8], &[FileEntry])>,
        quarantine: &Path,
        journal: &mut Journal,
    ) -> Result<()> {
        let staging = project.root.join(STAGING);
        if fsutil::exists_nofollow(&staging) {
            return Err(Error::failed(
                format!("{} is in the way", staging.display()),
                "it is dreamerd's scratch folder: move it away, then try again",
            ));
        }
        fsutil::create_dir_durable(&staging).ctx("create", &staging)?;
        // The checks of the staged and swapped trees below trust what the facts know (the files moved across).
        let _facts = self.hold_facts(project);
        // Only what differs is written: the files drizzle/ holds byte for byte already (known from the stat cache,
        // so nothing is read twice) are moved across once the journal says so. Never linked: drizzle-kit rewrites
        // files in place, and a link would change the quarantined copy too.
        let keep = project.not_migrations();
        let current = if target.is_some() { self.scan_out(project).ok() } else { None };
        // A tree that is a stored push (restoring from one push to another) needs no quarantine copy.
        journal.replaced_push = current.as_ref().and_then(|tree| self.stored_push_of(project, tree));
        let borrowed: Vec<String> = match (target, &current) {
            (Some((_, files)), Some(tree)) => files
                .iter()
                .filter(|f| !keep.contains(&f.path))
                .filter(|f| {
                    matches!(tree.nodes.get(&f.path),
                        Some(manifest::Node::File { size, blake3 }) if f.is(*size, blake3))
                })
                .map(|f| f.path.clone())
                .collect(),
            _ => Vec::new(),
        };
        if let Some((bytes, files)) = target {
            let skip: std::collections::HashSet<&str> = borrowed.iter().map(String::as_str).collect();
            if let Err(e) =
                archive::unpack_except(bytes, files, &staging.join("new"), Limits::default(), &skip)
            {
                // Nothing was swapped; the journal is left as it was, so a push's pending rollback (and its
                // snapshot) survives for the next operation to finish.
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        crate::fault::point("swap:staged");
        journal.phase = Phase::Swap;
        journal.target = target.map(|(_, files)| files.to_vec());
        journal.quarantine = Some(quarantine.to_path_buf());
        journal.borrowed = borrowed;
        self.write_journal(project, journal)?;
        crate::fault::point("swap:journaled");
        let drizzle = project.drizzle();
        let new = staging.join("new");
        let borrowed = journal.borrowed.clone();
        // The folders of the new tree, each made once (not once per file moved into it).
        let mut made = std::collections::HashSet::new();
        for (i, rel) in borrowed.iter().enumerate() {
            let moved = (|| -> std::io::Result<()> {
                let (from, to) = (drizzle.join(rel), new.join(rel));
                if let Some(parent) = to.parent()
                    && !made.contains(parent)
                {
                    fs::create_dir_all(parent)?;
                    made.insert(parent.to_path_buf());
                }
                let before = rustix::fs::lstat(&from)?;
                fs::rename(&from, &to)?;
                // The same file, its contents known: a rename moves only its change time.
                if let Ok(after) = rustix::fs::lstat(&to) {
                    crate::facts::note_moved(
                        crate::facts::Identity::of(&before),
                        crate::facts::Identity::of(&after),
                    );
                }
                Ok(())
            })();
            if let Err(e) = moved {
                // Put back what was moved; the swap does not happen.
                put_back(&new, &drizzle, &borrowed[..i]);
                journal.borrowed.clear();
                let _ = self.write_journal(project, journal);
                return Err(Error::failed(
                    format!("cannot move {rel} into the new tree of {}: {e}", drizzle.display()),
                    "nothing was changed; check the folder's permissions, then try again",
                ));
            }
            if i == 0 {
                crate::fault::point("swap:borrowing");
            }
        }
        // The moves reach the disk before the exchange does (metadata only: one flush of the filesystem).
        if !journal.borrowed.is_empty() {
            fsutil::sync_tree(&new).ctx("sync", &new)?;
        }
        self.finish_swap(project, journal)?;
        if let Some((_, files)) = target
            && !holds_exactly(&drizzle, files, &keep)
        {
            return Err(Error::failed(
                format!("{} changed while it was being restored, so it was not replaced", drizzle.display()),
                "nothing was lost (what was staged is in quarantine): run the restore again once nothing writes the \
                 folder",
            ));
        }
        Ok(())
    }

    /// Brings a swap to its end from wherever it stopped: puts the new tree in place if it is complete and not
    /// there yet, then quarantines everything else left in the staging folder.
    fn finish_swap(&self, project: &Project, journal: &Journal) -> Result<()> {
        let drizzle = project.drizzle();
        let staging = project.root.join(STAGING);
        let new = staging.join("new");
        let failed = |what: &str, e: std::io::Error| {
            Error::failed(
                format!("cannot {what} while replacing {}: {e}", drizzle.display()),
                format!(
                    "nothing was lost: the next dreamerd operation on this project finishes the swap; \
                     the files are in {}",
                    staging.display()
                ),
            )
        };
        match &journal.target {
            Some(files) => {
                let keep = project.not_migrations();
                if holds_exactly(&new, files, &keep) && !holds_exactly(&drizzle, files, &keep) {
                    // What is not a migration (a schema file kept in the folder) goes across with the swap.
                    carry_across(&drizzle, &new, &keep)
                        .map_err(|e| failed("carry the schema files across", e))?;
                    if fsutil::exists_nofollow(&drizzle) {
                        if !fsutil::exchange(&drizzle, &new).map_err(|e| failed("swap in the new tree", e))? {
                            fs::rename(&drizzle, staging.join("old"))
                                .map_err(|e| failed("move drizzle/ aside", e))?;
                            fs::rename(&new, &drizzle).map_err(|e| failed("move the new tree in", e))?;
                        }
                    } else {
                        fs::rename(&new, &drizzle).map_err(|e| failed("move the new tree in", e))?;
                    }
                    fsutil::fsync_dir(&project.root).map_err(|e| failed("sync the project folder", e))?;
                } else if !journal.borrowed.is_empty() && !holds_exactly(&drizzle, files, &keep) {
                    // Stopped before the exchange (a crash, or the folder changed meanwhile): what was moved out of
                    // drizzle/ goes back, and drizzle/ is as it was.
                    put_back(&new, &drizzle, &journal.borrowed);
                    fsutil::fsync_dir(&drizzle).map_err(|e| failed("sync the folder", e))?;
                }
            }
            None => {
                if fsutil::exists_nofollow(&drizzle) {
                    fs::rename(&drizzle, staging.join("old"))
                        .map_err(|e| failed("move drizzle/ aside", e))?;
                }
            }
        }
        crate::fault::point("swap:exchanged");
        self.drain_staging(
            project,
            journal.target.as_deref(),
            journal.quarantine.as_deref(),
            journal.replaced_push.as_deref(),
        )?;
        if journal.database_copy.is_some() {
            // The database comes next: the journal says so before the swap's is gone.
            return self.write_journal(
                project,
                &Journal { phase: Phase::Database, target: None, ..journal.clone() },
            );
        }
        self.clear_journal(project)
    }

    /// `restore --with-database`, second half: the database put back from the journal's copy, then the journal
    /// cleared. Idempotent: the database it replaces is kept in quarantine only the first time.
    pub(crate) fn finish_database(
        &self,
        project: &Project,
        journal: &Journal,
        sink: &dyn Sink,
    ) -> Result<PathBuf> {
        let copy = journal.database_copy.clone().expect("a database phase names its copy");
        let quarantine = match &journal.quarantine {
            Some(q) => q.clone(),
            None => self.new_quarantine(project, "interrupted-restore")?,
        };
        if !copy.is_file() {
            self.clear_journal(project)?;
            return Err(Error::failed(
                format!(
                    "the database copy {} that restore --with-database was putting back is gone; the database was \
                     left as it was",
                    copy.display()
                ),
                "`dreamerd check` says which push the database is at; restore another copy, or reset the development \
                 database",
            ));
        }
        sink.progress(&format!("putting the database back to {}", copy.display()));
        let kept = self.put_back_database_from(project, &copy, &quarantine)?;
        self.clear_journal(project)?;
        Ok(kept)
    }

    /// Empties the staging folder: copies of the target are dropped, anything else is quarantined.
    fn drain_staging(
        &self,
        project: &Project,
        target: Option<&[FileEntry]>,
        quarantine: Option<&Path>,
        replaced_push: Option<&str>,
    ) -> Result<()> {
        let staging = project.root.join(STAGING);
        let entries = match fs::read_dir(&staging) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("read", &staging),
        };
        let mut quarantine = quarantine.map(Path::to_path_buf);
        for entry in entries {
            let path = entry.ctx("read", &staging)?.path();
            if target.is_some_and(|files| holds_exactly(&path, files, &project.not_migrations())) {
                fsutil::remove_any(&path).ctx("remove", &path)?;
                continue;
            }
            // What is left of a replaced tree whose every file went into the new one: only folders, nothing to keep.
            if holds_exactly(&path, &[], &[]) {
                fsutil::remove_any(&path).ctx("remove", &path)?;
                continue;
            }
            // A replaced tree that is exactly a stored push is not kept twice: the store has it.
            if let Some(push) =
                replaced_push.map(str::to_string).or_else(|| self.stored_push_of_tree(project, &path))
            {
                tracing::debug!(push = %push, "the replaced tree is a stored push; not quarantined");
                fsutil::remove_any(&path).ctx("remove", &path)?;
                continue;
            }
            let q = match &quarantine {
                Some(q) => q.clone(),
                None => {
                    let q = self.new_quarantine(project, "leftover")?;
                    quarantine = Some(q.clone());
                    q
                }
            };
            let mut dest = q.join("drizzle");
            if fsutil::exists_nofollow(&dest) {
                dest = q.join(entry_name(&path));
            }
            fsutil::move_tree(&path, &dest).ctx("quarantine", &path)?;
        }
        fs::remove_dir(&staging).ctx("remove", &staging)?;
        fsutil::fsync_dir(&project.root).ctx("sync", &project.root)
    }

    /// The push of this project (the one waiting for the store, or one in it) whose files are exactly `files`: such a
    /// tree is legitimate (a restore to an older push, a pull) and needs no quarantine copy.
    pub(crate) fn push_with_files(
        &self,
        project: &Project,
        files: &[FileEntry],
    ) -> Option<crate::store::PushRecord> {
        let id = self.project_id(project).ok()??;
        if let Ok(Some(pending)) = self.pending_record(project)
            && pending.project_id == id
            && pending.files == files
        {
            return Some(pending);
        }
        if !self.store.reachable().ok()? {
            return None;
        }
        let tree = crate::manifest::tree_hash(files);
        let stored = self.store.history(&id).ok()?.into_iter().find(|g| g.tree == tree)?;
        self.store.full(&stored).ok()
    }

    /// The id of [`Engine::push_with_files`].
    pub(crate) fn stored_push_with(&self, project: &Project, files: &[FileEntry]) -> Option<String> {
        self.push_with_files(project, files).map(|r| r.id)
    }

    /// [`Engine::stored_push_with`] for a tree on disk (regular files and directories only).
    pub(crate) fn stored_push_of_tree(&self, project: &Project, dir: &Path) -> Option<String> {
        self.stored_push_of(project, &manifest::scan(dir).ok()?)
    }

    /// [`Engine::stored_push_with`] for a scanned tree (regular files and directories only).
    fn stored_push_of(&self, project: &Project, tree: &manifest::Tree) -> Option<String> {
        if !tree.exists || tree.nodes.contains_key(".") || tree.specials().next().is_some() {
            return None;
        }
        self.stored_push_with(project, &tree.files())
    }

    /// Keeps a tree (an archive and its files) in `dest`, unless it is a stored push.
    pub(crate) fn keep_tree(
        &self,
        project: &Project,
        bytes: &[u8],
        files: &[FileEntry],
        dest: &Path,
    ) -> Result<()> {
        if self.stored_push_with(project, files).is_some() {
            return Ok(());
        }
        archive::unpack_verified(bytes, files, dest, Limits::default())
    }

    /// Removes a quarantine folder that ended up holding nothing.
    pub(crate) fn drop_if_empty(&self, quarantine: &Path) {
        if fs::read_dir(quarantine).is_ok_and(|mut d| d.next().is_none()) {
            let _ = fs::remove_dir(quarantine);
        }
    }

    /// Finishes what a crash left in a project, if anything: takes the project's lock (so never during another
    /// operation; a drizzle-kit left running by a daemon that died is stopped first) and recovers. Returns whether
    /// there was something to finish.
    pub fn recover_now(&self, project: &Project, sink: &dyn Sink) -> Result<bool> {
        match self.read_journal(project) {
            Ok(None) if !fsutil::exists_nofollow(&project.root.join(STAGING)) => return Ok(false),
            // The journal of an operation that still runs (in this process or another) is not an interruption:
            // that operation finishes it.
            Ok(Some(j)) if j.owner.is_some_and(|o| o.alive()) => return Ok(false),
            // Nothing to finish but a leftover staging folder, or a journal to recover (an unreadable one is said
            // by the recovery, under the lock).
            _ => {}
        }
        let _lock = self.lock(project)?;
        self.recover(project, sink)?;
        Ok(true)
    }

    /// Finishes whatever an interrupted operation left, by the rule of the phase it was in (see [`Phase`]); nothing
    /// found is deleted. Call with the project lock held.
    pub(crate) fn recover(&self, project: &Project, sink: &dyn Sink) -> Result<()> {
        let journal = self.read_journal(project)?;
        let staging = project.root.join(STAGING);
        let Some(mut journal) = journal else {
            if fsutil::exists_nofollow(&staging) {
                sink.progress(&format!("found a leftover {}; moving it to quarantine", staging.display()));
                self.drain_staging(project, None, None, None)?;
            }
            return self.clear_journal(project);
        };
        match journal.phase {
            Phase::Swap => {
                sink.progress("finishing an interrupted replacement of drizzle/");
                if journal.quarantine.is_none() {
                    journal.quarantine = Some(self.new_quarantine(project, "interrupted")?);
                }
                self.finish_swap(project, &journal)?;
                if journal.database_copy.is_some() {
                    self.finish_database(project, &journal, sink)?;
                }
                Ok(())
            }
            Phase::Database => {
                sink.progress("finishing an interrupted restore of the database");
                self.finish_database(project, &journal, sink).map(|_| ())
            }
            Phase::Generate => {
                sink.progress("rolling back a push that was interrupted before migrate");
                // A rollback that died while unpacking left a partial tree: keep it aside first.
                self.drain_staging(project, None, None, None)?;
                let quarantine = self.new_quarantine(project, "interrupted-push")?;
                let rolled = self.rollback_to_snapshot(project, &quarantine, &mut journal);
                self.drop_if_empty(&quarantine);
                rolled
            }
            Phase::Migrate | Phase::Backup => {
                self.drain_staging(project, None, None, None)?;
                let applied = match journal.phase {
                    // migrate succeeded before the backup started: nothing to ask the database.
                    Phase::Backup => Some(true),
                    _ => self.migrate_applied(project),
                };
                let quarantine = self.new_quarantine(project, "interrupted-push")?;
                if applied == Some(false) {
                    sink.progress("rolling back a push whose migrate did not apply");
                    let rolled = self.rollback_to_snapshot(project, &quarantine, &mut journal);
                    self.drop_if_empty(&quarantine);
                    return rolled;
                }
                if let Some(files) = &journal.before {
                    let bytes = self.read_snapshot(project)?;
                    self.keep_tree(project, &bytes, files, &quarantine.join("drizzle"))?;
                }
                if applied == Some(true) {
                    sink.progress("completing a push that was interrupted after its migrate succeeded");
                    self.complete_interrupted_push(project, sink)?;
                } else {
                    sink.progress(&format!(
                        "a push was interrupted after migrate started and the database cannot be read to tell \
                         whether it applied; drizzle/ is left as generated, the tree from before the push is in {}",
                        quarantine.display()
                    ));
                }
                self.drop_if_empty(&quarantine);
                self.clear_journal(project)
            }
        }
    }

    /// Whether every migration in drizzle/'s journal is applied to the database; `None` if that cannot be told.
    /// The database is opened so that SQLite first rolls back a transaction the crash interrupted, as the app's next
    /// open would; dreamerd itself writes nothing.
    fn migrate_applied(&self, project: &Project) -> Option<bool> {
        let db = self.database(project).ok()?;
        let folder = safefs::Folder::open(&project.drizzle()).ok()??;
        let entries = crate::drizzle::journal::read_in(&folder).ok()?.unwrap_or_default();
        let applied = crate::drizzle::database::applied_after_crash(&db).ok()?.unwrap_or_default();
        let layout =
            crate::drizzle::journal::layout_in(&folder).unwrap_or(crate::drizzle::journal::Layout::Journal);
        let drift = crate::drizzle::database::drift(layout, Some(&folder), &entries, &applied);
        Some(!drift.iter().any(|d| d.code == "migration-pending"))
    }

    /// Puts drizzle/ back to the snapshot taken before a push; what the push left goes to `quarantine`.
    pub(crate) fn rollback_to_snapshot(
        &self,
        project: &Project,
        quarantine: &Path,
        journal: &mut Journal,
    ) -> Result<()> {
        let before = journal.before.clone().unwrap_or_default();
        if !journal.before_existed {
            return self.install(project, None, quarantine, journal);
        }
        if holds_exactly(&project.drizzle(), &before, &project.not_migrations()) {
            return self.clear_journal(project);
        }
        let bytes = self.read_snapshot(project)?;
        self.install(project, Some((&bytes, &before)), quarantine, journal)
    }
}

/// Moves the files at `names` (relative paths) from `from` into `to`, where `to` lacks them.
fn carry_across(from: &Path, to: &Path, names: &[String]) -> std::io::Result<()> {
    for name in names {
        let (src, dest) = (from.join(name), to.join(name));
        if safefs::is_regular_file(&src) && !fsutil::exists_nofollow(&dest) {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&src, &dest)?;
        }
    }
    Ok(())
}

/// Moves the files at `paths` from `from` back to `to` where `to` has nothing at that path (best effort: what cannot
/// be moved stays in the staging folder, which goes to quarantine).
fn put_back(from: &Path, to: &Path, paths: &[String]) {
    for rel in paths {
        let (src, dest) = (from.join(rel), to.join(rel));
        if safefs::is_regular_file(&src) && !fsutil::exists_nofollow(&dest) {
            if let Some(parent) = dest.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = fs::rename(&src, &dest);
        }
    }
}

/// True if `dir` is a directory holding exactly these regular files (besides those at `keep`, which are not
/// migrations) and nothing else but directories.
pub(crate) fn holds_exactly(dir: &Path, files: &[FileEntry], keep: &[String]) -> bool {
    super::scan_excluding(dir, keep).is_ok_and(|(tree, _)| is_exactly(&tree, files))
}

/// [`holds_exactly`] of a folder already scanned (with the same exclusions).
pub(crate) fn is_exactly(tree: &manifest::Tree, files: &[FileEntry]) -> bool {
    tree.exists && !tree.nodes.contains_key(".") && tree.holds_exactly(files)
}

fn entry_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "entry".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::dirs::Dirs;
    use crate::engine::NullSink;

    struct Fixture {
        _tmp: tempfile::TempDir,
        engine: Engine,
        project: Project,
        target: crate::archive::Packed,
        quarantine: PathBuf,
    }

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (p, body) in files {
            let path = root.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
    }

    /// drizzle/ holds the old tree; the target is another tree, packed; the journal says a swap is under way.
    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            config_file: tmp.path().join("config.toml"),
            state: tmp.path().join("state"),
            data: tmp.path().join("data"),
            cache: tmp.path().join("cache"),
            runtime: None,
        };
        let engine = Engine::new(Config::default(), dirs).unwrap();
        let project = Project::legacy(&tmp.path().join("proj"));
        write(&project.drizzle(), &[("0000_a.sql", "old"), ("mine.sql", "hand edit")]);
        let target_dir = tmp.path().join("target");
        write(&target_dir, &[("0000_a.sql", "new"), ("meta/_journal.json", "{}")]);
        let target = archive::pack(&target_dir, &manifest::scan(&target_dir).unwrap()).unwrap();
        let quarantine = engine.new_quarantine(&project, "restore").unwrap();
        let journal = Journal {
            quarantine: Some(quarantine.clone()),
            target: Some(target.files.clone()),
            before_existed: true,
            ..Journal::new(Op::Restore, Phase::Swap, &project.root)
        };
        engine.write_journal(&project, &journal).unwrap();
        fs::create_dir(project.root.join(STAGING)).unwrap();
        Fixture { _tmp: tmp, engine, project, target, quarantine }
    }

    /// Every regular file below `dir` with its contents.
    fn tree_bytes(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = manifest::scan(dir)
            .unwrap()
            .files()
            .into_iter()
            .map(|f| (f.path.clone(), fs::read_to_string(dir.join(&f.path)).unwrap()))
            .collect();
        out.sort();
        out
    }

    fn unpack_new(f: &Fixture) {
        let new = f.project.root.join(STAGING).join("new");
        archive::unpack_verified(&f.target.bytes, &f.target.files, &new, Limits::default()).unwrap();
    }

    fn assert_completed(f: &Fixture) {
        f.engine.recover(&f.project, &NullSink).unwrap();
        assert!(holds_exactly(&f.project.drizzle(), &f.target.files, &[]), "the new tree is in place");
        let kept = f.quarantine.join("drizzle");
        assert_eq!(fs::read_to_string(kept.join("mine.sql")).unwrap(), "hand edit", "the old tree is kept");
        assert_eq!(fs::read_to_string(kept.join("0000_a.sql")).unwrap(), "old");
        assert!(!f.project.root.join(STAGING).exists());
        assert!(f.engine.read_journal(&f.project).unwrap().is_none());
    }

    #[test]
    fn crash_before_the_exchange_is_completed() {
        let f = fixture();
        unpack_new(&f);
        assert_completed(&f);
    }

    #[test]
    fn crash_after_the_exchange_is_completed() {
        let f = fixture();
        unpack_new(&f);
        let new = f.project.root.join(STAGING).join("new");
        if !fsutil::exchange(&f.project.drizzle(), &new).unwrap() {
            return; // this filesystem cannot exchange; the two-rename path is covered below
        }
        assert_completed(&f);
    }

    /// The journal on disk as an earlier release wrote it: its format, without the fields that came later.
    fn rewrite_journal(f: &Fixture, format: u32, later_fields: &[&str]) {
        let path = f.engine.ops_dir(&f.project).join("journal.json");
        let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        value["format"] = serde_json::json!(format);
        for field in later_fields {
            value.as_object_mut().unwrap().remove(*field);
        }
        fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    }

    #[test]
    fn a_swap_journal_the_previous_release_wrote_is_finished() {
        let f = fixture();
        unpack_new(&f);
        // What dreamerd 0.3.0 wrote: format 2, no `database_copy`.
        rewrite_journal(&f, 2, &["database_copy"]);
        let read = f.engine.read_journal(&f.project).unwrap().unwrap();
        assert_eq!((read.phase, read.database_copy.as_ref()), (Phase::Swap, None));
        assert_completed(&f);
    }

    #[test]
    fn a_swap_journal_of_format_3_is_finished() {
        let f = fixture();
        unpack_new(&f);
        // What dreamerd 0.4.0 wrote: format 3, nothing borrowed from drizzle/.
        rewrite_journal(&f, 3, &["borrowed", "replaced_push"]);
        let read = f.engine.read_journal(&f.project).unwrap().unwrap();
        assert_eq!((read.phase, read.borrowed.len()), (Phase::Swap, 0));
        assert_completed(&f);
    }

    #[test]
    fn a_swap_stopped_while_borrowing_gives_the_files_back() {
        let f = fixture();
        // drizzle/ held two files of the target byte for byte, to be moved into the new tree instead of written;
        // the swap stopped after moving the first, so the new tree is incomplete.
        let drizzle = f.project.drizzle();
        write(&drizzle, &[("0000_a.sql", "new"), ("meta/_journal.json", "{}")]);
        let before = tree_bytes(&drizzle);
        let new = f.project.root.join(STAGING).join("new");
        fs::create_dir_all(&new).unwrap();
        fs::rename(drizzle.join("0000_a.sql"), new.join("0000_a.sql")).unwrap();
        let mut journal = f.engine.read_journal(&f.project).unwrap().unwrap();
        journal.borrowed = vec!["0000_a.sql".into(), "meta/_journal.json".into()];
        f.engine.write_journal(&f.project, &journal).unwrap();
        f.engine.recover(&f.project, &NullSink).unwrap();
        assert_eq!(tree_bytes(&drizzle), before, "drizzle/ is as it was, the moved file given back");
        assert!(!f.project.root.join(STAGING).exists());
        assert!(f.engine.read_journal(&f.project).unwrap().is_none());
    }

    #[test]
    fn crash_between_two_renames_is_completed() {
        let f = fixture();
        unpack_new(&f);
        fs::rename(f.project.drizzle(), f.project.root.join(STAGING).join("old")).unwrap();
        assert!(!f.project.drizzle().exists());
        assert_completed(&f);
    }

    #[test]
    fn crash_during_unpack_leaves_drizzle_untouched_and_loses_nothing() {
        let f = fixture();
        write(&f.project.root.join(STAGING).join("new"), &[("0000_a.sql", "ne")]); // a partial unpack
        f.engine.recover(&f.project, &NullSink).unwrap();
        assert_eq!(fs::read_to_string(f.project.drizzle().join("mine.sql")).unwrap(), "hand edit");
        assert!(!f.project.root.join(STAGING).exists());
        assert!(f.quarantine.join("drizzle/0000_a.sql").exists(), "even the partial tree is kept");
    }

    #[test]
    fn leftover_staging_without_a_journal_is_quarantined() {
        let f = fixture();
        f.engine.clear_journal(&f.project).unwrap();
        write(&f.project.root.join(STAGING).join("old"), &[("x.sql", "someone's")]);
        f.engine.recover(&f.project, &NullSink).unwrap();
        assert!(!f.project.root.join(STAGING).exists());
        let leftover = fs::read_dir(f.quarantine.parent().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-leftover"))
            .expect("a leftover quarantine folder");
        assert_eq!(fs::read_to_string(leftover.join("drizzle/x.sql")).unwrap(), "someone's");
    }
}
