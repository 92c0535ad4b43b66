//! Nothing lost in the database either: a consistent copy of a SQLite database before every migrate, a guard
//! against rows that vanish in a migrate that succeeds (a table rebuild whose `DROP TABLE` cascades deletes where
//! foreign keys are enforced), and the way back (the copy put back through SQLite's backup API, so an app holding
//! the database open sees a consistent database).
//!
//! Copies live in `$XDG_STATE_HOME/dreamerd/databases/<checkout>/<time>.sqlite` (0600) with a `.json` beside each
//! saying which push the database stood at (`base`): the copy taken before a push's migrate is the database as the
//! push before it left it, with the app's writes until then.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::diagnosis::Diagnosis;
use super::{Engine, Sink, compact_timestamp, rfc3339};
use crate::drizzle::database::{self, Target};
use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::project::Project;

/// The format of a copy's `.json`.
pub const COPY_FORMAT: u32 = 1;

/// What a copy's `.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyMeta {
    pub format: u32,
    /// The push the checkout stood on when the copy was taken: the database is that push's state.
    pub base: Option<String>,
    pub taken_at: String,
    /// The database file it copies.
    pub source: PathBuf,
    pub bytes: u64,
}

/// One copy of a database.
#[derive(Debug, Clone)]
pub struct DbCopy {
    pub path: PathBuf,
    pub meta: CopyMeta,
}

/// What became of the copy before a migrate.
pub enum Copied {
    /// Taken.
    Yes(DbCopy),
    /// Not taken, and why (no database file yet, a server database, switched off, too large); the push goes on.
    No(String),
}

/// What a database holds, as far as the guard looks: rows per table, foreign-key violations per table, the schema
/// and the applied migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    rows: BTreeMap<String, i64>,
    fk_violations: BTreeMap<String, i64>,
    schema: BTreeSet<(String, String, Option<String>)>,
    migrations: BTreeSet<(String, i64)>,
}

fn shape(conn: &Connection, table: &str) -> std::result::Result<Shape, String> {
    let err = |e: rusqlite::Error| e.to_string();
    let mut schema = BTreeSet::new();
    let mut tables = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .map_err(err)?;
        for row in rows {
            let row = row.map_err(err)?;
            if row.0 == "table" {
                tables.push(row.1.clone());
            }
            schema.insert(row);
        }
    }
    let mut rows = BTreeMap::new();
    for t in &tables {
        let quoted = t.replace('"', "\"\"");
        let n: i64 =
            conn.query_row(&format!("SELECT count(*) FROM \"{quoted}\""), [], |r| r.get(0)).map_err(err)?;
        rows.insert(t.clone(), n);
    }
    let mut fk_violations = BTreeMap::new();
    {
        let mut stmt = conn.prepare("PRAGMA foreign_key_check").map_err(err)?;
        let found = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
        for t in found {
            *fk_violations.entry(t.map_err(err)?).or_insert(0) += 1;
        }
    }
    let mut migrations = BTreeSet::new();
    if tables.iter().any(|t| t == table) {
        let quoted = table.replace('"', "\"\"");
        let mut stmt = conn
            .prepare(&format!("SELECT hash, CAST(created_at AS INTEGER) FROM \"{quoted}\""))
            .map_err(err)?;
        let found = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(err)?;
        for m in found {
            migrations.insert(m.map_err(err)?);
        }
    }
    Ok(Shape { rows, fk_violations, schema, migrations })
}

/// Opens the database file read-only, never through a link.
fn open_ro(path: &Path, wait: Duration) -> std::result::Result<Connection, String> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(wait).map_err(|e| e.to_string())?;
    Ok(conn)
}

