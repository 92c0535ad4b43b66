//! Status and check: how drizzle/ and src/schema.ts compare with the last successful push.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Engine;
use crate::drizzle::{Drift, database};
use crate::error::Result;
use crate::manifest::Violation;
use crate::project::Project;

/// The state of a project, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectState {
    Clean,
    Violated,
    NoBaseline,
    Busy,
    /// The config cannot be evaluated and no layout was recorded: nothing can be guarded (`reason` says why).
    Unresolved,
}

/// The push the checkout stands on (its last successful push), briefly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPush {
    pub id: String,
    pub at: String,
    pub files: usize,
    /// Where it was found: `checkout` (this checkout's own), `pending` (its backup waits for the store), `earlier`
    /// (stored from this folder by an earlier release), `committed` (the committed sum's, in a fresh clone), `newest`
    /// (the newest push in the store, for a checkout with neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<super::Source>,
    /// How the checkout came to stand on it: `push`, `restore` or `arrived` (the folder arrived holding it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<super::Via>,
    /// For `arrived`: the push the checkout stood on before, and how the arrived one relates to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<super::Relation>,
}

impl LastPush {
    fn of(b: &super::Baseline) -> LastPush {
        LastPush {
            id: b.record.id.clone(),
            at: b.record.at.clone(),
            files: b.record.files.len(),
            source: Some(b.source),
            via: b.checkout.as_ref().map(|c| c.via),
            previous: b.checkout.as_ref().and_then(|c| c.previous.clone()),
            relation: b.checkout.as_ref().and_then(|c| c.relation),
        }
    }
}

/// An open custom migration, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomShown {
    /// Its journal tag.
    pub migration: String,
    /// Its `.sql`, relative to the migration folder: write the migration there, then `dreamer push`.
    pub file: String,
}

/// The known push nearest to a folder that matches none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closest {
    pub push: String,
    /// How many violations the folder would show against it.
    pub differences: usize,
}

/// One project's status, in the contract's JSON shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectStatus {
    pub root: PathBuf,
    pub state: ProjectState,
    pub violations: Vec<Violation>,
    pub schema_pending: bool,
    pub last_push: Option<LastPush>,
    /// Journal faults and disagreements between the database and drizzle/.
    pub drift: Vec<Drift>,
    /// An operation a crash interrupted, not finished yet (an addition to the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interrupted>,
    /// The drizzle config in use, relative to the root (absent for a project without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The migration folder, relative to the root.
    #[serde(default)]
    pub out: String,
    /// The schema as the config names it.
    #[serde(default)]
    pub schema: Vec<String>,
    #[serde(default)]
    pub dialect: String,
    /// How the layout was found: `evaluated`, `static` (a JSON config) or `recorded` (the config could not be
    /// evaluated here; the layout of the last push is used, and `reason` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<crate::project::Source>,
    /// Why the project is `unresolved`, or why its recorded layout is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the database was compared with the migration folder, and why not.
    #[serde(default = "unchecked")]
    pub database: crate::drizzle::database::Checked,
    /// The push the folder holds when it is not the checkout's last push (pulled, copied): legitimate, clean; it
    /// becomes the checkout's last push (`last_push.via = "arrived"`) as soon as no operation runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// How `matches` relates to the checkout's last push: `same`, `older`, `newer` or `other` (another line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<super::Relation>,
    /// When violated: the push a plain `dreamer database restore` brings back (always the checkout's last push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_target: Option<String>,
    /// When violated: the known push with the fewest differences from the folder, when it is not the restore
    /// target (`dreamerd restore --push ID` brings it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest: Option<Closest>,
    /// A successful push whose backup the store refused, waiting locally: the daemon stores it as soon as the store
    /// answers (or the next push does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_waiting: Option<super::BackupWaiting>,
    /// A custom migration `dreamerd push --custom` opened, waiting for the next push to apply it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomShown>,
    /// The version of the drizzle-kit installed for the project (absent when none is found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drizzle_kit: Option<String>,
    /// How the migration folder is laid out: `journal` (drizzle-kit 0.x) or `folders` (1.0); absent when it holds no
    /// migration. A layout the installed drizzle-kit does not use is the drift `layout-kit-mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_layout: Option<crate::drizzle::journal::Layout>,
    /// The push the database is at (it applied exactly that push's migrations), when the folder is another known
    /// push: a switch of branches with one development database (with the drift `database-other-push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_push: Option<String>,
    /// How many faults of the folder's history were left out of `drift` because the project file records them as
    /// known (accepted by the first push).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub known_faults: usize,
    /// The configuration files the settings came from (the user's, the project file, an explicit `--config`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<PathBuf>,
    /// How the migration folder was found as it is: `scan` (every file's metadata read, hashed where it changed) or
    /// `watch` (the daemon, which watches it, vouched that nothing in it changed since its last scan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// The folder as the scan of this status found it (the daemon keeps it to vouch for the folder later).
    #[serde(skip)]
    pub scanned: Option<Scanned>,
}

