//! Knowing git (issue 16): with real git and the real drizzle-kit, a checkout that brings a known push is accepted
//! silently, and one that brings a tree no push made is a violation that says git brought it, with the commit, and is
//! never undone by the automatic restore.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::World;

/// Runs git in `dir` (as a throwaway author) and returns its stdout; panics on failure.
fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn git(w: &World, args: &[&str]) -> String {
    git_in(&w.root, args)
}

/// A git repository around a real drizzle project, the database and node_modules left out.
fn repository() -> World {
    let w = World::drizzle();
    w.write(".gitignore", "node_modules\nlocal.db\n");
    git(&w, &["init", "-q", "-b", "main"]);
    w
}

fn commit(w: &World, message: &str) {
    git(w, &["add", "-A"]);
    git(w, &["commit", "-q", "-m", message]);
}

/// In the checkout `dir` (another clone or worktree of `w`'s repository): a `tags` table added to the schema, its
/// migration made by running drizzle-kit directly (no push), and committed.
fn commit_tags_made_by_drizzle_kit(w: &World, dir: &Path) {
    std::os::unix::fs::symlink(w.root.join("node_modules"), dir.join("node_modules")).unwrap();
    let schema = fs::read_to_string(dir.join("src/schema.ts")).unwrap();
    fs::write(
        dir.join("src/schema.ts"),
        format!("{schema}\nexport const tags = sqliteTable('tags', {{ id: integer('id').primaryKey() }});\n"),
    )
    .unwrap();
    let generated = Command::new("./node_modules/.bin/drizzle-kit")
        .arg("generate")
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    git_in(dir, &["add", "-A"]);
    git_in(dir, &["commit", "-q", "-m", "tags, by drizzle-kit directly"]);
}

