//! drizzle-kit 1.0 (issue 15), with the real drizzle-kit and drizzle-orm 1.0.0-rc.5 of the second fixture: its
//! folder-per-migration layout guarded like the journal (hand edits of each kind, restore byte for byte, drift by
//! name, a fork of branches), renames answered with `--rename`, and the guarded conversion of a 0.31 project with
//! data.

use std::collections::BTreeMap;
use std::fs;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::{World, tree_of};

const POSTS: &str = "\nexport const posts = sqliteTable('posts', {\n  id: integer('id').primaryKey(),\n  title: \
                     text('title').notNull(),\n});\n";

/// The schema with `extra` appended.
fn schema_with(w: &World, extra: &str) {
    let base = fs::read_to_string(crate::support::fixture_dir().join("src/schema.ts")).unwrap();
    w.write("src/schema.ts", &format!("{base}{extra}"));
}

/// The migration folders of drizzle/, by name.
fn migrations(w: &World) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(w.path("drizzle"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn check(w: &World) -> (i32, Value) {
    w.json("dreamerd", &["check"])
}

fn codes(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap_or(d["kind"].as_str().unwrap_or("")).to_string())
        .collect()
}

fn violations(v: &Value) -> Vec<(String, String)> {
    v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["kind"].as_str().unwrap().to_string(), x["path"].as_str().unwrap().to_string()))
        .collect()
}

/// Waits past the second a migration was generated in: 0.31 names a migration by its millisecond, 1.0 by its second.
fn next_second() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

#[test]
fn folders_layout_hand_edits_of_each_kind_are_flagged_and_restored_byte_for_byte() {
    let w = World::drizzle_v1();
    w.push_ok();
    next_second();
    schema_with(&w, POSTS);
    w.push_ok();
    let (code, v) = check(&w);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["migration_layout"], "folders");
    assert_eq!(v["drizzle_kit"], "1.0.0-rc.5");
    let names = migrations(&w);
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        assert!(
            w.path(&format!("drizzle/{n}/migration.sql")).is_file()
                && w.path(&format!("drizzle/{n}/snapshot.json")).is_file()
        );
    }
    let pushed = w.tree("drizzle");
    let (first, second) = (&names[0], &names[1]);
    type Edit<'a> = (&'a str, Box<dyn Fn(&World) + 'a>, Vec<(&'a str, String)>);
    let edits: Vec<Edit> = vec![
        (
            "migration.sql edited",
            Box::new(|w: &World| {
                let p = format!("drizzle/{first}/migration.sql");
                w.write(&p, &format!("{}\n-- by hand", w.read(&p)));
            }),
            vec![("modified", format!("{first}/migration.sql"))],
        ),
        (
            "snapshot.json edited",
            Box::new(|w: &World| {
                let p = format!("drizzle/{second}/snapshot.json");
                w.write(&p, &w.read(&p).replace("\"title\"", "\"headline\""));
            }),
            vec![("modified", format!("{second}/snapshot.json"))],
        ),
        (
            "migration folder renamed",
            Box::new(|w: &World| {
                fs::rename(w.path(&format!("drizzle/{second}")), w.path("drizzle/20990101000000_later"))
                    .unwrap()
            }),
            vec![
                ("renamed", "20990101000000_later/migration.sql".to_string()),
                ("renamed", "20990101000000_later/snapshot.json".to_string()),
            ],
        ),
        (
            // The first: without the newest, the folder would be the first push, arrived again.
            "migration folder removed",
            Box::new(|w: &World| fs::remove_dir_all(w.path(&format!("drizzle/{first}"))).unwrap()),
            vec![
                ("deleted", format!("{first}/migration.sql")),
                ("deleted", format!("{first}/snapshot.json")),
            ],
        ),
        (
            "migration folder created",
            Box::new(|w: &World| {
                w.write("drizzle/20990101000000_mine/migration.sql", "CREATE TABLE `mine` (`id` integer);")
            }),
            vec![("created", "20990101000000_mine/migration.sql".to_string())],
        ),
    ];
    for (what, edit, expected) in edits {
        edit(&w);
        let (code, v) = check(&w);
        assert_eq!(code, 1, "{what}: {v}");
        assert_eq!(v["state"], "violated", "{what}: {v}");
        let mut got = violations(&v);
        got.sort();
        let mut want: Vec<(String, String)> =
            expected.iter().map(|(k, p)| (k.to_string(), p.clone())).collect();
        want.sort();
        assert_eq!(got, want, "{what}");
        let r = w.run("dreamer", &["database", "restore"]);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert_eq!(w.tree("drizzle"), pushed, "{what}: restore is byte for byte");
        assert_eq!(check(&w).0, 0, "{what}");
    }
}