/// See [`ProjectStatus::verified`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verified {
    Scan,
    Watch,
}

/// A migration folder as one scan found it: where, which of its files were left out (not migrations), and the
/// digest of its whole tree ([`crate::manifest::Tree::digest`], in hex). The daemon answers `vouch` with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scanned {
    pub folder: PathBuf,
    pub excluded: Vec<String>,
    pub tree: String,
    /// False when the folder does not exist.
    pub exists: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn unchecked() -> crate::drizzle::database::Checked {
    crate::drizzle::database::Checked::no("unknown")
}

/// A push or restore that a crash interrupted: the next push or restore (or the daemon at its start) finishes it,
/// unless its journal cannot be read, which then blocks both until it is dealt with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupted {
    /// `push` or `restore`; absent when the journal cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// `generate`, `migrate`, `backup`, `swap` or `database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ProjectStatus {
    /// True when check should exit 0.
    pub fn is_clean(&self) -> bool {
        matches!(self.state, ProjectState::Clean | ProjectState::NoBaseline)
            && self.drift.is_empty()
            && self.interrupted.is_none()
    }
}

/// The memo kind of a folder judged clean against its checkout's last push.
const CLEAN: &str = "clean";

/// What status keeps of a folder it judged clean against the checkout's own last push: all a status of the very
/// same folder and checkout file needs, without reading the push's file list again.
#[derive(Debug, Serialize, Deserialize)]
struct Clean {
    last_push: LastPush,
    schema_blake3: Option<String>,
}

impl Engine {
    /// The key of the [`Clean`] memo of this thread's [`crate::facts::view`] of the folder: the folder's digest, the
    /// project id, and the identity of the checkout file, which must have settled (a rewrite within the same
    /// timestamp tick could otherwise keep it). `None`: nothing may be remembered now.
    fn clean_key(&self, project: &Project) -> Option<crate::facts::Digest> {
        let tree = crate::facts::view_tree()?;
        let id = self.project_id(project).ok()??;
        let checkout = self.checkout_path(project);
        let identity = crate::facts::identity(&checkout)?;
        if !identity.settled_at(crate::facts::now_ns()) {
            return None;
        }
        // Bump "clean N" whenever the folder's judgement changes.
        let checkout = checkout.as_os_str().as_encoded_bytes();
        Some(crate::facts::memo_key("clean 1", &[id.as_bytes(), checkout, &identity.to_bytes(), &tree]))
    }

    /// The view of the folder the daemon vouched for, when it was remembered clean as it is (its [`Clean`] memo), and
    /// whether it exists; `None`: it must be scanned.
    fn vouched_clean(&self, project: &Project) -> Option<(crate::facts::View, Clean, bool)> {
        let vouched = self.vouched.as_ref()?;
        if vouched.folder != project.drizzle() || vouched.excluded != project.not_migrations() {
            return None;
        }
        let tree = crate::facts::unhex(&vouched.tree)?;
        // The memos only: the table of the files' facts is read when something must be read after all.
        crate::facts::load_memos(&self.facts_path(project));
        let view = crate::facts::view_vouched(&self.facts_path(project), &vouched.folder, tree);
        let clean = crate::facts::memo::<Clean>(CLEAN, &self.clean_key(project)?)?;
        Some((view, clean, vouched.exists))
    }

    /// The operation a crash left unfinished on this project, as status shows it. Read-only.
    pub fn interrupted(&self, project: &Project) -> Option<Interrupted> {
        match self.read_journal(project) {
            Ok(None) => None,
            Ok(Some(j)) => {
                let (op, phase) = (j.op.as_str().to_string(), j.phase.as_str().to_string());
                Some(Interrupted {
                    message: format!("a {op} was interrupted during {phase} and is not finished yet"),
                    hint: Some(
                        "the next push or restore of this project (or the daemon when it starts) finishes it"
                            .into(),
                    ),
                    op: Some(op),
                    phase: Some(phase),
                })
            }
            Err(e) => Some(Interrupted { op: None, phase: None, message: e.to_string(), hint: e.hint() }),
        }
    }

    /// Compares drizzle/ and src/schema.ts with the last successful push. Read-only; needs no lock.
    pub fn status(&self, project: &Project) -> Result<ProjectStatus> {
        self.status_early(project, &mut |_| {})
    }

