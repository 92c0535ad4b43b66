//! The life of a project on the real drizzle-kit and a real SQLite database.

use std::fs;

use serde_json::{Value, json};

use crate::support::World;

fn sql_files(w: &World) -> Vec<String> {
    w.tree("drizzle").into_keys().filter(|k| k.ends_with(".sql")).collect()
}

#[test]
fn first_push_backs_up_and_check_is_clean() {
    let w = World::drizzle();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0);
    assert_eq!(v["state"], "no-baseline");
    assert!(!w.path("drizzle").exists());

    let id = w.push_ok();
    assert_eq!(sql_files(&w).len(), 1);
    assert!(w.path("drizzle/meta/_journal.json").is_file());
    assert!(w.path("local.db").is_file(), "migrate created the database");
    assert!(w.path(".dreamerd.toml").is_file(), "the project got its identity");

    let (code, mut v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0);
    let at = v["last_push"]["at"].clone();
    // Scanned, or vouched for by the daemon the push started (see tests/performance.rs).
    let verified = v.as_object_mut().unwrap().remove("verified");
    assert!(matches!(verified.as_ref().and_then(Value::as_str), Some("scan" | "watch")), "{verified:?}");
    assert_eq!(
        v,
        json!({"root": w.root, "state": "clean", "violations": [], "schema_pending": false,
               "last_push": {"id": id, "at": at, "files": 3, "source": "checkout", "via": "push"}, "drift": [],
               "config": "drizzle.config.ts", "out": "drizzle", "schema": ["src/schema.ts"], "dialect": "sqlite",
               "layout": "evaluated", "database": {"checked": true, "path": w.root.join("local.db")},
               "drizzle_kit": "0.31.11", "migration_layout": "journal"})
    );
    // The archive, its manifest and its generation are in the local store under $XDG_DATA_HOME.
    let project_id = w.read(".dreamerd.toml");
    let project_id = project_id.split('"').nth(1).unwrap();
    let project = w.store().join("projects").join(project_id);
    let generation: Value =
        serde_json::from_str(&fs::read_to_string(project.join("generations/000000000001.json")).unwrap())
            .unwrap();
    assert_eq!(generation["push"], id.as_str());
    let archive =
        project.join(format!("archives/{}.tar.zst", generation["archive_blake3"].as_str().unwrap()));
    assert_eq!(blake3::hash(&fs::read(&archive).unwrap()).to_hex().as_str(), generation["archive_blake3"]);
    assert!(project.join(format!("manifests/{}.json", generation["tree"].as_str().unwrap())).is_file());

    // A second push with nothing changed makes no new backup.
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0);
    assert_eq!(v["push_id"], id.as_str());
    assert_eq!(v["unchanged"], true);
    // Where its time went: drizzle-kit's two runs, and dreamerd's own work, adding up to the whole.
    let t = &v["timings"];
    let ms = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(ms("drizzle_kit_ms") > 0.0, "{v}");
    assert!(ms("dreamerd_ms") > 0.0, "{v}");
    let parts = ms("drizzle_kit_ms") + ms("database_copy_ms") + ms("store_ms") + ms("dreamerd_ms");
    assert!((parts - ms("total_ms")).abs() < 0.01, "{v}");
    assert_eq!(ms("store_ms"), 0.0, "nothing new to store: {v}");
}

#[test]
fn schema_change_pushes_a_second_migration_and_history_lists_both() {
    let w = World::drizzle();
    let first = w.push_ok();
    let schema = w
        .read("src/schema.ts")
        .replace("name: text('name').notNull(),", "name: text('name').notNull(),\n  bio: text('bio'),");
    w.write("src/schema.ts", &schema);
    let (_, v) = w.json("dreamerd", &["check"]);
    assert_eq!(v["schema_pending"], true);
    let second = w.push_ok();
    assert_ne!(first, second);
    assert_eq!(sql_files(&w).len(), 2);
    let (code, v) = w.json("dreamerd", &["history"]);
    assert_eq!(code, 0);
    let ids: Vec<_> = v["pushes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let (_, v) = w.json("dreamerd", &["check"]);
    assert_eq!(v["schema_pending"], false);
}

#[test]
fn failed_migrate_leaves_drizzle_byte_identical_with_a_diagnosis() {
    let w = World::drizzle();
    w.push_ok();
    // A NOT NULL column without default on a table that has a row: generate succeeds, migrate fails silently.
    insert_row(&w);
    let before = w.tree("drizzle");
    let db_before = fs::read(w.path("local.db")).unwrap();
    let schema = w.read("src/schema.ts").replace(
        "name: text('name').notNull(),",
        "name: text('name').notNull(),\n  age: integer('age').notNull(),",
    );
    w.write("src/schema.ts", &schema);

    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["stage"], "migrate");
    assert_eq!(v["rolled_back"], true);
    assert!(!v["diagnosis"]["code"].as_str().unwrap().is_empty());
    assert!(!v["diagnosis"]["hint"].as_str().unwrap().is_empty());
    assert_eq!(w.tree("drizzle"), before, "drizzle/ is byte-identical after a failed push");
    assert_eq!(fs::read(w.path("local.db")).unwrap(), db_before, "the database was not changed");

    // What the failed run wrote is kept, with drizzle-kit's output.
    let q = std::path::PathBuf::from(v["quarantine"].as_str().unwrap());
    let kept = crate::support::tree_of(&q.join("drizzle"));
    assert!(kept.keys().any(|k| k.starts_with("0001_") && k.ends_with(".sql")), "{kept:?}");
    assert!(q.join("migrate.log").is_file());
    assert!(q.starts_with(w.state()));
}

/// Inserts a row with drizzle-kit's own driver, so the test needs no sqlite3 program.
fn insert_row(w: &World) {
    w.write(
        "insert.mjs",
        "import { createClient } from '@libsql/client';\n\
         const c = createClient({ url: 'file:./local.db' });\n\
         await c.execute(\"insert into users (name) values ('ada')\");\n",
    );
    let out = std::process::Command::new("node").arg("insert.mjs").current_dir(&w.root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::remove_file(w.path("insert.mjs")).unwrap();
}

#[test]
fn missing_drizzle_kit_is_diagnosed_and_changes_nothing() {
    let w = World::drizzle();
    w.push_ok();
    fs::remove_file(w.path("node_modules")).unwrap();
    w.write("src/schema.ts", &(w.read("src/schema.ts") + "\n// touched\n"));
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["stage"], "generate");
    assert_eq!(v["diagnosis"]["code"], "drizzle-kit-missing");
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("npm install"));
    assert_eq!(w.tree("drizzle"), before);
}
