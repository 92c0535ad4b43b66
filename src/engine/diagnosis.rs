//! Turning what drizzle-kit did into a diagnosis: a stable code, a message quoting the real error, and a hint
//! that follows the recovery workflow (restore, fix `src/schema.ts`, push again).

use serde::{Deserialize, Serialize};

use super::runner::{RunOutput, SpawnError};

/// Why a push failed, for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Stable, documented in the README's troubleshooting table.
    pub code: String,
    /// One line, quoting the real error where there is one.
    pub message: String,
    /// What to do next.
    pub hint: String,
}

impl Diagnosis {
    pub fn new(code: &str, message: impl Into<String>, hint: impl Into<String>) -> Diagnosis {
        Diagnosis { code: code.into(), message: message.into(), hint: hint.into() }
    }
}

const RECOVER: &str = "run `dreamer database restore`, fix src/schema.ts, then `dreamer push` again";

/// The hint of a diagnosis for a project never pushed with dreamerd: there is no push to restore, so the way out is
/// drizzle/ as it is (it was put back), the schema, git, or the development database.
pub fn for_first_push(mut d: Diagnosis) -> Diagnosis {
    if !d.hint.contains("restore") {
        return d;
    }
    d.hint = match d.code.as_str() {
        "out-of-sync" => "drizzle/ does not match what the database has: if drizzle/ was changed by hand, take it \
                          back from git (`git log -- drizzle/`); if the database was changed outside drizzle-kit \
                          migrate (drizzle-kit push, hand-run SQL), undo that or reset your development database; then \
                          `dreamer push` again"
            .into(),
        "drizzle-malformed" => "a snapshot in drizzle/meta/ cannot be read: take it back from git (`git log -- \
                                drizzle/meta/`), then `dreamer push` again"
            .into(),
        "snapshot-fork" => "two branches each generated a migration from the same snapshot and both were merged: \
                            keep the branch merged into (take the other's files out of drizzle/ with git), then \
                            `dreamer push` with the merged schema"
            .into(),
        _ => "drizzle/ is as it was before the push: fix the cause (src/schema.ts, the config or the database), then \
              `dreamer push` again"
            .into(),
    };
    d
}

/// The program could not be started at all.
pub fn spawn_failed(stage: &str, err: &SpawnError) -> Diagnosis {
    if err.error.kind() == std::io::ErrorKind::NotFound {
        Diagnosis::new(
            "drizzle-kit-missing",
            format!("cannot run {}: it is not installed", err.program.display()),
            "install the project's node packages (`npm install`, with drizzle-kit in devDependencies), \
             or point push.generate / push.migrate in the dreamerd config at your drizzle-kit",
        )
    } else {
        Diagnosis::new(
            "unknown",
            format!("cannot run {} for {stage}: {}", err.program.display(), err.error),
            "check that the program is executable, then push again",
        )
    }
}

/// The first line of `text` containing `needle`, trimmed, for quoting.
fn quote_line<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(needle)).map(str::trim)
}

/// Failures both stages share: a timeout, or a program that is not there (exit 127 from the shell or env).
fn common(stage: &str, out: &RunOutput, timeout_secs: u64) -> Option<Diagnosis> {
    if let Some(d) = refused_by_one_zero(stage, out) {
        return Some(d);
    }
    if out.timed_out {
        return Some(Diagnosis::new(
            "timeout",
            format!("drizzle-kit {stage} ran longer than {timeout_secs}s and was stopped"),
            "if it waits on a prompt, separate renames from other changes; otherwise raise push.timeout_secs",
        ));
    }
    let all = out.combined();
    if out.status.and_then(|s| s.code()) == Some(127) {
        let line = quote_line(&all, "No such file").unwrap_or("exit status 127");
        return Some(Diagnosis::new(
            "drizzle-kit-missing",
            format!("drizzle-kit {stage} could not start: {line}"),
            "install Node.js and the project's node packages (`npm install`), then push again",
        ));
    }
    None
}

