//! Every diagnosis and drift code, produced by the real drizzle-kit on a real SQLite database, and the push that
//! succeeds after following each hint.

use std::fs;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::{Change, World};

/// A push that must fail: checks the contract's shape, that drizzle/ is byte-identical, and returns the report.
fn failed_push(w: &World, stage: &str, code: &str) -> Value {
    let before = w.tree("drizzle");
    let (exit, v) = w.json("dreamer", &["push"]);
    assert_eq!(exit, 1, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["stage"], stage, "{v}");
    assert_eq!(v["diagnosis"]["code"], code, "{v}");
    assert!(!v["diagnosis"]["hint"].as_str().unwrap().is_empty());
    assert_eq!(w.tree("drizzle"), before, "drizzle/ is byte-identical after the failed push");
    v
}

fn message(v: &Value) -> String {
    v["diagnosis"]["message"].as_str().unwrap().to_string()
}

fn edit_schema(w: &World, from: &str, to: &str) {
    let schema = w.read("src/schema.ts");
    assert!(schema.contains(from), "{schema}");
    w.write("src/schema.ts", &schema.replace(from, to));
}

const NAME: &str = "name: text('name').notNull(),";

fn db(w: &World) -> Connection {
    Connection::open(w.path("local.db")).unwrap()
}

#[test]
fn not_null_without_default_then_a_default_fixes_it() {
    let w = World::drizzle();
    w.push_ok();
    db(&w).execute("INSERT INTO users (name) VALUES ('ada')", []).unwrap();
    edit_schema(&w, NAME, &format!("{NAME}\n  age: integer('age').notNull(),"));
    let v = failed_push(&w, "migrate", "not-null-without-default");
    assert!(message(&v).contains("Cannot add a NOT NULL column with default value NULL"), "{v}");
    assert!(message(&v).contains("ALTER TABLE"), "quotes the failing statement: {v}");
    // The hint: give it a default.
    edit_schema(&w, "integer('age').notNull(),", "integer('age').notNull().default(0),");
    w.push_ok();
    let age: i64 = db(&w).query_row("SELECT age FROM users", [], |r| r.get(0)).unwrap();
    assert_eq!(age, 0);
}

#[test]
fn out_of_sync_when_the_database_was_changed_outside_dreamerd() {
    let w = World::drizzle();
    w.push_ok();
    // Someone ran `drizzle-kit push` or hand SQL: the table exists, no migration recorded it.
    db(&w).execute_batch("CREATE TABLE posts (id integer PRIMARY KEY, title text NOT NULL)").unwrap();
    let schema = w.read("src/schema.ts")
        + "\nexport const posts = sqliteTable('posts', {\n  id: integer('id').primaryKey(),\n  title: text('title').notNull(),\n});\n";
    w.write("src/schema.ts", &schema);
    let v = failed_push(&w, "migrate", "out-of-sync");
    assert!(
        message(&v).contains("table `posts` already exists")
            || message(&v).contains("table posts already exists"),
        "{v}"
    );
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("outside dreamerd"));
    // The hint: undo the outside change, then push.
    db(&w).execute_batch("DROP TABLE posts").unwrap();
    w.push_ok();
}

#[test]
fn ambiguous_rename_never_hangs_and_two_pushes_fix_it() {
    let w = World::drizzle();
    // Were the rename prompt to hang, the 10 s timeout would turn this into `timeout`, not `ambiguous-change`.
    w.config("[push]\ntimeout_secs = 10\n");
    w.push_ok();
    edit_schema(&w, NAME, "full_name: text('full_name').notNull(),");
    let v = failed_push(&w, "generate", "ambiguous-change");
    assert!(message(&v).contains("Interactive prompts require a TTY"), "{v}");
    // The hint: the addition first, then the deletion.
    edit_schema(
        &w,
        "full_name: text('full_name').notNull(),",
        &format!("{NAME}\n  full_name: text('full_name'),"),
    );
    w.push_ok();
    edit_schema(&w, &format!("{NAME}\n"), "");
    w.push_ok();
    let (_, check) = w.json("dreamerd", &["check"]);
    assert_eq!(check["state"], "clean");
    assert_eq!(check["drift"], serde_json::json!([]));
}

#[test]
fn schema_error_then_fixed() {
    let w = World::drizzle();
    w.push_ok();
    let good = w.read("src/schema.ts");
    w.write("src/schema.ts", &good[..good.len() - 5]);
    let v = failed_push(&w, "generate", "schema-error");
    assert!(message(&v).contains("ERROR:") || message(&v).contains("Error"), "{v}");
    w.write("src/schema.ts", &(good.clone() + "\nthrow new Error('boom from schema');\n"));
    let v = failed_push(&w, "generate", "schema-error");
    assert!(message(&v).contains("boom from schema"), "{v}");
    w.write("src/schema.ts", &(good + "\n// fixed\n"));
    w.push_ok();
}

