//! `dreamerd rebase`: the way out of a migration folder that git merged from two branches that each pushed. The
//! folder goes back to the push of the branch merged into (the checkout's last push), and a push with the merged
//! schema turns the other branch's changes into one new migration after it, so that every database (the main
//! branch's, a fresh one) applies the history in one order. The committed sum's conflict goes with it.

use serde::{Deserialize, Serialize};

use super::{Engine, PushOptions, PushReport, RestoreReport, Sink};
use crate::drizzle::database;
use crate::error::{Error, Result};
use crate::manifest;
use crate::project::Project;

/// What a rebase did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebaseReport {
    pub ok: bool,
    /// The push of the branch merged into, which the folder was put back to.
    pub base: String,
    /// The migration files of the merged folder that the rebase dropped (the other branch's, kept in quarantine),
    /// relative to the migration folder.
    pub dropped: Vec<String>,
    pub restore: RestoreReport,
    /// The push with the merged schema.
    pub push: PushReport,
}

impl Engine {
    /// Puts the merged folder back to the checkout's last push and pushes the merged schema on it. Refused, changing
    /// nothing, when the folder is not a merge of more than that push, or when the database applied a migration the
    /// rebase drops (it would then be `migration-missing` for good).
    pub fn rebase(&self, project: &Project, options: &PushOptions, sink: &dyn Sink) -> Result<RebaseReport> {
        let base = self.baseline_of(project)?.map(|b| b.record).ok_or_else(|| {
            Error::failed(
                format!(
                    "no successful push yet in {}, so there is no branch to rebase on",
                    project.root.display()
                ),
                "run `dreamer push` to make the first backup",
            )
        })?;
        let tree = self.scan_out(project)?;
        let files = tree.files();
        let migration = |p: &str| p.ends_with(".sql") && !p.starts_with("meta/");
        let dropped: Vec<String> = files
            .iter()
            .filter(|f| {
                migration(&f.path) && !base.files.iter().any(|b| b.path == f.path && b.blake3 == f.blake3)
            })
            .map(|f| f.path.clone())
            .collect();
        if dropped.is_empty() {
            let differences = manifest::diff(&base.files, &tree).len();
            return Err(Error::failed(
                format!(
                    "{} holds no migration that push {} lacks ({differences} difference(s) otherwise): there is no \
                     merged branch to rebase",
                    project.out_shown(),
                    base.id
                ),
                "`dreamerd status` says what differs; `dreamer database restore` puts back the push, `dreamer push` \
                 applies a schema change",
            ));
        }
        // The database must not have applied what the rebase drops: those migrations are gone from the folder for
        // good, and a later one would repeat their changes on it.
        let rows = self.database_rows(project).unwrap_or_default();
        let foreign: Vec<String> = match self.entries_of_push(&base) {
            Some(migrations) if !rows.is_empty() => database::matching(migrations.0, &migrations.1, &rows)
                .rows
                .iter()
                .filter(|(_, e)| e.is_none())
                .map(|(row, _)| match &row.name {
                    Some(name) => name.clone(),
                    None => format!(
                        "created_at {} (sha256 {}…)",
                        row.created_at,
                        row.hash.chars().take(12).collect::<String>()
                    ),
                })
                .collect(),
            _ => Vec::new(),
        };
        if !foreign.is_empty() {
            let way_back = match self.copy_for(project, &base.id) {
                Some(_) => format!(
                    "`dreamerd restore --push {} --with-database` puts the database back to that push's state from \
                     its copy (keeping the one it replaces), then run `dreamerd rebase` again; or reset your \
                     development database",
                    base.id
                ),
                None => {
                    "reset your development database (there is no copy of its state at that push), then run \
                         `dreamerd rebase` again"
                        .to_string()
                }
            };
            return Err(Error::failed(
                format!(
                    "the database applied migration(s) that push {} does not have and the rebase drops: {}; after the \
                     rebase they would be applied twice over (their changes come back in the new migration); nothing \
                     was changed",
                    base.id,
                    foreign.join(", ")
                ),
                way_back,
            ));
        }
        sink.progress(&format!(
            "rebasing: {} goes back to push {} ({} migration file(s) of the merged branch go to quarantine), then the \
             merged schema is pushed on it",
            project.out_shown(),
            base.id,
            dropped.len()
        ));
        let restore = self.restore(project, Some(&base.id), false, false, sink)?;
        crate::fault::point("rebase:restored");
        let push = self.push_answered(project, options, sink)?;
        Ok(RebaseReport { ok: push.ok(), base: base.id, dropped, restore, push })
    }

    /// The rows of the project's migrations table, where the database can be read.
    pub(crate) fn database_rows(&self, project: &Project) -> Option<Vec<database::Applied>> {
        match self.database_to_check(project).ok()? {
            database::Database::File(target) => database::applied(&target).ok()?,
            database::Database::Server(server) => server.applied().ok()?,
        }
    }
}
