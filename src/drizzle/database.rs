//! The SQLite database drizzle-kit migrates: where it is, what `__drizzle_migrations` says was applied, and a
//! replay of pending migrations on an in-memory copy to find the error `drizzle-kit migrate` swallows.
//! dreamerd only ever reads the database.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::Drift;
use super::journal::{self, Entry, Layout};
use crate::safefs::{self, Folder};

/// How long a read waits for a writer's lock before giving up; reads never hold the lock longer than a SELECT.
const BUSY_TIMEOUT: Duration = Duration::from_millis(2000);

/// The SQLite file a database URL names, relative to `base` (a URL may hold a password: it is never quoted).
pub fn from_url(base: &Path, url: &str) -> Result<PathBuf, String> {
    let path = url.strip_prefix("file://").or_else(|| url.strip_prefix("file:")).unwrap_or(url);
    if path.is_empty() || path == ":memory:" || path.contains("://") {
        return Err("the database URL does not name a local SQLite file, so dreamerd cannot read it".into());
    }
    // `./local.db` and `../dbs/app.db` said as the file they are (the root is canonical): what a path is compared
    // with (the strict sandbox's writable folders, messages) must not be fooled by `..`.
    Ok(crate::project::layout::normalize(&base.join(path)))
}

/// The SQLite database a project migrates, and its migrations table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    /// `migrations.table` (default `__drizzle_migrations`).
    pub table: String,
}

impl Target {
    /// The database at `path` with drizzle's default table.
    pub fn new(path: PathBuf) -> Target {
        Target { path, table: "__drizzle_migrations".into() }
    }
}

/// Whether the database was compared with the migration folder, and why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checked {
    pub checked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The database file, once the config named one (compared or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A server database: `host:port/database`, never its credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// The database a check reads: a SQLite file, or a PostgreSQL or MySQL server.
pub enum Database {
    File(Target),
    Server(crate::drizzle::server::Server),
}

impl Checked {
    pub fn yes() -> Checked {
        Checked { checked: true, reason: None, path: None, server: None }
    }

    pub fn no(reason: impl Into<String>) -> Checked {
        Checked { checked: false, reason: Some(reason.into()), path: None, server: None }
    }

    fn at(mut self, path: &Path) -> Checked {
        self.path = Some(path.to_path_buf());
        self
    }
}

/// An SQL identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One row of the migrations table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub hash: String,
    pub created_at: i64,
    /// The migration folder's name, in a table drizzle-kit 1.0's migrator made or upgraded; `None` in a 0.x table
    /// (no such column) and in rows 1.0 has not named yet.
    pub name: Option<String>,
}

/// The applied rows matched with the local migrations, as the migrator of the folder's layout matches them.
pub struct Matching<'a> {
    /// Each row, with the migration it is (`None`: drizzle/ does not have it).
    pub rows: Vec<(&'a Applied, Option<&'a Entry>)>,
    /// The migrations no row is: what migrate applies (0.x: only those after the newest applied).
    pub unapplied: Vec<&'a Entry>,
}

/// Matches rows and migrations. 0.x's migrator knows a migration only by `created_at` = the journal's `when`. 1.0's
/// by name; a row without one (a table 1.0 has not upgraded yet) the way 1.0's upgrade does: by its time in whole
/// seconds when one folder has that time, else by hash.
pub fn matching<'a>(layout: Layout, entries: &'a [Entry], applied: &'a [Applied]) -> Matching<'a> {
    let mut rows = Vec::new();
    let mut taken: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for row in applied {
        let found = match (layout, &row.name) {
            (Layout::Journal, _) => entries.iter().find(|e| e.when == row.created_at),
            (Layout::Folders, Some(name)) => entries.iter().find(|e| &e.tag == name),
            (Layout::Folders, None) => {
                let second = row.created_at.div_euclid(1000) * 1000;
                let same: Vec<&Entry> = entries.iter().filter(|e| e.when == second).collect();
                match same.as_slice() {
                    [one] => Some(*one),
                    [] => entries.iter().find(|e| e.hash.as_deref() == Some(row.hash.as_str())),
                    many => many.iter().find(|e| e.hash.as_deref() == Some(row.hash.as_str())).copied(),
                }
            }
        };
        if let Some(e) = found {
            taken.insert(&e.tag);
        }
        rows.push((row, found));
    }
    let unapplied = entries.iter().filter(|e| !taken.contains(e.tag.as_str())).collect();
    Matching { rows, unapplied }
}