#[test]
fn no_schema_then_restored() {
    let w = World::drizzle();
    w.push_ok();
    let good = w.read("src/schema.ts");
    fs::remove_file(w.path("src/schema.ts")).unwrap();
    let v = failed_push(&w, "generate", "no-schema");
    assert!(message(&v).contains("No schema files found"), "{v}");
    w.write("src/schema.ts", &good);
    w.push_ok();
}

#[test]
fn drizzle_kit_missing_then_installed() {
    let w = World::drizzle();
    w.push_ok();
    let link = fs::read_link(w.path("node_modules")).unwrap();
    fs::remove_file(w.path("node_modules")).unwrap();
    edit_schema(&w, NAME, &format!("{NAME}\n  bio: text('bio'),"));
    failed_push(&w, "generate", "drizzle-kit-missing");
    std::os::unix::fs::symlink(link, w.path("node_modules")).unwrap();
    w.push_ok();
}

#[test]
fn timeout_then_raised() {
    let w = World::drizzle();
    w.push_ok();
    // The real drizzle-kit behind a slow start (a cold npx, a loaded machine).
    w.config(
        "[push]\ngenerate = [\"/bin/sh\", \"-c\", \"sleep 30; exec ./node_modules/.bin/drizzle-kit generate\"]\ntimeout_secs = 1\n",
    );
    w.run("dreamerd", &["stop"]); // the daemon reads its configuration when it starts
    edit_schema(&w, NAME, &format!("{NAME}\n  bio: text('bio'),"));
    let v = failed_push(&w, "generate", "timeout");
    assert!(message(&v).contains("longer than 1s"), "{v}");
    w.config("");
    w.run("dreamerd", &["stop"]);
    w.push_ok();
}

#[test]
fn unknown_keeps_the_raw_output_and_quotes_the_real_error() {
    let w = World::drizzle();
    w.push_ok();
    db(&w)
        .execute_batch("INSERT INTO users (name) VALUES ('ada'); INSERT INTO users (name) VALUES ('ada');")
        .unwrap();
    edit_schema(&w, "import { integer,", "import { uniqueIndex, integer,");
    edit_schema(&w, "});", "}, (t) => [uniqueIndex('users_name_unique').on(t.name)]);");
    let v = failed_push(&w, "migrate", "unknown");
    assert!(message(&v).contains("UNIQUE constraint failed"), "{v}");
    let quarantine = std::path::PathBuf::from(v["quarantine"].as_str().unwrap());
    let log = fs::read_to_string(quarantine.join("migrate.log")).unwrap();
    assert!(log.contains("applying migrations"), "drizzle-kit's raw output is kept: {log}");
    // Fix the data the migration trips on, then push.
    db(&w)
        .execute_batch("DELETE FROM users WHERE rowid NOT IN (SELECT min(rowid) FROM users GROUP BY name)")
        .unwrap();
    w.push_ok();
}

fn drift_codes(w: &World) -> Vec<String> {
    let (_, v) = w.json("dreamerd", &["check"]);
    v["drift"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap().to_string()).collect()
}

fn two_pushes(w: &World) -> (String, String) {
    let first = w.push_ok();
    edit_schema(w, NAME, &format!("{NAME}\n  bio: text('bio'),"));
    let second = w.push_ok();
    (first, second)
}

