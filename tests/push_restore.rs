//! Violations, restore, refusals and rollbacks through the real binaries. Stand-in scripts play drizzle-kit where
//! the point is dreamerd's own behaviour; drizzle_e2e.rs proves the same paths on the real drizzle-kit.

use std::fs;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::{GENERATE, MIGRATE_OK, World, stand_in_world, tree_of};

fn violations(w: &World) -> Value {
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, if v["violations"].as_array().unwrap().is_empty() { 0 } else { 1 });
    v["violations"].clone()
}

fn restore(w: &World) -> Value {
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    v
}

#[test]
fn every_violation_kind_in_meta_too_with_exact_json() {
    let w = World::drizzle();
    w.push_ok();
    let pushed = w.tree("drizzle");
    let sql = pushed.keys().find(|k| k.ends_with(".sql")).unwrap().clone();
    let cases: Vec<(Box<dyn Fn()>, Value)> = vec![
        (
            Box::new(|| w.write("drizzle/meta/_journal.json", "{}")),
            json!([{"kind": "modified", "path": "meta/_journal.json"}]),
        ),
        (
            Box::new(|| fs::remove_file(w.path("drizzle/meta/0000_snapshot.json")).unwrap()),
            json!([{"kind": "deleted", "path": "meta/0000_snapshot.json"}]),
        ),
        (
            Box::new(|| w.write("drizzle/meta/0001_snapshot.json", "{}")),
            json!([{"kind": "created", "path": "meta/0001_snapshot.json"}]),
        ),
        (
            Box::new(|| {
                fs::rename(
                    w.path("drizzle/meta/0000_snapshot.json"),
                    w.path("drizzle/meta/old_snapshot.json"),
                )
                .unwrap()
            }),
            json!([{"kind": "renamed", "path": "meta/old_snapshot.json", "from": "meta/0000_snapshot.json"}]),
        ),
        (
            Box::new(|| w.write(&format!("drizzle/{sql}"), "DROP TABLE users;")),
            json!([{"kind": "modified", "path": sql}]),
        ),
        (
            Box::new(|| {
                fs::rename(w.path(&format!("drizzle/{sql}")), w.path("drizzle/zzzz_renamed.sql")).unwrap();
                w.write("drizzle/zzzz_renamed.sql", "changed too");
            }),
            json!([{"kind": "deleted", "path": sql}, {"kind": "created", "path": "zzzz_renamed.sql"}]),
        ),
    ];
    for (change, expected) in cases {
        change();
        assert_eq!(violations(&w), expected);
        let (_, status) = w.json("dreamerd", &["check"]);
        assert_eq!(status["state"], "violated");
        let r = restore(&w);
        // What the restore replaced is kept; a folder that only lost files had nothing to replace.
        let only_deleted = expected.as_array().unwrap().iter().all(|v| v["kind"] == "deleted");
        assert_eq!(r["quarantine"].is_string(), !only_deleted, "{r}");
        assert_eq!(w.tree("drizzle"), pushed, "restore gives byte-identical files");
        assert_eq!(violations(&w), json!([]));
    }
}