/// Sets every entry's `hash` (sha256 of its SQL, what the migrator stores): 1.0's upgrade matches by it.
pub fn with_hashes(folder: &Folder, entries: &mut [Entry]) {
    for e in entries {
        if e.hash.is_none()
            && let Ok(Some(hash)) = journal::sql_hash(folder, e)
        {
            e.hash = Some(hash);
        }
    }
}

/// The database file as SQLite may open it: its folder canonical, the file itself a regular file and not a link
/// (SQLite opens by path, and a fifo would block that open for good). `Ok(None)` when there is no file.
pub fn checked_file(path: &Path) -> Result<Option<PathBuf>, String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} is not a database file", path.display()));
    };
    let parent = match fs::canonicalize(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot find the folder of {}: {e}", path.display())),
    };
    let file = parent.join(name);
    match fs::symlink_metadata(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot inspect {}: {e}", file.display())),
        Ok(_) if safefs::is_regular_file(&file) => Ok(Some(file)),
        Ok(m) => Err(format!(
            "{} is {}, not a regular file; dreamerd does not open it",
            file.display(),
            safefs::SpecialKind::of(&m.file_type()).described()
        )),
    }
}

/// What a check of `db` reads besides the migration folder, as bytes that change whenever it may have changed, and
/// whether that holds right now (every file of the database is older than the stat cache's margin, so a write in the
/// same timestamp tick cannot hide); `None` for a server, whose state only asking it tells.
pub fn fingerprint(db: &Result<Database, String>) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let file = match db {
        Err(why) => {
            out.extend_from_slice(b"none\0");
            out.extend_from_slice(why.as_bytes());
            return Some((out, true));
        }
        Ok(Database::Server(_)) => return None,
        Ok(Database::File(t)) => t,
    };
    out.extend_from_slice(b"file\0");
    out.extend_from_slice(file.table.as_bytes());
    out.push(0);
    out.extend_from_slice(file.path.as_os_str().as_encoded_bytes());
    out.push(0);
    let (Some(parent), Some(name)) = (file.path.parent(), file.path.file_name()) else {
        return Some((out, true));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let now = crate::facts::now_ns();
    let mut settled = true;
    match fs::canonicalize(parent) {
        Ok(dir) => {
            out.extend_from_slice(dir.as_os_str().as_encoded_bytes());
            for suffix in ["", "-wal", "-journal"] {
                let mut name = name.to_os_string();
                name.push(suffix);
                out.push(0);
                match rustix::fs::lstat(dir.join(&name)) {
                    Ok(st) => {
                        let id = crate::facts::Identity::of(&st);
                        settled &= id.settled_at(now);
                        out.extend_from_slice(&id.to_bytes());
                        out.extend_from_slice(&st.st_mode.to_le_bytes());
                    }
                    Err(rustix::io::Errno::NOENT) => out.extend_from_slice(b"absent"),
                    Err(e) => {
                        out.extend_from_slice(e.to_string().as_bytes());
                        settled = false;
                    }
                }
            }
        }
        Err(e) => {
            out.extend_from_slice(e.to_string().as_bytes());
            settled = false;
        }
    }
    Some((out, settled))
}

fn open_read_only(path: &Path) -> Result<Connection, String> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("cannot open {} read-only: {e}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The applied migrations, or `None` when the database has no migrations table yet.
fn applied_in(conn: &Connection, table: &str) -> Result<Option<Vec<Applied>>, String> {
    let exists: bool = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n > 0)
        .map_err(|e| format!("cannot read the database: {e}"))?;
    if !exists {
        return Ok(None);
    }
    // 1.0's migrator adds `name` (and `applied_at`) to the table.
    let named: bool = conn
        .query_row("SELECT count(*) FROM pragma_table_info(?1) WHERE name = 'name'", [table], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n > 0)
        .map_err(|e| format!("cannot read {table}: {e}"))?;
    let name = if named { "name" } else { "NULL" };
    let mut stmt = conn
        .prepare(&format!("SELECT hash, created_at, {name} FROM {}", quoted(table)))
        .map_err(|e| format!("cannot read {table}: {e}"))?;
    let rows = stmt
        .query_map([], |r| {
            let created_at = match r.get::<_, rusqlite::types::Value>(1)? {
                rusqlite::types::Value::Integer(i) => i,
                rusqlite::types::Value::Real(f) => f as i64,
                rusqlite::types::Value::Text(t) => t.trim().parse().unwrap_or(-1),
                _ => -1,
            };
            let name = match r.get::<_, rusqlite::types::Value>(2)? {
                rusqlite::types::Value::Text(t) => Some(t),
                _ => None,
            };
            Ok(Applied { hash: r.get(0)?, created_at, name })
        })
        .map_err(|e| format!("cannot read {table}: {e}"))?;
    rows.collect::<Result<Vec<_>, _>>().map(Some).map_err(|e| format!("cannot read {table}: {e}"))
}

