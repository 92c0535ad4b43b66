//! Push: precheck, `drizzle-kit generate`, `drizzle-kit migrate`, backup. Any failure puts drizzle/ back exactly
//! as it was and keeps what the failed run wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::diagnosis::{self, Diagnosis};
use super::runner::{self, RunOutput};
use super::swap::{Journal, Op, Phase};
use super::{Engine, Sink, compact_timestamp, host_name, rfc3339, shown_paths};
use crate::archive::{self, Packed};
use crate::drizzle::journal::Layout;
use crate::drizzle::{Drift, database};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::manifest;
use crate::project::Project;
use crate::store::PushRecord;

/// Where a push stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Precheck,
    Generate,
    Migrate,
    /// After migrate: the database did not apply every migration of the folder (skipped or missing).
    Verify,
    Backup,
}

/// The outcome of a push, in the contract's JSON shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PushReport {
    Ok {
        ok: bool,
        push_id: String,
        files: usize,
        /// True when drizzle/ and the schema were already exactly the last push: no new backup was made.
        unchanged: bool,
        /// The configuration files the settings came from.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        settings: Vec<PathBuf>,
        /// Faults of the folder's history that this first push accepted and recorded as known in the project file
        /// (migrate tolerates them; checks leave them out from now on).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        known_faults: Vec<Drift>,
        /// Pushes of the project the store got from elsewhere since this checkout's last push (another machine,
        /// another worktree): both are kept, and the history says which came second.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        others: Vec<OtherPush>,
        /// Where the push's time went (an addition to the contract).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timings: Option<Timings>,
    },
    /// `push --custom NAME`: the new migration is open for the user to write.
    Opened {
        ok: bool,
        /// Its journal tag.
        custom: String,
        /// Its `.sql`, absolute.
        file: PathBuf,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        settings: Vec<PathBuf>,
    },
    Failed(PushFailure),
}

/// Where a successful push's time went, in milliseconds, measured inside the process that ran it (the command's
/// own start and its round trip to the daemon are not in `total_ms`). `dreamerd_ms` is dreamerd's own work around
/// drizzle-kit: prechecks, the tree kept to roll back to, the archive, the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub total_ms: f64,
    /// generate and migrate (and `up`), as processes.
    pub drizzle_kit_ms: f64,
    /// The copy of a SQLite database before migrate.
    pub database_copy_ms: f64,
    /// Saving the backup in the store (an upload, for S3).
    pub store_ms: f64,
    pub dreamerd_ms: f64,
}

impl Timings {
    fn add(slot: &std::sync::Mutex<Timings>, pick: impl FnOnce(&mut Timings) -> &mut f64, since: Instant) {
        *pick(&mut slot.lock().expect("timings")) += since.elapsed().as_secs_f64() * 1000.0;
    }
}

/// A push the store got from elsewhere since this checkout's last push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherPush {
    pub id: String,
    pub at: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Made on the same git branch as this push (or the branch of either is unknown): a real race, not two
    /// branches going their own ways.
    pub same_branch: bool,
}

/// A failed push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushFailure {
    pub ok: bool,
    pub stage: Stage,
    pub diagnosis: Diagnosis,
    /// True when drizzle/ is exactly as it was before the push.
    pub rolled_back: bool,
    /// Where what the failed run wrote (and its output) was kept.
    pub quarantine: Option<PathBuf>,
    /// The configuration files the settings came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<PathBuf>,
    /// A server database after a failed migrate: whether it changed, and how (`rolled_back` is about drizzle/ only;
    /// there is no undo on a server, and MySQL commits DDL as it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::drizzle::server::Change>,
}

impl PushReport {
    pub fn ok(&self) -> bool {
        matches!(self, PushReport::Ok { .. } | PushReport::Opened { .. })
    }
}

/// Set in the environment of the commands a push runs (to the project root): a `dreamer push` they start is
/// refused, since pushes do not nest.
pub const RUNNING_PUSH: &str = "DREAMERD_RUNNING_PUSH";

/// The room a push wants on the project's disk besides twice its tree: what one generate writes (a migration and a
/// snapshot of a large schema are a few hundred KiB at most).
const ROOM_FOR_GENERATE: u64 = 256 << 10;

/// The program of the default generate and migrate commands.
const DEFAULT_KIT: &str = "./node_modules/.bin/drizzle-kit";

/// The argv of a stage as it runs for `project`: a relative program (`./node_modules/.bin/drizzle-kit`) is found
/// the way npm finds it, up to a monorepo's root; drizzle-kit gets `--config` when it would not find the config by
/// itself (another name, or another folder than where it runs).
fn stage_argv(argv: &[String], project: &Project) -> Vec<String> {
    let workdir = project.workdir();
    let mut argv = argv.to_vec();
    // The default drizzle-kit of a project that uses bun (a bun.lock or bun.lockb above it) runs under bun, which
    // finds the project's own drizzle-kit as npm would.
    let uses_bun = workdir.ancestors().any(|d| d.join("bun.lock").is_file() || d.join("bun.lockb").is_file());
    if uses_bun && argv[0] == DEFAULT_KIT {
        argv.splice(0..1, ["bun".to_string(), "x".into(), "drizzle-kit".into()]);
    }
    let program = Path::new(&argv[0]);
    if program.is_relative()
        && argv[0].contains('/')
        && !workdir.join(program).exists()
        && let Some(found) = workdir.ancestors().skip(1).map(|d| d.join(program)).find(|p| p.exists())
    {
        argv[0] = found.to_string_lossy().into_owned();
    }
    let runs_kit = argv.iter().any(|a| Path::new(a).file_name().is_some_and(|n| n == "drizzle-kit"));
    if let Some(config) = &project.config
        && runs_kit
        && !argv.iter().any(|a| a == "--config" || a.starts_with("--config="))
    {
        let path = crate::project::layout::normalize(&project.root.join(config));
        let found_by_kit = path.parent() == Some(workdir.as_path())
            && crate::project::layout::FOUND_BY_DRIZZLE_KIT
                .iter()
                .find(|n| workdir.join(n).is_file())
                .is_some_and(|n| path.file_name().is_some_and(|f| f == *n));
        if !found_by_kit {
            argv.push(format!("--config={}", crate::project::layout::relative(&path, &workdir)));
        }
    }
    argv
}

/// What a push runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode<'a> {
    /// generate, migrate, verify, backup.
    Push,
    /// `push --custom NAME`: generate --custom only; the migration stays open.
    Custom(&'a str),
    /// `dreamerd up`: drizzle-kit up, then backup (and for the 1.0 conversion, a migrate that upgrades the
    /// migrations table, between copies of the database).
    Up,
}

/// What the user said for a push beyond the project: answers to drizzle-kit 1.0's questions, and for the 1.0
/// conversion, that a server database is backed up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushOptions {
    /// `--rename OLD=NEW`: NEW (`table`, or `table.column`, as in the schema) was renamed from OLD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<String>,
    /// `--create NAME`: NAME is new, not renamed from anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creates: Vec<String>,
    /// `up --backed-up`: the user has their own backup of the server database the conversion upgrades.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backed_up: bool,
}

impl PushOptions {
    fn answers(&self) -> bool {
        !(self.renames.is_empty() && self.creates.is_empty())
    }
}

/// What one drizzle-kit stage of a push works with.
struct StageRun<'a> {
    lock: &'a super::ProjectLock,
    journal: &'a mut Journal,
    logs: &'a mut Vec<(&'static str, RunOutput)>,
}

fn precheck_failure(code: &str, message: String, hint: &str) -> PushReport {
    PushReport::Failed(PushFailure {
        ok: false,
        stage: Stage::Precheck,
        diagnosis: Diagnosis::new(code, message, hint),
        rolled_back: true,
        quarantine: None,
        settings: Vec::new(),
        database: None,
    })
}

impl Engine {
    /// Runs a whole push on `project`.
    pub fn push(&self, project: &Project, sink: &dyn Sink) -> Result<PushReport> {
        self.push_with(project, Mode::Push, &PushOptions::default(), sink)
    }

    /// [`Engine::push`] with answers to drizzle-kit 1.0's questions (`--rename`, `--create`).
    pub fn push_answered(
        &self,
        project: &Project,
        options: &PushOptions,
        sink: &dyn Sink,
    ) -> Result<PushReport> {
        self.push_with(project, Mode::Push, options, sink)
    }