#[test]
fn restore_keeps_what_it_replaced_and_never_touches_schema_or_database() {
    let w = World::drizzle();
    let id = w.push_ok();
    let pushed = w.tree("drizzle");
    let schema = fs::read(w.path("src/schema.ts")).unwrap();
    let db = fs::read(w.path("local.db")).unwrap();
    w.write("drizzle/meta/_journal.json", "hand edit");
    w.write("drizzle/9999_mine.sql", "mine");

    // --dry-run lists the changes and changes nothing.
    let (code, v) = w.json("dreamerd", &["restore", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(v["dry_run"], true);
    assert_eq!(
        v["changes"],
        json!([{"kind": "created", "path": "9999_mine.sql"}, {"kind": "modified", "path": "meta/_journal.json"}])
    );
    assert_eq!(w.read("drizzle/meta/_journal.json"), "hand edit");
    assert_eq!(w.read("drizzle/9999_mine.sql"), "mine");

    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["push_id"], id.as_str());
    assert_eq!(v["files"], 3);
    assert_eq!(w.tree("drizzle"), pushed);
    let q = PathBuf::from(v["quarantine"].as_str().unwrap());
    assert!(q.starts_with(w.state()), "quarantine is under the state directory: {q:?}");
    let kept = tree_of(&q.join("drizzle"));
    assert_eq!(kept["meta/_journal.json"], b"hand edit");
    assert_eq!(kept["9999_mine.sql"], b"mine");
    assert_eq!(fs::read(w.path("src/schema.ts")).unwrap(), schema);
    assert_eq!(fs::read(w.path("local.db")).unwrap(), db);
    assert!(!w.path(".dreamerd-tmp").exists(), "no scratch folder is left in the project");

    // Restoring a clean tree is a no-op with no quarantine.
    let v = restore(&w);
    assert_eq!(v["quarantine"], Value::Null);
}

#[test]
fn restore_after_drizzle_was_deleted_and_by_push_id() {
    let w = stand_in_world();
    let first = w.push_ok();
    let first_tree = w.tree("drizzle");
    w.write("src/schema.ts", "export const y = 2;\n");
    let second = w.push_ok();
    assert_ne!(first, second);
    fs::remove_dir_all(w.path("drizzle")).unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    assert_eq!(v["violations"].as_array().unwrap().len(), 5);
    let v = restore(&w);
    assert_eq!(v["push_id"], second.as_str());
    assert_eq!(v["quarantine"], Value::Null, "there was nothing to keep");
    assert_eq!(w.tree("drizzle").len(), 5);

    let (code, v) = w.json("dreamerd", &["restore", "--push", &first]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(w.tree("drizzle"), first_tree);
    let (code, v) = w.json("dreamerd", &["restore", "--push", "../../etc"]);
    assert_eq!(code, 2, "{v}");
    let (code, v) = w.json("dreamerd", &["restore", "--push", "20200101T000000Z-deadbeef"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not in the history"));
}

#[test]
fn push_on_a_tampered_drizzle_is_refused_and_changes_nothing() {
    let w = stand_in_world();
    w.push_ok();
    w.write("drizzle/0000_step.sql", "-- edited by an agent");
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert_eq!(v["stage"], "precheck");
    assert_eq!(v["diagnosis"]["code"], "drizzle-tampered");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("0000_step.sql"));
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("restore"));
    assert_eq!(w.tree("drizzle"), before, "generate never ran");
}

#[test]
fn restore_with_no_backup_is_a_clear_error() {
    let w = stand_in_world();
    w.write("drizzle/0000_hand.sql", "hand made");
    let before = w.tree("drizzle");
    let run = w.run("dreamer", &["database", "restore"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no successful push yet, nothing to restore"), "{}", run.stderr);
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("nothing to restore"));
    assert_eq!(w.tree("drizzle"), before);
    assert!(!w.path(".dreamerd.toml").exists());
}

#[test]
fn corrupted_archive_in_the_store_is_refused() {
    let w = stand_in_world();
    let id = w.push_ok();
    w.write("drizzle/0000_step.sql", "tampered");
    let before = w.tree("drizzle");
    let archive =
        fs::read_dir(w.store().join("projects")).unwrap().next().unwrap().unwrap().path().join("archives");
    let archive = fs::read_dir(archive).unwrap().next().unwrap().unwrap().path();
    let _ = &id;
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&archive, bytes).unwrap();
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 1);
    assert!(v["error"].as_str().unwrap().contains("corrupt"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("archives/"), "the message names the object: {v}");
    assert_eq!(w.tree("drizzle"), before, "nothing changed");
    let (code, _) = w.json("dreamerd", &["restore", "--dry-run"]);
    assert_eq!(code, 1, "a dry run reports the corrupt backup too");
}

#[test]
fn config_errors_exit_2_naming_file_line_and_key() {
    let w = stand_in_world();
    w.push_ok();
    w.write("drizzle/0000_step.sql", "tampered");
    let before = w.tree("drizzle");
    w.config("[push]\ntimeout_secs = 5\nretries = 3\n");
    let run = w.run("dreamer", &["database", "restore"]);
    assert_eq!(run.code, 2);
    let file = w.xdg("config").join("dreamerd/config.toml");
    assert!(run.stderr.contains(&format!("{}: line 3, key push.retries", file.display())), "{}", run.stderr);
    assert_eq!(w.tree("drizzle"), before);

    // --config and DREAMERD_CONFIG name other files; wrong types are caught too.
    w.write("other.toml", "[watch]\ndebounce_ms = \"soon\"\n");
    let run = w.run("dreamerd", &["check", "--config", "other.toml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("other.toml: line 2, key watch.debounce_ms"), "{}", run.stderr);
    let run = w.cmd("dreamerd", &["check"]).env("DREAMERD_CONFIG", w.path("other.toml")).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    let run = w.run("dreamerd", &["check", "--config", "/nonexistent/dreamerd.toml"]);
    assert_eq!(run.code, 2);
}

#[test]
fn failed_generate_rolls_back_and_quarantines_what_it_wrote() {
    let w = stand_in_world();
    w.push_ok();
    let before = w.tree("drizzle");
    // Like drizzle-kit: writes the snapshot and journal, then fails with exit 0 and an error on stderr.
    w.write(
        "gen.sh",
        "printf '{\"half\":true}' > drizzle/meta/0001_snapshot.json\nprintf 'x' > drizzle/meta/_journal.json\n\
         echo 'Error: Transform failed with 1 error:' >&2\n\
         echo '/p/src/schema.ts:3:0: ERROR: Unexpected end of file' >&2\n",
    );
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["stage"], "generate");
    assert_eq!(v["diagnosis"]["code"], "schema-error");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("Unexpected end of file"));
    assert_eq!(v["rolled_back"], true);
    assert_eq!(w.tree("drizzle"), before);
    let q = PathBuf::from(v["quarantine"].as_str().unwrap());
    let kept = tree_of(&q.join("drizzle"));
    assert_eq!(kept["meta/0001_snapshot.json"], br#"{"half":true}"#);
    assert!(fs::read_to_string(q.join("generate.log")).unwrap().contains("Unexpected end of file"));
}

#[test]
fn first_push_that_fails_leaves_no_drizzle_folder() {
    let w = World::empty();
    w.stand_ins(GENERATE, "exit 1\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["stage"], "migrate");
    assert!(!w.path("drizzle").exists(), "drizzle/ did not exist before, so it does not after");
    let q = PathBuf::from(v["quarantine"].as_str().unwrap());
    assert!(q.join("drizzle/0000_step.sql").is_file());
}

#[test]
fn timeout_kills_generate_and_rolls_back() {
    let w = stand_in_world();
    w.push_ok();
    let before = w.tree("drizzle");
    w.write("gen.sh", "echo partial > drizzle/0001_partial.sql\nsleep 60\n");
    w.config("[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\ntimeout_secs = 1\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["diagnosis"]["code"], "timeout");
    assert_eq!(w.tree("drizzle"), before);
}

#[test]
fn an_interrupted_push_is_rolled_back_by_the_next_operation() {
    let w = stand_in_world();
    w.push_ok();
    let before = w.tree("drizzle");
    w.write("gen.sh", "echo half > drizzle/0001_half.sql\necho $$ > gen.pid\nexec sleep 60\n");
    w.push_and_crash("gen.pid");
    assert!(w.path("drizzle/0001_half.sql").exists());
    assert!(w.socket().exists(), "kill -9 leaves a stale socket behind");

    w.write("gen.sh", GENERATE);
    let id = w.push_ok();
    let after = w.tree("drizzle");
    assert!(!after.contains_key("0001_half.sql"), "the half-written file was rolled back first");
    assert_eq!(after.len(), before.len() + 2, "then the push ran normally");
    let quarantine = w.state().join("quarantine");
    let kept: Vec<_> = walk_names(&quarantine);
    assert!(kept.iter().any(|p| p.ends_with("interrupted-push/drizzle/0001_half.sql")), "{kept:?}");
    assert!(!id.is_empty());
}

fn walk_names(dir: &std::path::Path) -> Vec<String> {
    tree_of(dir).into_keys().collect()
}

#[test]
fn identity_is_per_project_and_travels_with_a_clone() {
    // Two projects with the same package name never share backups.
    let a = stand_in_world();
    a.write("package.json", r#"{"name":"same"}"#);
    let a_id = a.push_ok();
    let other = a.tmp.path().join("other");
    fs::create_dir_all(other.join("src")).unwrap();
    fs::write(other.join("package.json"), r#"{"name":"same"}"#).unwrap();
    fs::write(other.join("src/schema.ts"), "export const z = 0;\n").unwrap();
    fs::write(other.join("gen.sh"), GENERATE).unwrap();
    fs::write(other.join("mig.sh"), "echo migrated\n").unwrap();
    let run = a.cmd("dreamer", &["push", "--json", other.to_str().unwrap()]).output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let other_id: Value = serde_json::from_slice(&run.stdout).unwrap();
    let history = |dir: &std::path::Path| -> Vec<String> {
        let run = a.cmd("dreamerd", &["history", "--json", dir.to_str().unwrap()]).output().unwrap();
        let v: Value = serde_json::from_slice(&run.stdout).unwrap();
        v["pushes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(
        history(&other),
        [other_id["push_id"].as_str().unwrap()],
        "each project sees only its own pushes"
    );
    assert_eq!(history(&a.root), [a_id.as_str()]);
    assert_ne!(fs::read_to_string(other.join(".dreamerd.toml")).unwrap(), a.read(".dreamerd.toml"));

    // A clone (same files, .dreamerd.toml included, another path) finds a's backups and can restore them.
    let clone = a.tmp.path().join("clone");
    fs::create_dir_all(clone.join("src")).unwrap();
    for f in [".dreamerd.toml", "package.json", "src/schema.ts"] {
        fs::copy(a.path(f), clone.join(f)).unwrap();
    }
    let run = a.cmd("dreamer", &["database", "restore", "--json", clone.to_str().unwrap()]).output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["push_id"], a_id.as_str());
    assert_eq!(tree_of(&clone.join("drizzle")), a.tree("drizzle"));
}

#[test]
fn discovery_from_a_subdirectory_and_outside_any_project() {
    let w = stand_in_world();
    w.push_ok();
    let sub = w.path("src");
    let run = w.cmd("dreamerd", &["check", "--json"]).current_dir(&sub).output().unwrap();
    assert_eq!(run.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["root"], json!(w.root));
    let run = w.cmd("dreamerd", &["check"]).current_dir(w.tmp.path()).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no drizzle project"));
}

#[test]
fn symlink_in_drizzle_is_a_violation_and_never_followed() {
    let w = stand_in_world();
    w.push_ok();
    fs::remove_file(w.path("drizzle/0000_step.sql")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", w.path("drizzle/0000_step.sql")).unwrap();
    assert_eq!(
        violations(&w),
        json!([{"kind": "modified", "path": "0000_step.sql", "file_type": "symlink"}])
    );
    restore(&w);
    assert!(w.path("drizzle/0000_step.sql").symlink_metadata().unwrap().is_file());
}

#[test]
fn a_refused_backup_is_kept_locally_and_stored_at_the_next_push() {
    let w = stand_in_world();
    let first = w.push_ok();
    // The store breaks after migrate succeeded: its folder of pushes takes no new entry (as on a full disk),
    // while everything already stored stays readable. chattr +i holds even against root.
    let project_id = w.read(".dreamerd.toml").split('"').nth(1).unwrap().to_string();
    let pushes = w.store().join("projects").join(&project_id).join("pushes");
    struct Immutable(PathBuf);
    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }
    if !std::process::Command::new("chattr").arg("+i").arg(&pushes).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: chattr +i is not supported on this filesystem");
        return;
    }
    let immutable = Immutable(pushes);
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "backup");
    assert_eq!(v["diagnosis"]["code"], "backup-failed");
    assert_eq!(v["rolled_back"], false, "the database has the migration, so drizzle/ keeps it");
    assert!(w.path("drizzle/0001_step.sql").exists());
    let q = PathBuf::from(v["quarantine"].as_str().unwrap());
    assert!(
        !q.join("drizzle-before-push").exists(),
        "the tree from before is push {first}, which the store keeps: it is not kept twice"
    );

    // The push counts: drizzle/ is clean against it, and a restore puts it back from the local copy.
    let (code, check) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{check}");
    assert_ne!(check["last_push"]["id"], first.as_str());
    let pending_id = check["last_push"]["id"].as_str().unwrap().to_string();
    fs::remove_file(w.path("drizzle/0001_step.sql")).unwrap();
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["push_id"], pending_id.as_str());
    assert!(w.path("drizzle/0001_step.sql").exists());

    // While the store is broken, the next push stops before touching anything.
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["stage"], "backup");
    assert_eq!(w.tree("drizzle"), before);

    // Store fixed: the next push stores the waiting backup first, then pushes.
    drop(immutable);
    let latest = w.push_ok();
    let (_, history) = w.json("dreamerd", &["history"]);
    let ids: Vec<&str> =
        history["pushes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [latest.as_str(), pending_id.as_str(), first.as_str()]);
}

#[test]
fn human_output_is_short_and_says_what_to_do() {
    let w = stand_in_world();
    let run = w.run("dreamer", &["push"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.starts_with("pushed: "), "{}", run.stdout);
    assert!(
        run.stderr.contains("[ok] wrote migration 0"),
        "drizzle-kit's output is streamed to stderr: {}",
        run.stderr
    );
    let id = run.stdout.split_whitespace().nth(1).unwrap().to_string();

    w.write("drizzle/0000_step.sql", "edited");
    let run = w.run("dreamerd", &["check"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("VIOLATED") && run.stdout.contains("modified  0000_step.sql"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("dreamer database restore"));

    let run = w.run("dreamer", &["push"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("push FAILED at precheck: [drizzle-tampered]"), "{}", run.stdout);
    assert!(run.stdout.contains("hint: "));

    let run = w.run("dreamer", &["database", "restore"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains(&format!("restored drizzle/ to push {id}")), "{}", run.stdout);
    assert!(run.stdout.contains("kept in "));

    let run = w.run("dreamerd", &["history"]);
    assert!(run.stdout.contains(&id) && run.stdout.contains("this checkout's last push"), "{}", run.stdout);

    w.write("drizzle/0001_extra.sql", "x");
    let run = w.run("dreamerd", &["check"]);
    assert!(
        run.stdout.contains("[sql-not-in-journal]") && run.stdout.contains("hint:"),
        "drift is shown: {}",
        run.stdout
    );
}

/// A fresh clone of `w`'s project on another machine: its files, new XDG folders, no store.
fn clone_of(w: &World) -> World {
    let clone = World::empty();
    for (rel, bytes) in tree_of(&w.root) {
        if rel.starts_with("node_modules") {
            continue;
        }
        let dest = clone.path(&rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(dest, bytes).unwrap();
    }
    clone
}

#[test]
fn check_in_a_fresh_clone_without_a_store_verifies_the_committed_sum() {
    let w = stand_in_world();
    w.push_ok();
    let last = w.push_ok();
    let sum = w.read(".dreamerd.sum");
    assert!(sum.contains(&format!("push {last}")), "{sum}");
    let ci = clone_of(&w);
    let (code, v) = ci.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "unedited: {v}");
    assert_eq!(v["last_push"]["id"], last.as_str());
    // A hand edit committed in git: check names the file, and a push there does not take it for a baseline.
    ci.write("drizzle/0001_step.sql", "CREATE TABLE edited (x integer);");
    let (code, v) = ci.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["violations"][0]["path"], "0001_step.sql");
    let (code, v) = ci.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "drizzle-tampered");
    // Unedited, the clone's first push stores a backup of its own (the sum alone has none).
    let ci = clone_of(&w);
    ci.stand_ins(GENERATE, MIGRATE_OK);
    let (code, v) = ci.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["unchanged"], false, "{v}");
}

#[test]
fn a_sum_holding_git_conflict_markers_says_so() {
    let w = stand_in_world();
    w.push_ok();
    let sum = w.read(".dreamerd.sum");
    w.write(".dreamerd.sum", &format!("<<<<<<< HEAD\n{sum}=======\n{sum}>>>>>>> feature\n"));
    let ci = clone_of(&w);
    let run = ci.run("dreamerd", &["check"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("conflict markers"), "{}", run.stderr);
    assert!(run.stderr.contains("two branches each pushed"), "{}", run.stderr);
}

#[test]
fn a_store_renamed_away_stops_push_restore_and_history() {
    let w = stand_in_world();
    w.push_ok();
    let moved = w.store().with_extension("moved");
    fs::rename(w.store(), &moved).unwrap();
    for (bin, args) in
        [("dreamer", vec!["push"]), ("dreamer", vec!["database", "restore"]), ("dreamerd", vec!["history"])]
    {
        let run = w.run(bin, &args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    }
    assert!(!w.store().exists(), "nothing was written where the store was");
    // check needs no store: the committed sum still says what the folder must be.
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn a_folder_restored_to_an_older_push_is_clean_and_a_push_builds_on_it() {
    let w = stand_in_world();
    let first = w.push_ok();
    w.push_ok();
    let (code, v) = w.json("dreamer", &["database", "restore", "--push", &first]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "dreamerd's own restore leaves a clean project: {v}");
    assert_eq!(v["last_push"]["id"], first.as_str(), "{v}");
    assert_eq!(v["last_push"]["via"], "restore", "{v}");
    assert_eq!(w.status()["state"], "clean", "the daemon agrees");
    assert!(!w.daemon_log().contains("changed by hand"), "{}", w.daemon_log());
    let third = w.push_ok();
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"][0]["id"], third.as_str());
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["matches"].is_null(), "{v}");
}