/// What the database at `path` has applied; `Ok(None)` if it does not exist or has no migrations table.
pub fn applied(db: &Target) -> Result<Option<Vec<Applied>>, String> {
    match checked_file(&db.path)? {
        Some(file) => applied_in(&open_read_only(&file)?, &db.table),
        None => Ok(None),
    }
}

/// What the database applied, read after a crash that may have interrupted a migrate: the database is opened
/// read-write (never created), so that SQLite first rolls back the transaction the crash left in its journal, as the
/// app's next open would do; only a SELECT is run. Opened read-only, such a database cannot be read at all.
pub fn applied_after_crash(db: &Target) -> Result<Option<Vec<Applied>>, String> {
    let Some(file) = checked_file(&db.path)? else { return Ok(None) };
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(&file, flags)
        .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    applied_in(&conn, &db.table)
}

/// sha256 hex of a file's text, as drizzle's migrator stores it.
pub fn sql_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Disagreements between the migration folder and what the database applied, as the folder's migrator sees them:
/// 0.x's matches nothing but `created_at` against `when`, 1.0's matches names.
pub fn drift(layout: Layout, drizzle: Option<&Folder>, entries: &[Entry], applied: &[Applied]) -> Vec<Drift> {
    let mut out = Vec::new();
    let newest = applied.iter().map(|a| a.created_at).max();
    if layout == Layout::Journal && applied.iter().any(|a| a.name.is_some()) {
        out.push(Drift::new(
            "layout-mismatch",
            "the database was migrated by drizzle-kit 1.0 (its migrations table names each migration), but drizzle/ \
             is in drizzle-kit 0.x's journal layout: 0.x's migrator reads that table by time only, and 1.0's refuses \
             a journal",
            None,
        ));
    }
    let mut entries = entries.to_vec();
    if layout == Layout::Folders
        && let Some(folder) = drizzle
    {
        with_hashes(folder, &mut entries);
    }
    let matched = matching(layout, &entries, applied);
    for (row, found) in &matched.rows {
        match found {
            None => {
                let what = match &row.name {
                    Some(name) => format!("the database applied {name}, which drizzle/ does not have"),
                    None => format!(
                        "the database applied a migration (created_at {}, sha256 {}…) that drizzle/ does not have",
                        row.created_at,
                        row.hash.chars().take(12).collect::<String>()
                    ),
                };
                let more = if layout == Layout::Folders && row.name.is_none() {
                    ": drizzle-kit 1.0's migrator stops on it when it upgrades its table"
                } else {
                    ""
                };
                out.push(Drift::new("migration-missing", format!("{what}{more}"), row.name.as_deref()));
            }
            Some(e) => {
                if let Some(folder) = drizzle
                    && let Ok(Some(hash)) = journal::sql_hash(folder, e)
                    && hash != row.hash
                {
                    out.push(Drift::new(
                        "migration-edited",
                        format!("{} was changed after the database applied it", e.file),
                        Some(&e.tag),
                    ));
                }
            }
        }
    }
    for e in matched.unapplied {
        match newest {
            Some(n) if layout == Layout::Journal && e.when <= n => out.push(Drift::new(
                "migration-skipped",
                format!(
                    "{} is not applied, and the migrator will never apply it: its when ({}) is not after the newest \
                     applied migration ({n})",
                    e.tag, e.when
                ),
                Some(&e.tag),
            )),
            _ => out.push(Drift::new("migration-pending", format!("{} is not applied to the database yet", e.tag), Some(&e.tag))),
        }
    }
    out
}