    /// `push --custom NAME`: runs generate with `--custom --name=NAME` only, and leaves the new, empty migration
    /// open for the user to write; the next push migrates it and records it.
    pub fn push_custom(&self, project: &Project, name: &str, sink: &dyn Sink) -> Result<PushReport> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::Usage(format!(
                "{name:?} is not a migration name: use letters, digits, '_' and '-' (at most 64)"
            )));
        }
        self.push_with(project, Mode::Custom(name), &PushOptions::default(), sink)
    }

    /// `dreamerd up`: runs drizzle-kit's `up` on a folder whose snapshots are of an outdated version, checks that
    /// nothing but snapshots changed (or rolls back), and records the result as a push. Nothing is migrated: the SQL
    /// does not change.
    /// For a project that installs drizzle-kit 1.0 and still has a 0.x journal, `up` is the conversion to 1.0's
    /// layout, guarded: the folder and the database are copied first (a server database needs `backed_up`, the
    /// user's own backup), every migration must keep its SQL, every row of the migrations table must match a
    /// converted migration, and then migrate upgrades the table; any failure puts both back.
    pub fn up(&self, project: &Project, options: &PushOptions, sink: &dyn Sink) -> Result<PushReport> {
        self.push_with(project, Mode::Up, options, sink)
    }

    fn push_with(
        &self,
        project: &Project,
        mode: Mode<'_>,
        options: &PushOptions,
        sink: &dyn Sink,
    ) -> Result<PushReport> {
        crate::drizzle::hints::check(&options.renames, &options.creates).map_err(Error::Usage)?;
        let never_pushed = self.baseline(project).ok().flatten().is_none();
        let started = Instant::now();
        *self.timings.lock().expect("timings") = Timings::default();
        let mut report = self.push_locked(project, mode, options, sink)?;
        if let PushReport::Ok { timings, .. } = &mut report {
            let mut t = *self.timings.lock().expect("timings");
            t.total_ms = started.elapsed().as_secs_f64() * 1000.0;
            t.dreamerd_ms = (t.total_ms - t.drizzle_kit_ms - t.database_copy_ms - t.store_ms).max(0.0);
            *timings = Some(t);
        }
        if let PushReport::Failed(f) = &mut report
            && never_pushed
        {
            f.diagnosis = diagnosis::for_first_push(f.diagnosis.clone());
        }
        match &mut report {
            PushReport::Ok { settings, .. } | PushReport::Opened { settings, .. } => {
                settings.clone_from(&self.sources)
            }
            PushReport::Failed(f) => {
                f.settings.clone_from(&self.sources);
                // Hints are written for the common layout; they name this project's folder and schema.
                f.diagnosis.hint = f
                    .diagnosis
                    .hint
                    .replace("drizzle/", &project.out_shown())
                    .replace("src/schema.ts", &project.schema_shown());
            }
        }
        Ok(report)
    }

    fn push_locked(
        &self,
        project: &Project,
        mode: Mode<'_>,
        options: &PushOptions,
        sink: &dyn Sink,
    ) -> Result<PushReport> {
        let custom = match mode {
            Mode::Custom(name) => Some(name),
            _ => None,
        };
        let _lock = match self.lock(project) {
            Ok(lock) => lock,
            Err(Error::Busy(message)) => {
                return Ok(precheck_failure(
                    "busy",
                    message,
                    "wait for the running push or restore to finish, then push again; nothing was changed",
                ));
            }
            Err(e) => return Err(e),
        };
        self.recover(project, sink)?;
        self.require_store(project)?;
        // Concurrent pushers rely on conditional writes: an endpoint that ignores them is never used.
        if self.store.is_remote() {
            self.store.check_conditional()?;
        }
        let drizzle = project.drizzle();
        if project.unresolved() {
            return Ok(precheck_failure(
                "unresolved",
                format!(
                    "{} cannot be evaluated, so dreamerd does not know where the migrations are: {}",
                    project.config.as_deref().unwrap_or("the drizzle config"),
                    project.problem.as_deref().unwrap_or("unknown reason")
                ),
                "install the project's node packages (`npm install`, or `bun install`) so the config can run, and fix \
                 what the message says; nothing was changed",
            ));
        }
        if let Err(e) = self.flush_pending(project, sink) {
            return Ok(PushReport::Failed(PushFailure {
                ok: false,
                stage: Stage::Backup,
                diagnosis: Diagnosis::new(
                    "backup-failed",
                    format!("the backup of the last push still cannot be stored: {e}"),
                    "free space or fix the store, then push again; nothing was changed",
                ),
                rolled_back: true,
                quarantine: None,
                settings: Vec::new(),
                database: None,
            }));
        }
        let found = self.baseline_of(project)?;
        let source = found.as_ref().map(|b| b.source);
        let tree = self.scan_out(project)?;
        // A folder that is exactly another push of the project (restored with --push, pulled, copied) is
        // legitimate, and the push builds on it.
        let mut arrived = None;
        let open = found.as_ref().and_then(|b| b.open().cloned());
        let violations = found.as_ref().map(|b| b.violations(&tree)).unwrap_or_default();
        let baseline = match found.map(|b| b.record) {
            Some(base) if !violations.is_empty() => {
                match self.matching_push(project, &tree, Some(&base.id)) {
                    Some((other, _)) if other.layout().is_some() && other.layout() != base.layout() => {
                        let drift = super::status::layout_mismatch(project, &other, &base);
                        return Ok(precheck_failure("layout-mismatch", drift.message.clone(), drift.hint()));
                    }
                    Some((other, relation)) => {
                        arrived = Some((base.id.clone(), relation));
                        Some(other)
                    }
                    None => Some(base),
                }
            }
            None => self.matching_push(project, &tree, None).map(|(other, _)| other),
            other => other,
        };

        if let Some(base) = &baseline {
            let violations = match (&open, &arrived) {
                (Some(_), None) => violations,
                _ => manifest::diff(&base.files, &tree),
            };
            if !violations.is_empty() {
                let paths: Vec<String> = violations.iter().map(|v| v.path.clone()).collect();
                return Ok(precheck_failure(
                    "drizzle-tampered",
                    format!(
                        "{} was changed by hand since push {}: {}",
                        project.out_shown(),
                        base.id,
                        shown_paths(&paths, 5)
                    ),
                    "generating on top of hand-edited files makes wrong migrations: run `dreamer database restore` \
                     first (it keeps your edits in quarantine), move any schema change into src/schema.ts, then \
                     `dreamer push` again",
                ));
            }
        }
        if let (Some(_), Some(already)) = (custom, &open) {
            return Ok(precheck_failure(
                "custom-open",
                format!("the custom migration {} is open already", already.migration),
                "write it and `dreamer push` (which applies it), or `dreamer database restore` to drop it; then open \
                 the next one",
            ));
        }
        // `up` is what repairs outdated snapshots.
        let drift: Vec<Drift> = self
            .drift(project)
            .into_iter()
            .filter(Drift::blocks_push)
            .filter(|d| {
                !(mode == Mode::Up && matches!(d.code.as_str(), "snapshot-outdated" | "layout-kit-mismatch"))
            })
            .collect();
        // `up` with drizzle-kit 1.0 installed and a 0.x journal here: the conversion.
        let kit_version = crate::project::layout::drizzle_kit_version(&project.workdir());
        let kit_layout = kit_version.as_deref().and_then(Layout::of_kit);
        let converting = mode == Mode::Up
            && kit_layout == Some(Layout::Folders)
            && super::migration_layout(project) == Some(Layout::Journal);
        if options.answers() && mode == Mode::Push && kit_layout != Some(Layout::Folders) {
            return Ok(precheck_failure(
                "answers-unsupported",
                format!(
                    "--rename and --create answer drizzle-kit 1.0's questions, but this project \
                     installs drizzle-kit {}, which asks them only on a terminal",
                    kit_version.as_deref().unwrap_or("?")
                ),
                "with drizzle-kit 0.x, rename in two pushes: first add the new column or table (and copy the data \
                 in a custom migration), then drop the old one; or upgrade to drizzle-kit 1.0 with `dreamerd up`; \
                 nothing was changed",
            ));
        }
        // The first push of a project with a history accepts the faults migrate tolerates (recorded as known once
        // it succeeded); what would make the next migrate fail or skip is refused with a way out that needs no
        // earlier push.
        let mut adopted = Vec::new();
        let drift = if baseline.is_none() {
            let entries = crate::drizzle::journal::read(&drizzle).ok().flatten().unwrap_or_default();
            let latest = entries.last().map(|e| e.tag.clone());
            let last_snapshot = crate::drizzle::journal::last_snapshot(&drizzle);
            let (ok, refused): (Vec<Drift>, Vec<Drift>) =
                drift.into_iter().partition(|d| d.adoptable(latest.as_deref(), last_snapshot.as_deref()));
            if let Some(first) = refused.first() {
                let all: Vec<String> =
                    refused.iter().map(|d| format!("[{}] {}", d.code, d.message)).collect();
                return Ok(precheck_failure(
                    &first.code,
                    format!(
                        "this first push cannot take drizzle/ as it is: {}{}",
                        all.join("; "),
                        if ok.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " ({} other fault(s) of its history would be accepted as known)",
                                ok.len()
                            )
                        }
                    ),
                    first.first_push_hint(),
                ));
            }
            adopted = ok;
            Vec::new()
        } else {
            drift
        };
        if let Some(first) = drift.first() {
            let all: Vec<String> = drift.iter().map(|d| format!("[{}] {}", d.code, d.message)).collect();
            return Ok(precheck_failure(
                &first.code,
                format!("drizzle/ and the database disagree: {}", all.join("; ")),
                first.hint(),
            ));
        }
        // A server database is not copied: the conversion rewrites its migrations table, so it wants the user's own
        // backup first.
        let uncopied = match self.database_to_check(project) {
            Ok(database::Database::File(_)) => None,
            Ok(database::Database::Server(server)) => {
                Some(format!("dreamerd does not copy server databases ({})", server.address))
            }
            Err(why) => Some(format!("dreamerd cannot tell which database the project migrates ({why})")),
        };
        if converting
            && !options.backed_up
            && let Some(why) = uncopied
        {
            return Ok(precheck_failure(
                "backup-first",
                format!(
                    "converting {} to drizzle-kit 1.0's layout upgrades the database's migrations table \
                     (drizzle-kit 1.0's first migrate adds and fills `name` and `applied_at`), and {why}",
                    project.out_shown()
                ),
                "take your own backup of the database first (pg_dump, mysqldump, or your host's snapshot), then run \
                 `dreamerd up --backed-up`; nothing was changed",
            ));
        }
        // Room for what generate writes, and for putting the tree back (a rollback stages the whole tree from
        // before): without it, a push that fails could not roll back until space is freed.
        let tree_bytes: u64 = tree.files().iter().map(|f| f.size).sum();
        let needed = tree_bytes * 2 + ROOM_FOR_GENERATE;
        if let Some(free) = fsutil::available(&project.root)
            && free < needed
        {
            return Ok(precheck_failure(
                "disk-full",
                format!(
                    "the disk holding {} has {} KiB free, and a push needs {} KiB there (what generate writes, and room \
                     to put the folder back if it fails)",
                    project.root.display(),
                    free / 1024,
                    needed.div_ceil(1024)
                ),
                "free space on that disk, then push again; nothing was changed",
            ));
        }
        // The database before anything runs: a copy to put back if the push damages it.
        let copying = Instant::now();
        let copied = if mode == Mode::Push || converting {
            Some(self.copy_database(project, baseline.as_ref().map(|b| b.id.as_str()), sink)?)
        } else {
            None
        };
        Timings::add(&self.timings, |t| &mut t.database_copy_ms, copying);
        let copy = if let Some(copied) = copied {
            match copied {
                Ok(super::dbcopy::Copied::Yes(c)) => Some(c),
                Ok(super::dbcopy::Copied::No(why))
                    if converting && !options.backed_up && self.has_database(project) =>
                {
                    return Ok(precheck_failure(
                        "backup-first",
                        format!(
                            "the conversion to drizzle-kit 1.0's layout upgrades the database's migrations table, \
                             and dreamerd cannot copy the database first: {why}"
                        ),
                        "turn database.copy on (or free space for the copy), or take your own copy of the database \
                         and run `dreamerd up --backed-up`; nothing was changed",
                    ));
                }
                Ok(super::dbcopy::Copied::No(why)) => {
                    tracing::debug!(project = %project.root.display(), "no database copy: {why}");
                    None
                }
                Err(diag) => {
                    return Ok(precheck_failure(&diag.code, diag.message, &diag.hint));
                }
            }
        } else {
            None
        };
        // The tree from before, to roll back to: when it is exactly the last push, that push's archive (already
        // made, verified by its blake3) rather than a second compression of the same files.
        let at_hand = baseline
            .as_ref()
            .filter(|b| !b.archive_blake3.is_empty() && b.files == tree.files())
            .and_then(|b| Some((b, self.store.archive_at_hand(b)?)));
        let packed = match at_hand {
            Some((b, bytes)) => {
                Ok(Packed { bytes, files: b.files.clone(), blake3: b.archive_blake3.clone() })
            }
            None => archive::pack(&drizzle, &tree),
        };
        let before = match packed {
            Ok(p) => p,
            Err(e) => {
                return Ok(precheck_failure(
                    "drizzle-tampered",
                    e.to_string(),
                    &e.hint().unwrap_or_else(|| "fix drizzle/, then push again".into()),
                ));
            }
        };
        let project_id = self.ensure_project_id(project)?;

        // The tree from before is on disk before drizzle-kit runs, so even a crash can roll it back.
        let mut journal = Journal {
            before: Some(before.files.clone()),
            before_existed: tree.exists,
            ..Journal::new(Op::Push, Phase::Generate, &project.root)
        };
        let snapshot = self.snapshot_path(project);
        fsutil::create_private_dir(snapshot.parent().expect("has a parent")).ctx("create", &snapshot)?;
        fsutil::atomic_write(&snapshot, &before.bytes).ctx("write", &snapshot)?;
        self.write_journal(project, &journal)?;
        crate::fault::point("push:generate");

        let secs = self.config.push.timeout_secs;
        let mut logs: Vec<(&str, RunOutput)> = Vec::new();
        let mut stage = StageRun { lock: &_lock, journal: &mut journal, logs: &mut logs };
        let entries_before = crate::drizzle::journal::read(&drizzle).ok().flatten().unwrap_or_default();
        let base_schema = baseline.as_ref().map(|b| b.schema_blake3.clone());
        let mut generate = self.config.push.generate.clone();
        if let Some(name) = custom {
            // At the end, so that `npm run db:generate --` style commands pass them on.
            generate.extend(["--custom".to_string(), format!("--name={name}")]);
        }
        if mode == Mode::Up {
            let upgraded = self.run_stage("up", &self.config.push.up, project, sink, &mut stage, |out| {
                diagnosis::judge_up(out, secs).or_else(|| {
                    if converting {
                        self.judge_converted(project, &before.files, &entries_before)
                    } else {
                        self.judge_upgraded(project, &before.files)
                    }
                })
            })?;
            if let Some(diag) = upgraded {
                return self.fail(project, Stage::Generate, diag, &mut journal, &logs);
            }
            if converting && let Some(warning) = order_changed(&project.drizzle(), &entries_before) {
                sink.progress(&warning);
                tracing::warn!(project = %project.root.display(), "{warning}");
            }
            if self.scan_out(project)?.files() == before.files {
                self.clear_journal(project)?;
                sink.progress("every snapshot is of the current version already: nothing to upgrade");
                return Ok(PushReport::Ok {
                    ok: true,
                    push_id: baseline.as_ref().map(|b| b.id.clone()).unwrap_or_default(),
                    files: before.files.len(),
                    unchanged: true,
                    settings: Vec::new(),
                    known_faults: Vec::new(),
                    others: Vec::new(),
                    timings: None,
                });
            }
        }
        let mut nothing_to_migrate = false;
        let judge_generate = |out: &RunOutput| {
            let verdict =
                diagnosis::judge_generate(out, secs).or_else(|| self.judge_written(project)).or_else(|| {
                    if custom.is_some() {
                        self.judge_custom(project, &entries_before).err()
                    } else {
                        self.judge_generated(project, &before.files, base_schema.clone(), out)
                    }
                });
            (verdict, diagnosis::said_nothing_to_migrate(out))
        };
        let generated = if mode == Mode::Up {
            None
        } else {
            let mut verdict = self.run_stage("generate", &generate, project, sink, &mut stage, |out| {
                let (verdict, nothing) = judge_generate(out);
                nothing_to_migrate = nothing;
                verdict
            })?;
            // drizzle-kit 1.0 stopped for questions (it wrote nothing): answer them from --rename and --create.
            if verdict.as_ref().is_some_and(|d| d.code == "ambiguous-change") && options.answers() {
                let said = stage.logs.last().map(|(_, out)| out.combined()).unwrap_or_default();
                let questions = crate::drizzle::hints::questions(&said);
                match crate::drizzle::hints::answer(&questions, &options.renames, &options.creates) {
                    Ok(answers) if !questions.is_empty() => {
                        let file = self.hints_file(project, &answers)?;
                        let mut argv = generate.clone();
                        argv.push(format!("--hints-file={}", file.display()));
                        let shown: Vec<String> = questions.iter().map(|q| q.shown()).collect();
                        sink.progress(&format!(
                            "answering drizzle-kit's questions about {}",
                            shown.join(", ")
                        ));
                        verdict = self.run_stage("generate", &argv, project, sink, &mut stage, |out| {
                            let (verdict, nothing) = judge_generate(out);
                            nothing_to_migrate = nothing;
                            verdict
                        })?;
                        let _ = fs::remove_file(&file);
                    }
                    Err(open) => verdict = Some(diagnosis::unanswered(&open, true)),
                    Ok(_) => {}
                }
            }
            verdict
        };
        if let Some(diag) = generated {
            return self.fail(project, Stage::Generate, diag, &mut journal, &logs);
        }
        if custom.is_some() {
            let opened = self.judge_custom(project, &entries_before).ok();
            let tree = self.scan_out(project)?;
            let Some(entry) = opened else {
                return self.fail(
                    project,
                    Stage::Generate,
                    Diagnosis::new("unknown", "the custom migration vanished", "push --custom again"),
                    &mut journal,
                    &logs,
                );
            };
            let file = entry.file.clone();
            let open = super::checkout::OpenCustom {
                migration: entry.tag.clone(),
                file: file.clone(),
                files: tree.files(),
                since: rfc3339(SystemTime::now()),
            };
            if let Some(base) = &baseline {
                self.set_open(project, base, open)?;
            }
            self.clear_journal(project)?;
            sink.progress(&format!(
                "opened the custom migration {}: write it, then `dreamer push` applies and records it",
                entry.tag
            ));
            return Ok(PushReport::Opened {
                ok: true,
                custom: entry.tag,
                file: drizzle.join(file),
                settings: Vec::new(),
            });
        }

        // Rows a migrate on a server deleted (no undo there): the push is recorded, then reported as failed.
        let mut server_rows_lost: Option<Diagnosis> = None;
        if mode != Mode::Up || converting {
            journal.phase = Phase::Migrate;
            journal.child = None;
            self.write_journal(project, &journal)?;
            crate::fault::point("push:migrate");
            let mut stage = StageRun { lock: &_lock, journal: &mut journal, logs: &mut logs };
            // A server database as it was before migrate (no undo there): what a failed migrate left, and the rows
            // guard's counts.
            let server = match self.database_to_check(project) {
                Ok(database::Database::Server(server)) => Some(server),
                _ => None,
            };
            let before = server.as_ref().map(|s| ServerBefore::read(s, &project.drizzle()));
            let migrated =
                self.run_stage("migrate", &self.config.push.migrate, project, sink, &mut stage, |out| {
                    diagnosis::judge_migrate(out, secs)
                        .map(|generic| self.explain_migrate(project, generic, before.as_ref()))
                })?;
            let db = copy.as_ref().map(|c| (c, false));
            if let Some(diag) = migrated {
                let change = match (&server, &before) {
                    (Some(server), Some(before)) => before.change(server),
                    _ => None,
                };
                let mut report = self.fail_with(project, Stage::Migrate, diag, &mut journal, &logs, db)?;
                if let PushReport::Failed(failure) = &mut report {
                    failure.database = change.map(|mut change| {
                        // What the database and the folder (rolled back) disagree on now.
                        if let Some(server) = &server {
                            change.drift = database::check(
                                &project.drizzle(),
                                Ok(database::Database::Server(server.clone())),
                            )
                            .0;
                        }
                        change
                    });
                }
                return Ok(report);
            }
            // migrate says success even when it skipped a migration: the database must have applied every one.
            if let Some(diag) = self
                .verify_applied(project)
                .or_else(|| if converting { self.verify_converted(project) } else { None })
            {
                return self.fail_with(project, Stage::Verify, diag, &mut journal, &logs, db);
            }
            // ...and it must have kept its rows. On a server there is no undo: the push is recorded (drizzle/ keeps
            // the migration the server applied) and then reported as failed.
            if let (Some(server), Some(before)) = (&server, &before) {
                match &before.rows {
                    Some(Ok(rows)) => {
                        let custom = open.as_ref().map(|o| o.migration.as_str());
                        server_rows_lost = guard_server_rows(server, rows, &before.pending, custom, sink);
                    }
                    Some(Err(why)) => {
                        sink.progress(&format!("the rows guard does not judge this push: {why}"))
                    }
                    None => {}
                }
            }
            if let Some(c) = &copy {
                let new_sql = self.newly_applied(project, c);
                let custom = open.as_ref().map(|o| o.migration.as_str());
                if let Some(diag) = self.guard_rows(project, c, &new_sql, custom, sink) {
                    return self.fail_with(
                        project,
                        Stage::Verify,
                        diag,
                        &mut journal,
                        &logs,
                        Some((c, true)),
                    );
                }
            }
        }

        crate::fault::point("push:migrated");
        journal.phase = Phase::Backup;
        journal.child = None;
        self.write_journal(project, &journal)?;
        crate::fault::point("push:backup");
        if !adopted.is_empty() {
            let listed: Vec<String> = adopted.iter().map(|d| format!("[{}] {}", d.code, d.message)).collect();
            sink.progress(&format!(
                "accepted {} fault(s) of the existing history as known (migrate tolerates them; checks report only \
                 new ones from now on): {}",
                adopted.len(),
                listed.join("; ")
            ));
            if let Err(e) = project.record_known_faults(&adopted) {
                sink.progress(&format!("cannot record the known faults in the project file: {e}"));
            }
        }
        let (record, archive) =
            match self.new_record(project, &project_id, baseline.as_ref(), nothing_to_migrate)? {
                Err(unchanged) => {
                    self.clear_journal(project)?;
                    if let Err(e) = project.record_layout() {
                        sink.progress(&format!("cannot record the layout in the project file: {e}"));
                    }
                    if let Some(base) = &baseline {
                        // A schema edit that changes no SQL: the same push, and the schema it saw is now this one.
                        let schema = project.schema_hash()?;
                        let mut base = base.clone();
                        let edited = base.schema_blake3 != schema;
                        base.schema_blake3 = schema;
                        let base = &base;
                        if edited && arrived.is_none() && source == Some(super::Source::Checkout) {
                            let via = self.checkout(project)?.map(|c| c.via).unwrap_or(super::Via::Push);
                            self.set_last_push(project, base, via, None)?;
                        }
                        // The folder is that push: the checkout stands on it from now on.
                        if arrived.is_some() || source != Some(super::Source::Checkout) {
                            let via = match source {
                                Some(super::Source::Pending | super::Source::Earlier)
                                    if arrived.is_none() =>
                                {
                                    super::Via::Push
                                }
                                _ => super::Via::Arrived,
                            };
                            self.set_last_push(project, base, via, arrived.clone())?;
                        }
                        self.record_sum(project, base, sink);
                    }
                    return Ok(unchanged);
                }
                Ok(r) => r,
            };
        let mut record = record;
        if self.store.is_remote() {
            sink.progress(&format!(
                "uploading the backup of push {} ({} KiB) to {}",
                record.id,
                archive.len().div_ceil(1024),
                self.store.describe()
            ));
        }
        let storing = Instant::now();
        let saved = self.store.save(&record, &archive);
        Timings::add(&self.timings, |t| &mut t.store_ms, storing);
        crate::fault::point("push:stored");
        let mut others = Vec::new();
        if let Ok(n) = &saved {
            record.generation = Some(*n);
            others =
                self.pushes_between(&project_id, baseline.as_ref().and_then(|b| b.generation), *n, &record);
            for o in &others {
                sink.progress(&format!(
                    "{}: push {} from {}{} was stored since this checkout's last push; both are kept{}",
                    if o.same_branch { "warning" } else { "note" },
                    o.id,
                    o.host,
                    o.branch.as_ref().map(|b| format!(" on branch {b}")).unwrap_or_default(),
                    if o.same_branch {
                        " (a race on one branch: pull its changes, then push again if yours build on them)"
                    } else {
                        " (another branch: expected; the merge will need a push)"
                    }
                ));
            }
        }
        let Err(e) = saved else {
            self.clear_journal(project)?;
            self.set_last_push(project, &record, super::Via::Push, None)?;
            self.record_sum(project, &record, sink);
            if let Err(e) = project.record_layout() {
                sink.progress(&format!("cannot record the layout in the project file: {e}"));
            }
            if let Some(mut diagnosis) = server_rows_lost {
                diagnosis.message +=
                    &format!(" The push was recorded as {}: drizzle/ keeps the migration.", record.id);
                return Ok(PushReport::Failed(PushFailure {
                    ok: false,
                    stage: Stage::Verify,
                    diagnosis,
                    rolled_back: false,
                    quarantine: None,
                    settings: Vec::new(),
                    database: None,
                }));
            }
            return Ok(PushReport::Ok {
                ok: true,
                push_id: record.id,
                files: record.files.len(),
                unchanged: false,
                settings: Vec::new(),
                known_faults: adopted,
                others,
                timings: None,
            });
        };
        // The database now holds the new migrations, so drizzle/ keeps them: no rollback. The backup waits in
        // the state directory, counts as the last push, and goes to the store at the next push. The crash journal
        // (and the tree from before the push it protects) goes only once the backup is safe somewhere.
        let kept = self.save_pending(project, &record, &archive);
        self.note_pending_reason(project, &e.to_string());
        let quarantine = self.new_quarantine(project, "failed-backup")?;
        write_logs(&quarantine, &logs);
        let _ =
            self.keep_tree(project, &before.bytes, &before.files, &quarantine.join("drizzle-before-push"));
        if kept.is_ok() {
            self.clear_journal(project)?;
            self.set_last_push(project, &record, super::Via::Push, None)?;
            self.record_sum(project, &record, sink);
        }
        let message = match kept {
            Ok(()) => format!(
                "the migration was applied, but the store refused its backup ({e}); the backup of push {} is \
                 kept locally until the store takes it",
                record.id
            ),
            Err(local) => format!(
                "the migration was applied, but the store refused its backup ({e}) and it could not be kept \
                 locally either ({local})"
            ),
        };
        Ok(PushReport::Failed(PushFailure {
            ok: false,
            stage: Stage::Backup,
            diagnosis: Diagnosis::new(
                "backup-failed",
                message,
                "drizzle/ keeps the new migrations (the database has them); free space or fix the store, then run \
                 `dreamer push` again: it stores the waiting backup first",
            ),
            rolled_back: false,
            quarantine: Some(quarantine),
            settings: Vec::new(),
            database: None,
        }))
    }

    /// Records the push a crash interrupted after its migrate succeeded: drizzle/ as it is becomes the last push
    /// (kept locally if the store refuses it).
    pub(crate) fn complete_interrupted_push(&self, project: &Project, sink: &dyn Sink) -> Result<()> {
        let project_id = self.ensure_project_id(project)?;
        let baseline = self.baseline(project)?;
        if let Ok((mut record, archive)) = self.new_record(project, &project_id, baseline.as_ref(), false)? {
            match self.store.save(&record, &archive) {
                Ok(n) => record.generation = Some(n),
                Err(e) => {
                    sink.progress(&format!(
                        "the store refused the backup ({e}); it is kept locally until the next push"
                    ));
                    self.save_pending(project, &record, &archive)?;
                    self.note_pending_reason(project, &e.to_string());
                }
            }
            self.set_last_push(project, &record, super::Via::Push, None)?;
            self.record_sum(project, &record, sink);
            sink.progress(&format!("recorded push {}", record.id));
        }
        Ok(())
    }

    /// Writes the committed sum of the folder for `record`; a failure is said, and the push stays done.
    pub(crate) fn record_sum(&self, project: &Project, record: &PushRecord, sink: &dyn Sink) {
        if let Err(e) = super::Sum::write(project, record) {
            sink.progress(&format!("cannot write the sum of the migration folder: {e}"));
        }
    }

    /// Runs one drizzle-kit stage and judges it; its output is kept in `logs` for the quarantine folder. The child
    /// holds the project's lock and its process group is written in the journal, so that a drizzle-kit outliving
    /// this process is found and stopped before anything is decided about the project.
    fn run_stage(
        &self,
        name: &'static str,
        argv: &[String],
        project: &Project,
        sink: &dyn Sink,
        stage: &mut StageRun<'_>,
        judge: impl FnOnce(&RunOutput) -> Option<Diagnosis>,
    ) -> Result<Option<Diagnosis>> {
        let argv = stage_argv(argv, project);
        sink.progress(&format!("running {}", argv.join(" ")));
        let timeout = Duration::from_secs(self.config.push.timeout_secs);
        // The asking command's environment (never this process's), marked so that a nested push is refused.
        let mut env = project.env.clone().unwrap_or_else(|| std::env::vars().collect());
        env.insert(RUNNING_PUSH.into(), project.root.to_string_lossy().into_owned());
        let mut recorded = Ok(());
        let on_spawn = |pid: u32| {
            stage.journal.child = Some(pid as i32);
            recorded = self.write_journal(project, stage.journal);
        };
        let started = Instant::now();
        let ran = runner::run_with(
            &argv,
            &project.workdir(),
            timeout,
            sink,
            Some(stage.lock.fd()),
            Some(&env),
            on_spawn,
        );
        Timings::add(&self.timings, |t| &mut t.drizzle_kit_ms, started);
        recorded?;
        Ok(match ran {
            Err(e) => Some(diagnosis::spawn_failed(name, &e)),
            Ok(out) => {
                let verdict = judge(&out);
                stage.logs.push((name, out));
                verdict
            }
        })
    }

    /// After generate: what it wrote must be a coherent drizzle/ (it exits 0 on errors, so check by content).
    fn judge_written(&self, project: &Project) -> Option<Diagnosis> {
        let drizzle = project.drizzle();
        // The view stays open while the journal is judged: its files are read (and parsed) only where they changed.
        let (tree, _view) = match self.scan_seen(project) {
            Ok(t) => t,
            Err(e) => {
                return Some(Diagnosis::new("unknown", format!("cannot read drizzle/: {e}"), "try again"));
            }
        };
        if let Some((path, kind)) = tree.specials().next() {
            return Some(Diagnosis::new(
                "unknown",
                format!("after generate, drizzle/{path} is a {kind:?}, not a regular file").to_lowercase(),
                "remove it, then push again",
            ));
        }
        // A journal it cannot read, or one naming a .sql that is not there, or a journal beside migration folders,
        // means generate did not finish (or is not the drizzle-kit the folder is laid out for).
        crate::drizzle::journal::faults(&drizzle)
            .into_iter()
            .find(|f| {
                matches!(
                    f.code.as_str(),
                    "journal-unreadable" | "journal-missing-sql" | "layout-mixed" | "folder-missing-sql"
                )
            })
            .map(|f| {
                Diagnosis::new(
                    "unknown",
                    format!("drizzle-kit generate left drizzle/ incoherent: {}", f.message),
                    "push again; if it repeats, run `dreamer database restore` first",
                )
            })
    }

    /// The pushes stored after generation `after` and before `until` (other than `mine`).
    fn pushes_between(
        &self,
        project_id: &str,
        after: Option<u64>,
        until: u64,
        mine: &PushRecord,
    ) -> Vec<OtherPush> {
        let Some(after) = after else { return Vec::new() };
        let Ok(history) = self.store.history(project_id) else { return Vec::new() };
        let mut out: Vec<OtherPush> = history
            .into_iter()
            .filter(|g| g.generation > after && g.generation < until && g.push != mine.id)
            .map(|g| OtherPush {
                same_branch: g.branch.is_none() || mine.branch.is_none() || g.branch == mine.branch,
                id: g.push,
                at: g.at,
                host: g.host,
                branch: g.branch,
            })
            .collect();
        out.reverse();
        out
    }

    /// The migrations the database applied since `copy` was taken, with their SQL.
    fn newly_applied(&self, project: &Project, copy: &super::dbcopy::DbCopy) -> Vec<(String, String)> {
        let table = project.layout.table.clone();
        let before = database::applied(&database::Target { path: copy.path.clone(), table })
            .ok()
            .flatten()
            .unwrap_or_default();
        let drizzle = project.drizzle();
        let Ok(Some(folder)) = crate::safefs::Folder::open(&drizzle) else { return Vec::new() };
        database::to_run(&folder, &before)
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let sql = crate::drizzle::journal::sql(&folder, &e).ok().flatten().unwrap_or_default();
                (e.tag, String::from_utf8_lossy(&sql).into_owned())
            })
            .collect()
    }

    /// After `up`: only snapshots in meta/ may have changed (0.31 rewrites them in place; the SQL and the journal
    /// stay as they are).
    fn judge_upgraded(&self, project: &Project, before: &[manifest::FileEntry]) -> Option<Diagnosis> {
        let tree = self.scan_out(project).ok()?;
        let other: Vec<String> = manifest::diff(before, &tree)
            .into_iter()
            .filter(|v| {
                // 0.x snapshots in meta/, or 1.0's in their migration folders.
                let snapshot = (v.path.starts_with("meta/") && v.path.ends_with("_snapshot.json"))
                    || (v.path.ends_with("/snapshot.json") && v.path.matches('/').count() == 1);
                !(v.kind == manifest::ViolationKind::Modified && snapshot)
            })
            .map(|v| format!("{} {}", v.kind, v.path))
            .collect();
        if other.is_empty() {
            return None;
        }
        Some(Diagnosis::new(
            "up-changed-more",
            format!("drizzle-kit up changed more than the snapshots: {}", shown_paths(&other, 5)),
            "drizzle/ was put back as it was; the installed drizzle-kit's `up` does more than upgrade snapshots (a \
             1.0 conversion?): see up.log in the quarantine folder",
        ))
    }

    /// After a converting `up`: the folder is in 1.0's layout, every migration of the journal is one migration
    /// folder with exactly its SQL (the hashes the database stores must still match), and every row of the database's
    /// migrations table matches a migration folder the way 1.0's first migrate matches it (else it throws).
    fn judge_converted(
        &self,
        project: &Project,
        before: &[manifest::FileEntry],
        entries: &[crate::drizzle::journal::Entry],
    ) -> Option<Diagnosis> {
        let drizzle = project.drizzle();
        let rolled_back = "drizzle/ was put back as it was (nothing was migrated); up.log in the quarantine folder \
                           has drizzle-kit's output";
        let tree = match self.scan_out(project) {
            Ok(t) => t,
            Err(e) => {
                return Some(Diagnosis::new("unknown", format!("cannot read drizzle/: {e}"), "try again"));
            }
        };
        let folder = crate::safefs::Folder::open(&drizzle).ok().flatten();
        let layout = folder.as_ref().and_then(crate::drizzle::journal::layout_in);
        if layout != Some(Layout::Folders) {
            return Some(Diagnosis::new(
                "up-not-converted",
                format!(
                    "drizzle-kit up did not convert drizzle/ to 1.0's layout (it is {} now)",
                    layout.map(|l| l.described()).unwrap_or("empty")
                ),
                format!("{rolled_back}; check that push.up runs the project's drizzle-kit 1.0 `up`"),
            ));
        }
        let folder = folder?;
        let mut after = crate::drizzle::journal::read_in(&folder).ok().flatten().unwrap_or_default();
        database::with_hashes(&folder, &mut after);
        let files = tree.files();
        let blake = |list: &[manifest::FileEntry], path: &str| {
            list.iter().find(|f| f.path == path).map(|f| f.blake3.clone())
        };
        let mut lost = Vec::new();
        for e in entries {
            let old = blake(before, &e.file);
            let kept = old.is_some()
                && after.iter().any(|a| {
                    blake(&files, &a.file) == old
                        && a.tag.ends_with(&e.tag[e.tag.find('_').map_or(0, |i| i + 1)..])
                });
            if !kept {
                lost.push(e.file.clone());
            }
        }
        if !lost.is_empty() || after.len() != entries.len() {
            return Some(Diagnosis::new(
                "up-changed-sql",
                format!(
                    "drizzle-kit up did not keep every migration's SQL byte for byte ({} migrations before, {} after{})",
                    entries.len(),
                    after.len(),
                    if lost.is_empty() {
                        String::new()
                    } else {
                        format!("; not kept: {}", shown_paths(&lost, 5))
                    }
                ),
                rolled_back,
            ));
        }
        let missing_snapshot: Vec<String> = after
            .iter()
            .filter(|a| blake(&files, &format!("{}/snapshot.json", a.tag)).is_none())
            .map(|a| a.tag.clone())
            .collect();
        if !missing_snapshot.is_empty() {
            return Some(Diagnosis::new(
                "up-changed-sql",
                format!(
                    "drizzle-kit up left migration folders without snapshot.json: {}",
                    shown_paths(&missing_snapshot, 5)
                ),
                rolled_back,
            ));
        }
        // The table's upgrade, predicted on what the database holds now.
        let rows = match self.database_to_check(project) {
            Ok(database::Database::File(target)) => database::applied(&target),
            Ok(database::Database::Server(server)) => server.applied(),
            Err(_) => Ok(None),
        };
        let rows = match rows {
            Ok(rows) => rows.unwrap_or_default(),
            Err(why) => {
                return Some(Diagnosis::new(
                    "database-unreadable",
                    format!("the migrations table cannot be read to check its upgrade: {why}"),
                    rolled_back,
                ));
            }
        };
        let matched = database::matching(Layout::Folders, &after, &rows);
        let mut problems = Vec::new();
        for (row, found) in &matched.rows {
            match found {
                None => problems.push(format!(
                    "the row created_at {} (sha256 {}…) matches no migration folder",
                    row.created_at,
                    row.hash.chars().take(12).collect::<String>()
                )),
                Some(e) if e.hash.as_deref() != Some(row.hash.as_str()) => problems.push(format!(
                    "the row created_at {} would be taken for {}, whose SQL is another",
                    row.created_at, e.tag
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Some(Diagnosis::new(
                "up-unmatched",
                format!(
                    "drizzle-kit 1.0's first migrate would not upgrade the migrations table cleanly: {}",
                    shown_paths(&problems, 5)
                ),
                format!(
                    "{rolled_back}. The database applied migrations this folder lacks, or two migrations share a \
                     second: `dreamerd check` lists the drift; fix it (restore, or reset your development database), \
                     then `dreamerd up` again"
                ),
            ));
        }
        None
    }

    /// After the conversion's migrate: the migrations table is upgraded (every row names its migration folder) and
    /// every hash it stores is still the SQL's.
    fn verify_converted(&self, project: &Project) -> Option<Diagnosis> {
        let rows = match self.database_to_check(project).ok()? {
            database::Database::File(target) => database::applied(&target).ok()??,
            database::Database::Server(server) => server.applied().ok()??,
        };
        let unnamed = rows.iter().filter(|r| r.name.is_none()).count();
        let drift: Vec<Drift> = database::check(&project.drizzle(), self.database_to_check(project))
            .0
            .into_iter()
            .filter(|d| matches!(d.code.as_str(), "migration-missing" | "migration-edited"))
            .collect();
        if unnamed == 0 && drift.is_empty() {
            return None;
        }
        let all: Vec<String> = drift.iter().map(|d| format!("[{}] {}", d.code, d.message)).collect();
        Some(Diagnosis::new(
            "up-unmatched",
            format!(
                "after drizzle-kit 1.0's migrate, {unnamed} row(s) of the migrations table name no migration{}",
                if all.is_empty() { String::new() } else { format!("; {}", all.join("; ")) }
            ),
            "drizzle/ and the database were put back as they were before `dreamerd up`; migrate.log in the \
             quarantine folder has drizzle-kit's output",
        ))
    }

    /// Writes drizzle-kit 1.0's answers (`--hints-file`) in the state folder, readable by the user only.
    fn hints_file(&self, project: &Project, answers: &[serde_json::Value]) -> Result<PathBuf> {
        self.prepare_state()?;
        let dir = self.dirs.state.join("hints");
        fsutil::create_private_dir(&dir).ctx("create", &dir)?;
        let path = dir.join(format!("{}-{}.json", project.local_key(), std::process::id()));
        let body = serde_json::to_vec(answers).expect("JSON values serialise");
        fsutil::atomic_write(&path, &body).ctx("write", &path)?;
        Ok(path)
    }

    /// After `generate --custom`: exactly one new journal entry, with its `.sql`.
    fn judge_custom(
        &self,
        project: &Project,
        before: &[crate::drizzle::journal::Entry],
    ) -> std::result::Result<crate::drizzle::journal::Entry, Diagnosis> {
        let after = crate::drizzle::journal::read(&project.drizzle()).ok().flatten().unwrap_or_default();
        let new: Vec<_> = after.into_iter().filter(|e| !before.iter().any(|b| b.tag == e.tag)).collect();
        match new.as_slice() {
            [one] if crate::safefs::is_regular_file(&project.drizzle().join(&one.file)) => Ok(one.clone()),
            _ => Err(Diagnosis::new(
                "unknown",
                format!(
                    "drizzle-kit generate --custom wrote {} new journal entries, not one with its .sql",
                    new.len()
                ),
                "check that push.generate runs drizzle-kit generate and passes its arguments on (an npm script needs \
                 `--` before them), then push --custom again",
            )),
        }
    }

    /// After generate: a schema change that produced no migration is a failure, unless drizzle-kit said there was
    /// nothing to migrate (an edit that changes no SQL).
    fn judge_generated(
        &self,
        project: &Project,
        before: &[manifest::FileEntry],
        base_schema: Option<Option<String>>,
        out: &RunOutput,
    ) -> Option<Diagnosis> {
        if diagnosis::said_nothing_to_migrate(out) {
            return None;
        }
        let schema = project.schema_hash().ok()?;
        let changed = match base_schema {
            Some(base) => base != schema,
            None => schema.is_some(),
        };
        let tree = self.scan_out(project).ok()?;
        if !changed || tree.files() != before {
            return None;
        }
        Some(Diagnosis::new(
            "generate-wrote-nothing",
            format!(
                "{} changed since the last push, but drizzle-kit generate wrote no migration and did not say there \
                 was nothing to migrate",
                project.schema_shown()
            ),
            "`dreamerd check` lists the snapshot faults that make generate write nothing (snapshot-outdated, \
             snapshot-fork); drizzle-kit's full output is in generate.log in the quarantine folder",
        ))
    }

    /// After migrate: every journal entry must be applied (but the known faults of the history). `None` when it is,
    /// or when the database cannot be read here (nothing to verify against).
    fn verify_applied(&self, project: &Project) -> Option<Diagnosis> {
        let rows = match self.database_to_check(project).ok()? {
            database::Database::File(target) => database::applied(&target).ok()??,
            database::Database::Server(server) => server.applied().ok()??,
        };
        let folder = crate::safefs::Folder::open(&project.drizzle()).ok()??;
        let mut entries = crate::drizzle::journal::read_in(&folder).ok()??;
        let layout = crate::drizzle::journal::layout_in(&folder)?;
        database::with_hashes(&folder, &mut entries);
        let known = project.known_faults().unwrap_or_default();
        let newest = rows.iter().map(|r| r.created_at).max().unwrap_or(0);
        let missing: Vec<&crate::drizzle::journal::Entry> = database::matching(layout, &entries, &rows)
            .unapplied
            .into_iter()
            .filter(|e| !known.iter().any(|k| k.migration.as_deref() == Some(e.tag.as_str())))
            .collect();
        let first = missing.first()?;
        if layout == crate::drizzle::journal::Layout::Folders {
            let all: Vec<&str> = missing.iter().map(|e| e.tag.as_str()).collect();
            return Some(Diagnosis::new(
                "migration-skipped",
                format!(
                    "migrate reported success, but the database does not name {} in its migrations table",
                    all.join(", ")
                ),
                "drizzle/ and the database are as they were before the push. The migrate command may not be \
                 drizzle-kit 1.0's, or it migrated another database than the config names: check push.migrate and \
                 the config's dbCredentials, then `dreamer push` again",
            ));
        }
        let all: Vec<String> = missing.iter().map(|e| format!("{} (when {})", e.tag, e.when)).collect();
        Some(Diagnosis::new(
            "migration-skipped",
            format!(
                "migrate reported success, but the database did not apply {}: its newest applied migration has \
                 created_at {newest}, not before {}'s when {}, so drizzle's migrator skipped it",
                all.join(", "),
                first.tag,
                first.when
            ),
            "drizzle/ and the database are as they were before the push. A migration generated on a machine whose \
             clock is behind, or a database that applied migrations from elsewhere (another branch, a copy), does \
             this: fix the clock, or reset your development database; then `dreamer push` again",
        ))
    }

    /// `drizzle-kit migrate` fails without a word: replay its pending migrations on an in-memory copy of the
    /// database to find the statement that fails and SQLite's message.
    fn explain_migrate(
        &self,
        project: &Project,
        generic: Diagnosis,
        before: Option<&ServerBefore>,
    ) -> Diagnosis {
        if generic.code != "unknown" {
            return generic;
        }
        if let Ok(database::Database::Server(server)) = self.database_to_check(project) {
            return explain_on_server(project, &server, generic, before);
        }
        let db = match self.database(project) {
            Ok(db) => db,
            Err(_) if matches!(project.layout.dialect.as_str(), "postgresql" | "mysql" | "singlestore") => {
                // A server dreamerd has no reader for (SingleStore), or whose credentials it could not make out:
                // drizzle-kit 0.31 hides why it could not connect, so at least try the server's address.
                if let Some(url) = &project.db_url
                    && let Some((host, port)) = server_address(url.expose(), &project.layout.dialect)
                    && let Err(e) = connect(&host, port)
                {
                    return Diagnosis::new(
                        "database-unreachable",
                        format!(
                            "drizzle-kit migrate failed without a word, and the {} server at {host}:{port} cannot \
                             be reached: {e}",
                            project.layout.dialect
                        ),
                        "start the database server (or fix the host and port of the config's URL), then push again; \
                         drizzle/ is as it was",
                    );
                }
                return Diagnosis {
                    message: format!(
                        "{}; drizzle-kit 0.31 prints nothing when it cannot connect to a {} server",
                        generic.message, project.layout.dialect
                    ),
                    hint:
                        "check that the database server runs and is reachable with the config's credentials \
                           (host, port, user, password), then push again; drizzle/ is as it was"
                            .into(),
                    ..generic
                };
            }
            Err(why) => {
                return Diagnosis {
                    message: format!("{}; dreamerd cannot find the database: {why}", generic.message),
                    ..generic
                };
            }
        };
        match database::replay(&project.drizzle(), &db) {
            Ok(Some(failure)) => replay_diagnosis(&failure),
            Ok(None) => Diagnosis {
                message: format!(
                    "{}; the same migrations replayed cleanly on a copy of the database, as strictly as the driver \
                     runs them: the replay and the real run disagree, so the cause is one dreamerd cannot see (the \
                     connection, the driver, the config), and drizzle-kit's output is in migrate.log in the \
                     quarantine folder",
                    generic.message
                ),
                ..generic
            },
            Err(why) => Diagnosis {
                message: format!(
                    "{}; dreamerd cannot open the database to find the real error: {why}",
                    generic.message
                ),
                ..generic
            },
        }
    }

    /// The record and archive of drizzle/ as it is now, or the report of an unchanged push when drizzle/ and the
    /// schema are exactly the last push.
    fn new_record(
        &self,
        project: &Project,
        project_id: &str,
        baseline: Option<&PushRecord>,
        nothing_to_migrate: bool,
    ) -> Result<Result<(PushRecord, Vec<u8>), PushReport>> {
        let drizzle = project.drizzle();
        let tree = self.scan_out(project)?;
        let schema = project.schema_hash()?;
        // A baseline that is only the committed sum has no backup yet: this push makes it. A schema edit that
        // changes no SQL (drizzle-kit said so) is the same push (and nothing is archived again).
        let files = tree.files();
        if let Some(base) = baseline.filter(|b| !b.archive_blake3.is_empty())
            && base.files == files
            && (base.schema_blake3 == schema || nothing_to_migrate)
        {
            return Ok(Err(PushReport::Ok {
                ok: true,
                push_id: base.id.clone(),
                files: files.len(),
                unchanged: true,
                settings: Vec::new(),
                known_faults: Vec::new(),
                others: Vec::new(),
                timings: None,
            }));
        }
        let packed: Packed = archive::pack(&drizzle, &tree)?;
        let now = SystemTime::now();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let record = PushRecord {
            format: crate::store::RECORD_FORMAT,
            id: format!("{}-{}", compact_timestamp(now), &suffix[..8]),
            project_id: project_id.to_string(),
            at: rfc3339(now),
            at_ms: now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            files: packed.files,
            schema_blake3: schema,
            archive_blake3: packed.blake3,
            archive_size: packed.bytes.len() as u64,
            host: host_name(),
            root: project.root.display().to_string(),
            parent: baseline.map(|b| b.id.clone()),
            generation: None,
            branch: git_branch(&project.root),
        };
        Ok(Ok((record, packed.bytes)))
    }

    /// Rolls drizzle/ back to the snapshot and reports the failure; the failed run's files and output are kept.
    fn fail(
        &self,
        project: &Project,
        stage: Stage,
        diagnosis: Diagnosis,
        journal: &mut Journal,
        logs: &[(&str, RunOutput)],
    ) -> Result<PushReport> {
        self.fail_with(project, stage, diagnosis, journal, logs, None)
    }

    /// [`Engine::fail`], putting the database back from `db` first when the push changed it (or, with `force`,
    /// always: rows were lost).
    fn fail_with(
        &self,
        project: &Project,
        stage: Stage,
        mut diagnosis: Diagnosis,
        journal: &mut Journal,
        logs: &[(&str, RunOutput)],
        db: Option<(&super::dbcopy::DbCopy, bool)>,
    ) -> Result<PushReport> {
        let quarantine = self.new_quarantine(project, "failed-push")?;
        write_logs(&quarantine, logs);
        if let Some((copy, force)) = db
            && (force || self.database_changed(project, copy))
        {
            match self.put_back_database(project, copy, &quarantine) {
                Ok(kept) => {
                    diagnosis.message += &format!(
                        ". The database was put back from the copy taken before migrate; the database as the push \
                         left it is kept in {}",
                        kept.display()
                    )
                }
                Err(e) => diagnosis.message += &format!(". The database could NOT be put back: {e}"),
            }
        }
        journal.child = None;
        if let Err(e) = self.rollback_to_snapshot(project, &quarantine, journal) {
            return Err(Error::failed(
                format!("the push failed ({}), and rolling drizzle/ back failed too: {e}", diagnosis.message),
                "nothing was lost: the next dreamerd operation on this project finishes the rollback",
            ));
        }
        Ok(PushReport::Failed(PushFailure {
            ok: false,
            stage,
            diagnosis,
            rolled_back: true,
            quarantine: Some(quarantine),
            settings: Vec::new(),
            database: None,
        }))
    }
}

/// The diagnosis of the statement a replay found failing: its code by the error's words, quoting the statement.
fn replay_diagnosis(failure: &database::ReplayFailure) -> Diagnosis {
    let quoted = format!("{} (in {}: {})", failure.error, failure.migration, shortened(&failure.statement));
    diagnosis::classify_database_error(&failure.error, Some(&quoted)).unwrap_or_else(|| {
        Diagnosis::new(
            "unknown",
            format!("migrate failed: {quoted}"),
            "fix src/schema.ts (or the data the migration trips on), then `dreamer push` again; drizzle-kit's full \
             output is in the quarantine folder",
        )
    })
}

/// drizzle-kit up names each migration folder by its journal entry's second: entries made within one second get
/// one time, and then 1.0's migrator orders them by name, which may not be the journal's order. A database that
/// applied them already is not concerned; a fresh one runs them in the new order.
fn order_changed(drizzle: &Path, before: &[crate::drizzle::journal::Entry]) -> Option<String> {
    let folder = crate::safefs::Folder::open(drizzle).ok()??;
    let after = crate::drizzle::journal::read_in(&folder).ok()??;
    let name = |tag: &str| tag.split_once('_').map(|(_, rest)| rest.to_string()).unwrap_or_default();
    let idx: Vec<(i64, &str)> = after
        .iter()
        .filter_map(|a| before.iter().find(|b| name(&b.tag) == name(&a.tag)).map(|b| (b.idx, a.tag.as_str())))
        .collect();
    let swapped: Vec<String> =
        idx.windows(2).filter(|w| w[1].0 < w[0].0).map(|w| format!("{} before {}", w[0].1, w[1].1)).collect();
    (!swapped.is_empty()).then(|| {
        format!(
            "warning: migrations generated within one second got one folder time, so a database that has not \
             applied them yet (a fresh one, a teammate's) runs {} (against the journal's order); if the later one \
             needs the earlier, such a database fails on it",
            swapped.join(", ")
        )
    })
}

/// A statement on one line, at most 160 characters.
fn shortened(statement: &str) -> String {
    let statement: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    if statement.chars().count() > 160 {
        format!("{}…", statement.chars().take(160).collect::<String>())
    } else {
        statement
    }
}

/// A server database as it was before migrate.
struct ServerBefore {
    /// Its tables, columns and applied migrations (`None` when they could not be read).
    shape: Option<crate::drizzle::server::Shape>,
    /// The statements migrate is about to run, each with its migration's tag.
    pending: Vec<(String, String)>,
    /// Rows per table, for the rows guard; not counted when nothing is pending.
    rows: Option<std::result::Result<std::collections::BTreeMap<String, i64>, String>>,
}

impl ServerBefore {
    fn read(server: &crate::drizzle::server::Server, drizzle: &std::path::Path) -> ServerBefore {
        let shape = server.shape().ok();
        let pending = match &shape {
            Some(shape) => database::pending_statements(drizzle, &shape.applied).unwrap_or_default(),
            None => Vec::new(),
        };
        let rows = (!pending.is_empty()).then(|| server.row_counts());
        ServerBefore { shape, pending, rows }
    }

    /// MySQL: the pending statement predicted to fail, from the tables and columns before migrate.
    fn predicted(&self) -> Option<database::ReplayFailure> {
        crate::drizzle::server::predict_mysql_failure(&self.pending, self.shape.as_ref()?)
    }

    /// What a failed migrate left in the database: the shape now against the shape before, and on MySQL the
    /// statements of the failed migration that ran before the one predicted to fail (DDL commits there).
    fn change(&self, server: &crate::drizzle::server::Server) -> Option<crate::drizzle::server::Change> {
        let after = server.shape().ok()?;
        let mut change = crate::drizzle::server::Change::between(self.shape.as_ref()?, &after);
        if server.dialect == crate::drizzle::server::Dialect::MySql
            && let Some(failed) = self.predicted()
        {
            change.statements_applied = self
                .pending
                .iter()
                .filter(|(m, _)| *m == failed.migration)
                .take_while(|(_, st)| *st != failed.statement)
                .map(|(_, st)| shortened(st))
                .collect();
        }
        Some(change)
    }
}

/// After a successful migrate on a server: rows that vanished from tables the new migrations did not drop.
fn guard_server_rows(
    server: &crate::drizzle::server::Server,
    before: &std::collections::BTreeMap<String, i64>,
    new_sql: &[(String, String)],
    custom: Option<&str>,
    sink: &dyn Sink,
) -> Option<Diagnosis> {
    if !super::dbcopy::judges_rows(custom, new_sql, sink) {
        return None;
    }
    let after = match server.row_counts() {
        Ok(after) => after,
        Err(why) => {
            sink.progress(&format!("the rows guard does not judge this push: {why}"));
            return None;
        }
    };
    let lost = super::dbcopy::rows_lost(before, &after, new_sql, &server.table);
    if lost.is_empty() {
        return None;
    }
    Some(Diagnosis::new(
        "rows-lost",
        format!(
            "migrate succeeded, but rows vanished from tables the migration did not drop, on the server at {}: {}. \
             There is no automatic undo on a server: the migration stays applied.",
            server.address,
            lost.join("; ")
        ),
        "restore the lost rows from your own backup of the database; next time move the rows aside first (a custom \
         migration: `dreamerd push --custom`), or avoid the statement that deletes them",
    ))
}

/// A migrate on a PostgreSQL or MySQL server failed without a word (drizzle-kit 0.31 prints nothing, whatever the
/// server said): find out why. A server that cannot be read is the reason; on PostgreSQL the pending migrations are
/// replayed inside a transaction that is rolled back, to quote the statement the server refuses and its SQLSTATE; on
/// MySQL, whose DDL commits as it goes, nothing is replayed, and the diagnosis says what the migrations table shows.
fn explain_on_server(
    project: &Project,
    server: &crate::drizzle::server::Server,
    generic: Diagnosis,
    before: Option<&ServerBefore>,
) -> Diagnosis {
    let applied = match server.applied() {
        Ok(applied) => applied,
        Err(why) => {
            return Diagnosis::new(
                "database-unreachable",
                format!("drizzle-kit migrate failed without a word: {why}"),
                "start the database server, or fix the config's credentials (host, port, user, password, database), \
                 then push again; drizzle/ is as it was",
            );
        }
    };
    if server.dialect == crate::drizzle::server::Dialect::MySql {
        let pending = database::pending_statements(&project.drizzle(), &applied.unwrap_or_default())
            .unwrap_or_default();
        let first = pending.first().map(|(m, _)| m.as_str()).unwrap_or("?");
        // The statement that failed, predicted from the tables and columns before migrate.
        if let Some(failure) = before.and_then(ServerBefore::predicted) {
            let statement = shortened(&failure.statement);
            let quoted = format!(
                "{} (predicted from the database's tables before migrate; in {}: {statement})",
                failure.error, failure.migration
            );
            if let Some(mut d) = diagnosis::classify_database_error(&failure.error, Some(&quoted)) {
                d.message += &format!(
                    ". MySQL commits each DDL statement as it runs, so the statements of {} before this one may be \
                     in the database now (the failure's `database` says what changed)",
                    failure.migration
                );
                return d;
            }
        }
        return Diagnosis {
            message: format!(
                "{}; the MySQL server at {} has not recorded {first} as applied. MySQL commits each DDL statement as \
                 it runs, so the statements of {first} before the one that failed may be in the database now \
                 (dreamerd never replays on MySQL); drizzle-kit's output is in migrate.log in the quarantine folder",
                generic.message, server.address
            ),
            hint: "compare the database with the failed migration (SHOW CREATE TABLE), undo what it left or fix the \
                   schema, then `dreamer push` again; drizzle/ is as it was, the database may not be"
                .into(),
            ..generic
        };
    }
    match server.replay(&project.drizzle()) {
        Ok(Some(failure)) => replay_diagnosis(&failure),
        Ok(None) => Diagnosis {
            message: format!(
                "{}; the same migrations replayed cleanly on the server (in a transaction rolled back at once): the \
                 replay and the real run disagree, so the cause is one dreamerd cannot see, and drizzle-kit's output \
                 is in migrate.log in the quarantine folder",
                generic.message
            ),
            ..generic
        },
        Err(why) => Diagnosis { message: format!("{}; {why}", generic.message), ..generic },
    }
}

/// The host and port of a server database URL (`postgres://user:secret@host:5432/db`), never its credentials.
fn server_address(url: &str, dialect: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let default = if dialect == "postgresql" { 5432 } else { 3306 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host.to_string(), after.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

/// Tries a TCP connection to the server, for a few seconds at most.
fn connect(host: &str, port: u16) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the host name does not resolve");
    for addr in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The git branch checked out at `root`, if it is in git (never waits long: git answers from its files).
fn git_branch(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["symbolic-ref", "--short", "-q", "HEAD"])
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let branch = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !branch.is_empty() && branch.len() <= 200).then_some(branch)
}

/// Keeps each program's full output next to the quarantined files.
fn write_logs(quarantine: &std::path::Path, logs: &[(&str, RunOutput)]) {
    for (name, out) in logs {
        let text = format!(
            "exit: {}\ntimed out: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            out.status.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
            out.timed_out,
            out.stdout,
            out.stderr
        );
        let _ = fs::write(quarantine.join(format!("{name}.log")), text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_without_credentials() {
        let pg = |u| server_address(u, "postgresql");
        assert_eq!(pg("postgres://u:s3cret@db.local:6543/app?ssl=1"), Some(("db.local".into(), 6543)));
        assert_eq!(pg("postgresql://u:p@w@127.0.0.1/app"), Some(("127.0.0.1".into(), 5432)));
        assert_eq!(pg("postgres://[::1]:5433/app"), Some(("::1".into(), 5433)));
        assert_eq!(server_address("mysql://root@localhost/db", "mysql"), Some(("localhost".into(), 3306)));
        assert_eq!(pg("not a url"), None);
        // A port nobody listens on: refused, said as such.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(connect("127.0.0.1", free).is_err());
    }
}