#[test]
fn folders_layout_drift_is_by_name() {
    let w = World::drizzle_v1();
    w.push_ok();
    let name = migrations(&w).remove(0);
    let db = w.path("local.db");
    // A migration the database applied and drizzle/ lacks, named as 1.0 names it.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "INSERT INTO __drizzle_migrations (hash, created_at, name) VALUES ('abc', 1577836800000, \
             '20200101000000_elsewhere')",
        )
        .unwrap();
    // A folder older than every applied one: 1.0's migrator runs it anyway (pending, never skipped).
    w.write("drizzle/20190101000000_early/migration.sql", "CREATE TABLE `early` (`id` integer);");
    // The applied migration edited.
    let p = format!("drizzle/{name}/migration.sql");
    w.write(&p, &format!("{}\n-- edited", w.read(&p)));
    let (code, v) = check(&w);
    assert_eq!(code, 1);
    let drift: BTreeMap<String, String> = v["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["code"].as_str().unwrap().to_string(), d["migration"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(drift.get("migration-missing").map(String::as_str), Some("20200101000000_elsewhere"), "{v}");
    assert_eq!(drift.get("migration-pending").map(String::as_str), Some("20190101000000_early"), "{v}");
    assert_eq!(drift.get("migration-edited"), Some(&name), "{v}");
    assert!(!drift.contains_key("migration-skipped"), "{v}");
}

