//! Baselines that fit how people work (issue 9): any successful push is legitimate, each checkout (git worktree,
//! another machine) has its own last push, histories with old faults are adopted, and a store written by the previous
//! release is migrated. Real binaries, real drizzle-kit, real git.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{World, tree_of};

/// Adds a table to the schema of the project at `root`.
fn add_table(root: &Path, name: &str) {
    let path = root.join("src/schema.ts");
    let mut schema = fs::read_to_string(&path).unwrap();
    schema += &format!(
        "\nexport const {name} = sqliteTable('{name}', {{\n  id: integer('id').primaryKey(),\n  label: text('label'),\n}});\n"
    );
    fs::write(path, schema).unwrap();
}

/// Every event the daemon logged so far, as JSON.
fn events(w: &World) -> Vec<Value> {
    let run = w.run("dreamerd", &["events", "--json"]);
    run.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Concatenated .sql text of a migration folder.
fn sql_text(dir: &Path) -> String {
    tree_of(dir)
        .into_iter()
        .filter(|(k, _)| k.ends_with(".sql"))
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn with_auto_restore(w: &World) {
    w.config("[watch]\non_violation = \"restore\"\n");
}

#[test]
fn restore_to_an_older_push_then_a_schema_change_pushes_clean_and_the_daemon_stays_quiet() {
    let w = World::drizzle();
    with_auto_restore(&w);
    let first = w.push_ok();
    let (code, _) = w.json("dreamerd", &["watch", "."]);
    assert_eq!(code, 0);
    let first_schema = w.read("src/schema.ts");
    add_table(&w.root, "posts");
    let second = w.push_ok();
    let (code, v) = w.json("dreamer", &["database", "restore", "--push", &first]);
    assert_eq!(code, 0, "{v}");
    // Back to the first push's schema too (restore never touches it), and the database that applied the second
    // push reset, as the migration-missing hint says.
    w.write("src/schema.ts", &first_schema);
    fs::remove_file(w.path("local.db")).unwrap();
    let status = w.status();
    assert_eq!(status["state"], "clean", "dreamerd's own restore leaves a clean project: {status}");
    assert_eq!(status["last_push"]["id"], first.as_str());
    assert_eq!(status["last_push"]["via"], "restore");
    // A schema change on top of the older push: a push builds on it.
    add_table(&w.root, "tags");
    let third = w.push_ok();
    let status = w.status();
    assert_eq!(status["state"], "clean", "{status}");
    assert_eq!(status["last_push"]["id"], third.as_str());
    let sql = sql_text(&w.path("drizzle"));
    assert!(sql.contains("`tags`") && !sql.contains("`posts`"), "{sql}");
    let (_, history) = w.json("dreamerd", &["history"]);
    let pushes = history["pushes"].as_array().unwrap();
    assert_eq!(pushes[0]["id"], third.as_str());
    assert_eq!(pushes[0]["parent"], first.as_str(), "the push names the push it was made on: {history}");
    assert_eq!(pushes[1]["id"], second.as_str());
    assert_eq!(history["last_push"], third.as_str());
    // Quiet: never a violation, never an automatic restore, never a warning.
    let all = events(&w);
    assert!(of_type(&all, "violation").is_empty(), "{all:?}");
    assert!(all.iter().all(|e| e["automatic"] != true), "{all:?}");
    assert!(!w.daemon_log().contains("changed by hand"), "{}", w.daemon_log());
}

/// A git repository of a drizzle project with a second worktree on branch `feature`; returns its path.
fn repo_with_worktree(w: &World) -> PathBuf {
    w.write(".gitignore", "node_modules\nlocal.db\n");
    git(&w.root, &["init", "-q"]);
    git(&w.root, &["add", "-A"]);
    git(&w.root, &["commit", "-q", "-m", "first push"]);
    let wt = w.tmp.path().join("wt");
    git(&w.root, &["worktree", "add", "-q", "-b", "feature", wt.to_str().unwrap()]);
    std::os::unix::fs::symlink(w.root.join("node_modules"), wt.join("node_modules")).unwrap();
    fs::canonicalize(wt).unwrap()
}

#[test]
fn two_worktrees_on_two_branches_push_in_turn_and_never_see_each_other() {
    let w = World::drizzle();
    with_auto_restore(&w);
    let first = w.push_ok();
    let wt = repo_with_worktree(&w);
    let wt_arg = wt.to_str().unwrap();
    for dir in [".", wt_arg] {
        let (code, v) = w.json("dreamerd", &["watch", dir]);
        assert_eq!(code, 0, "{v}");
    }
    let status_of = |dir: &str| {
        let (_, v) = w.json("dreamerd", &["status", dir]);
        v["projects"][0].clone()
    };
    // In turn: the worktree adds posts, main adds tags, the worktree adds likes.
    add_table(&wt, "posts");
    let (code, v) = w.json_in(&wt, "dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    let feature = v["push_id"].as_str().unwrap().to_string();
    assert_eq!(status_of(".")["state"], "clean", "main does not see the worktree's push");
    add_table(&w.root, "tags");
    let main = w.push_ok();
    let s = status_of(wt_arg);
    assert_eq!(s["state"], "clean", "the worktree does not see main's push: {s}");
    assert_eq!(s["last_push"]["id"], feature.as_str());
    add_table(&wt, "likes");
    let (code, v) = w.json_in(&wt, "dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    let feature2 = v["push_id"].as_str().unwrap().to_string();
    let s = status_of(".");
    assert_eq!(s["state"], "clean", "{s}");
    assert_eq!(s["last_push"]["id"], main.as_str());
    // Each folder holds its own branch's migrations.
    let (main_sql, wt_sql) = (sql_text(&w.path("drizzle")), sql_text(&wt.join("drizzle")));
    assert!(main_sql.contains("`tags`") && !main_sql.contains("`posts`"), "{main_sql}");
    assert!(
        wt_sql.contains("`posts`") && wt_sql.contains("`likes`") && !wt_sql.contains("`tags`"),
        "{wt_sql}"
    );
    // A hand edit in the worktree: the automatic restore puts back the worktree's own last push, never main's.
    let pushed = tree_of(&wt.join("drizzle"));
    fs::write(wt.join("drizzle/0099_hand.sql"), "DROP TABLE posts;").unwrap();
    w.wait_for("the automatic restore of the worktree", || tree_of(&wt.join("drizzle")) == pushed);
    let all = events(&w);
    let restores: Vec<&Value> = all.iter().filter(|e| e["automatic"] == true).collect();
    assert_eq!(restores.len(), 1, "{all:?}");
    assert_eq!(restores[0]["push_id"], feature2.as_str());
    assert_eq!(restores[0]["root"], wt_arg);
    let violations = of_type(&all, "violation");
    assert_eq!(violations.len(), 1, "only the hand edit was a violation: {all:?}");
    // Each history marks its own checkout's last push; both see every push of the project.
    let (_, h) = w.json_in(&wt, "dreamerd", &["history"]);
    assert_eq!(h["last_push"], feature2.as_str());
    assert_eq!(h["pushes"].as_array().unwrap().len(), 4, "{h}");
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["last_push"], main.as_str());
    let parent_of =
        |id: &str| h["pushes"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["parent"].clone();
    assert_eq!(parent_of(&main), first.as_str());
    assert_eq!(parent_of(&feature2), feature.as_str());
}

/// Another machine: its own state and runtime folders, the same store (a shared store, as S3 will be).
fn second_machine(w: &World) -> World {
    let b = World::drizzle();
    b.set_env("XDG_DATA_HOME", w.xdg("data").to_str().unwrap());
    for f in [".dreamerd.toml", ".dreamerd.sum", "src/schema.ts"] {
        fs::copy(w.path(f), b.path(f)).unwrap();
    }
    copy_dir(&w.path("drizzle"), &b.path("drizzle"));
    b
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    for (rel, bytes) in tree_of(from) {
        let dest = to.join(rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(dest, bytes).unwrap();
    }
}

#[test]
fn a_tree_pushed_on_another_machine_is_accepted_here_and_becomes_the_last_push() {
    let a = World::drizzle();
    let first = a.push_ok();
    let b = second_machine(&a);
    let (code, v) = b.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    add_table(&b.root, "posts");
    let second = b.push_ok();
    // The first machine gets the same tree (a pull): accepted, with the push it matches. (Its daemon stopped, so
    // that this check is the first to look.)
    a.run("dreamerd", &["stop"]);
    copy_dir(&b.path("drizzle"), &a.path("drizzle"));
    fs::copy(b.path("src/schema.ts"), a.path("src/schema.ts")).unwrap();
    fs::copy(b.path(".dreamerd.sum"), a.path(".dreamerd.sum")).unwrap();
    let (code, v) = a.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "this machine's database has not applied the new migration yet: {v}");
    assert_eq!(v["drift"][0]["code"], "migration-pending", "{v}");
    assert_eq!(v["drift"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["state"], "clean");
    assert!(v["violations"].as_array().unwrap().is_empty());
    assert_eq!(v["matches"], second.as_str(), "{v}");
    assert_eq!(v["relation"], "newer", "{v}");
    assert_eq!(v["schema_pending"], false);
    // From now on it is this checkout's last push: a hand edit is listed against it, and restore brings it back.
    let (_, v) = a.json("dreamerd", &["check"]);
    assert_eq!(v["last_push"]["id"], second.as_str(), "{v}");
    assert_eq!(v["last_push"]["via"], "arrived");
    assert_eq!(v["last_push"]["previous"], first.as_str());
    let sql =
        a.tree("drizzle").keys().find(|k| k.ends_with(".sql") && !k.starts_with("0000")).unwrap().clone();
    a.write(&format!("drizzle/{sql}"), "-- edited");
    let (_, v) = a.json("dreamerd", &["check"]);
    assert_eq!(v["state"], "violated");
    assert_eq!(v["restore_target"], second.as_str(), "{v}");
    assert_eq!(v["violations"][0]["path"], sql.as_str());
    let (code, v) = a.json("dreamer", &["database", "restore", "--dry-run"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["push_id"], second.as_str(), "status and restore name the same push");
    // Pushing applies the arrived migration to this machine's database.
    a.json("dreamer", &["database", "restore"]);
    let (code, v) = a.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["push_id"], second.as_str(), "nothing changed: the same push: {v}");
    let (code, v) = a.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["drift"].as_array().unwrap().is_empty(), "{v}");
    // The daemon, which watches since that push, takes the next pulled push quietly.
    add_table(&b.root, "tags");
    let third = b.push_ok();
    copy_dir(&b.path("drizzle"), &a.path("drizzle"));
    let status = a.status();
    assert_eq!(status["state"], "clean", "{status}");
    a.wait_for("the arrived event", || {
        events(&a)
            .iter()
            .any(|e| e["type"] == "arrived" && e["push_id"] == third.as_str() && e["relation"] == "newer")
    });
    assert!(of_type(&events(&a), "violation").is_empty(), "{:?}", events(&a));
    assert!(!a.daemon_log().contains("changed by hand"), "{}", a.daemon_log());
}

#[test]
fn a_tree_that_matches_no_push_names_the_restore_target_and_the_closest_push() {
    let w = World::drizzle();
    let first = w.push_ok();
    add_table(&w.root, "posts");
    let second = w.push_ok();
    let second_tree = w.tmp.path().join("second");
    copy_dir(&w.path("drizzle"), &second_tree);
    // One file more than the last push: the last push is also the closest, so only it is named.
    w.write("drizzle/meta/extra.json", "{}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["restore_target"], second.as_str());
    assert!(v["closest"].is_null(), "the closest is the restore target itself: {v}");
    // Standing on the first push, the same folder is closest to the second.
    let (code, _) = w.json("dreamer", &["database", "restore", "--push", &first]);
    assert_eq!(code, 0);
    copy_dir(&second_tree, &w.path("drizzle"));
    w.write("drizzle/meta/extra.json", "{}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["restore_target"], first.as_str(), "{v}");
    assert_eq!(v["violations"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["closest"]["push"], second.as_str(), "{v}");
    assert_eq!(v["closest"]["differences"], 1, "{v}");
    let run = w.run("dreamerd", &["check"]);
    assert!(run.stdout.contains(&format!("restore --push {second}")), "{}", run.stdout);
    let (_, r) = w.json("dreamer", &["database", "restore", "--dry-run"]);
    assert_eq!(r["push_id"], first.as_str(), "status and restore name the same push");
}

/// A project with a real history made by drizzle-kit alone (never guarded), then damaged the way merges and old
/// tools leave real histories: a stray `.sql`, an applied entry whose `when` is out of order, an old snapshot gone.
fn unguarded_history_with_faults() -> World {
    let w = World::drizzle();
    let kit = |args: &[&str]| {
        let out = Command::new(w.path("node_modules/.bin/drizzle-kit"))
            .args(args)
            .current_dir(&w.root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    kit(&["generate"]);
    add_table(&w.root, "posts");
    kit(&["generate"]);
    add_table(&w.root, "tags");
    kit(&["generate"]);
    let journal_path = w.path("drizzle/meta/_journal.json");
    let mut journal: Value = serde_json::from_str(&fs::read_to_string(&journal_path).unwrap()).unwrap();
    let entries = journal["entries"].as_array_mut().unwrap();
    // 0001's when goes before 0000's; a fresh database still applies both (and this one is fresh).
    let when0 = entries[0]["when"].as_i64().unwrap();
    entries[1]["when"] = Value::from(when0 - 1000);
    fs::write(&journal_path, serde_json::to_string_pretty(&journal).unwrap()).unwrap();
    kit(&["migrate"]);
    fs::remove_file(w.path("drizzle/meta/0000_snapshot.json")).unwrap();
    w.write("drizzle/0001_left_by_a_merge.sql", "CREATE TABLE merged (id integer);\n");
    w
}

#[test]
fn a_history_with_old_faults_is_adopted_and_only_new_faults_are_reported() {
    let w = unguarded_history_with_faults();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "before adoption the faults are reported: {v}");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "the first push accepts what migrate tolerates: {v}");
    let mut codes: Vec<&str> =
        v["known_faults"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, ["journal-missing-snapshot", "journal-order", "sql-not-in-journal"], "{v}");
    let project = w.read(".dreamerd.toml");
    assert!(project.contains("[[known_faults]]") && project.contains("0001_left_by_a_merge"), "{project}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "known faults are left out: {v}");
    assert_eq!(v["known_faults"], 3);
    // A fresh clone (no state, no store) knows them too.
    let clone = World::empty();
    for (rel, bytes) in tree_of(&w.root) {
        if !rel.starts_with("node_modules") && rel != "local.db" {
            let dest = clone.path(&rel);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(dest, bytes).unwrap();
        }
    }
    std::os::unix::fs::symlink(w.path("node_modules"), clone.path("node_modules")).unwrap();
    let (code, v) = clone.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    // A new stray file afterwards is flagged: a violation, and a fault that is not known.
    w.write("drizzle/0003_new_stray.sql", "DROP TABLE posts;\n");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["violations"][0]["kind"], "created");
    let drift: Vec<&str> =
        v["drift"].as_array().unwrap().iter().map(|d| d["migration"].as_str().unwrap()).collect();
    assert_eq!(drift, ["0003_new_stray"], "{v}");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "drizzle-tampered");
}

#[test]
fn a_history_that_migrate_cannot_run_is_refused_with_a_way_out_that_needs_no_earlier_push() {
    let w = unguarded_history_with_faults();
    let sql = w.tree("drizzle").keys().find(|k| k.starts_with("0002_")).unwrap().clone();
    fs::remove_file(w.path(&format!("drizzle/{sql}"))).unwrap();
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "precheck");
    assert_eq!(v["diagnosis"]["code"], "journal-missing-sql");
    let hint = v["diagnosis"]["hint"].as_str().unwrap();
    assert!(hint.contains("git") && !hint.contains("restore"), "{hint}");
    assert_eq!(w.tree("drizzle"), before, "nothing changed");
    assert!(!w.path(".dreamerd.toml").exists(), "nothing was recorded");
}

#[test]
fn a_store_of_the_previous_release_is_migrated_with_its_history_intact() {
    let w = World::drizzle();
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats/af1d4f6");
    let key = dreamerd::project::Project::legacy(&w.root).local_key();
    for (from, to) in [("store", w.store()), ("state", w.state()), ("project", w.root.clone())] {
        for (rel, bytes) in tree_of(&release.join(from)) {
            let dest = to.join(rel.replace("proj-38d48c19d6c3", &key));
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(dest, bytes).unwrap();
        }
    }
    fs::remove_file(w.path("drizzle.config.json")).unwrap();
    let list = w.state().join("watchlist.json");
    fs::write(&list, fs::read_to_string(&list).unwrap().replace("/tmp/fx2/proj", w.root.to_str().unwrap()))
        .unwrap();
    let (code, h) = w.json("dreamerd", &["history"]);
    assert_eq!(code, 0, "{h}");
    let ids: Vec<&str> = h["pushes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["20261126T001819Z-e57cd036", "20261126T001810Z-3253ef56", "20261126T001808Z-b4a3b9b8"]);
    let generations: Vec<u64> =
        h["pushes"].as_array().unwrap().iter().map(|p| p["generation"].as_u64().unwrap()).collect();
    assert_eq!(generations, [3, 2, 1]);
    assert_eq!(h["pushes"][2]["parent"], Value::Null);
    assert_eq!(h["pushes"][1]["parent"], "20261126T001808Z-b4a3b9b8");
    assert_eq!(h["last_push"], "20261126T001819Z-e57cd036", "{h}");
    assert_eq!(h["committed"], "20261126T001819Z-e57cd036");
    let marker: Value =
        serde_json::from_str(&fs::read_to_string(w.store().join("format.json")).unwrap()).unwrap();
    assert_eq!(marker["format"], 2);
    let project = fs::read_dir(w.store().join("projects")).unwrap().next().unwrap().unwrap().path();
    assert!(
        !project.join("pushes").exists() && !project.join("latest.json").exists(),
        "the old layout is gone"
    );
    // Every push restores byte for byte what it had, verified by its hash.
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    for id in ids.iter().rev() {
        let (code, v) = w.json("dreamer", &["database", "restore", "--push", id]);
        assert_eq!(code, 0, "{v}");
        let (code, c) = w.json("dreamerd", &["check"]);
        assert_eq!((code, c["state"].as_str()), (0, Some("clean")), "{c}");
    }
    assert_eq!(w.tree("drizzle"), tree_of(&release.join("project/drizzle")));
    // And a push builds on the migrated history.
    add_table(&w.root, "likes");
    let next = w.push_ok();
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"][0]["id"], next.as_str());
    assert_eq!(h["pushes"][0]["generation"], 4);
    assert_eq!(h["pushes"][0]["parent"], "20261126T001819Z-e57cd036");
}

#[test]
fn a_lost_head_is_rebuilt_and_a_store_that_lost_the_checkouts_push_stops_push_restore_and_history() {
    let w = crate::support::stand_in_world();
    let first = w.push_ok();
    let second = w.push_ok();
    let project = fs::read_dir(w.store().join("projects")).unwrap().next().unwrap().unwrap().path();
    // The head is only a hint: without it the history, the checkout and a push agree as before.
    fs::remove_file(project.join("head.json")).unwrap();
    let (code, h) = w.json("dreamerd", &["history"]);
    assert_eq!(code, 0, "{h}");
    let ids: Vec<&str> = h["pushes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    assert_eq!(h["last_push"], second.as_str());
    let third = w.push_ok();
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"][0]["id"], third.as_str());
    assert_eq!(h["pushes"][0]["generation"], 3);
    // The project's history wiped from the store (the store folder itself is still there): never "never pushed".
    fs::remove_dir_all(&project).unwrap();
    w.write("drizzle/0009_hand.sql", "x");
    let before = w.tree("drizzle");
    for (bin, args) in
        [("dreamer", vec!["push"]), ("dreamer", vec!["database", "restore"]), ("dreamerd", vec!["history"])]
    {
        let run = w.run(bin, &args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(&format!("does not hold push {third}")), "{}", run.stderr);
    }
    assert_eq!(w.tree("drizzle"), before, "nothing was changed");
    assert!(!project.exists(), "nothing was accepted as a baseline");
    // check still verifies against what the checkout knows, without the store.
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["violations"][0]["path"], "0009_hand.sql");
}
