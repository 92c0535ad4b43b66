//! Crash at every step (issue 17, third part): the daemon doing the work is killed with SIGKILL at each fault point
//! of a push (the real drizzle-kit, a real SQLite database), of a restore's swap, and of the database copy. After the
//! next start the half-done operation is completed or undone: the folder is the old or the new tree, the database
//! matches it, the store answers and the last push restores, and what a restore replaced is in quarantine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{World, tree_of};

const POSTS: &str = "\nexport const posts = sqliteTable('posts', { id: integer('id').primaryKey() });\n";

/// A real drizzle project whose daemon dies at the point written in its fault file.
fn world() -> (World, PathBuf) {
    let w = World::drizzle();
    let fault = w.tmp.path().join("fault");
    w.set_env("DREAMERD_FAULT_FILE", fault.to_str().unwrap());
    (w, fault)
}

/// Runs `args` with the daemon set to die at `point` (a fresh daemon, which reads the fault file); asserts the point
/// was reached.
fn crash_at(w: &World, fault: &Path, point: &str, bin: &str, args: &[&str]) {
    let _ = w.run("dreamerd", &["stop"]);
    fs::write(fault, point).unwrap();
    let run = w.run(bin, args);
    assert!(!fault.exists(), "{point} was never reached: {}", run.stderr);
    assert_ne!(run.code, 0, "the command saw its daemon die at {point}");
}

/// Waits for the next daemon to finish what the crash interrupted, then checks what must hold whatever the point.
fn recovered(w: &World, point: &str) -> Value {
    w.wait_for(&format!("recovery after {point}"), || {
        let s = w.status();
        s.get("interrupted").is_none() && s["state"] != "busy"
    });
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "after {point}: clean, the database matching the folder: {v}");
    assert_eq!(v["drift"], serde_json::json!([]), "{point}: {v}");
    // The store answers, and the push the checkout stands on restores.
    assert_eq!(w.run("dreamerd", &["history", "--json"]).code, 0, "{point}");
    let (code, r) = w.json("dreamerd", &["restore", "--dry-run"]);
    assert_eq!(code, 0, "{point}: {r}");
    v
}

#[test]
fn a_push_killed_at_each_step_is_rolled_back_before_migrate_and_completed_after_it() {
    for (point, completed) in [
        ("push:generate", false),
        ("push:migrate", false),
        ("push:migrated", true),
        ("push:backup", true),
        ("push:stored", true),
    ] {
        let (w, fault) = world();
        let first = w.push_ok();
        let old = w.tree("drizzle");
        w.write("src/schema.ts", &format!("{}{POSTS}", w.read("src/schema.ts")));
        crash_at(&w, &fault, point, "dreamer", &["push"]);
        let v = recovered(&w, point);
        let last = v["last_push"]["id"].as_str().unwrap().to_string();
        if completed {
            assert_ne!(last, first, "{point}: the database applied the migration, so the push is recorded");
            assert_ne!(w.tree("drizzle"), old, "{point}");
            assert_eq!(v["schema_pending"], false, "{point}");
        } else {
            assert_eq!(last, first, "{point}: rolled back");
            assert_eq!(w.tree("drizzle"), old, "{point}: the old tree, byte for byte");
            assert_eq!(v["schema_pending"], true, "{point}");
            let (code, v) = w.json("dreamer", &["push"]);
            assert_eq!(code, 0, "{point}: a push works again: {v}");
        }
    }
}

