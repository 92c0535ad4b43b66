//! Restore: put drizzle/ back to a successful push, atomically, keeping what it replaces.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::swap::{Journal, Op, Phase, is_exactly};
use super::{Engine, Sink};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, Violation};
use crate::project::Project;

/// The outcome of a restore, in the contract's JSON shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    pub ok: bool,
    pub push_id: String,
    pub files: usize,
    /// Where the replaced tree was kept; `None` when drizzle/ already matched.
    pub quarantine: Option<PathBuf>,
    /// Only with `--dry-run`: true, and nothing was changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// With `--with-database`: the copy the database was put back from (or would be, with `--dry-run`), and where
    /// the database it replaced was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRestored>,
    /// How drizzle/ differs from the push (what the restore undoes), in the shape of status violations.
    pub changes: Vec<Violation>,
}

/// The database part of `restore --with-database`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseRestored {
    /// The copy the database was put back from.
    pub copy: PathBuf,
    /// Where the database it replaced was kept (absent with `--dry-run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<PathBuf>,
}

impl Engine {
    /// Restores drizzle/ to push `push_id` (default: the push the checkout stands on); with `with_database`, the
    /// database too.
    pub fn restore(
        &self,
        project: &Project,
        push_id: Option<&str>,
        dry_run: bool,
        with_database: bool,
        sink: &dyn Sink,
    ) -> Result<RestoreReport> {
        let _lock = self.lock(project)?;
        // Its checks of the folder before and after the swap read only the files it wrote, not every file again.
        let _facts = self.hold_facts(project);
        if !dry_run {
            self.recover(project, sink)?;
        }
        match push_id {
            Some(_) => self.require_store_reachable(project)?,
            None => self.require_store(project)?,
        }
        let nothing = || {
            Error::failed(
                format!("no successful push yet, nothing to restore (project {})", project.root.display()),
                "run `dreamer push` to make the first backup",
            )
        };
        let project_id = self.project_id(project)?.ok_or_else(nothing)?;
        if !dry_run && let Err(e) = self.flush_pending(project, sink) {
            sink.progress(&format!("the last push's backup is still only kept locally: {e}"));
        }
        // Without --push: the push the checkout stands on (its last push, or the committed sum's in a fresh clone),
        // exactly what status names as the restore target.
        let wanted = match push_id {
            Some(id) => id.to_string(),
            None => self.baseline_of(project)?.ok_or_else(nothing)?.record.id,
        };
        // The push may be one whose backup waits locally for the store.
        let pending = self.pending(project)?.filter(|(r, _)| r.project_id == project_id && r.id == wanted);
        let (record, archive) = match pending {
            Some((record, archive)) => {
                record.check_archive(&archive, "the local copy kept for the store")?;
                (record, archive)
            }
            None => {
                let record = self.store.record(&project_id, &wanted)?.ok_or_else(|| {
                    let why = if push_id.is_some() {
                        format!("push {wanted} is not in the history of {}", project.root.display())
                    } else {
                        format!(
                            "push {wanted}, which {} names, is not in {}",
                            super::sum::path(project).display(),
                            self.store.describe()
                        )
                    };
                    Error::failed(
                        why,
                        "`dreamerd history` lists the pushes that can be restored (`--push ID`); a push made on \
                         another machine is only here when the team shares an s3:// store",
                    )
                })?;
                if self.store.is_remote() {
                    sink.progress(&format!(
                        "downloading push {} ({} KiB) from {}",
                        record.id,
                        record.archive_size.div_ceil(1024),
                        self.store.describe()
                    ));
                }
                let archive = self.store.archive(&record)?;
                (record, archive)
            }
        };
        // Across the drizzle-kit 1.0 upgrade only together with the database of that time: the upgrade rewrote the
        // migrations table, and the installed drizzle-kit reads one layout only.
        if !with_database
            && let Some(current) = self.baseline_of(project)?.map(|b| b.record)
            && let (Some(from), Some(to)) = (current.layout(), record.layout())
            && from != to
        {
            return Err(Error::failed(
                format!(
                    "push {} is in {}, but this checkout's last push {} is in {}: the drizzle-kit 1.0 upgrade between \
                     them rewrote the database's migrations table, so that folder alone would not match the database \
                     nor the installed drizzle-kit; nothing was changed",
                    record.id,
                    to.described(),
                    current.id,
                    from.described()
                ),
                format!(
                    "`dreamerd restore --push {} --with-database` puts the folder back together with the database copy \
                     taken before the push after it (`dreamerd history` marks the pushes with one), and then install \
                     the drizzle-kit of that layout; or restore a push of the current layout",
                    record.id
                ),
            ));
        }
        let tree = self.scan_out(project)?;
        let changes = manifest::diff(&record.files, &tree);
        // The database as that push left it: the copy taken before the next push's migrate.
        let db_copy = if with_database {
            Some(self.copy_for(project, &record.id).ok_or_else(|| {
                Error::failed(
                    format!(
                        "push {} has no database copy: a copy is taken before each push's migrate, so the database as a \
                         push left it is the copy taken before the push after it; push {} has none (it is the newest \
                         push, whose state the database already is, or its copy was pruned, or it ran elsewhere)",
                        record.id, record.id
                    ),
                    "`dreamerd history` marks the pushes with a database copy; without --with-database, restore puts \
                     back the folder only",
                )
            })?)
        } else {
            None
        };
        let report = |quarantine, changes, database| RestoreReport {
            ok: true,
            push_id: record.id.clone(),
            files: record.files.len(),
            quarantine,
            dry_run,
            changes,
            database,
        };
        if dry_run {
            let database = db_copy.map(|c| DatabaseRestored { copy: c.path, quarantine: None });
            return Ok(report(None, changes, database));
        }
        let quarantine = self.new_quarantine(project, "restore")?;
        // With the database, the journal goes on from the swap to the database (phase `database`): a crash
        // anywhere is finished by the next operation.
        let database_copy = db_copy.as_ref().map(|c| c.path.clone());
        // Judged on the scan above, not on a second one (the lock keeps other operations out).
        if !is_exactly(&tree, &record.files) {
            sink.progress(&format!("restoring drizzle/ to push {}", record.id));
            let mut journal = Journal {
                before_existed: tree.exists,
                database_copy: database_copy.clone(),
                ..Journal::new(Op::Restore, Phase::Swap, &project.root)
            };
            self.install(project, Some((&archive, &record.files)), &quarantine, &mut journal)?;
        } else if database_copy.is_some() {
            let journal = Journal {
                quarantine: Some(quarantine.clone()),
                database_copy: database_copy.clone(),
                ..Journal::new(Op::Restore, Phase::Database, &project.root)
            };
            self.write_journal(project, &journal)?;
        }
        if self.checkout(project)?.is_none_or(|c| c.push.id != record.id || c.open.is_some()) {
            self.set_last_push(project, &record, super::Via::Restore, None)?;
        }
        self.record_sum(project, &record, sink);
        let database = match &db_copy {
            Some(copy) => {
                let journal = self
                    .read_journal(project)?
                    .filter(|j| j.phase == Phase::Database)
                    .unwrap_or_else(|| Journal {
                        quarantine: Some(quarantine.clone()),
                        database_copy: database_copy.clone(),
                        ..Journal::new(Op::Restore, Phase::Database, &project.root)
                    });
                let kept = self.finish_database(project, &journal, sink)?;
                Some(DatabaseRestored { copy: copy.path.clone(), quarantine: Some(kept) })
            }
            None => None,
        };
        if std::fs::read_dir(&quarantine).is_ok_and(|mut d| d.next().is_some()) {
            Ok(report(Some(quarantine), changes, database))
        } else {
            // Nothing was replaced: nothing was kept, so no empty folder is left either.
            std::fs::remove_dir(&quarantine).ctx("remove", &quarantine)?;
            Ok(report(None, changes, database))
        }
    }
}

