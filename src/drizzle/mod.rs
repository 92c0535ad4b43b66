//! What dreamerd knows about drizzle-kit's files and database: the journal and its faults, where the database is,
//! what it has applied, and the drift between the two.

pub mod database;
pub mod journal;

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
        !matches!(self.code.as_str(), "migration-pending" | "database-unreadable")
    }

    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self.code.as_str() {
            "migration-edited" => {
                "an applied migration was edited: run `dreamer database restore`, then put the change in src/schema.ts \
                 and `dreamer push`"
            }
            "migration-missing" => {
                "the database applied migrations that drizzle/ lacks: run `dreamer database restore` to get the last \
                 push back (or `--push ID` for the one matching the database); if the database came from elsewhere, \
                 reset your development database"
            }
            "migration-pending" => "run `dreamer push` to apply it",
            "migration-skipped" => {
                "the migrator will never apply this entry: if it came from a merge or a hand edit, run `dreamer \
                 database restore`, move the change into src/schema.ts, then `dreamer push`; if the database lost \
                 it (restored from an older copy), reset your development database and `dreamer push`"
            }
            "database-unreadable" => {
                "check that the database file is readable and not locked, and database.url"
            }
            _ => "drizzle/ is inconsistent: run `dreamer database restore`, then `dreamer push`",
        }
    }
}