/// The lock of the one project in `w` (the state folder keeps one per checkout).
fn project_lock(w: &World) -> fs::File {
    let locks: Vec<PathBuf> =
        fs::read_dir(w.state().join("locks")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(locks.len(), 1, "{locks:?}");
    fs::File::options().write(true).open(&locks[0]).unwrap()
}

#[test]
fn a_recovery_that_finds_the_project_lock_held_waits_for_it_and_then_finishes() {
    // A status adopting a push, or a helper outliving the crashed push, can hold the lock as the next daemon
    // starts: its recovery must wait, never give up and leave the project interrupted.
    let (w, fault) = world();
    let first = w.push_ok();
    w.write("src/schema.ts", &format!("{}{POSTS}", w.read("src/schema.ts")));
    crash_at(&w, &fault, "push:backup", "dreamer", &["push"]);
    let lock = project_lock(&w);
    lock.lock().unwrap();
    // The status starts the next daemon, which finds the journal.
    let (_, v) = w.json("dreamerd", &["status"]);
    assert_eq!(v["projects"][0]["state"], "busy", "the recovery waits for the lock: {v}");
    w.wait_for("the recovery to meet the held lock", || {
        w.daemon_log().contains("an interrupted operation waits for the project's lock")
    });
    let s = w.status();
    assert_eq!(s["state"], "busy", "nothing is finished while the lock is held: {s}");
    assert_eq!(s["last_push"]["id"], first.as_str(), "{s}");
    let journals = walk(&w.state().join("ops")).into_iter().filter(|p| p.ends_with("journal.json")).count();
    assert_eq!(journals, 1, "the interrupted push's journal waits");
    drop(lock);
    let v = recovered(&w, "push:backup with the lock held");
    assert_ne!(v["last_push"]["id"], first.as_str(), "the push is completed once the lock is free: {v}");
    assert_eq!(v["schema_pending"], false, "{v}");
}

/// Whether some file under `dir` holds exactly `bytes`.
fn holds(dir: &Path, bytes: &[u8]) -> bool {
    tree_of(dir).values().any(|b| b == bytes)
}

#[test]
fn a_restore_killed_at_each_step_of_its_swap_ends_with_one_tree_and_keeps_what_it_replaced() {
    for point in ["swap:staged", "swap:journaled", "swap:borrowing", "swap:exchanged"] {
        let (w, fault) = world();
        w.push_ok();
        let pushed = w.tree("drizzle");
        let sql = pushed.keys().find(|k| k.ends_with(".sql")).unwrap().clone();
        let edit = format!("-- edited by hand before a {point} crash\n").into_bytes();
        fs::write(w.path(&format!("drizzle/{sql}")), &edit).unwrap();
        let edited: BTreeMap<String, Vec<u8>> = w.tree("drizzle");
        crash_at(&w, &fault, point, "dreamer", &["database", "restore"]);
        w.wait_for(&format!("recovery after {point}"), || w.status().get("interrupted").is_none());
        let now = w.tree("drizzle");
        let quarantine = w.state().join("quarantine");
        if now == pushed {
            assert!(holds(&quarantine, &edit), "{point}: the edit is kept in quarantine");
        } else {
            assert_eq!(now, edited, "{point}: the old tree or the new one, never a mix");
        }
        // Either way a restore now brings the push back.
        let (code, v) = w.json("dreamer", &["database", "restore"]);
        assert_eq!(code, 0, "{point}: {v}");
        assert_eq!(w.tree("drizzle"), pushed);
        assert!(holds(&quarantine, &edit), "{point}: nothing lost");
        recovered(&w, point);
    }
}

#[test]
fn a_push_killed_while_copying_the_database_changes_nothing() {
    let (w, fault) = world();
    let first = w.push_ok();
    let old = w.tree("drizzle");
    w.write("src/schema.ts", &format!("{}{POSTS}", w.read("src/schema.ts")));
    crash_at(&w, &fault, "dbcopy:copying", "dreamer", &["push"]);
    let v = recovered(&w, "dbcopy:copying");
    assert_eq!(v["last_push"]["id"], first.as_str());
    assert_eq!(w.tree("drizzle"), old);
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn a_restore_with_its_database_killed_before_the_database_is_put_back_is_finished_by_the_next_daemon() {
    let (w, fault) = world();
    let first = w.push_ok();
    rusqlite::Connection::open(w.path("local.db"))
        .unwrap()
        .execute_batch("INSERT INTO users VALUES (1, 'a')")
        .unwrap();
    w.write("src/schema.ts", &format!("{}{POSTS}", w.read("src/schema.ts")));
    w.push_ok();
    let first_tree = {
        let (code, v) = w.json("dreamerd", &["restore", "--push", &first, "--dry-run"]);
        assert_eq!(code, 0, "{v}");
        v["files"].as_u64().unwrap()
    };
    crash_at(
        &w,
        &fault,
        "dbcopy:putting-back",
        "dreamerd",
        &["restore", "--push", &first, "--with-database"],
    );
    // The next daemon finishes it: the first push's folder and database, nothing else to do.
    let v = recovered(&w, "dbcopy:putting-back");
    assert_eq!(v["last_push"]["id"], first.as_str(), "{v}");
    assert_eq!(v["last_push"]["files"].as_u64(), Some(first_tree));
    let db = rusqlite::Connection::open(w.path("local.db")).unwrap();
    let posts: i64 =
        db.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'posts'", [], |r| r.get(0)).unwrap();
    let ann: i64 = db.query_row("SELECT count(*) FROM users", [], |r| r.get(0)).unwrap();
    assert_eq!((posts, ann), (0, 1), "the database as the first push left it, its row kept");
    // The database it replaced (with posts) is in quarantine, whole, once.
    let kept: Vec<PathBuf> =
        walk(&w.state().join("quarantine")).into_iter().filter(|p| p.ends_with("database.sqlite")).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept_posts: i64 = rusqlite::Connection::open(&kept[0])
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'posts'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept_posts, 1);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_conversion_to_drizzle_kit_1_0_killed_at_each_step_keeps_one_layout_and_every_row() {
    for point in ["push:generate", "push:migrate", "push:migrated", "push:backup"] {
        let (w, fault) = world();
        w.push_ok();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        w.write("src/schema.ts", &format!("{}{POSTS}", w.read("src/schema.ts")));
        w.push_ok();
        rusqlite::Connection::open(w.path("local.db"))
            .unwrap()
            .execute_batch(
                "INSERT INTO users (id, name) VALUES (1, 'ann'); INSERT INTO posts (id) VALUES (1);",
            )
            .unwrap();
        let journal = w.tree("drizzle");
        w.install_kit_v1();
        crash_at(&w, &fault, point, "dreamerd", &["up"]);
        w.wait_for(&format!("recovery after {point}"), || {
            let s = w.status();
            s.get("interrupted").is_none() && s["state"] != "busy"
        });
        let (_, v) = w.json("dreamerd", &["check"]);
        match v["migration_layout"].as_str() {
            // Rolled back: the journal byte for byte, and `up` still to do.
            Some("journal") => {
                assert_eq!(w.tree("drizzle"), journal, "{point}");
                let codes: Vec<&str> =
                    v["drift"].as_array().unwrap().iter().filter_map(|d| d["code"].as_str()).collect();
                assert_eq!(codes, ["layout-kit-mismatch"], "{point}: {v}");
            }
            // Completed: the converted folder, matched by the database (drizzle-kit 1.0's next migrate names the rows
            // if the crash came before it did).
            Some("folders") => assert_eq!(v["drift"], serde_json::json!([]), "{point}: {v}"),
            other => panic!("{point}: layout {other:?}: {v}"),
        }
        let count = |t: &str| -> i64 {
            rusqlite::Connection::open(w.path("local.db"))
                .unwrap()
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((count("users"), count("posts")), (1, 1), "{point}: every row kept");
        // Whatever the point, `up` then leaves a converted, clean project.
        let (code, v) = w.json("dreamerd", &["up"]);
        assert_eq!(code, 0, "{point}: {v}");
        let (code, v) = w.json("dreamerd", &["check"]);
        assert_eq!((code, v["migration_layout"].as_str()), (0, Some("folders")), "{point}: {v}");
    }
}