/// What drizzle-kit 1.0's generate, migrate and check refuse before they do anything: a 0.x journal, and branches
/// whose migrations change the same thing.
fn refused_by_one_zero(stage: &str, out: &RunOutput) -> Option<Diagnosis> {
    let all = out.combined();
    if let Some(line) = quote_line(&all, "migrations folder format is outdated") {
        return Some(Diagnosis::new(
            "layout-kit-mismatch",
            format!("drizzle-kit {stage} refuses drizzle/: {line}"),
            "the project installs drizzle-kit 1.0 and drizzle/ is still a 0.x journal: run `dreamerd up`, which \
             converts it guarded (the folder and the database backed up, every migration's SQL checked, the \
             migrations table upgraded and verified); drizzle/ is as it was",
        ));
    }
    if all.contains("Conflicting migrations detected") {
        let conflicts: Vec<&str> = all.lines().map(str::trim).filter(|l| l.contains('⚠')).collect();
        let found = quote_line(&all, "Found ").unwrap_or("Conflicting migrations detected");
        return Some(Diagnosis::new(
            "branches-conflict",
            format!(
                "drizzle-kit {stage} stops: branches merged into drizzle/ change the same thing ({found}{})",
                if conflicts.is_empty() { String::new() } else { format!(": {}", conflicts.join("; ")) }
            ),
            "keep the migrations of the branch merged into: `dreamer database restore --push ID` with its push \
             (`dreamerd history`), then `dreamer push` with the merged schema, so the other branch's changes become \
             one new migration; drizzle/ is as it was",
        ));
    }
    None
}

/// Whether generate said the schema holds no change that needs SQL (`No schema changes, nothing to migrate`).
pub fn said_nothing_to_migrate(out: &RunOutput) -> bool {
    out.success() && out.combined().contains("nothing to migrate")
}

/// Judges `drizzle-kit generate`, which exits 0 on most errors: by its exit code and by what it printed.
pub fn judge_generate(out: &RunOutput, timeout_secs: u64) -> Option<Diagnosis> {
    if let Some(d) = common("generate", out, timeout_secs) {
        return Some(d);
    }
    let all = out.combined();
    // drizzle-kit 1.0 without a terminal: exit 2 and the questions, each with its answer.
    if all.contains("missing_hints") {
        return Some(unanswered(&crate::drizzle::hints::questions(&all), false));
    }
    if let Some(line) = quote_line(&all, "Interactive prompts require a TTY")
        .or_else(|| quote_line(&all, "created or renamed from another"))
    {
        return Some(Diagnosis::new(
            "ambiguous-change",
            format!("drizzle-kit cannot tell a rename from a delete plus an add: {line}"),
            "push the additions and the deletions separately: first add the new column or table in \
             src/schema.ts and push, then remove the old one and push again",
        ));
    }
    if let Some(line) = quote_line(&all, "No schema files found") {
        return Some(Diagnosis::new(
            "no-schema",
            format!("drizzle-kit found no schema: {line}"),
            "restore src/schema.ts (e.g. from git), then push again",
        ));
    }
    if let Some(line) = quote_line(&all, "is not of the latest version") {
        return Some(Diagnosis::new(
            "snapshot-outdated",
            format!(
                "drizzle-kit generate wrote nothing: {line} (it says \"Run drizzle-kit up\" and exits 0)"
            ),
            "run `dreamerd up`: it upgrades the snapshots with the installed drizzle-kit's `up` (only meta/ changes) \
             and records the result; then `dreamer push` again",
        ));
    }
    if let Some(line) = quote_line(&all, "which is a collision") {
        return Some(Diagnosis::new(
            "snapshot-fork",
            format!("drizzle-kit generate wrote nothing: {line}"),
            "two branches each generated a migration from the same snapshot and both were merged: restore the push \
             of the branch merged into (`dreamer database restore --push ID`), then `dreamer push` with the merged \
             schema",
        ));
    }
    if let Some(line) = quote_line(&all, "snapshot is of unsupported version") {
        return Some(Diagnosis::new(
            "drizzle-kit-outdated",
            format!("drizzle-kit generate wrote nothing: {line}"),
            "drizzle/ was written by a newer drizzle-kit than the one installed: update drizzle-kit in the project \
             (`npm install -D drizzle-kit@latest`), then push again",
        ));
    }
    if let Some(line) = quote_line(&all, "SyntaxError").filter(|l| l.contains("JSON")) {
        return Some(Diagnosis::new(
            "drizzle-malformed",
            format!("drizzle-kit cannot read a snapshot in drizzle/: {line}"),
            RECOVER,
        ));
    }
    if let Some(line) = quote_line(&all, "data is malformed") {
        return Some(Diagnosis::new(
            "drizzle-malformed",
            format!("drizzle-kit cannot read drizzle/: {line}"),
            RECOVER,
        ));
    }
    let error_line = out
        .stderr
        .lines()
        .chain(out.stdout.lines())
        .map(str::trim)
        .find(|l| l.starts_with("Error") || l.contains("ERROR:"));
    let schema_line = quote_line(&all, "schema.ts:").filter(|l| l.contains("ERROR") || l.contains("at "));
    if let Some(line) = error_line {
        if schema_line.is_some() || line.contains("Transform failed") || all.contains("schema.ts") {
            let detail = quote_line(&all, "ERROR:").unwrap_or(line);
            return Some(Diagnosis::new(
                "schema-error",
                format!("src/schema.ts does not compile or throws: {detail}"),
                "fix src/schema.ts (it must compile and run without throwing), then push again",
            ));
        }
        return Some(Diagnosis::new(
            "unknown",
            format!("drizzle-kit generate reported an error: {line}"),
            "read the full output above (also kept in the quarantine folder), fix the cause, then push again",
        ));
    }
    if !out.success() {
        return Some(Diagnosis::new(
            "unknown",
            format!("drizzle-kit generate failed with {}", status_text(out)),
            "read the full output above (also kept in the quarantine folder), fix the cause, then push again",
        ));
    }
    None
}