    /// [`Engine::status`], handing `early` the status as soon as the folder is judged (its violations final), before
    /// the database and the journal are read: the daemon warns of a hand edit without waiting for them.
    pub fn status_early(
        &self,
        project: &Project,
        early: &mut dyn FnMut(&ProjectStatus),
    ) -> Result<ProjectStatus> {
        self.state_format()?;
        // The checkout's facts are loaded by the scan, or only its memos when the daemon vouched for the folder.
        let schema = project.schema_hash()?;
        let mut status = ProjectStatus {
            root: project.root.clone(),
            state: ProjectState::NoBaseline,
            violations: Vec::new(),
            schema_pending: schema.is_some(),
            last_push: None,
            drift: Vec::new(),
            interrupted: None,
            config: project.config.clone(),
            out: project.layout.out.clone(),
            schema: project.layout.schema.clone(),
            dialect: project.layout.dialect.clone(),
            layout: project.source,
            reason: project.problem.clone(),
            database: database::Checked::no("not compared"),
            settings: self.sources.clone(),
            matches: None,
            relation: None,
            restore_target: None,
            closest: None,
            known_faults: 0,
            custom: None,
            backup_waiting: self.backup_waiting(project),
            drizzle_kit: crate::project::layout::drizzle_kit_version(&project.workdir()),
            migration_layout: super::migration_layout(project),
            database_push: None,
            verified: None,
            scanned: None,
        };
        let stopped = match () {
            _ if project.unresolved() => Some(ProjectState::Unresolved),
            _ if self.is_busy(project) => Some(ProjectState::Busy),
            _ => None,
        };
        if let Some(state) = stopped {
            (status.state, status.schema_pending) = (state, false);
            status.last_push = self.baseline_of(project)?.as_ref().map(LastPush::of);
            if state == ProjectState::Unresolved {
                status.database = database::Checked::no("the config could not be evaluated");
            }
            return Ok(status);
        }
        status.interrupted = self.interrupted(project);
        // The folder once: its scan is what the faults and the drift read (nothing is read twice). Not even that when
        // the daemon vouched for the folder and it was remembered clean as it is.
        let (tree, view, clean_key, remembered, exists) = match self.vouched_clean(project) {
            Some((view, clean, exists)) => {
                status.verified = Some(Verified::Watch);
                (None, view, None, Some(clean), exists)
            }
            None => {
                let (tree, view) = self.scan_seen(project)?;
                status.verified = Some(Verified::Scan);
                status.scanned = crate::facts::view_tree().map(|digest| Scanned {
                    folder: project.drizzle(),
                    excluded: project.not_migrations(),
                    tree: crate::facts::hex(&digest),
                    exists: tree.exists,
                });
                let clean_key = self.clean_key(project);
                let remembered = clean_key.as_ref().and_then(|key| crate::facts::memo::<Clean>(CLEAN, key));
                let exists = tree.exists;
                (Some(tree), view, clean_key, remembered, exists)
            }
        };
        let baseline = match remembered {
            Some(_) => None,
            None => self.baseline_of(project)?,
        };
        status.last_push = baseline.as_ref().map(LastPush::of);
        // The checkout file was read for the baseline when it is its own: not read again for the drift (a
        // remembered clean folder has a checkout without an open custom migration).
        let open = match (&remembered, &baseline) {
            (Some(_), _) => None,
            (None, Some(b)) if b.checkout.is_some() => b.open().cloned(),
            (None, _) => self.checkout(project).ok().flatten().and_then(|c| c.open),
        };
        if let Some(clean) = remembered {
            status.schema_pending = schema != clean.schema_blake3;
            status.last_push = Some(clean.last_push);
            status.state = ProjectState::Clean;
        } else if let (Some(found), Some(tree)) = (baseline, &tree) {
            status.violations = found.violations(tree);
            // Remembered for the next check of the very same folder and checkout file: the checkout's last push
            // itself (no open custom migration), and nothing to report.
            if let Some(key) = clean_key
                && status.violations.is_empty()
                && found.source == super::Source::Checkout
                && found.open().is_none()
            {
                let clean = Clean {
                    last_push: LastPush::of(&found),
                    schema_blake3: found.record.schema_blake3.clone(),
                };
                crate::facts::remember(CLEAN, key, &clean);
            }
            status.custom =
                found.open().map(|o| CustomShown { migration: o.migration.clone(), file: o.file.clone() });
            let base = found.record;
            status.schema_pending = schema != base.schema_blake3;
            if !status.violations.is_empty() {
                let arrived = self.matching_push(project, tree, Some(&base.id));
                // A push from before the drizzle-kit 1.0 upgrade that came back (git, a copy) is no longer a state
                // the project can be in: never clean.
                let arrived = match arrived {
                    Some((other, _)) if other.layout().is_some() && other.layout() != base.layout() => {
                        status.drift.push(layout_mismatch(project, &other, &base));
                        None
                    }
                    other => other,
                };
                if let Some((other, relation)) = arrived {
                    status.violations.clear();
                    status.schema_pending = schema != other.schema_blake3;
                    status.matches = Some(other.id.clone());
                    status.relation = Some(relation);
                    self.adopt_arrived(project, &other, Some((base.id.clone(), relation)));
                } else {
                    status.restore_target = Some(base.id.clone());
                    status.closest = self
                        .closest_push(project, tree)
                        .filter(|(push, _)| *push != base.id)
                        .map(|(push, differences)| Closest { push, differences });
                }
            }
            status.state =
                if status.violations.is_empty() { ProjectState::Clean } else { ProjectState::Violated };
        } else if let Some((other, _)) =
            tree.as_ref().and_then(|tree| self.matching_push(project, tree, None))
        {
            // No baseline here yet, but the folder is a known push (a clone whose store has it): taken as it is.
            status.schema_pending = schema != other.schema_blake3;
            status.matches = Some(other.id.clone());
            status.state = ProjectState::Clean;
            self.adopt_arrived(project, &other, None);
        }
        early(&status);
        let (drift, database, known_faults) = self.checked_drift_open(project, open.as_ref());
        drop(view);
        // The database's drift first, then what the folder's judgement added (a layout mismatch).
        let judged = std::mem::replace(&mut status.drift, drift);
        status.drift.extend(judged);
        (status.database, status.known_faults) = (database, known_faults);
        self.name_database_push(project, &mut status);
        // Loud, never guarding the wrong folder in silence: one the config moved since the last push, or one that is
        // gone while the database applied migrations.
        let out = project.out_shown();
        if let Some(before) = project.recorded_out()
            && before != project.layout.out
            && status.state != ProjectState::Clean
        {
            status.state = ProjectState::Unresolved;
            status.reason = Some(format!(
                "the config now puts the migrations in {out}, the last push had them in {before}/: move the folder \
                 there (or undo the config change), then `dreamer push` records the new place"
            ));
        } else if !exists && status.drift.iter().any(|d| d.code == "migration-missing") {
            status.state = ProjectState::Unresolved;
            status.reason = Some(format!(
                "{out} does not exist, but the database applied migrations: check the config's out, or bring the \
                 folder back with `dreamer database restore`"
            ));
        }
        Ok(status)
    }
}