fn events(w: &World) -> Vec<Value> {
    let run = w.run("dreamerd", &["events", "--json"]);
    run.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_checkout_of_a_known_push_is_silent_and_of_an_unknown_tree_is_git_s_and_never_undone() {
    let w = repository();
    // The automatic restore is on: it must still never undo what git did.
    w.config("[watch]\non_violation = \"restore\"\n");
    let first = w.push_ok(); // spawns the daemon, which watches the project from then on
    commit(&w, "users");
    git(&w, &["checkout", "-q", "-b", "posts"]);
    let schema = w.read("src/schema.ts");
    w.write(
        "src/schema.ts",
        &format!(
            "{schema}\nexport const posts = sqliteTable('posts', {{ id: integer('id').primaryKey() }});\n"
        ),
    );
    let second = w.push_ok();
    commit(&w, "posts");

    // Back and forth between two known pushes: accepted as they are, no violation, nothing restored.
    for (branch, push) in [("main", &first), ("posts", &second), ("main", &first)] {
        git(&w, &["checkout", "-q", branch]);
        w.wait_for(&format!("{branch}'s push accepted"), || {
            let s = w.status();
            s["state"] == "clean" && s["last_push"]["id"] == push.as_str()
        });
    }
    assert!(
        !events(&w).iter().any(|e| e["type"] == "violation" || e["type"] == "restore"),
        "{:?}",
        events(&w)
    );

    // A branch whose migration no push made: drizzle-kit run directly in another clone, fetched here.
    let other = w.tmp.path().join("other");
    git_in(w.tmp.path(), &["clone", "-q", w.root.to_str().unwrap(), other.to_str().unwrap()]);
    git_in(&other, &["checkout", "-q", "-b", "tags"]);
    commit_tags_made_by_drizzle_kit(&w, &other);
    git(&w, &["fetch", "-q", other.to_str().unwrap(), "tags:tags"]);
    git(&w, &["checkout", "-q", "tags"]);
    let head = git(&w, &["rev-parse", "HEAD"]);
    w.wait_for("git's violations", || !w.status()["violations"].as_array().is_none_or(Vec::is_empty));
    let status = w.status();
    let violations = status["violations"].as_array().unwrap();
    assert!(
        violations.iter().all(|v| v["source"] == "git" && v["commit"] == head.as_str()),
        "every change is git's, at {head}: {status}"
    );
    assert!(violations.iter().any(|v| v["kind"] == "created"), "{status}");
    // Never undone: the folder stays as git left it, and no restore ran.
    let tracked = git(&w, &["status", "--porcelain", "--", "drizzle"]);
    assert_eq!(tracked, "", "the folder is exactly the commit's");
    assert!(!events(&w).iter().any(|e| e["type"] == "restore"), "{:?}", events(&w));
    let said = events(&w).into_iter().find(|e| e["type"] == "violation").expect("a violation event");
    assert_eq!((said["source"].as_str(), said["commit"].as_str()), (Some("git"), Some(head.as_str())));
    assert!(w.daemon_log().contains("a git operation"), "{}", w.daemon_log());
}

#[test]
fn switching_branches_with_one_database_names_the_push_each_is_at_and_its_copy_puts_it_back() {
    let w = repository();
    let first = w.push_ok();
    rusqlite::Connection::open(w.path("local.db"))
        .unwrap()
        .execute_batch("INSERT INTO users (id, name) VALUES (1, 'ann')")
        .unwrap();
    commit(&w, "users");
    git(&w, &["checkout", "-q", "-b", "posts"]);
    let schema = w.read("src/schema.ts");
    w.write(
        "src/schema.ts",
        &format!(
            "{schema}\nexport const posts = sqliteTable('posts', {{ id: integer('id').primaryKey() }});\n"
        ),
    );
    let second = w.push_ok();
    commit(&w, "posts");
    // Back on main, with the database posts migrated.
    git(&w, &["checkout", "-q", "main"]);
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["drift"][0]["code"], "database-other-push", "{v}");
    assert_eq!(v["database_push"], second.as_str(), "{v}");
    let folder_push = v["matches"].as_str().or(v["last_push"]["id"].as_str()).unwrap().to_string();
    assert_eq!(folder_push, first);
    let message = v["drift"][0]["message"].as_str().unwrap();
    let offered = format!("dreamerd restore --push {first} --with-database");
    assert!(message.contains(&offered), "{message}");
    // The offered way back makes check clean, and the row from before the switch is there.
    let (code, v) = w.json("dreamerd", &["restore", "--push", &first, "--with-database"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    let name: String = rusqlite::Connection::open(w.path("local.db"))
        .unwrap()
        .query_row("SELECT name FROM users WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "ann");
    // And switching back to posts: the folder is ahead of the database, which a push brings up to date.
    git(&w, &["checkout", "-q", "posts"]);
    let (_, v) = w.json("dreamerd", &["check"]);
    assert!(v["drift"].as_array().unwrap().iter().all(|d| d["code"] == "migration-pending"), "{v}");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(w.json("dreamerd", &["check"]).0, 0);
}

/// The schema of the fixture with tables appended.
fn schema_with(w: &World, tables: &[&str]) {
    let base = fs::read_to_string(crate::support::fixture_dir().join("src/schema.ts")).unwrap();
    let extra: String = tables
        .iter()
        .map(|t| format!("\nexport const {t} = sqliteTable('{t}', {{ id: integer('id').primaryKey() }});\n"))
        .collect();
    w.write("src/schema.ts", &format!("{base}{extra}"));
}

fn sql_of(w: &World) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(w.path("drizzle"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

/// Two branches that each pushed (feat: posts, main: tags), merged into main with the conflicts resolved as people
/// do (the journal and snapshot taken from main, both schemas kept; the sum left with its markers): returns the world
/// and main's push. `local.db` is main's database; `feat.db` the feature branch's.
fn merged_repository() -> (World, String) {
    let w = repository();
    w.push_ok();
    commit(&w, "users");
    // A branch adds posts, and pushes; the database it migrated is kept aside.
    git(&w, &["checkout", "-q", "-b", "feat"]);
    schema_with(&w, &["posts"]);
    w.push_ok();
    commit(&w, "posts");
    fs::copy(w.path("local.db"), w.path("feat.db")).unwrap();
    // main adds tags, and pushes (its database put back to main's state first).
    git(&w, &["checkout", "-q", "main"]);
    // The push the folder holds now: the one it matches (the check that first sees it arrived still names the
    // previous last push in `last_push`; the daemon may or may not have adopted it already).
    let held = w.status_in_process();
    let main_base = held["matches"].as_str().or(held["last_push"]["id"].as_str()).unwrap().to_string();
    let (code, v) = w.json("dreamerd", &["restore", "--push", &main_base, "--with-database"]);
    assert_eq!(code, 0, "{v}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    schema_with(&w, &["tags"]);
    let main_push = w.push_ok();
    commit(&w, "tags");
    // The merge: both branches' migrations (the same number), the journal, snapshot and sum in conflict.
    let merged = Command::new("git").args(["merge", "-q", "feat"]).current_dir(&w.root).output().unwrap();
    assert!(!merged.status.success(), "the merge conflicts");
    schema_with(&w, &["tags", "posts"]);
    git(&w, &["checkout", "--ours", "--", "drizzle/meta"]);
    commit(&w, "merge feat");
    assert_eq!(sql_of(&w).len(), 3, "{:?}", sql_of(&w));
    assert!(w.read(".dreamerd.sum").contains("<<<<<<<"), "the committed sum conflicted");
    (w, main_push)
}

#[test]
fn rebase_turns_a_merged_history_into_one_more_migration_and_refuses_a_database_that_applied_the_other_branch()
 {
    let (w, main_push) = merged_repository();
    let merged_tree = w.tree("drizzle");

    // A database that applied the other branch's migration: refused, nothing changed.
    fs::rename(w.path("local.db"), w.path("main.db")).unwrap();
    fs::copy(w.path("feat.db"), w.path("local.db")).unwrap();
    let run = w.run("dreamerd", &["rebase"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("the database applied migration(s)"), "{}", run.stderr);
    assert_eq!(w.tree("drizzle"), merged_tree);
    fs::rename(w.path("main.db"), w.path("local.db")).unwrap();

    // main's database: the merged branch's change becomes one new migration after main's.
    let (code, v) = w.json("dreamerd", &["rebase"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["base"], main_push.as_str());
    assert_eq!(v["dropped"].as_array().unwrap().len(), 1, "{v}");
    let sql = sql_of(&w);
    assert_eq!(sql.len(), 3, "{sql:?}");
    assert!(w.read(&format!("drizzle/{}", sql[2])).contains("CREATE TABLE `posts`"), "{sql:?}");
    assert_eq!(w.json("dreamerd", &["check"]).0, 0);
    assert!(!w.read(".dreamerd.sum").contains("<<<<<<<"), "the sum's conflict is resolved");
    // The history applies on a fresh database too.
    fs::rename(w.path("local.db"), w.path("main.db")).unwrap();
    let fresh = Command::new("./node_modules/.bin/drizzle-kit")
        .arg("migrate")
        .current_dir(&w.root)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(fresh.status.success(), "{}", String::from_utf8_lossy(&fresh.stdout));
    let tables: i64 = rusqlite::Connection::open(w.path("local.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master WHERE name IN ('users', 'posts', 'tags')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(tables, 3);
}

#[test]
fn a_pull_inside_a_git_worktree_is_attributed_to_git_by_the_worktree_s_own_lock() {
    let w = repository();
    w.push_ok();
    commit(&w, "users");
    // A second worktree, watched: it holds the same push.
    let wt = w.tmp.path().join("wt");
    git(&w, &["worktree", "add", "-q", "-b", "base", wt.to_str().unwrap()]);
    std::os::unix::fs::symlink(w.root.join("node_modules"), wt.join("node_modules")).unwrap();
    let (code, v) = w.json_in(&wt, "dreamerd", &["watch", wt.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    let status_of = || w.json_in(&wt, "dreamerd", &["status", wt.to_str().unwrap()]).1["projects"][0].clone();
    w.wait_for("the worktree watched and clean", || {
        let s = status_of();
        s["state"] == "clean" && s["watch"]["watched"] == true
    });
    // A third worktree makes a migration with drizzle-kit directly (no push) and commits it.
    let maker = w.tmp.path().join("maker");
    git(&w, &["worktree", "add", "-q", "-b", "tags", maker.to_str().unwrap()]);
    commit_tags_made_by_drizzle_kit(&w, &maker);
    // The watched worktree pulls it in (a fast-forward): git's doing, with the commit.
    git_in(&wt, &["merge", "-q", "--ff-only", "tags"]);
    let head = git_in(&wt, &["rev-parse", "HEAD"]);
    w.wait_for("git's violations in the worktree", || {
        !status_of()["violations"].as_array().is_none_or(Vec::is_empty)
    });
    let s = status_of();
    assert!(
        s["violations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["source"] == "git" && v["commit"] == head.as_str()),
        "{s}"
    );
}

#[test]
fn a_rebase_killed_between_its_restore_and_its_push_leaves_the_push_merged_into_and_a_push_finishes_it() {
    let (w, main_push) = merged_repository();
    let fault = w.tmp.path().join("fault");
    w.set_env("DREAMERD_FAULT_FILE", fault.to_str().unwrap());
    let _ = w.run("dreamerd", &["stop"]);
    fs::write(&fault, "rebase:restored").unwrap();
    let run = w.run("dreamerd", &["rebase"]);
    assert!(!fault.exists(), "the point was reached: {}", run.stderr);
    assert_ne!(run.code, 0);
    // The folder is the push merged into (the merged folder in quarantine), the merged schema pending.
    w.wait_for("the next daemon", || w.status().get("interrupted").is_none());
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["last_push"]["id"].as_str(), v["schema_pending"].as_bool()),
        (Some(main_push.as_str()), Some(true))
    );
    // A rebase now has nothing to drop and says so; a push finishes the work.
    let run = w.run("dreamerd", &["rebase"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("dreamer push"), "{}", run.stderr);
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert!(sql_of(&w).iter().any(|f| w.read(&format!("drizzle/{f}")).contains("CREATE TABLE `posts`")));
}
