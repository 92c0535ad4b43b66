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

/// Judges `drizzle-kit generate`, which exits 0 on most errors: by its exit code and by what it printed.
pub fn judge_generate(out: &RunOutput, timeout_secs: u64) -> Option<Diagnosis> {
    if let Some(d) = common("generate", out, timeout_secs) {
        return Some(d);
    }
    let all = out.combined();
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
    if let Some(d) = classify_database_error(&all, None) {
        return Some(d);
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
    let out_of_sync = ["already exists", "duplicate column name", "no such column", "no such table"];
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
    if let Some(line) = quote_line(text, "Cannot add a NOT NULL column with default value NULL") {
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
