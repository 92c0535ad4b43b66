//! A push judged by what it did (issue 10): verified after generate and after migrate, a replay as strict as the
//! driver, what drizzle-kit check finds, diagnoses by what drizzle-kit printed, `dreamerd up`, and custom migrations.
//! Real drizzle-kit 0.31, real SQLite files, the libsql client.

use std::fs;
use std::path::Path;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::{World, tree_of};

fn copy_into(from: &Path, to: &Path) {
    for (rel, bytes) in tree_of(from) {
        let dest = to.join(rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(dest, bytes).unwrap();
    }
}

fn codes(v: &Value) -> Vec<String> {
    v["drift"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap().to_string()).collect()
}

fn rows(w: &World) -> i64 {
    Connection::open(w.path("local.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM __drizzle_migrations", [], |r| r.get(0))
        .unwrap()
}

fn columns(w: &World, table: &str) -> Vec<String> {
    let db = Connection::open(w.path("local.db")).unwrap();
    let mut stmt = db.prepare(&format!("SELECT name FROM pragma_table_info('{table}')")).unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn set_schema(w: &World, columns: &str) {
    w.write(
        "src/schema.ts",
        &format!(
            "import {{ integer, sqliteTable, text }} from 'drizzle-orm/sqlite-core';\n\n\
             export const users = sqliteTable('users', {{\n  id: integer('id').primaryKey(),\n{columns}}});\n"
        ),
    );
}

#[test]
fn outdated_snapshots_refuse_the_push_until_up_and_an_edit_without_sql_is_unchanged() {
    let w = World::drizzle();
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/drizzle-kit-0.20.18");
    copy_into(&old, &w.root);
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(codes(&v), ["snapshot-outdated"], "{v}");
    assert_eq!(v["drizzle_kit"], "0.31.11", "status shows the installed drizzle-kit");
    // A schema change: the push is refused with the cause and the fix, nothing changed.
    set_schema(&w, "  name: text('name').notNull(),\n  email: text('email'),\n  age: integer('age'),\n");
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "snapshot-outdated", "{v}");
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("dreamerd up"), "{v}");
    assert_eq!(w.tree("drizzle"), before, "nothing changed");
    assert!(!w.path("local.db").exists(), "nothing ran");
    // `dreamerd up` upgrades the snapshots only, and records the result as a push.
    set_schema(&w, "  name: text('name').notNull(),\n  email: text('email'),\n");
    let (code, v) = w.json("dreamerd", &["up"]);
    assert_eq!(code, 0, "{v}");
    let upgraded = v["push_id"].as_str().unwrap().to_string();
    let after = w.tree("drizzle");
    for (path, bytes) in &before {
        if path.ends_with("_snapshot.json") {
            let snapshot: Value = serde_json::from_slice(&after[path]).unwrap();
            assert_eq!(snapshot["version"], "6", "{path}");
        } else {
            assert_eq!(&after[path], bytes, "{path} is untouched by up");
        }
    }
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["last_push"]["id"], upgraded.as_str());
    // The next push migrates the history as it is; the folder is the same push.
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["push_id"].as_str(), v["unchanged"].as_bool()),
        (Some(upgraded.as_str()), Some(true)),
        "{v}"
    );
    assert_eq!(rows(&w), 2);
    assert!(columns(&w, "users").contains(&"email".to_string()));
    // A schema edit that changes no SQL: unchanged, and the schema is no longer pending.
    let schema = w.read("src/schema.ts");
    w.write("src/schema.ts", &format!("// the users of the app\n{schema}"));
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["push_id"].as_str(), v["unchanged"].as_bool()),
        (Some(upgraded.as_str()), Some(true)),
        "{v}"
    );
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["schema_pending"], false, "{v}");
    // A real schema change now generates.
    set_schema(&w, "  name: text('name').notNull(),\n  email: text('email'),\n  age: integer('age'),\n");
    w.push_ok();
    assert!(columns(&w, "users").contains(&"age".to_string()));
}

#[test]
fn a_migration_generated_with_a_clock_behind_the_database_fails_as_skipped() {
    let w = World::drizzle();
    w.push_ok();
    // drizzle-kit on a machine whose clock is a day behind: its journal `when` is older than what the database
    // applied.
    let clock = w.tmp.path().join("clock-behind.cjs");
    fs::write(
        &clock,
        "const RealDate = Date; const shift = 86400000;\n\
         global.Date = class extends RealDate {\n\
           constructor(...a) { if (a.length === 0) { super(RealDate.now() - shift); } else { super(...a); } }\n\
           static now() { return RealDate.now() - shift; }\n\
         };\n",
    )
    .unwrap();
    w.set_env("NODE_OPTIONS", &format!("--require {}", clock.display()));
    set_schema(&w, "  name: text('name').notNull(),\n  bio: text('bio'),\n");
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "verify", "{v}");
    assert_eq!(v["diagnosis"]["code"], "migration-skipped", "{v}");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("created_at"), "{v}");
    assert_eq!(v["rolled_back"], true);
    assert_eq!(w.tree("drizzle"), before, "the folder is as before");
    assert_eq!(rows(&w), 1, "the database is as before");
    assert!(!columns(&w, "users").contains(&"bio".to_string()));
}