fn open_rw(path: &Path, wait: Duration) -> std::result::Result<Connection, String> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(wait).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Copies `from` into `to` with SQLite's backup API, waiting up to `wait` while another connection holds a lock
/// that keeps readers (or, for the destination, writers) out. `Err(None)` means the wait ran out.
fn backup(from: &Connection, to: &mut Connection, wait: Duration) -> std::result::Result<(), Option<String>> {
    use rusqlite::backup::{Backup, StepResult};
    let deadline = Instant::now() + wait;
    let copy = Backup::new(from, to).map_err(|e| Some(e.to_string()))?;
    loop {
        match copy.step(256).map_err(|e| {
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ) {
                None
            } else {
                Some(e.to_string())
            }
        }) {
            Ok(StepResult::Done) => return Ok(()),
            Ok(StepResult::More) => {}
            Ok(StepResult::Busy | StepResult::Locked) | Err(None) => {
                if Instant::now() >= deadline {
                    return Err(None);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The tables a migration's SQL drops by name (`DROP TABLE [IF EXISTS] name`, in any quoting).
pub fn dropped_tables(sql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for statement in sql.split([';', '\n']).map(str::trim) {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        if upper.len() >= 3 && upper[0] == "DROP" && upper[1] == "TABLE" {
            let name = if upper.len() >= 5 && upper[2] == "IF" && upper[3] == "EXISTS" {
                words[4]
            } else {
                words[2]
            };
            let name = name.rsplit('.').next().unwrap_or(name);
            out.insert(name.trim_matches(|c| matches!(c, '`' | '"' | '[' | ']')).to_string());
        }
    }
    out
}

/// Whether the rows guard judges a push: not one that applies the custom migration `custom`, whose statements are
/// the user's (said on `sink`).
pub(crate) fn judges_rows(custom: Option<&str>, new_sql: &[(String, String)], sink: &dyn Sink) -> bool {
    match custom.filter(|t| new_sql.iter().any(|(tag, _)| tag == t)) {
        Some(tag) => {
            sink.progress(&format!(
                "the rows guard does not judge this push: it applies the custom migration {tag}, whose statements are yours"
            ));
            false
        }
        None => true,
    }
}

/// The tables that have fewer rows `after` than `before` (`table lost 3 of 5 rows`), but those the new statements
/// drop and the migrations table. A table counted as `schema.table` is matched by its name.
pub(crate) fn rows_lost(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
    new_sql: &[(String, String)],
    migrations_table: &str,
) -> Vec<String> {
    let dropped: BTreeSet<String> = new_sql.iter().flat_map(|(_, sql)| dropped_tables(sql)).collect();
    let mut lost = Vec::new();
    for (table, n) in before {
        let name = table.rsplit('.').next().unwrap_or(table);
        if dropped.contains(name) || name == migrations_table {
            continue;
        }
        if let Some(m) = after.get(table)
            && m < n
        {
            lost.push(format!("{table} lost {} of {n} rows", n - m));
        }
    }
    lost
}

impl Engine {
    fn copies_dir(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("databases").join(project.local_key())
    }

    /// The project's SQLite database file, when there is one to copy.
    fn database_file(&self, project: &Project) -> std::result::Result<(Target, PathBuf), String> {
        let target = self.database(project)?;
        match database::checked_file(&target.path)? {
            Some(file) => Ok((target, file)),
            None => Err(format!("{} does not exist yet", target.path.display())),
        }
    }

    /// Whether the project's SQLite database file exists (there is something to copy).
    pub(crate) fn has_database(&self, project: &Project) -> bool {
        self.database_file(project).is_ok()
    }

    /// Copies the database before migrate. `Err` (a diagnosis) only when another process keeps it locked past
    /// `database.copy_wait_secs`: then nothing has run yet.
    pub(crate) fn copy_database(
        &self,
        project: &Project,
        base: Option<&str>,
        sink: &dyn Sink,
    ) -> Result<std::result::Result<Copied, Diagnosis>> {
        if !self.config.database.copy {
            return Ok(Ok(Copied::No("database.copy is off".into())));
        }
        let (_, file) = match self.database_file(project) {
            Ok(f) => f,
            Err(why) => return Ok(Ok(Copied::No(why))),
        };
        let wait = Duration::from_secs(self.config.database.copy_wait_secs);
        let source = match open_ro(&file, wait) {
            Ok(c) => c,
            Err(why) => return Ok(Ok(Copied::No(why))),
        };
        let size: u64 = source
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .unwrap_or(0);
        if size > self.config.database.copy_max_bytes {
            let why = format!(
                "{} is {} MiB, more than database.copy_max_bytes ({} MiB): this migrate runs WITHOUT a copy to put back",
                file.display(),
                size >> 20,
                self.config.database.copy_max_bytes >> 20
            );
            sink.progress(&format!("warning: {why}"));
            tracing::warn!(project = %project.root.display(), "{why}");
            return Ok(Ok(Copied::No(why)));
        }
        self.prepare_state()?;
        let dir = self.copies_dir(project);
        fsutil::create_private_dir(&dir).ctx("create", &dir)?;
        let stamp = compact_timestamp(SystemTime::now());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let path = dir.join(format!("{stamp}-{}.sqlite", &suffix[..8]));
        // 0600 before SQLite writes a byte into it.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_private()
            .open(&path)
            .ctx("create", &path)?;
        let mut dest = Connection::open(&path).map_err(|e| {
            Error::failed(format!("cannot open {}: {e}", path.display()), "check the state directory")
        })?;
        sink.progress(&format!("copying the database {} before migrate", file.display()));
        crate::fault::point("dbcopy:copying");
        match backup(&source, &mut dest, wait) {
            Ok(()) => {}
            Err(None) => {
                drop(dest);
                let _ = std::fs::remove_file(&path);
                return Ok(Err(Diagnosis::new(
                    "database-busy",
                    format!(
                        "another process has held a write lock on {} for more than {}s, so it cannot be copied before \
                         migrate (and migrate could not write to it either)",
                        file.display(),
                        wait.as_secs()
                    ),
                    "finish or stop what holds the database (an open transaction in the app, a tool), then push again; \
                     nothing was changed",
                )));
            }
            Err(Some(e)) => {
                drop(dest);
                let _ = std::fs::remove_file(&path);
                return Err(Error::failed(
                    format!("cannot copy the database {} before migrate: {e}", file.display()),
                    "free space in the state directory, or set database.copy = false to migrate without a copy",
                ));
            }
        }
        drop(dest);
        std::fs::File::open(&path).and_then(|f| f.sync_all()).ctx("sync", &path)?;
        let meta = CopyMeta {
            format: COPY_FORMAT,
            base: base.map(String::from),
            taken_at: rfc3339(SystemTime::now()),
            source: file,
            bytes: size,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("serialises");
        fsutil::atomic_write_mode(&path.with_extension("json"), &json, 0o600).ctx("write", &path)?;
        self.limit_copies(project, None);
        Ok(Ok(Copied::Yes(DbCopy { path, meta })))
    }

    /// The copies of this checkout's database, newest first.
    pub fn database_copies(&self, project: &Project) -> Vec<DbCopy> {
        let dir = self.copies_dir(project);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut out: Vec<DbCopy> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|meta_path| {
                let bytes = crate::safefs::read_file(&meta_path, 1 << 20, false).ok()??;
                let meta: CopyMeta = serde_json::from_slice(&bytes).ok()?;
                check_format(meta.format, COPY_FORMAT, || meta_path.display().to_string()).ok()?;
                let path = meta_path.with_extension("sqlite");
                crate::safefs::is_regular_file(&path).then_some(DbCopy { path, meta })
            })
            .collect();
        out.sort_by(|a, b| b.path.cmp(&a.path));
        out
    }

    /// Applies the retention of database copies to this checkout (the count and the total size; the age too when
    /// `now` is given). Returns what it removed (or, with `dry_run`, would remove).
    pub(crate) fn limit_copies_report(
        &self,
        project_dir: &Path,
        now: Option<SystemTime>,
        dry_run: bool,
    ) -> Vec<(PathBuf, String, u64)> {
        let r = &self.config.retention;
        let cutoff = now.map(|n| {
            n.checked_sub(Duration::from_secs(r.database_copy_days * 86_400))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        let Ok(entries) = std::fs::read_dir(project_dir) else { return Vec::new() };
        let mut copies: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sqlite"))
            .collect();
        copies.sort_by(|a, b| b.cmp(a));
        let mut total = 0u64;
        let mut removed = Vec::new();
        for (i, path) in copies.into_iter().enumerate() {
            let meta = std::fs::symlink_metadata(&path).ok();
            let bytes = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let at = meta.and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
            total += bytes;
            let old = cutoff.is_some_and(|c| at < c);
            if i >= r.database_copies || total > r.database_copy_max_bytes || old {
                if !dry_run {
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(path.with_extension("json"));
                }
                removed.push((path, rfc3339(at), bytes));
            }
        }
        removed
    }

    fn limit_copies(&self, project: &Project, now: Option<SystemTime>) {
        self.limit_copies_report(&self.copies_dir(project), now, false);
    }

    /// After a successful migrate: rows that vanished from a table the new migrations did not drop by name, or new
    /// foreign-key violations, are `rows-lost`. `None` when the database is whole (or cannot be compared here).
    pub(crate) fn guard_rows(
        &self,
        project: &Project,
        copy: &DbCopy,
        new_sql: &[(String, String)],
        custom: Option<&str>,
        sink: &dyn Sink,
    ) -> Option<Diagnosis> {
        if !judges_rows(custom, new_sql, sink) {
            return None;
        }
        let (target, file) = self.database_file(project).ok()?;
        let wait = Duration::from_secs(self.config.database.copy_wait_secs);
        let before = shape(&open_ro(&copy.path, wait).ok()?, &target.table).ok()?;
        let after = shape(&open_ro(&file, wait).ok()?, &target.table).ok()?;
        let mut lost = rows_lost(&before.rows, &after.rows, new_sql, &target.table);
        for (table, n) in &after.fk_violations {
            let had = before.fk_violations.get(table).copied().unwrap_or(0);
            if *n > had {
                lost.push(format!("{table} has {} new row(s) whose foreign key points nowhere", n - had));
            }
        }
        if lost.is_empty() {
            return None;
        }
        Some(Diagnosis::new(
            "rows-lost",
            format!(
                "migrate succeeded, but rows vanished from tables the migration did not drop: {} (a table rebuild's \
                 DROP TABLE cascades deletes where foreign keys are enforced)",
                lost.join("; ")
            ),
            "the database was put back from the copy taken before migrate, and drizzle/ rolled back. Make the change \
             safely: move the child rows aside first (a custom migration: `dreamerd push --custom`), or avoid the \
             rebuild (add a new column instead of changing one), or run the rebuild with foreign keys off",
        ))
    }

    /// Whether the database changed its schema or applied migrations since the copy (what a failed push may have
    /// done; the app's own writes change neither).
    pub(crate) fn database_changed(&self, project: &Project, copy: &DbCopy) -> bool {
        let Ok((target, file)) = self.database_file(project) else { return false };
        let wait = Duration::from_secs(self.config.database.copy_wait_secs);
        let before = open_ro(&copy.path, wait).and_then(|c| shape(&c, &target.table));
        let after = open_ro(&file, wait).and_then(|c| shape(&c, &target.table));
        match (before, after) {
            (Ok(b), Ok(a)) => b.schema != a.schema || b.migrations != a.migrations,
            _ => false,
        }
    }

    /// Puts the database back from `copy`, keeping the database as it is in `quarantine` first (both through the
    /// backup API, so an app holding it open sees a consistent database).
    pub(crate) fn put_back_database(
        &self,
        project: &Project,
        copy: &DbCopy,
        quarantine: &Path,
    ) -> Result<PathBuf> {
        self.put_back_database_from(project, &copy.path, quarantine)
    }

    /// [`Engine::put_back_database`] from the copy at `copy`. The database it replaces is kept in quarantine first,
    /// unless an earlier, interrupted run kept it already.
    pub(crate) fn put_back_database_from(
        &self,
        project: &Project,
        copy: &Path,
        quarantine: &Path,
    ) -> Result<PathBuf> {
        let (_, file) = self.database_file(project).map_err(|why| {
            Error::failed(format!("cannot put the database back: {why}"), "restore it from the copy by hand")
        })?;
        let wait = Duration::from_secs(self.config.database.copy_wait_secs);
        let failed = |what: &str, e: Option<String>| {
            Error::failed(
                format!(
                    "cannot {what}: {}",
                    e.unwrap_or_else(|| format!(
                        "the database stayed locked for more than {}s",
                        wait.as_secs()
                    ))
                ),
                format!(
                    "the copy from before migrate is {}: copy it over the database by hand",
                    copy.display()
                ),
            )
        };
        fsutil::create_private_dir(quarantine).ctx("create", quarantine)?;
        let kept = quarantine.join("database.sqlite");
        let live = open_rw(&file, wait).map_err(|e| failed("open the database", Some(e)))?;
        // Kept whole or not at all (written aside, then renamed), and only once: a rerun after a crash finds it.
        if !kept.exists() {
            let partial = quarantine.join("database.sqlite.partial");
            let _ = std::fs::remove_file(&partial);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_private()
                .open(&partial)
                .ctx("create", &partial)?;
            let mut keep =
                Connection::open(&partial).map_err(|e| failed("keep the database", Some(e.to_string())))?;
            backup(&live, &mut keep, wait).map_err(|e| failed("keep the database in quarantine", e))?;
            drop(keep);
            std::fs::rename(&partial, &kept).ctx("rename", &partial)?;
            fsutil::fsync_dir(quarantine).ctx("sync", quarantine)?;
        }
        crate::fault::point("dbcopy:putting-back");
        let source = open_ro(copy, wait).map_err(|e| failed("open the copy", Some(e)))?;
        let mut live = live;
        backup(&source, &mut live, wait).map_err(|e| failed("put the database back", e))?;
        Ok(kept)
    }

    /// The newest copy whose database is push `push`'s state.
    pub fn copy_for(&self, project: &Project, push: &str) -> Option<DbCopy> {
        self.database_copies(project).into_iter().find(|c| c.meta.base.as_deref() == Some(push))
    }
}

/// Files dreamerd creates for databases are the user's only.
trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_dropped_by_name() {
        let sql = "PRAGMA foreign_keys=OFF;--> statement-breakpoint\nDROP TABLE `users`;--> statement-breakpoint\n\
                   ALTER TABLE `__new_users` RENAME TO `users`;\ndrop table if exists \"old\";\nDROP TABLE main.[x];";
        let got: Vec<String> = dropped_tables(sql).into_iter().collect();
        assert_eq!(got, ["old", "users", "x"]);
    }

    #[test]
    fn sqlite_itself_cascades_a_drop_table_and_the_shape_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys=ON; CREATE TABLE p (id integer primary key); \
             CREATE TABLE c (id integer primary key, p integer references p(id) on delete cascade); \
             INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1), (2, 1), (3, 1);",
        )
        .unwrap();
        let before = shape(&conn, "__drizzle_migrations").unwrap();
        conn.execute_batch("BEGIN; DROP TABLE p; CREATE TABLE p (id integer primary key); COMMIT;").unwrap();
        let after = shape(&conn, "__drizzle_migrations").unwrap();
        assert_eq!(before.rows["c"], 3);
        assert_eq!(after.rows["c"], 0, "SQLite itself cascades the DROP TABLE");
    }
}
