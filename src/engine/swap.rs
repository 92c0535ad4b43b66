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
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::manifest::{self, FileEntry};
use crate::project::Project;

/// The transient folder beside `drizzle/` where a new tree is built; it exists only during a swap.
pub const STAGING: &str = ".dreamerd-tmp";

/// What an operation in progress is doing, persisted so a crash can be finished at the next start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// `push` or `restore`.
    pub op: String,
    /// push: `generate`, `migrate`, `backup`; any op: `swap` while drizzle/ is being replaced.
    pub phase: String,
    pub root: PathBuf,
    /// Where replaced files go.
    pub quarantine: Option<PathBuf>,
    /// The files being installed; `None` with phase `swap` means drizzle/ is being removed.
    pub target: Option<Vec<FileEntry>>,
    /// For a push: what drizzle/ held before it (its archive sits beside the journal).
    pub before: Option<Vec<FileEntry>>,
    pub before_existed: bool,
}

impl Engine {
    fn ops_dir(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("ops").join(project.local_key())
    }

    pub(crate) fn snapshot_path(&self, project: &Project) -> PathBuf {
        self.ops_dir(project).join("before-push.tar.zst")
    }

    pub(crate) fn write_journal(&self, project: &Project, journal: &Journal) -> Result<()> {
        let dir = self.ops_dir(project);
        fsutil::create_private_dir(&dir).ctx("create", &dir)?;
        let path = dir.join("journal.json");
        let json = serde_json::to_vec_pretty(journal).expect("journal serialises");
        fsutil::atomic_write(&path, &json).ctx("write", &path)
    }

    pub(crate) fn clear_journal(&self, project: &Project) -> Result<()> {
        let dir = self.ops_dir(project);
        fsutil::remove_any(&dir).ctx("remove", &dir)
    }