#[test]
fn a_table_rebuild_over_a_column_the_database_lacks_is_out_of_sync() {
    let w = World::drizzle();
    set_schema(&w, "  name: text('name').notNull(),\n  bio: text('bio'),\n");
    w.push_ok();
    // The database lost the column outside dreamerd (a hand-run statement).
    Connection::open(w.path("local.db")).unwrap().execute_batch("ALTER TABLE users DROP COLUMN bio").unwrap();
    // name becomes nullable: drizzle-kit rebuilds the table, copying "bio" in double quotes.
    set_schema(&w, "  name: text('name'),\n  bio: text('bio'),\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "migrate");
    assert_eq!(v["diagnosis"]["code"], "out-of-sync", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    assert!(message.contains("no such column") && message.contains("bio"), "{message}");
}

#[test]
fn check_reports_malformed_and_forked_snapshots() {
    let w = World::drizzle();
    w.push_ok();
    set_schema(&w, "  name: text('name').notNull(),\n  bio: text('bio'),\n");
    w.push_ok();
    let snap1 = w.read("drizzle/meta/0001_snapshot.json");
    w.write("drizzle/meta/0001_snapshot.json", "{\"version\": \"6\"");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    assert!(codes(&v).contains(&"snapshot-invalid".to_string()), "{v}");
    // Two snapshots with one parent: two branches that each generated, merged.
    w.write("drizzle/meta/0001_snapshot.json", &snap1);
    let mut fork: Value = serde_json::from_str(&snap1).unwrap();
    fork["id"] = Value::from("11111111-2222-3333-4444-555555555555");
    w.write("drizzle/meta/0002_snapshot.json", &fork.to_string());
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    let found = codes(&v);
    assert!(found.contains(&"snapshot-fork".to_string()), "{v}");
    assert!(found.contains(&"snapshot-not-in-journal".to_string()), "{v}");
}

#[test]
fn an_undefined_database_url_has_its_own_code_and_a_hint_about_the_environment() {
    let w = World::drizzle();
    let config = w.read("drizzle.config.ts").replace("'./local.db'", "process.env.DATABASE_URL!");
    w.write("drizzle.config.ts", &config);
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "migrate");
    assert_eq!(v["diagnosis"]["code"], "database-url-missing", "{v}");
    let hint = v["diagnosis"]["hint"].as_str().unwrap();
    assert!(hint.contains("environment") && !hint.contains("restore"), "{hint}");
    assert!(!w.path("drizzle").exists(), "rolled back: this first push leaves no folder");
}

#[test]
fn a_custom_migration_stays_open_until_the_next_push_applies_it() {
    let w = World::drizzle();
    w.push_ok();
    Connection::open(w.path("local.db"))
        .unwrap()
        .execute_batch("INSERT INTO users (id, name) VALUES (1, 'a')")
        .unwrap();
    let (code, v) = w.json("dreamerd", &["push", "--custom", "backfill"]);
    assert_eq!(code, 0, "{v}");
    let tag = v["custom"].as_str().unwrap().to_string();
    assert!(tag.ends_with("_backfill"), "{v}");
    let file = v["file"].as_str().unwrap().to_string();
    assert_eq!(rows(&w), 1, "nothing was migrated yet");
    let (code, v) = w.json("dreamerd", &["push", "--custom", "another"]);
    assert_eq!((code, v["diagnosis"]["code"].as_str()), (1, Some("custom-open")), "{v}");
    // Open: its .sql is the user's to write; everything else is still guarded.
    fs::write(&file, "UPDATE users SET name = 'b';\n").unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["custom"]["migration"], tag.as_str(), "{v}");
    let status = w.status();
    assert!(
        status["drift"].as_array().unwrap().is_empty(),
        "the daemon agrees: not pending while open: {status}"
    );
    w.write("drizzle/0009_by_hand.sql", "DROP TABLE users;");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    let paths: Vec<&str> =
        v["violations"].as_array().unwrap().iter().map(|x| x["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["0009_by_hand.sql"], "{v}");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!((code, v["diagnosis"]["code"].as_str()), (1, Some("drizzle-tampered")), "{v}");
    fs::remove_file(w.path("drizzle/0009_by_hand.sql")).unwrap();
    // The next push applies it and records it.
    let id = w.push_ok();
    assert_eq!(rows(&w), 2);
    let name: String = Connection::open(w.path("local.db"))
        .unwrap()
        .query_row("SELECT name FROM users WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "b");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["last_push"]["id"], id.as_str());
    assert!(v["custom"].is_null(), "{v}");
    // Now any edit of that migration is a violation like any other.
    fs::write(&file, "UPDATE users SET name = 'c';\n").unwrap();
    let (code, _) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
}