#[test]
fn database_drift_codes_from_a_real_database() {
    let w = World::drizzle();
    let (first, second) = two_pushes(&w);
    assert!(drift_codes(&w).is_empty());

    // An old drizzle/ put back: the database applied a migration drizzle/ does not have.
    let (code, _) = w.json("dreamerd", &["restore", "--push", &first]);
    assert_eq!(code, 0);
    // ...and the push the database is at is named first.
    assert_eq!(drift_codes(&w), ["database-other-push", "migration-missing"]);
    let (code, check) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "drift makes check exit 1");
    assert!(check["violations"].as_array().unwrap().is_empty(), "an older push is no violation: {check}");
    assert_eq!(check["last_push"]["id"], first.as_str(), "the checkout stands on the older push: {check}");
    assert_eq!(check["last_push"]["via"], "restore", "{check}");
    // The daemon's status carries the same drift.
    let s = w.status();
    assert_eq!(s["drift"][1]["code"], "migration-missing", "{s}");
    assert_eq!(w.status()["database_push"], second.as_str());
    // A plain restore keeps the push the checkout stands on; the way back is the push that matches the database.
    let (_, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(v["push_id"], first.as_str());
    assert_eq!(drift_codes(&w), ["database-other-push", "migration-missing"]);
    w.json("dreamer", &["database", "restore", "--push", &second]);
    assert!(drift_codes(&w).is_empty());

    // A colleague's branch migrated the shared development database: drizzle/ is untouched, yet the precheck
    // refuses to push into a certain `table already exists`.
    db(&w)
        .execute("INSERT INTO __drizzle_migrations (hash, created_at) VALUES ('feedface', 9999999999999)", [])
        .unwrap();
    assert_eq!(drift_codes(&w), ["migration-missing"]);
    let v = failed_push(&w, "precheck", "migration-missing");
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("restore"));
    db(&w).execute("DELETE FROM __drizzle_migrations WHERE hash = 'feedface'", []).unwrap();
    w.push_ok();

    // A journal entry the migrator will skip: its `when` is older than the newest applied one.
    let tags: Vec<String> = w.tree("drizzle").into_keys().filter(|k| k.ends_with(".sql")).collect();
    let first_tag = tags[0].trim_end_matches(".sql").to_string();
    let hash = crate_hash(&w.tree("drizzle")[&tags[0]]);
    db(&w).execute("DELETE FROM __drizzle_migrations WHERE hash = ?1", [hash]).unwrap();
    assert_eq!(drift_codes(&w), ["migration-skipped"]);
    let (_, check) = w.json("dreamerd", &["check"]);
    assert_eq!(check["drift"][0]["migration"], first_tag.as_str());
    let v = failed_push(&w, "precheck", "migration-skipped");
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("reset your development database"));
    // Following the hint: a fresh development database, then a push applies everything.
    fs::remove_file(w.path("local.db")).unwrap();
    w.push_ok();
    assert!(drift_codes(&w).is_empty());
}

fn crate_hash(bytes: &[u8]) -> String {
    dreamerd::drizzle::database::sql_hash(bytes)
}

#[test]
fn pending_and_edited_migrations() {
    let w = World::drizzle();
    w.push_ok();
    // A fresh development database: everything is pending, and a push applies it.
    fs::remove_file(w.path("local.db")).unwrap();
    Connection::open(w.path("local.db")).unwrap().execute_batch("PRAGMA user_version = 1").unwrap();
    assert_eq!(drift_codes(&w), ["migration-pending"]);
    let (code, _) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    w.push_ok();
    assert!(drift_codes(&w).is_empty());

    // An applied migration edited by hand: both a violation and drift.
    let sql = w.tree("drizzle").into_keys().find(|k| k.ends_with(".sql")).unwrap();
    w.write(&format!("drizzle/{sql}"), "-- rewritten after it ran");
    assert_eq!(drift_codes(&w), ["migration-edited"]);
}

#[test]
fn journal_fault_codes_from_real_folders() {
    let w = World::drizzle();
    two_pushes(&w);
    let pushed = w.tree("drizzle");
    let sqls: Vec<String> = pushed.keys().filter(|k| k.ends_with(".sql")).cloned().collect();
    let journal = String::from_utf8(pushed["meta/_journal.json"].clone()).unwrap();
    let mut parsed: Value = serde_json::from_str(&journal).unwrap();
    let cases: Vec<(&str, Change)> = vec![
        ("journal-unreadable", Box::new(|| w.write("drizzle/meta/_journal.json", "{ not json"))),
        (
            "journal-missing-sql",
            Box::new(|| fs::remove_file(w.path(&format!("drizzle/{}", sqls[1]))).unwrap()),
        ),
        (
            "journal-missing-snapshot",
            Box::new(|| fs::remove_file(w.path("drizzle/meta/0001_snapshot.json")).unwrap()),
        ),
        (
            "sql-not-in-journal",
            Box::new(|| w.write("drizzle/0002_hand_written.sql", "CREATE TABLE x (id integer);")),
        ),
        (
            "snapshot-chain",
            Box::new(|| {
                let snap = w.read("drizzle/meta/0001_snapshot.json");
                let mut v: Value = serde_json::from_str(&snap).unwrap();
                v["prevId"] = "00000000-0000-0000-0000-00000000dead".into();
                w.write("drizzle/meta/0001_snapshot.json", &v.to_string());
            }),
        ),
    ];
    for (code, change) in cases {
        change();
        let codes = drift_codes(&w);
        assert!(codes.contains(&code.to_string()), "{code} in {codes:?}");
        w.json("dreamer", &["database", "restore"]);
        assert!(drift_codes(&w).is_empty());
    }
    // Two branches merged: entries out of order, a duplicate number.
    let entries = parsed["entries"].as_array_mut().unwrap();
    let when0 = entries[0]["when"].clone();
    entries[1]["when"] = when0;
    entries[1]["idx"] = 0.into();
    w.write("drizzle/meta/_journal.json", &parsed.to_string());
    let codes = drift_codes(&w);
    for code in ["journal-order", "journal-duplicate"] {
        assert!(codes.contains(&code.to_string()), "{code} in {codes:?}");
    }
}