    fn read_journal(&self, project: &Project) -> Result<Option<Journal>> {
        let path = self.ops_dir(project).join("journal.json");
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
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
        fs::create_dir(&staging).ctx("create", &staging)?;
        if let Some((bytes, files)) = target
            && let Err(e) = archive::unpack_verified(bytes, files, &staging.join("new"), Limits::default())
        {
            // Nothing was swapped; the journal is left as it was, so a push's pending rollback (and its
            // snapshot) survives for the next operation to finish.
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        journal.phase = "swap".into();
        journal.target = target.map(|(_, files)| files.to_vec());
        journal.quarantine = Some(quarantine.to_path_buf());
        self.write_journal(project, journal)?;
        self.finish_swap(project, journal)
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
                if holds_exactly(&new, files) && !holds_exactly(&drizzle, files) {
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
                }
            }
            None => {
                if fsutil::exists_nofollow(&drizzle) {
                    fs::rename(&drizzle, staging.join("old"))
                        .map_err(|e| failed("move drizzle/ aside", e))?;
                }
            }
        }
        self.drain_staging(project, journal.target.as_deref(), journal.quarantine.as_deref())?;
        self.clear_journal(project)
    }

    /// Empties the staging folder: copies of the target are dropped, anything else is quarantined.
    fn drain_staging(
        &self,
        project: &Project,
        target: Option<&[FileEntry]>,
        quarantine: Option<&Path>,
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
            if target.is_some_and(|files| holds_exactly(&path, files)) {
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

    /// Finishes what a crash left in a project, if anything: takes the project's lock (so never during another
    /// operation) and recovers. Returns whether there was something to finish.
    pub fn recover_now(&self, project: &Project, sink: &dyn Sink) -> Result<bool> {
        let journal = self.ops_dir(project).join("journal.json");
        if !journal.exists() && !fsutil::exists_nofollow(&project.root.join(STAGING)) {
            return Ok(false);
        }
        let _lock = self.lock(project)?;
        self.recover(project, sink)?;
        Ok(true)
    }

    /// Finishes whatever an interrupted operation left: a swap is completed, a push that died before migrate is
    /// rolled back, and nothing found is deleted. Call with the project lock held.
    pub(crate) fn recover(&self, project: &Project, sink: &dyn Sink) -> Result<()> {
        let journal = self.read_journal(project)?;
        let staging = project.root.join(STAGING);
        let Some(mut journal) = journal else {
            if fsutil::exists_nofollow(&staging) {
                sink.progress(&format!("found a leftover {}; moving it to quarantine", staging.display()));
                self.drain_staging(project, None, None)?;
            }
            return self.clear_journal(project);
        };
        match journal.phase.as_str() {
            "swap" => {
                sink.progress("finishing an interrupted replacement of drizzle/");
                if journal.quarantine.is_none() {
                    journal.quarantine = Some(self.new_quarantine(project, "interrupted")?);
                }
                self.finish_swap(project, &journal)
            }
            "generate" => {
                sink.progress("rolling back a push that was interrupted before migrate");
                // A rollback that died while unpacking left a partial tree: keep it aside first.
                self.drain_staging(project, None, None)?;
                let quarantine = self.new_quarantine(project, "interrupted-push")?;
                self.rollback_to_snapshot(project, &quarantine, &mut journal)
            }
            _ => {
                // Migrate had started. Pending migrations run in one transaction, so the database tells which way
                // it went: everything applied means the push succeeded; anything pending means nothing was.
                self.drain_staging(project, None, None)?;
                let quarantine = self.new_quarantine(project, "interrupted-push")?;
                match self.migrate_applied(project) {
                    Some(false) => {
                        sink.progress("rolling back a push whose migrate did not apply");
                        self.rollback_to_snapshot(project, &quarantine, &mut journal)
                    }
                    applied => {
                        if let Some(files) = &journal.before {
                            let bytes = fs::read(self.snapshot_path(project))
                                .ctx("read", &self.snapshot_path(project))?;
                            archive::unpack_verified(
                                &bytes,
                                files,
                                &quarantine.join("drizzle"),
                                Limits::default(),
                            )?;
                        }
                        if applied == Some(true) {
                            sink.progress(
                                "completing a push that was interrupted after its migrate succeeded",
                            );
                            self.complete_interrupted_push(project, sink)?;
                        } else {
                            sink.progress(&format!(
                                "a push was interrupted after migrate started and the database cannot be read to \
                                 tell whether it applied; drizzle/ is left as generated, the tree from before the \
                                 push is in {}",
                                quarantine.display()
                            ));
                        }
                        self.clear_journal(project)
                    }
                }
            }
        }
    }

    /// Whether every migration in drizzle/'s journal is applied to the database; `None` if that cannot be told.
    fn migrate_applied(&self, project: &Project) -> Option<bool> {
        let db = crate::drizzle::database::locate(&project.root, self.config.database.url.as_deref()).ok()?;
        let entries = crate::drizzle::journal::read(&project.drizzle()).ok()?.unwrap_or_default();
        let applied = crate::drizzle::database::applied(&db).ok()?.unwrap_or_default();
        let drift = crate::drizzle::database::drift(&project.drizzle(), &entries, &applied);
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
        if holds_exactly(&project.drizzle(), &before) {
            return self.clear_journal(project);
        }
        let path = self.snapshot_path(project);
        let bytes = fs::read(&path).ctx("read", &path)?;
        self.install(project, Some((&bytes, &before)), quarantine, journal)
    }
}

/// True if `dir` is a directory holding exactly these regular files and nothing else but directories.
pub(crate) fn holds_exactly(dir: &Path, files: &[FileEntry]) -> bool {
    match manifest::scan(dir) {
        Ok(tree) => {
            tree.exists
                && !tree.nodes.contains_key(".")
                && tree.specials().next().is_none()
                && tree.files() == files
        }
        Err(_) => false,
    }
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
            runtime: None,
        };
        let engine = Engine::new(Config::default(), dirs).unwrap();
        let project = Project { root: tmp.path().join("proj") };
        write(&project.drizzle(), &[("0000_a.sql", "old"), ("mine.sql", "hand edit")]);
        let target_dir = tmp.path().join("target");
        write(&target_dir, &[("0000_a.sql", "new"), ("meta/_journal.json", "{}")]);
        let target = archive::pack(&target_dir, &manifest::scan(&target_dir).unwrap()).unwrap();
        let quarantine = engine.new_quarantine(&project, "restore").unwrap();
        let journal = Journal {
            op: "restore".into(),
            phase: "swap".into(),
            root: project.root.clone(),
            quarantine: Some(quarantine.clone()),
            target: Some(target.files.clone()),
            before: None,
            before_existed: true,
        };
        engine.write_journal(&project, &journal).unwrap();
        fs::create_dir(project.root.join(STAGING)).unwrap();
        Fixture { _tmp: tmp, engine, project, target, quarantine }
    }

    fn unpack_new(f: &Fixture) {
        let new = f.project.root.join(STAGING).join("new");
        archive::unpack_verified(&f.target.bytes, &f.target.files, &new, Limits::default()).unwrap();
    }

    fn assert_completed(f: &Fixture) {
        f.engine.recover(&f.project, &NullSink).unwrap();
        assert!(holds_exactly(&f.project.drizzle(), &f.target.files), "the new tree is in place");
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