/// drizzle-kit 1.0's questions that the push's `--rename` and `--create` do not answer (`answered`: it was given
/// some).
pub fn unanswered(questions: &[crate::drizzle::hints::Question], answered: bool) -> Diagnosis {
    let asked: Vec<String> = questions.iter().map(|q| q.asked()).collect();
    let flags: Vec<String> = questions.iter().map(|q| format!("for {}: {}", q.shown(), q.flags())).collect();
    Diagnosis::new(
        "ambiguous-change",
        format!(
            "drizzle-kit cannot tell a rename from a delete plus an add, and asks{}: {}",
            if answered { " what --rename and --create do not answer" } else { "" },
            if asked.is_empty() {
                "(its questions are in generate.log)".to_string()
            } else {
                asked.join("; ")
            }
        ),
        format!(
            "answer on the command line, `dreamer push` with {}; nothing was changed",
            if flags.is_empty() {
                "`--rename OLD=NEW` or `--create NAME`".to_string()
            } else {
                flags.join("; ")
            }
        ),
    )
}

/// Judges `drizzle-kit up` by its exit status.
pub fn judge_up(out: &RunOutput, timeout_secs: u64) -> Option<Diagnosis> {
    if let Some(d) = common("up", out, timeout_secs) {
        return Some(d);
    }
    let all = out.combined();
    let line = all.lines().map(str::trim).find(|l| l.starts_with("Error") || l.contains("ERROR"));
    if out.success() && line.is_none() {
        return None;
    }
    Some(Diagnosis::new(
        "unknown",
        format!("drizzle-kit up failed: {}", line.map(String::from).unwrap_or_else(|| status_text(out))),
        "drizzle/ is as it was; read up.log in the quarantine folder, fix the cause, then `dreamerd up` again",
    ))
}

/// Judges `drizzle-kit migrate`. It fails with exit 1 and no error text, so the message may only be generic here;
/// a caller that can replay the migration finds the real error.
pub fn judge_migrate(out: &RunOutput, timeout_secs: u64) -> Option<Diagnosis> {
    if let Some(d) = common("migrate", out, timeout_secs) {
        return Some(d);
    }
    if out.success() {
        return None;
    }
    let all = out.combined();
    if all.contains("Please provide required params") {
        let missing: Vec<&str> = all.lines().map(str::trim).filter(|l| l.starts_with("[x]")).collect();
        let url = missing.iter().any(|l| l.contains("url"));
        return Some(Diagnosis::new(
            if url { "database-url-missing" } else { "config-params-missing" },
            format!(
                "drizzle-kit migrate found no {} in the drizzle config: {}",
                if url { "database URL" } else { "connection settings" },
                if missing.is_empty() {
                    "Please provide required params".to_string()
                } else {
                    missing.join(", ")
                }
            ),
            "the config's dbCredentials are undefined in the environment of this command: set the variable the \
             config reads (process.env.…), in the shell or in the .env file the config loads, then push again; \
             drizzle/ is as it was",
        ));
    }
    if let Some(line) =
        quote_line(&all, "please install either of").or_else(|| quote_line(&all, "please install"))
    {
        return Some(Diagnosis::new(
            "driver-missing",
            format!("drizzle-kit migrate has no database driver: {line}"),
            "install the driver the config's dialect needs in the project (e.g. `npm install pg`), then push again; \
             drizzle/ is as it was",
        ));
    }
    // drizzle-kit 1.0 says why: `[✗] Error during migration:` and the driver's message on the next line.
    let said = all
        .lines()
        .skip_while(|l| !l.contains("Error during migration"))
        .skip(1)
        .map(str::trim)
        .find(|l| !l.is_empty());
    if let Some(d) = classify_database_error(said.unwrap_or(&all), None) {
        return Some(d);
    }
    if let Some(line) = said {
        return Some(Diagnosis::new(
            "unknown",
            format!("drizzle-kit migrate failed: {line}"),
            format!("the database was not changed (pending migrations run in one transaction); {RECOVER}"),
        ));
    }
    Some(Diagnosis::new(
        "unknown",
        format!(
            "drizzle-kit migrate failed with {} and printed no error (a known drizzle-kit trap)",
            status_text(out)
        ),
        format!("the database was not changed (pending migrations run in one transaction); {RECOVER}"),
    ))
}