/// Journal faults of the migration folder `drizzle`, plus its drift against the database (`Err` says why there is
/// none to compare with); and whether the database was compared at all.
pub fn check(drizzle: &Path, db: Result<Database, String>) -> (Vec<Drift>, Checked) {
    // A missing folder has no faults, and applied nothing: whatever the database applied is missing from it.
    let folder = match Folder::open(drizzle) {
        Ok(f) => f,
        // Something else in its place is reported as a violation of the folder itself.
        Err(_) => return (Vec::new(), Checked::no("the migration folder cannot be read")),
    };
    let mut out = folder.as_ref().map(journal::faults_in).unwrap_or_default();
    let entries = match folder.as_ref().map(journal::read_in).transpose() {
        Ok(e) => e.flatten().unwrap_or_default(),
        Err(_) => return (out, Checked::no("the journal cannot be read")), // already reported
    };
    let layout = folder.as_ref().and_then(journal::layout_in).unwrap_or(Layout::Journal);
    let db = match db {
        Ok(Database::File(db)) => db,
        Ok(Database::Server(server)) => {
            // Unreachable, refused, no such database: said in `checked`, never a drift (nothing is wrong with the
            // folder, and nothing that does not need the database is refused).
            let checked = match server.applied() {
                Ok(rows) => {
                    out.extend(drift(layout, folder.as_ref(), &entries, &rows.unwrap_or_default()));
                    Checked::yes()
                }
                Err(why) => Checked::no(why),
            };
            return (out, Checked { server: Some(server.address.clone()), ..checked });
        }
        Err(why) => return (out, Checked::no(why)),
    };
    // A database without a migrations table has applied nothing.
    let rows = checked_file(&db.path).and_then(|file| match file {
        Some(f) => applied_in(&open_read_only(&f)?, &db.table).map(|rows| Some(rows.unwrap_or_default())),
        None => Ok(None),
    });
    let checked = match rows {
        Ok(Some(rows)) => {
            out.extend(drift(layout, folder.as_ref(), &entries, &rows));
            Checked::yes()
        }
        // No database yet: the first migrate creates it.
        Ok(None) => Checked::no(format!("{} does not exist yet", db.path.display())),
        Err(why) => {
            out.push(Drift::new("database-unreadable", why.clone(), None));
            Checked::no(why)
        }
    };
    (out, checked.at(&db.path))
}

/// Where a replay of the pending migrations failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFailure {
    pub migration: String,
    pub statement: String,
    pub error: String,
}

/// The migrations migrate would run on a database that applied `applied`, in order: 0.x's migrator runs those after
/// the newest applied, 1.0's every one the database does not hold.
pub fn to_run(folder: &Folder, applied: &[Applied]) -> Result<Vec<Entry>, String> {
    let mut entries = journal::read_in(folder)?.unwrap_or_default();
    let layout = journal::layout_in(folder).unwrap_or(Layout::Journal);
    if layout == Layout::Journal {
        let newest = applied.iter().map(|a| a.created_at).max();
        return Ok(entries.into_iter().filter(|e| newest.is_none_or(|n| e.when > n)).collect());
    }
    with_hashes(folder, &mut entries);
    let run: Vec<Entry> = matching(layout, &entries, applied).unapplied.into_iter().cloned().collect();
    Ok(run)
}

/// The statements migrate would run on a database that applied `applied`, in order, each with its migration's tag.
pub fn pending_statements(drizzle: &Path, applied: &[Applied]) -> Result<Vec<(String, String)>, String> {
    let folder = Folder::open(drizzle).map_err(|e| e.to_string())?.ok_or("the migration folder is gone")?;
    let mut out = Vec::new();
    for e in to_run(&folder, applied)? {
        let text = journal::sql(&folder, &e)?.ok_or_else(|| format!("{} is missing", e.file))?;
        let text = String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", e.file))?;
        for statement in statements(&text).into_iter().filter(|s| !holds_no_sql(s)) {
            out.push((e.tag.clone(), statement.trim().to_string()));
        }
    }
    Ok(out)
}

/// The largest database the replay copies into memory.
pub const REPLAY_MAX_BYTES: u64 = 1 << 30;