#[test]
fn a_fork_of_branches_without_a_merge_is_reported() {
    let w = World::drizzle_v1();
    let base = w.push_ok();
    next_second();
    // One branch adds x...
    schema_with(&w, "\nexport const x = sqliteTable('x', { id: integer('id').primaryKey() });\n");
    w.push_ok();
    let branch_x = migrations(&w).pop().unwrap();
    let kept = tree_of(&w.path(&format!("drizzle/{branch_x}")));
    // ...the other, from the same base, adds y.
    let r = w.run("dreamerd", &["restore", "--push", &base, "--with-database"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    next_second();
    schema_with(&w, "\nexport const y = sqliteTable('y', { id: integer('id').primaryKey() });\n");
    w.push_ok();
    // The merge brings both folders.
    for (file, bytes) in kept {
        let p = w.path(&format!("drizzle/{branch_x}/{file}"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }
    let (code, v) = check(&w);
    assert_eq!(code, 1, "{v}");
    let fork =
        v["drift"].as_array().unwrap().iter().find(|d| d["code"] == "branches-unmerged").expect("a fork");
    let message = fork["message"].as_str().unwrap();
    assert!(message.contains(&branch_x) && message.contains("2 heads"), "{message}");
    assert!(codes(&v, "drift").contains(&"migration-pending".to_string()), "{v}");
}

#[test]
fn a_rename_is_answered_with_rename() {
    let w = World::drizzle_v1();
    w.push_ok();
    let db = w.path("local.db");
    Connection::open(&db).unwrap().execute_batch("INSERT INTO users (id, name) VALUES (1, 'ann')").unwrap();
    next_second();
    w.write(
        "src/schema.ts",
        &w.read("src/schema.ts").replace("name: text('name')", "fullName: text('full_name')"),
    );
    let before = w.tree("drizzle");
    // Without an answer: refused, with the question and the flag that answers it; nothing changed.
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "ambiguous-change", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    let hint = v["diagnosis"]["hint"].as_str().unwrap();
    assert!(
        message.contains("is column users.full_name renamed from another column, or created?"),
        "{message}"
    );
    assert!(
        hint.contains("--rename users.OLD=users.full_name") && hint.contains("--create users.full_name"),
        "{hint}"
    );
    assert_eq!(w.tree("drizzle"), before);
    // An answer that leaves the question open says so.
    let (code, v) = w.json("dreamer", &["push", "--rename", "posts.a=posts.b"]);
    assert_eq!((code, v["diagnosis"]["code"].as_str()), (1, Some("ambiguous-change")), "{v}");
    assert_eq!(w.tree("drizzle"), before);
    // Answered: one migration that renames, and the row keeps its value.
    let (code, v) = w.json("dreamer", &["push", "--rename", "users.name=users.full_name"]);
    assert_eq!(code, 0, "{v}");
    let newest = migrations(&w).pop().unwrap();
    let sql = w.read(&format!("drizzle/{newest}/migration.sql"));
    assert!(sql.contains("RENAME COLUMN `name` TO `full_name`"), "{sql}");
    let kept: String = Connection::open(&db)
        .unwrap()
        .query_row("SELECT full_name FROM users WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "ann");
    assert_eq!(check(&w).0, 0);
}

#[test]
fn rename_answers_are_refused_with_drizzle_kit_0_31() {
    let w = World::drizzle();
    w.push_ok();
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamerd", &["push", "--rename", "users.name=users.full_name"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "answers-unsupported", "{v}");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("0.31.11"), "{v}");
    assert_eq!(w.tree("drizzle"), before);
    let r = w.run("dreamerd", &["push", "--rename", "nonsense"]);
    assert_eq!(r.code, 2, "a malformed answer is a usage error: {}", r.stderr);
}

/// A 0.31 project with two pushes and rows in both tables, then drizzle-kit 1.0 installed: returns the first
/// push and the folder before the upgrade.
fn a_0_31_project_with_data() -> (World, String, BTreeMap<String, Vec<u8>>) {
    let w = World::drizzle();
    let first = w.push_ok();
    next_second();
    schema_with(&w, POSTS);
    w.push_ok();
    Connection::open(w.path("local.db"))
        .unwrap()
        .execute_batch(
            "INSERT INTO users (id, name) VALUES (1, 'ann'); INSERT INTO posts (id, title) VALUES (1, 'hi');",
        )
        .unwrap();
    let before = w.tree("drizzle");
    w.install_kit_v1();
    (w, first, before)
}

fn applied_rows(w: &World) -> Vec<(String, Option<String>)> {
    let conn = Connection::open(w.path("local.db")).unwrap();
    let named = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('__drizzle_migrations') WHERE name = 'name'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0;
    let sql = if named {
        "SELECT hash, name FROM __drizzle_migrations ORDER BY created_at"
    } else {
        "SELECT hash, NULL FROM __drizzle_migrations ORDER BY created_at"
    };
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn the_guarded_upgrade_of_a_0_31_project_keeps_every_migration_and_row() {
    let (w, first, before) = a_0_31_project_with_data();
    // The kit and the folder disagree: said, and a push is refused before anything runs.
    let (code, v) = check(&w);
    assert_eq!(code, 1);
    assert_eq!(
        (v["migration_layout"].as_str(), v["drizzle_kit"].as_str()),
        (Some("journal"), Some("1.0.0-rc.5"))
    );
    assert!(codes(&v, "drift").contains(&"layout-kit-mismatch".to_string()), "{v}");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!((code, v["diagnosis"]["code"].as_str()), (1, Some("layout-kit-mismatch")), "{v}");
    assert_eq!(w.tree("drizzle"), before);

    let (code, v) = w.json("dreamerd", &["up"]);
    assert_eq!(code, 0, "{v}");
    let upgraded = v["push_id"].as_str().unwrap().to_string();
    let (code, v) = check(&w);
    assert_eq!(code, 0, "every applied migration matches: {v}");
    assert_eq!(v["migration_layout"], "folders");
    // Every migration kept its SQL byte for byte; meta/ is gone.
    let after = w.tree("drizzle");
    let old_sql: Vec<&Vec<u8>> = before.iter().filter(|(p, _)| p.ends_with(".sql")).map(|(_, b)| b).collect();
    let new_sql: Vec<&Vec<u8>> =
        after.iter().filter(|(p, _)| p.ends_with("/migration.sql")).map(|(_, b)| b).collect();
    assert_eq!(old_sql, new_sql);
    assert!(!after.keys().any(|p| p.starts_with("meta/")), "{:?}", after.keys());
    // The table was upgraded: every row names its folder, with the hash of its SQL.
    let rows = applied_rows(&w);
    assert_eq!(rows.len(), 2);
    for (hash, name) in &rows {
        let name = name.as_ref().expect("every row named");
        let sql = &after[&format!("{name}/migration.sql")];
        assert_eq!(hash, &sha256(sql));
    }
    let conn = Connection::open(w.path("local.db")).unwrap();
    let count =
        |t: &str| conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!((count("users"), count("posts")), (1, 1), "nothing lost");

    // A push from before the upgrade is not restored alone...
    let r = w.run("dreamerd", &["restore", "--push", &first]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--with-database"), "{}", r.stderr);
    assert_eq!(w.tree("drizzle"), after);
    // ...and a pre-upgrade tree that came back (a checkout of an older commit) is never called clean.
    fs::remove_dir_all(w.path("drizzle")).unwrap();
    for (p, bytes) in &before {
        let path = w.path(&format!("drizzle/{p}"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    let (code, v) = check(&w);
    assert_eq!(code, 1, "{v}");
    assert_ne!(v["state"], "clean");
    assert!(codes(&v, "drift").contains(&"layout-mismatch".to_string()), "{v}");
    let r = w.run("dreamer", &["database", "restore"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(w.tree("drizzle"), after);
    // Life goes on with 1.0.
    next_second();
    w.write(
        "src/schema.ts",
        &w.read("src/schema.ts").replace(
            "title: text('title').notNull(),",
            "title: text('title').notNull(),\n  body: text('body'),",
        ),
    );
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_ne!(v["push_id"].as_str(), Some(upgraded.as_str()));
    assert_eq!(check(&w).0, 0);
}

#[test]
fn an_upgrade_that_changes_a_migration_is_rolled_back_with_the_database() {
    let (w, _, before) = a_0_31_project_with_data();
    // An `up` that alters a migration's SQL after converting.
    w.config(
        "[push]\nup = [\"sh\", \"-c\", \"./node_modules/.bin/drizzle-kit up && for f in drizzle/*/migration.sql; do \
         printf ' ' >> \\\"$f\\\"; break; done\"]\n",
    );
    let rows_before = applied_rows(&w);
    let (code, v) = w.json("dreamerd", &["up"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "up-changed-sql", "{v}");
    assert_eq!(v["rolled_back"], true);
    assert_eq!(w.tree("drizzle"), before, "the journal is back as it was");
    assert_eq!(applied_rows(&w), rows_before, "the migrations table was not upgraded");
}

fn sha256(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn the_daemon_flags_edits_inside_migration_folders() {
    let w = World::drizzle_v1();
    w.push_ok(); // spawns the daemon, which watches the project from then on
    let name = migrations(&w).remove(0);
    assert_eq!(w.status()["migration_layout"], "folders");
    // A file edited inside a migration folder, and a whole new folder made by hand.
    let p = format!("drizzle/{name}/migration.sql");
    w.write(&p, &format!("{}\n-- by hand", w.read(&p)));
    w.write("drizzle/20990101000000_mine/migration.sql", "SELECT 1;");
    let expected = serde_json::json!([
        {"kind": "created", "path": "20990101000000_mine/migration.sql"},
        {"kind": "modified", "path": format!("{name}/migration.sql")},
    ]);
    w.wait_for("both violations in the daemon's status", || {
        let mut got = w.status()["violations"].as_array().cloned().unwrap_or_default();
        got.sort_by_key(|v| v["kind"].as_str().map(String::from));
        Value::Array(got) == expected
    });
    assert!(w.daemon_log().contains(&format!("{name}/migration.sql")), "{}", w.daemon_log());
}
