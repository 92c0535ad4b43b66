//! What dreamerd knows about drizzle-kit's files and database: the journal and its faults, where the database is,
//! what it has applied, and the drift between the two.

pub mod database;
pub mod folders;
pub mod hints;
pub mod journal;
pub mod server;

use serde::{Deserialize, Serialize};

/// One disagreement between drizzle/ and itself or the database, with a stable code (see the README's table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub code: String,
    pub message: String,
    /// The migration concerned (its journal tag), where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
}

impl Drift {
    pub fn new(code: &str, message: impl Into<String>, migration: Option<&str>) -> Drift {
        Drift { code: code.into(), message: message.into(), migration: migration.map(String::from) }
    }

    /// Whether a push must be refused because of it. A migration that is merely not applied yet is what migrate
    /// is for; everything else makes the next migrate wrong.
    pub fn blocks_push(&self) -> bool {
        // drizzle-kit 1.0's generate joins unmerged branches itself (a merge migration), or says why it cannot.
        !matches!(self.code.as_str(), "migration-pending" | "database-unreadable" | "branches-unmerged")
    }

    /// Whether the first push of a project may accept it as a known fault of its history: migrate tolerates it and
    /// the next generate is not misled by it. `latest` is the tag of the newest journal entry.
    /// `last_snapshot` is the number of the snapshot whose name sorts last in `meta/`.
    pub fn adoptable(&self, latest: Option<&str>, last_snapshot: Option<&str>) -> bool {
        match self.code.as_str() {
            "sql-not-in-journal"
            | "journal-order"
            | "journal-duplicate"
            | "snapshot-chain"
            | "sql-not-in-migration"
            | "folder-missing-sql"
            | "folder-name" => true,
            // An old snapshot is never read again; the newest is what the next generate diffs against.
            "journal-missing-snapshot" | "folder-missing-snapshot" => self.migration.as_deref() != latest,
            // A stray snapshot is harmless unless generate takes it for the newest.
            "snapshot-not-in-journal" => self.migration.as_deref() != last_snapshot,
            _ => false,
        }
    }