/// Classifies a database error text, wherever it came from. The message quotes `quote` when given (the error
/// with its failing statement, say), else the line of `text` that matched.
pub fn classify_database_error(text: &str, quote: Option<&str>) -> Option<Diagnosis> {
    // SQLite's words, then the SQLSTATEs and MySQL error numbers the server readers quote: a relation or column that
    // already exists, or does not.
    let out_of_sync = [
        "already exists",
        "duplicate column name",
        "no such column",
        "no such table",
        "(42P07)",
        "(42701)",
        "(42703)",
        "(42P01)",
        "(1050)",
        "(1060)",
        "(1054)",
        "(1146)",
        "(1051)",
        "(1091)",
    ];
    for needle in out_of_sync {
        if let Some(line) = quote_line(text, needle) {
            let line = quote.unwrap_or(line);
            return Some(Diagnosis::new(
                "out-of-sync",
                format!("drizzle/ and the database disagree: {line}"),
                "drizzle/ no longer matches what the database has: if drizzle/ was changed, run `dreamer database \
                 restore` to put it back to the last successful push; if the database was changed outside dreamerd \
                 (drizzle-kit push, hand-run SQL), undo that change or reset your development database; then \
                 `dreamer push` again",
            ));
        }
    }
    if let Some(line) = quote_line(text, "holds no SQL") {
        let line = quote.unwrap_or(line);
        return Some(Diagnosis::new(
            "empty-migration",
            format!("a migration holds no SQL, which the driver refuses: {line}"),
            "write the migration's SQL in its .sql (a custom migration opened by `dreamerd push --custom` must hold \
             at least one statement), then `dreamer push` again",
        ));
    }
    let not_null = quote_line(text, "Cannot add a NOT NULL column with default value NULL")
        .or_else(|| quote_line(text, "(23502)").filter(|_| quote.is_some_and(|q| q.contains("ADD COLUMN"))));
    if let Some(line) = not_null {
        let line = quote.unwrap_or(line);
        return Some(Diagnosis::new(
            "not-null-without-default",
            format!("the migration adds a NOT NULL column without a default to a table with rows: {line}"),
            "in src/schema.ts give the column a .default(...), or make it nullable, or add it nullable in one push \
             and make it NOT NULL in the next; then `dreamer push` again",
        ));
    }
    None
}