#[test]
fn a_database_dreamerd_cannot_open_is_said_with_the_generic_hint() {
    let w = World::drizzle();
    w.config("[database]\nurl = \"libsql://remote.example\"\n");
    w.push_ok();
    db(&w).execute("INSERT INTO users (name) VALUES ('ada')", []).unwrap();
    edit_schema(&w, NAME, &format!("{NAME}\n  age: integer('age').notNull(),"));
    let v = failed_push(&w, "migrate", "unknown");
    assert!(message(&v).contains("printed no error"), "{v}");
    assert!(
        message(&v).contains("cannot find the database") && message(&v).contains("local SQLite file"),
        "{v}"
    );
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("restore"), "{v}");
}

/// A migrate wrapper that can be made to hang before or after the real migrate, for a crash to strike there.
const CRASHABLE_MIGRATE: &str = "if [ -f crash-before ]; then echo $$ > mig.pid; exec sleep 60; fi\n\
     ./node_modules/.bin/drizzle-kit migrate || exit 1\n\
     if [ -f crash-after ]; then echo $$ > mig.pid; exec sleep 60; fi\n";

/// Starts a push, waits until migrate hangs where asked, then kills the daemon and migrate like a power cut.
fn crash_during_migrate(w: &World, flag: &str) {
    w.write(flag, "");
    w.push_and_crash("mig.pid");
    fs::remove_file(w.path(flag)).unwrap();
}

fn crashable_world() -> World {
    let w = World::drizzle();
    w.write("mig.sh", CRASHABLE_MIGRATE);
    w.config("[push]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\n");
    w
}

#[test]
fn a_push_killed_after_its_migrate_succeeded_is_completed() {
    let w = crashable_world();
    let first = w.push_ok();
    edit_schema(&w, NAME, &format!("{NAME}\n  bio: text('bio'),"));
    crash_during_migrate(&w, "crash-after");
    let generated = w.tree("drizzle");
    // The next operation sees that the database applied everything, and records the push instead of undoing it.
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(w.tree("drizzle"), generated, "drizzle/ keeps the applied migration");
    let (_, history) = w.json("dreamerd", &["history"]);
    let pushes = history["pushes"].as_array().unwrap();
    assert_eq!(pushes.len(), 2, "{history}");
    assert_ne!(pushes[0]["id"], first.as_str());
    let (code, check) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{check}");
}

#[test]
fn a_push_killed_before_its_migrate_applied_is_rolled_back() {
    let w = crashable_world();
    w.push_ok();
    let before = w.tree("drizzle");
    edit_schema(&w, NAME, &format!("{NAME}\n  bio: text('bio'),"));
    crash_during_migrate(&w, "crash-before");
    assert_ne!(w.tree("drizzle"), before, "generate had written the new migration");
    // Nothing was applied, so the next operation puts drizzle/ back; the push then runs normally.
    let (code, v) = w.json("dreamer", &["database", "restore", "--dry-run"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    let sqls = w.tree("drizzle").into_keys().filter(|k| k.ends_with(".sql")).count();
    assert_eq!(sqls, 2, "one migration from the first push, one from this one; the rolled-back one is gone");
    let (code, check) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{check}");
    let kept = crate::support::tree_of(&w.state().join("quarantine"));
    assert!(kept.keys().any(|k| k.contains("interrupted-push/drizzle/0001_")), "{:?}", kept.keys());
}

#[test]
fn deleting_the_identity_file_changes_nothing() {
    let w = World::drizzle();
    w.push_ok();
    let id_file = w.read(".dreamerd.toml");
    fs::remove_file(w.path(".dreamerd.toml")).unwrap();
    w.write("drizzle/meta/_journal.json", "{}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "still guarded: {v}");
    assert_eq!(v["state"], "violated");
    w.json("dreamer", &["database", "restore"]);
    w.push_ok();
    assert_eq!(w.read(".dreamerd.toml"), id_file, "the same identity is written back");
}