/// The drift of a folder that holds a known push of another layout than the checkout's last push.
pub(crate) fn layout_mismatch(
    project: &Project,
    held: &crate::store::PushRecord,
    base: &crate::store::PushRecord,
) -> Drift {
    let shown = |l: Option<crate::drizzle::journal::Layout>| l.map(|l| l.described()).unwrap_or("no layout");
    Drift::new(
        "layout-mismatch",
        format!(
            "{} holds push {} ({}), but this checkout's last push {} is in {}: the folder went back across the \
             drizzle-kit 1.0 upgrade (a git checkout of an older commit?), and the database does not match it",
            project.out_shown(),
            held.id,
            shown(held.layout()),
            base.id,
            shown(base.layout())
        ),
        None,
    )
}

impl Engine {
    /// When the folder is a known push and the database applied what it lacks (after a switch of branches with one
    /// development database): the push the database is at, in `database_push`, and the drift
    /// `database-other-push` first, with the way back. Status calls it, and the daemon again each time it reads the
    /// database afresh.
    pub fn name_database_push(&self, project: &Project, status: &mut ProjectStatus) {
        status.database_push = None;
        status.drift.retain(|d| d.code != "database-other-push");
        if !status.violations.is_empty()
            || !status
                .drift
                .iter()
                .any(|d| matches!(d.code.as_str(), "migration-missing" | "migration-edited"))
        {
            return;
        }
        let Some(folder_push) =
            status.matches.clone().or_else(|| status.last_push.as_ref().map(|l| l.id.clone()))
        else {
            return;
        };
        let Some(rows) = self.database_rows(project) else { return };
        let Some(db_push) = self.database_push(project, &rows) else { return };
        if db_push == folder_push {
            return;
        }
        let way_back = match self.copy_for(project, &folder_push) {
            Some(_) => format!(
                "`dreamerd restore --push {folder_push} --with-database` puts the database back to push \
                 {folder_push}'s state from its copy (the database it replaces is kept in quarantine); or reset the \
                 development database and `dreamer push`"
            ),
            None => format!(
                "there is no database copy of push {folder_push}'s state: reset the development database and \
                 `dreamer push` (or check out the branch of push {db_push} again)"
            ),
        };
        status.drift.insert(
            0,
            Drift::new(
                "database-other-push",
                format!(
                    "{} is push {folder_push}, but the database is at push {db_push} (it applied exactly that push's \
                     migrations): one development database across branches. {way_back}",
                    project.out_shown()
                ),
                None,
            ),
        );
        status.database_push = Some(db_push);
    }
}