/// The statements of a migration as drizzle's migrator runs them: the text split at `--> statement-breakpoint`, each
/// piece run on its own.
pub fn statements(text: &str) -> Vec<&str> {
    text.split("--> statement-breakpoint").collect()
}

/// Whether a statement holds no SQL at all (only whitespace and comments): libsql refuses to run one
/// (`SQLITE_UNKNOWN_0: not an error`), better-sqlite3 too ("contains no statements").
fn holds_no_sql(statement: &str) -> bool {
    let mut rest = statement.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map(|(_, r)| r).unwrap_or("").trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.split_once("*/") {
                Some((_, r)) => rest = r.trim_start(),
                None => return true,
            }
        } else {
            return rest.trim_start_matches(';').trim().is_empty();
        }
    }
}

/// A connection set up to run migrations as strictly as drizzle's SQLite drivers do: double-quoted strings are
/// identifiers, never literals (the drivers' SQLite is built so: `"col"` of a missing column is `no such column`,
/// not the string 'col'); defensive mode (no writes to the schema tables, no corrupting pragmas); no attached
/// databases (so neither ATTACH nor VACUUM INTO can reach a file); extensions stay off.
fn strict(conn: &Connection) -> Result<(), String> {
    use rusqlite::config::DbConfig;
    use rusqlite::limits::Limit;
    let set = |c, v| conn.set_db_config(c, v).map(|_| ()).map_err(|e| e.to_string());
    set(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    set(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    set(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0).map_err(|e| e.to_string())?;
    Ok(())
}

/// Replays the migrations `migrate` would apply on an in-memory copy of the database (taken with SQLite's backup
/// API, so the file is only read; capped at [`REPLAY_MAX_BYTES`]), as strictly as the driver (see [`strict`]),
/// statement by statement as drizzle's migrator splits them, in one transaction that is thrown away. Returns the first
/// failing statement.
pub fn replay(drizzle: &Path, db: &Target) -> Result<Option<ReplayFailure>, String> {
    let mut copy = Connection::open_in_memory().map_err(|e| e.to_string())?;
    strict(&copy)?;
    if let Some(file) = checked_file(&db.path)? {
        let source = open_read_only(&file)?;
        let size: u64 = source
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| format!("cannot read the size of {}: {e}", file.display()))?;
        if size > REPLAY_MAX_BYTES {
            return Err(format!(
                "{} is {} MiB, more than the {} MiB dreamerd copies to replay migrations",
                file.display(),
                size >> 20,
                REPLAY_MAX_BYTES >> 20
            ));
        }
        let backup = rusqlite::backup::Backup::new(&source, &mut copy)
            .map_err(|e| format!("cannot copy the database: {e}"))?;
        backup
            .run_to_completion(256, Duration::from_millis(10), None)
            .map_err(|e| format!("cannot copy the database: {e}"))?;
    }
    let applied = applied_in(&copy, &db.table)?.unwrap_or_default();
    let folder = Folder::open(drizzle).map_err(|e| e.to_string())?.ok_or("the migration folder is gone")?;
    let entries = to_run(&folder, &applied)?;
    let tx = copy.transaction().map_err(|e| e.to_string())?;
    for e in &entries {
        let text = journal::sql(&folder, e)?.ok_or_else(|| format!("{} is missing", e.file))?;
        let text = String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", e.file))?;
        for statement in statements(&text) {
            let failed = if holds_no_sql(statement) {
                Some("the statement holds no SQL, only comments or whitespace: the driver refuses it (libsql: \
                      SQLITE_UNKNOWN_0: not an error)"
                    .to_string())
            } else {
                tx.execute_batch(statement).err().map(|e| e.to_string())
            };
            if let Some(error) = failed {
                return Ok(Some(ReplayFailure {
                    migration: e.tag.clone(),
                    statement: statement.trim().to_string(),
                    error,
                }));
            }
        }
    }
    drop(tx); // rolled back
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(idx: i64, when: i64, tag: &str) -> Entry {
        Entry { idx, when, tag: tag.into(), file: format!("{tag}.sql"), hash: None }
    }

    /// A migration folder with the given migrations (tag, sql), all pending.
    fn folder_with(dir: &Path, migrations: &[(&str, &str)]) -> PathBuf {
        let drizzle = dir.join("drizzle");
        fs::create_dir_all(drizzle.join("meta")).unwrap();
        let mut entries = Vec::new();
        for (i, (tag, sql)) in migrations.iter().enumerate() {
            fs::write(drizzle.join(format!("{tag}.sql")), sql).unwrap();
            entries.push(format!(
                r#"{{"idx":{i},"version":"6","when":{},"tag":"{tag}","breakpoints":true}}"#,
                1_700_000_000_000u64 + i as u64
            ));
        }
        fs::write(
            drizzle.join("meta/_journal.json"),
            format!(r#"{{"version":"7","dialect":"sqlite","entries":[{}]}}"#, entries.join(",")),
        )
        .unwrap();
        drizzle
    }

    #[test]
    fn the_replay_is_as_strict_as_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("local.db");
        Connection::open(&db).unwrap().execute_batch("CREATE TABLE x (id integer);").unwrap();
        let target = Target::new(db.clone());
        let run = |sql: &str| {
            let d = tempfile::tempdir_in(dir.path()).unwrap();
            let drizzle = folder_with(d.path(), &[("0000_a", sql)]);
            replay(&drizzle, &target).unwrap().map(|f| f.error)
        };
        // drizzle-kit's table rebuild over a column the table lacks: no string literal, a real error.
        let rebuild = "CREATE TABLE `__new_x` (`id` integer, `c` text);\n--> statement-breakpoint\n\
                       INSERT INTO `__new_x`(\"id\", \"c\") SELECT \"id\", \"c\" FROM `x`;";
        let err = run(rebuild).expect("fails");
        assert!(err.contains("no such column"), "{err}");
        assert!(run("-- nothing to do here\n").expect("fails").contains("holds no SQL"));
        assert!(run("CREATE TABLE y (id integer);\n--> statement-breakpoint\n/* later */").is_some());
        assert!(run("ATTACH DATABASE '/tmp/elsewhere.db' AS other;").is_some());
        let outside = dir.path().join("copied.db");
        let vacuum = format!("VACUUM INTO '{}';", outside.display());
        assert!(run(&vacuum).is_some());
        assert!(!outside.exists(), "VACUUM INTO never wrote a file");
        assert!(
            run("CREATE TABLE y (id integer);\n--> statement-breakpoint\nINSERT INTO y VALUES (1);")
                .is_none()
        );
        assert!(holds_no_sql("  -- a\n/* b */ ;\n"));
        assert!(!holds_no_sql("-- a\nSELECT 1"));
    }

    #[test]
    fn urls_of_local_files_only() {
        let root = Path::new("/p");
        assert_eq!(from_url(root, "file:data/app.db").unwrap(), Path::new("/p/data/app.db"));
        assert_eq!(from_url(root, "/abs/x.db").unwrap(), Path::new("/abs/x.db"));
        assert_eq!(from_url(root, "./local.db").unwrap(), Path::new("/p/local.db"));
        assert_eq!(from_url(root, "../dbs/app.db").unwrap(), Path::new("/dbs/app.db"));
        assert!(from_url(root, "libsql://remote.example").is_err());
        assert!(from_url(root, ":memory:").is_err());
    }

    #[test]
    fn drift_codes_against_a_real_database() {
        let dir = tempfile::tempdir().unwrap();
        let drizzle = dir.path().join("drizzle");
        fs::create_dir_all(&drizzle).unwrap();
        fs::write(drizzle.join("0000_a.sql"), "CREATE TABLE a (id integer);").unwrap();
        fs::write(drizzle.join("0001_b.sql"), "CREATE TABLE b (id integer);").unwrap();
        let db = dir.path().join("local.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE __drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at numeric)").unwrap();
        conn.execute(
            "INSERT INTO __drizzle_migrations (hash, created_at) VALUES (?1, 10)",
            [sql_hash(b"edited later")],
        )
        .unwrap();
        conn.execute("INSERT INTO __drizzle_migrations (hash, created_at) VALUES ('x', 30)", []).unwrap();
        let entries = vec![entry(0, 10, "0000_a"), entry(1, 20, "0001_b"), entry(2, 40, "0002_c")];
        let rows = applied(&Target::new(db.clone())).unwrap().unwrap();
        let folder = Folder::open(&drizzle).unwrap().unwrap();
        let mut codes: Vec<_> =
            drift(Layout::Journal, Some(&folder), &entries, &rows).into_iter().map(|d| d.code).collect();
        codes.sort();
        assert_eq!(
            codes,
            ["migration-edited", "migration-missing", "migration-pending", "migration-skipped"]
        );
    }

    #[test]
    fn drift_by_name_in_the_folder_layout() {
        let dir = tempfile::tempdir().unwrap();
        for (name, sql) in [("20240102030405_a", "A"), ("20240102030406_b", "B"), ("20240102030407_c", "C")] {
            fs::create_dir_all(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("migration.sql"), sql).unwrap();
        }
        let folder = Folder::open(dir.path()).unwrap().unwrap();
        let entries = journal::read_in(&folder).unwrap().unwrap();
        let named =
            |name: &str, hash: &str| Applied { hash: hash.into(), created_at: 0, name: Some(name.into()) };
        // a applied; b applied and edited since; an applied migration drizzle/ lacks; c pending (never "skipped",
        // though older rows exist: 1.0 runs it).
        let rows = vec![
            named("20240102030405_a", &sql_hash(b"A")),
            named("20240102030406_b", "other"),
            named("20230101000000_gone", "x"),
        ];
        let mut codes: Vec<_> =
            drift(Layout::Folders, Some(&folder), &entries, &rows).into_iter().map(|d| d.code).collect();
        codes.sort();
        assert_eq!(codes, ["migration-edited", "migration-missing", "migration-pending"]);
        // A table 1.0 has not upgraded: rows matched by their second, else by hash, as 1.0's upgrade does.
        let old = |at: i64, hash: &[u8]| Applied { hash: sql_hash(hash), created_at: at, name: None };
        let rows = vec![old(1_704_164_645_123, b"A"), old(1, b"B"), old(2, b"nothing")];
        let mut hashed = entries.clone();
        with_hashes(&folder, &mut hashed);
        let m = matching(Layout::Folders, &hashed, &rows);
        let tags: Vec<Option<&str>> = m.rows.iter().map(|(_, e)| e.map(|e| e.tag.as_str())).collect();
        assert_eq!(tags, [Some("20240102030405_a"), Some("20240102030406_b"), None]);
        assert_eq!(m.unapplied.iter().map(|e| e.tag.as_str()).collect::<Vec<_>>(), ["20240102030407_c"]);
        // A journal layout beside a table 1.0 named: a mismatch.
        let codes: Vec<_> =
            drift(Layout::Journal, None, &[], &[named("x", "y")]).into_iter().map(|d| d.code).collect();
        assert!(codes.contains(&"layout-mismatch".to_string()), "{codes:?}");
    }

    #[test]
    fn short_or_non_ascii_hashes_in_the_database_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![entry(0, 10, "0000_a")];
        let rows = vec![
            Applied { hash: "é".repeat(20), created_at: 99, name: None },
            Applied { hash: "ab".into(), created_at: 98, name: None },
        ];
        let folder = Folder::open(dir.path()).unwrap().unwrap();
        let drift = drift(Layout::Journal, Some(&folder), &entries, &rows);
        assert!(drift.iter().any(|d| d.message.contains("éééééééééééé…")), "{drift:?}");
        assert!(drift.iter().any(|d| d.message.contains("ab…")), "{drift:?}");
    }

    #[test]
    fn replay_finds_the_real_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let drizzle = dir.path().join("drizzle");
        fs::create_dir_all(drizzle.join("meta")).unwrap();
        fs::write(drizzle.join("meta/_journal.json"), r#"{"entries":[{"idx":0,"when":1,"tag":"0000_a"}]}"#)
            .unwrap();
        fs::write(
            drizzle.join("0000_a.sql"),
            "CREATE TABLE a (id integer);\n--> statement-breakpoint\nCREATE TABLE a (id integer);",
        )
        .unwrap();
        let db = dir.path().join("local.db");
        Connection::open(&db).unwrap().execute_batch("CREATE TABLE keep (x integer)").unwrap();
        let before = fs::read(&db).unwrap();
        let failure = replay(&drizzle, &Target::new(db.clone())).unwrap().unwrap();
        assert_eq!(failure.migration, "0000_a");
        assert!(failure.error.contains("table a already exists"), "{}", failure.error);
        assert_eq!(fs::read(&db).unwrap(), before);
    }
}