fn status_text(out: &RunOutput) -> String {
    match out.status {
        Some(s) => match s.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("{s}"),
        },
        None => "no exit status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn out(code: i32, stdout: &str, stderr: &str) -> RunOutput {
        RunOutput {
            status: Some(std::process::ExitStatus::from_raw(code << 8)),
            timed_out: false,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    // Texts measured from drizzle-kit 0.31.11 (see DRIZZLE.md); the end-to-end tests produce them for real.
    #[test]
    fn generate_texts() {
        let tty = "Error: Interactive prompts require a TTY terminal (process.stdin.isTTY or process.stdout.isTTY is false).";
        assert_eq!(judge_generate(&out(0, "", tty), 300).unwrap().code, "ambiguous-change");
        let missing = "Error  No schema files found for path config ['./src/schema.ts']";
        assert_eq!(judge_generate(&out(1, missing, ""), 300).unwrap().code, "no-schema");
        let syntax = "Error: Transform failed with 1 error:\n/p/src/schema.ts:6:0: ERROR: Expected identifier but found end of file";
        let d = judge_generate(&out(0, "", syntax), 300).unwrap();
        assert_eq!(d.code, "schema-error");
        assert!(d.message.contains("Expected identifier"), "{}", d.message);
        assert!(
            judge_generate(&out(0, "[✓] Your SQL migration file ➜ drizzle/0000_x.sql", ""), 300).is_none()
        );
    }

    #[test]
    fn drizzle_kit_1_0_texts() {
        // Measured with drizzle-kit 1.0.0-rc.5 (see the README's drizzle-kit 1.0 section).
        let outdated = out(1, "", "Your migrations folder format is outdated, please run drizzle-kit up");
        for judged in
            [judge_generate(&outdated, 300), judge_migrate(&outdated, 300), judge_up(&outdated, 300)]
        {
            assert_eq!(judged.unwrap().code, "layout-kit-mismatch");
        }
        let conflict = "\n Conflicting migrations detected  Found 1 conflict across 2 migrations\n\n  drizzle/20261126054604_a\n  \
                        ├── drizzle/20261126054630_b_email\n  │   └─ ⚠ add_column: email on users table\n";
        let d = judge_generate(&out(1, "", conflict), 300).unwrap();
        assert_eq!(d.code, "branches-conflict");
        assert!(d.message.contains("add_column: email on users table"), "{}", d.message);
        // migrate says why, after the spinner.
        let failed = "[⣷] applying migrations...\x1b[2K\x1b[1G[✗] Error during migration:\nSQLITE_ERROR: SQLITE_ERROR: \
                      duplicate column name: age";
        assert_eq!(judge_migrate(&out(1, failed, ""), 300).unwrap().code, "out-of-sync");
        let other = "[✗] Error during migration:\nSQLITE_ERROR: SQLITE_ERROR: near \";\": syntax error";
        let d = judge_migrate(&out(1, other, ""), 300).unwrap();
        assert!(
            d.message.contains("near \";\": syntax error") && !d.message.contains("printed no error"),
            "{}",
            d.message
        );
        // The questions of a rename, and the flags that answer them.
        let asked = "missing_hints: 1 unresolved decisions\n   Add to --hints:\n     { \"type\": \"create\", \"kind\": \
                     \"column\", \"entity\": [\"public\", \"users\", \"mail\"] }\n";
        let d = judge_generate(&out(2, asked, ""), 300).unwrap();
        assert_eq!(d.code, "ambiguous-change");
        assert!(d.hint.contains("--rename users.OLD=users.mail"), "{}", d.hint);
    }

    #[test]
    fn texts_that_make_generate_write_nothing() {
        let outdated =
            "drizzle/meta/0000_snapshot.json/snapshot.json is not of the latest version\nRun drizzle-kit up";
        assert_eq!(judge_generate(&out(0, outdated, ""), 300).unwrap().code, "snapshot-outdated");
        let fork = "Error: [drizzle/meta/0001_snapshot.json, drizzle/meta/0002_snapshot.json] are pointing to a parent \
                    snapshot: drizzle/meta/0001_snapshot.json/snapshot.json which is a collision.";
        assert_eq!(judge_generate(&out(0, fork, ""), 300).unwrap().code, "snapshot-fork");
        let newer = "Info: drizzle/meta/0000_snapshot.json snapshot is of unsupported version, please update drizzle-kit";
        assert_eq!(judge_generate(&out(0, newer, ""), 300).unwrap().code, "drizzle-kit-outdated");
        let json = "SyntaxError: Expected double-quoted property name in JSON at position 40";
        assert_eq!(judge_generate(&out(0, "", json), 300).unwrap().code, "drizzle-malformed");
        assert!(said_nothing_to_migrate(&out(0, "No schema changes, nothing to migrate 😴", "")));
    }

    #[test]
    fn migrate_texts_of_a_config_without_credentials() {
        let url = "Error  Please provide required params:\n    [x] url: undefined";
        let d = judge_migrate(&out(1, url, ""), 300).unwrap();
        assert_eq!(d.code, "database-url-missing");
        assert!(d.message.contains("[x] url: undefined"), "{}", d.message);
        let driver = "To connect to Postgres database - please install either of 'pg', 'postgres', \
                      '@neondatabase/serverless' or '@vercel/postgres' drivers";
        assert_eq!(judge_migrate(&out(1, "", driver), 300).unwrap().code, "driver-missing");
        let first = for_first_push(judge_migrate(&out(1, "[⣷] applying migrations...", ""), 300).unwrap());
        assert!(!first.hint.contains("restore"), "{}", first.hint);
    }

    #[test]
    fn migrate_texts() {
        assert!(judge_migrate(&out(0, "[✓] migrations applied successfully!", ""), 300).is_none());
        assert_eq!(judge_migrate(&out(1, "[⣷] applying migrations...", ""), 300).unwrap().code, "unknown");
        let d = classify_database_error("SQLITE_ERROR: SQLITE_ERROR: table `users` already exists", None)
            .unwrap();
        assert_eq!(d.code, "out-of-sync");
        let d =
            classify_database_error("Cannot add a NOT NULL column with default value NULL", None).unwrap();
        assert_eq!(d.code, "not-null-without-default");
    }
}