    /// What to do about it in a project that was never pushed with dreamerd (so there is nothing to restore).
    pub fn first_push_hint(&self) -> &'static str {
        match self.code.as_str() {
            "journal-missing-sql" => {
                "the journal names a migration whose .sql is not in drizzle/ (migrate fails on it): take the file back \
                 from git (`git log --diff-filter=D -- drizzle/`), or remove the entry if no database ever applied it; \
                 then `dreamer push`. From its first push on, dreamerd keeps drizzle/ whole"
            }
            "journal-missing-snapshot" => {
                "the newest snapshot is missing, so the next generate would diff against an older schema: take it \
                 back from git (`git log -- drizzle/meta/`), then `dreamer push`"
            }
            "snapshot-outdated" => {
                "run `dreamerd up`: it upgrades the snapshots with the installed drizzle-kit's `up` (only meta/ \
                 changes) and records the result; then `dreamer push`"
            }
            "snapshot-fork" => {
                "two branches each generated a migration from the same snapshot and both were merged: keep the \
                 branch merged into (take the other's files out of drizzle/ with git), then `dreamer push` with the \
                 merged schema so the other branch's changes become one new migration"
            }
            "snapshot-not-in-journal" => {
                "a snapshot that no journal entry uses sorts last, so generate would diff against it: take it out of \
                 drizzle/meta/ (`git log -- drizzle/meta/` shows where it came from), then `dreamer push`"
            }
            "journal-future" => {
                "that entry was generated on a machine whose clock was ahead, so migrations generated before its \
                 time are skipped: if no shared database applied it yet, take it out with git and generate it again; \
                 otherwise push new changes only after that time"
            }
            "layout-mixed" => {
                "drizzle/ holds both layouts: if the project runs drizzle-kit 1.0, run `dreamerd up` with the journal's \
                 migrations only (take the 1.0 folders out with git); if it runs 0.x, take the 1.0 folders out"
            }
            "folder-missing-snapshot" => {
                "a migration folder has no snapshot.json: take it back from git (`git log -- drizzle/`); if the \
                 newest lacks it, the next generate repeats its changes. Then `dreamer push`"
            }
            "folder-missing-sql" | "folder-name" | "sql-not-in-migration" => {
                "drizzle/ holds something drizzle-kit 1.0's migrator skips or ignores: take the folder's files back \
                 from git (`git log -- drizzle/`), or remove what no database applied; then `dreamer push`"
            }
            "journal-unreadable" | "snapshot-invalid" => {
                "a file drizzle-kit needs cannot be read: take it back from git (`git log -- drizzle/meta/`), then \
                 `dreamer push`"
            }
            "migration-missing" => {
                "the database applied migrations that drizzle/ lacks (another branch, or files deleted): take them \
                 back from git, or reset your development database; then `dreamer push`"
            }
            "migration-edited" => {
                "an applied migration's .sql differs from what the database ran: put back the version it ran (`git \
                 log -p -- drizzle/`), or reset your development database; then `dreamer push`"
            }
            "migration-skipped" => {
                "the migrator would never apply this entry on this database (its when is older than one applied): \
                 reset your development database and `dreamer push`, so every migration applies in order"
            }
            _ => self.hint(),
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self.code.as_str() {
            "migration-edited" => {
                "an applied migration was edited: run `dreamer database restore`, then put the change in src/schema.ts \
                 and `dreamer push`"
            }
            "migration-missing" => {
                "the database applied migrations that drizzle/ lacks: put back the push that has them with `dreamer \
                 database restore --push ID` (`dreamerd history` lists the pushes; a plain restore brings back this \
                 checkout's last push); if the database came from elsewhere, reset your development database"
            }
            "migration-pending" => "run `dreamer push` to apply it",
            "migration-skipped" => {
                "the migrator will never apply this entry: if it came from a merge or a hand edit, run `dreamer \
                 database restore`, move the change into src/schema.ts, then `dreamer push`; if the database lost \
                 it (restored from an older copy), reset your development database and `dreamer push`"
            }
            "snapshot-outdated" => {
                "run `dreamerd up`: it upgrades the snapshots with the installed drizzle-kit's `up` and records the \
                 result as a push; then `dreamer push`"
            }
            "snapshot-fork" => {
                "two branches each generated a migration from the same snapshot and both were merged: run `dreamer \
                 database restore --push ID` with the push of the branch merged into, then `dreamer push` with the \
                 merged schema"
            }
            "journal-future" => {
                "an entry was generated on a machine whose clock was ahead: migrations generated before its time are \
                 skipped by migrate; if no shared database applied it yet, restore the push before it and push again \
                 from a machine with a right clock"
            }
            "database-unreadable" => {
                "check that the database file is readable and not locked, and database.url"
            }
            "database-other-push" => {
                "the database is at another push than drizzle/ (one development database across branches): `dreamerd \
                 restore --push ID --with-database` with the folder's push puts the database back from its copy; or \
                 reset the development database and `dreamer push`"
            }
            "branches-unmerged" => {
                "run `dreamer push`: drizzle-kit 1.0 writes the merge migration that joins the branches (it refuses, \
                 naming the conflict, when both changed the same thing: then restore the push of the branch merged \
                 into and push the merged schema)"
            }
            "layout-mixed" => {
                "a journal and 1.0 migration folders side by side: run `dreamer database restore` (the last push has one \
                 layout), then `dreamer push`"
            }
            "layout-mismatch" => {
                "drizzle/ and the database (or the installed drizzle-kit) are of different drizzle-kit generations: \
                 restore the push of the current layout (`dreamer database restore`), or install the drizzle-kit the \
                 folder is laid out for; `dreamerd up` converts a 0.x folder to 1.0's layout"
            }
            "layout-kit-mismatch" => {
                "install the drizzle-kit the folder is laid out for, or run `dreamerd up` to convert a 0.x folder for \
                 drizzle-kit 1.0 (it backs up the folder and the database first)"
            }
            "folder-missing-sql" | "folder-missing-snapshot" | "folder-name" | "sql-not-in-migration" => {
                "a migration folder was changed by hand: run `dreamer database restore`, then `dreamer push`"
            }
            _ => "drizzle/ is inconsistent: run `dreamer database restore`, then `dreamer push`",
        }
    }
}