/// What `dreamerd store migrate` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreMigrateReport {
    pub ok: bool,
    pub from: String,
    pub to: String,
    /// Pushes of the project in the source store.
    pub pushes: usize,
    /// Pushes copied (the others were in the target already).
    pub copied: usize,
}

impl Engine {
    /// Copies the project's history to the store at `to`, oldest first so that each push still names its parent,
    /// every archive verified on both sides. A push the target holds already is left as it is (a rerun resumes).
    pub fn migrate_store(
        &self,
        project: &Project,
        to: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<StoreMigrateReport> {
        let location = match crate::config::StoreLocation::parse(to).map_err(Error::Usage)? {
            crate::config::StoreLocation::S3(mut s3) => {
                s3.endpoint.clone_from(&self.config.store.endpoint);
                s3.region.clone_from(&self.config.store.region);
                s3.allow_http = self.config.store.allow_http;
                s3.profile.clone_from(&self.config.store.profile);
                s3.timeout_secs = self.config.store.timeout_secs;
                crate::config::StoreLocation::S3(s3)
            }
            local => local,
        };
        let env: std::collections::BTreeMap<String, String> = match &project.env {
            Some(env) => env.clone(),
            None => std::env::vars().collect(),
        };
        let target = crate::store::Store::open(&location, None, &env)?;
        if target.describe() == self.store.describe() {
            return Err(Error::Usage(format!("{to:?} is the store the project uses already")));
        }
        self.require_store(project)?;
        let id = self.project_id(project)?.ok_or_else(|| {
            Error::failed(
                "the project was never pushed: there is no history to copy",
                "run `dreamer push` first",
            )
        })?;
        if target.is_remote() {
            target.check_conditional()?;
        }
        let mut history = self.store.history(&id)?;
        history.reverse();
        let there: std::collections::BTreeSet<String> =
            target.history(&id)?.into_iter().map(|g| g.push).collect();
        let mut copied = 0;
        for g in &history {
            if there.contains(&g.push) {
                continue;
            }
            let record = self.store.full(g)?;
            let archive = self.store.archive(&record)?;
            progress(&format!("copying push {} ({} bytes)", record.id, archive.len()));
            let mut copy = record.clone();
            copy.generation = None;
            target.save(&copy, &archive)?;
            copied += 1;
        }
        // Verified from the target's side: every push there, every archive hashing to its record.
        let landed = target.history(&id)?;
        for g in &history {
            let got = landed.iter().find(|t| t.push == g.push).ok_or_else(|| {
                Error::failed(
                    format!("push {} did not land in {}", g.push, target.describe()),
                    "run it again",
                )
            })?;
            let record = target.full(got)?;
            target.archive(&record)?;
        }
        Ok(StoreMigrateReport {
            ok: true,
            from: self.store.describe(),
            to: target.describe(),
            pushes: history.len(),
            copied,
        })
    }
}
