//! What makes dreamerd fast on big histories, checked for correctness (speed itself is measured by scripts/bench,
//! never asserted): the config evaluated once until what it read changes, the stat cache that never trusts what it
//! should not, and restores that move what they keep.

use std::fs;
use std::os::unix::fs::MetadataExt;

use serde_json::{Value, json};

use crate::support::{World, stand_in_world, touch, tree_of};

/// A config that notes each evaluation (a line in evals.log) and reads one environment variable.
const COUNTING_CONFIG: &str = r#"import { defineConfig } from 'drizzle-kit';
import { appendFileSync } from 'node:fs';

appendFileSync('evals.log', 'x');
export default defineConfig({
  dialect: 'sqlite',
  schema: './src/schema.ts',
  out: './drizzle',
  dbCredentials: { url: process.env.DB_FILE ?? './local.db' },
});
"#;

fn evaluations(w: &World) -> usize {
    fs::read_to_string(w.path("evals.log")).unwrap_or_default().len()
}

/// The config cache's files (under the world's HOME: the tests set no XDG_CACHE_HOME).
fn config_cache(w: &World) -> Vec<String> {
    let dir = w.tmp.path().join(".cache/dreamerd/configs");
    fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| fs::read_to_string(e.path()).unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn a_config_is_evaluated_once_until_what_it_read_changes() {
    let w = World::drizzle();
    w.write("drizzle.config.ts", COUNTING_CONFIG);
    w.set_env("DB_FILE", "./local-hunter2.db");
    let check = |w: &World| {
        let (code, v) = w.json("dreamerd", &["check"]);
        assert!(code == 0 || code == 1, "{v}");
        v
    };
    let v = check(&w);
    assert_eq!(v["database"]["path"], w.path("local-hunter2.db").display().to_string(), "{v}");
    assert_eq!(evaluations(&w), 1);
    check(&w);
    assert_eq!(evaluations(&w), 1, "nothing it read changed: not evaluated again");
    // A variable it never read changes nothing; one it read does.
    w.set_env("UNRELATED", "1");
    check(&w);
    assert_eq!(evaluations(&w), 1, "an unrelated variable");
    w.set_env("DB_FILE", "./other.db");
    let v = check(&w);
    assert_eq!(evaluations(&w), 2, "DB_FILE changed");
    assert_eq!(v["database"]["path"], w.path("other.db").display().to_string(), "{v}");
    // Back to the first value: both evaluations are kept.
    w.set_env("DB_FILE", "./local-hunter2.db");
    check(&w);
    assert_eq!(evaluations(&w), 2, "an environment seen before");
    // The config itself, or a .env file beside it, changing: evaluated again.
    w.write("drizzle.config.ts", &format!("{COUNTING_CONFIG}// edited\n"));
    check(&w);
    assert_eq!(evaluations(&w), 3, "the config changed");
    w.write(".env", "X=1\n");
    check(&w);
    assert_eq!(evaluations(&w), 4, "a .env file appeared");
    // The database URL (which may hold a password) is never in the cache in the clear.
    let cache = config_cache(&w);
    assert!(!cache.is_empty());
    assert!(cache.iter().all(|c| !c.contains("hunter2") && !c.contains("other.db")), "{cache:?}");
    // A damaged cache only costs an evaluation.
    for entry in fs::read_dir(w.tmp.path().join(".cache/dreamerd/configs")).unwrap().flatten() {
        fs::write(entry.path(), "{not json").unwrap();
    }
    let v = check(&w);
    assert_eq!(evaluations(&w), 5);
    assert_eq!(v["database"]["path"], w.path("local-hunter2.db").display().to_string(), "{v}");
}

#[test]
fn the_stat_cache_never_hides_a_change_and_a_damaged_one_is_rebuilt() {
    let w = stand_in_world();
    w.push_ok();
    assert_eq!(w.json("dreamerd", &["check"]).0, 0);
    let files = || -> Vec<std::path::PathBuf> {
        let mut all: Vec<_> =
            fs::read_dir(w.state().join("facts")).unwrap().flatten().map(|e| e.path()).collect();
        all.sort();
        all
    };
    let names: Vec<String> =
        files().iter().map(|p| p.extension().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["content", "ids"], "one stat cache per checkout, its content facts beside it");
    let facts = || files().into_iter().find(|p| p.extension().is_some_and(|e| e == "ids")).unwrap();
    assert!(fs::read(facts()).unwrap().starts_with(b"dreamerd-facts\t2\n"));
    for file in files() {
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600, "{}", file.display());
    }
    // Same size, rewritten at once: seen.
    let sql = "drizzle/0000_step.sql";
    let body = w.read(sql);
    w.write(sql, &"x".repeat(body.len()));
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    assert_eq!(v["violations"], json!([{"kind": "modified", "path": "0000_step.sql"}]));
    w.write(sql, &body);
    assert_eq!(w.json("dreamerd", &["check"]).0, 0, "written back: clean again");
    // Damaged in every way a file can be (torn, a byte flipped, another format): ignored, then written again.
    let good = fs::read(facts()).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let damages: [&[u8]; 5] =
        [b"", b"garbage", b"dreamerd-facts\t9\n\"x\"\n", &good[..good.len() - 7], &flipped];
    for damage in damages {
        fs::write(facts(), damage).unwrap();
        w.write(sql, "-- changed");
        let (code, v) = w.json("dreamerd", &["check"]);
        assert_eq!(code, 1, "{damage:?}: {v}");
        w.write(sql, &body);
        assert_eq!(w.json("dreamerd", &["check"]).0, 0, "{damage:?}");
        assert!(fs::read(facts()).unwrap().starts_with(b"dreamerd-facts\t2\n"), "rebuilt");
    }
}

#[test]
fn a_restore_moves_what_it_keeps_and_writes_only_what_differs() {
    let w = stand_in_world();
    w.push_ok();
    w.write("src/schema.ts", "export const y = 2;\n");
    w.push_ok();
    let pushed = w.tree("drizzle");
    let kept = w.path("drizzle/0000_step.sql");
    let inode = fs::metadata(&kept).unwrap().ino();
    w.write("drizzle/meta/_journal.json", "hand edit");
    w.write("drizzle/extra.sql", "mine");
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(w.tree("drizzle"), pushed, "byte for byte");
    // What drizzle/ held already was moved into the new tree (the same file), never copied or linked.
    assert_eq!(fs::metadata(&kept).unwrap().ino(), inode, "kept by a rename");
    for name in pushed.keys() {
        assert_eq!(fs::metadata(w.path(&format!("drizzle/{name}"))).unwrap().nlink(), 1, "{name} is linked");
    }
    // The quarantine holds what was replaced, and only that.
    let q = std::path::PathBuf::from(v["quarantine"].as_str().unwrap());
    let quarantined = tree_of(&q.join("drizzle"));
    assert_eq!(
        quarantined.keys().collect::<Vec<_>>(),
        vec!["extra.sql", "meta/_journal.json"],
        "{quarantined:?}"
    );
    assert_eq!(quarantined["meta/_journal.json"], b"hand edit");
    // And the stat cache still knows the moved files: the next check is clean and reads what changed only.
    assert_eq!(w.json("dreamerd", &["check"]).0, 0);
}

/// Bytes the process `pid` has read so far (its `rchar`): every read(2) of a file, whatever it was.
fn bytes_read(pid: i32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_restore_by_the_daemon_reads_again_none_of_the_files_it_keeps() {
    // The stand-in's snapshots padded to 4 MiB each (trailing blanks keep them JSON): three of them are 12 MiB that a
    // restore which hashed the folder again would read at each of its looks at it.
    const PAD: usize = 4 << 20;
    let generate = format!(
        "{}\nhead -c {PAD} /dev/zero | tr '\\0' ' ' >> \"drizzle/meta/000${{n}}_snapshot.json\"\n",
        crate::support::GENERATE.trim_end()
    );
    let w = World::empty();
    w.stand_ins(&generate, crate::support::MIGRATE_OK);
    for i in 0..3 {
        w.write("src/schema.ts", &format!("export const x = {i};\n"));
        w.push_ok();
    }
    assert!(fs::metadata(w.path("drizzle/meta/0002_snapshot.json")).unwrap().len() > PAD as u64);
    let pid = w.daemon_pid().expect("the pushes spawned a daemon");
    // Once the files are older than the stat cache's margin, one check hashes them and the daemon trusts them.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(w.json("dreamerd", &["check"]).0, 0);
    assert_eq!(w.status()["state"], "clean");
    let before = bytes_read(pid);
    fs::remove_file(w.path("drizzle/0000_step.sql")).unwrap();
    w.wait_for("the deletion in status", || {
        w.status()["violations"].as_array().is_some_and(|v| v.len() == 1)
    });
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    w.wait_for("clean again", || w.status()["state"] == "clean");
    let read = bytes_read(pid) - before;
    // Its archive, its records and the few small files it wrote or checked; never the snapshots it moved across.
    assert!(read < PAD as u64, "the daemon read {read} bytes for a restore of one small file");
}

/// A migration of the project's folder.
fn first_sql(w: &World) -> std::path::PathBuf {
    fs::read_dir(w.path("drizzle"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sql"))
        .unwrap()
}

/// How many memos of `kind` the checkout's stat cache holds.
fn memos_of(w: &World, kind: &str) -> usize {
    let dir = w.state().join("facts");
    let ids =
        fs::read_dir(&dir).unwrap().flatten().find(|e| e.path().extension().is_some_and(|x| x == "ids"));
    let bytes = fs::read(ids.unwrap().path()).unwrap();
    // A memo's kind is written after its length (u32, little-endian).
    let needle = [&(kind.len() as u32).to_le_bytes()[..], kind.as_bytes()].concat();
    bytes.windows(needle.len()).filter(|win| *win == needle).count()
}

#[test]
fn a_remembered_clean_folder_follows_the_folder_the_schema_and_the_checkout_file() {
    let w = World::drizzle();
    w.push_ok();
    let status = |w: &World| w.json("dreamerd", &["check"]);
    // Kept only once the checkout file settled (older than the stat cache's 2 s margin).
    let (code, v) = status(&w);
    assert_eq!((code, v["state"].as_str()), (0, Some("clean")), "{v}");
    assert_eq!(memos_of(&w, "clean"), 0, "an unsettled checkout file is never remembered");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, first) = status(&w);
    assert_eq!(code, 0, "{first}");
    assert_eq!(memos_of(&w, "clean"), 1, "a clean folder is remembered");
    let (code, again) = status(&w);
    assert_eq!((code, &again["last_push"]), (0, &first["last_push"]), "and taken, the same");
    // A hand edit changes the folder: judged afresh.
    let sql = first_sql(&w);
    let before = fs::read(&sql).unwrap();
    fs::write(&sql, b"DROP TABLE users;").unwrap();
    let (code, v) = status(&w);
    assert_eq!((code, v["state"].as_str()), (1, Some("violated")), "{v}");
    assert_eq!(v["violations"][0]["kind"], "modified", "{v}");
    fs::write(&sql, &before).unwrap();
    assert_eq!(status(&w).0, 0, "the same bytes back: clean again");
    // The schema is read afresh each time: a change shows as pending.
    let schema = fs::read_to_string(w.path("src/schema.ts")).unwrap();
    w.write("src/schema.ts", &format!("{schema}\n// edited\n"));
    let (_, v) = status(&w);
    assert_eq!(v["schema_pending"], true, "{v}");
    w.write("src/schema.ts", &schema);
    // The checkout file rewritten (as another process would) with the folder unchanged: read afresh, even once it
    // settled again.
    let checkouts = w.state().join("checkouts");
    let file = fs::read_dir(&checkouts).unwrap().flatten().next().unwrap().path();
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"via\": \"push\""), "{text}");
    fs::write(&file, text.replace("\"via\": \"push\"", "\"via\": \"restore\"")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, v) = status(&w);
    assert_eq!((code, &v["last_push"]["via"]), (0, &json!("restore")), "{v}");
    let (_, v) = status(&w);
    assert_eq!(v["last_push"]["via"], "restore", "and remembered as such: {v}");
}

/// How many files' facts the checkout's stat cache holds (the count after its two text lines).
fn records_of(w: &World) -> u64 {
    let dir = w.state().join("facts");
    let ids =
        fs::read_dir(&dir).unwrap().flatten().find(|e| e.path().extension().is_some_and(|x| x == "ids"));
    let bytes = fs::read(ids.unwrap().path()).unwrap();
    let mut lines = 0;
    let start = bytes.iter().position(|&b| {
        lines += usize::from(b == b'\n');
        lines == 2
    });
    let at = start.unwrap() + 1;
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A check of an unchanged folder and database takes the result the last check computed (the checkout's memo). It
/// must never hide a change to either.
#[test]
fn a_remembered_check_never_hides_a_change_to_the_folder_or_the_database() {
    let w = World::drizzle();
    w.push_ok();
    let check = |w: &World| {
        let (code, v) = w.json("dreamerd", &["check"]);
        let drift: Vec<String> =
            v["drift"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap().to_string()).collect();
        (code, drift, v)
    };
    // A memo is kept only for a database file older than the stat cache's margin (2 s): let the push's settle.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let memos = || memos_of(&w, "database-check");
    // (The push's precheck may have kept one of the folder before the push.)
    let before = memos();
    let (code, drift, v) = check(&w);
    assert_eq!((code, drift.len()), (0, 0), "{v}");
    assert_eq!(memos(), before + 1, "the check's result is kept");
    assert_eq!(check(&w).0, 0, "and taken");
    // The database forgets what it applied, behind dreamerd's back.
    let db = rusqlite::Connection::open(w.path("local.db")).unwrap();
    let rows: Vec<(String, i64)> = db
        .prepare("SELECT hash, created_at FROM __drizzle_migrations")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1);
    db.execute("DELETE FROM __drizzle_migrations", []).unwrap();
    let (code, drift, v) = check(&w);
    assert_eq!((code, drift.as_slice()), (1, ["migration-pending".to_string()].as_slice()), "{v}");
    let (_, drift, _) = check(&w);
    assert_eq!(drift, ["migration-pending"], "the same state, the same answer");
    // A fault planted in the folder is found however the database stands.
    w.write("drizzle/0009_mine.sql", "CREATE TABLE mine (id integer);");
    let (code, drift, v) = check(&w);
    assert_eq!(code, 1, "{v}");
    assert!(drift.contains(&"sql-not-in-journal".to_string()), "{v}");
    fs::remove_file(w.path("drizzle/0009_mine.sql")).unwrap();
    // The row back, as it was: the database matches again.
    for (hash, created_at) in &rows {
        db.execute("INSERT INTO __drizzle_migrations (hash, created_at) VALUES (?1, ?2)", (hash, created_at))
            .unwrap();
    }
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, drift, v) = check(&w);
    assert_eq!((code, drift.len()), (0, 0), "{v}");
    assert_eq!(check(&w).1.len(), 0);
    assert!(memos() >= before + 2, "each state its memo: {}", memos());
}

/// `check` while the daemon watches the project: the daemon vouches that nothing in the folder changed since its
/// last scan, and no file is looked at. A change made right before a check is never vouched for: the check's cookie
/// goes through the watcher after the change's event.
#[test]
fn a_watched_folder_is_vouched_for_by_the_daemon_and_never_past_a_change() {
    let w = World::drizzle();
    // A daemon that takes each file event late: a check right after a change must still wait for it.
    w.set_env("DREAMERD_EVENT_LAG_MS", "100");
    // Asked whatever the folder's size (by default only from 500 files: below, the round trip costs more).
    w.config("[check]\nvouch_min_files = 0\n");
    w.push_ok(); // through the daemon, which watches the project from then on
    let check = |args: &[&str]| {
        let mut all = vec!["check"];
        all.extend_from_slice(args);
        w.json("dreamerd", &all)
    };
    let vouched = || {
        // The daemon rescans after the push's own changes; the clean memo waits for the checkout file to settle.
        let mut last = Value::Null;
        w.wait_for("the daemon to vouch for the folder", || {
            last = check(&[]).1;
            last["verified"] == "watch"
        });
        last
    };
    let v = vouched();
    assert_eq!(
        (v["state"].as_str(), v["violations"].as_array().map(Vec::len)),
        (Some("clean"), Some(0)),
        "{v}"
    );
    let (code, full) = check(&["--full"]);
    assert_eq!((code, full["verified"].as_str()), (0, Some("scan")), "--full reads every file: {full}");
    assert_eq!(full["last_push"], v["last_push"], "the same answer either way");
    let sql = first_sql(&w);
    let name = sql.file_name().unwrap().to_str().unwrap().to_string();
    let before = fs::read(&sql).unwrap();
    for round in 0..3 {
        // An edit, checked at once (the daemon has not even scanned it yet): the violation, from a scan.
        fs::write(&sql, format!("DROP TABLE users; -- {round}")).unwrap();
        let (code, v) = check(&[]);
        assert_eq!((code, v["verified"].as_str()), (1, Some("scan")), "round {round}: {v}");
        assert_eq!(v["violations"], json!([{"kind": "modified", "path": name}]), "round {round}");
        fs::write(&sql, &before).unwrap();
        vouched();
    }
    // A file created in the folder, and one deleted.
    w.write("drizzle/9999_by_hand.sql", "SELECT 1;");
    let (code, v) = check(&[]);
    assert_eq!((code, v["verified"].as_str()), (1, Some("scan")), "{v}");
    assert_eq!(v["violations"], json!([{"kind": "created", "path": "9999_by_hand.sql"}]));
    fs::remove_file(w.path("drizzle/9999_by_hand.sql")).unwrap();
    vouched();
    fs::remove_file(&sql).unwrap();
    let (code, v) = check(&[]);
    assert_eq!((code, v["violations"][0]["kind"].as_str()), (1, Some("deleted")), "{v}");
    fs::write(&sql, &before).unwrap();
    vouched();
    // The database changed, the folder did not: vouched for, the drift computed afresh and remembered, and the stat
    // cache (only its memos were read) saved whole.
    let files = records_of(&w);
    assert_eq!(files, 3, "the stat cache holds the folder's files");
    let memos = memos_of(&w, "database-check");
    let db = fs::File::options().append(true).open(w.path("local.db")).unwrap();
    db.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60)).unwrap();
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(2100)); // its change time settles
    let (code, v) = check(&[]);
    assert_eq!(
        (code, v["verified"].as_str(), v["database"]["checked"].as_bool()),
        (0, Some("watch"), Some(true)),
        "{v}"
    );
    assert_eq!(memos_of(&w, "database-check"), (memos + 1).min(4), "the new drift is remembered");
    assert_eq!(records_of(&w), files, "and the files' facts are kept");
    // The daemon asked about a folder it does not watch says why it does not vouch.
    let answer =
        raw_request(&w, &json!({"protocol": 6, "cmd": "vouch", "folder": "/nowhere", "excluded": []}));
    assert_eq!(answer["data"]["vouched"], Value::Null, "{answer}");
    assert!(answer["data"]["reason"].as_str().unwrap().contains("no watched project"), "{answer}");
    // A folder smaller than `check.vouch_min_files`: the daemon is not asked.
    w.config("[check]\nvouch_min_files = 4\n");
    let (code, v) = check(&[]);
    assert_eq!((code, v["verified"].as_str()), (0, Some("scan")), "{v}");
    w.config("[check]\nvouch_min_files = 3\n");
    assert_eq!(check(&[]).1["verified"], "watch");
    // No daemon: a scan, the same answer.
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    w.wait_for("the daemon to stop", || w.daemon_pid().is_none());
    let (code, v) = check(&[]);
    assert_eq!((code, v["verified"].as_str()), (0, Some("scan")), "{v}");
}

/// A check of a folder that changed since the daemon's last look (a checkout touched every file, contents the same)
/// is answered from a scan the daemon makes at once, rather than by the check reading every file again on the same
/// cores while the daemon does the same. A real change is still reported.
#[test]
fn a_check_of_a_touched_folder_is_answered_from_the_daemons_own_scan() {
    let w = World::drizzle();
    // The daemon would look at the touched folder only after 10 s of quiet: the check asks it to look now.
    w.config("[check]\nvouch_min_files = 0\n[watch]\ndebounce_ms = 10000\n");
    w.push_ok();
    let check = || w.json("dreamerd", &["check"]);
    w.wait_for("the daemon to vouch for the folder", || check().1["verified"] == "watch");
    let files: Vec<std::path::PathBuf> =
        tree_of(&w.path("drizzle")).keys().map(|k| w.path(&format!("drizzle/{k}"))).collect();
    assert!(files.len() >= 3, "{files:?}");
    for round in 0..3 {
        files.iter().for_each(|f| touch(f));
        let (code, v) = check();
        assert_eq!((code, v["verified"].as_str()), (0, Some("watch")), "round {round}: {v}");
        assert_eq!(v["violations"], json!([]), "round {round}");
    }
    // An edit is seen all the same (the daemon's scan finds it; the check then reads the folder itself).
    let sql = first_sql(&w);
    let name = sql.file_name().unwrap().to_str().unwrap().to_string();
    fs::write(&sql, "DROP TABLE users;").unwrap();
    let (code, v) = check();
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["violations"], json!([{"kind": "modified", "path": name}]), "{v}");
}

/// With `on_violation = "restore"` neither a check nor a status makes the daemon scan before the quiet period: that
/// scan would start the automatic restore while the writer may still be writing.
#[test]
fn a_check_never_hurries_an_automatic_restore() {
    let w = World::drizzle();
    w.config("[check]\nvouch_min_files = 0\n[watch]\ndebounce_ms = 5000\non_violation = \"restore\"\n");
    w.push_ok();
    w.wait_for("the daemon to vouch for the folder", || {
        w.json("dreamerd", &["check"]).1["verified"] == "watch"
    });
    let sql = first_sql(&w);
    let before = fs::read(&sql).unwrap();
    fs::write(&sql, "DROP TABLE users; -- still being written").unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!((code, v["verified"].as_str()), (1, Some("scan")), "{v}");
    // Nor does a status: it waits for the quiet period.
    let status =
        w.cmd("dreamerd", &["status", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Well within the quiet period: nothing was restored under the writer.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(fs::read_to_string(&sql).unwrap(), "DROP TABLE users; -- still being written");
    // Once quiet, the restore comes, and the status answers.
    w.wait_for("the automatic restore", || fs::read(&sql).unwrap() == before);
    let out = status.wait_with_output().unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
}

/// One request on the daemon's socket, its final line.
fn raw_request(w: &World, request: &Value) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(w.socket()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut last = String::new();
    for line in reader.lines() {
        last = line.unwrap();
    }
    serde_json::from_str(&last).unwrap()
}

/// The vouch on the shapes real projects have: drizzle-kit 1.0's folder per migration (changes below the migration
/// folder's own level, a new migration folder with its files at once), and a config that reads `process.env` for
/// where the migrations live (the daemon resolves it with the environment of the command that pushed).
#[test]
fn a_vouch_holds_for_drizzle_kit_1_0_folders_and_an_out_from_the_environment() {
    let w = World::drizzle_v1();
    w.set_env("DREAMERD_EVENT_LAG_MS", "100");
    w.set_env("MIGRATIONS_OUT", "./db/migrations");
    w.config("[check]\nvouch_min_files = 0\n");
    w.write(
        "drizzle.config.ts",
        "import { defineConfig } from 'drizzle-kit';\n\nexport default defineConfig({\n  dialect: 'sqlite',\n  \
         schema: './src/schema.ts',\n  out: process.env.MIGRATIONS_OUT || './drizzle',\n  dbCredentials: { url: \
         './local.db' },\n});\n",
    );
    w.push_ok();
    let check = || w.json("dreamerd", &["check"]).1;
    let vouched = || w.wait_for("the daemon to vouch for the folder", || check()["verified"] == "watch");
    vouched();
    let v = check();
    assert_eq!(
        (v["out"].as_str(), v["migration_layout"].as_str()),
        (Some("db/migrations"), Some("folders")),
        "{v}"
    );
    let migration = fs::read_dir(w.path("db/migrations"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let name = migration.file_name().unwrap().to_str().unwrap().to_string();
    let sql = migration.join("migration.sql");
    let before = fs::read(&sql).unwrap();
    fs::write(&sql, "DROP TABLE users;").unwrap();
    let v = check();
    assert_eq!(v["verified"], "scan", "{v}");
    assert_eq!(v["violations"], json!([{"kind": "modified", "path": format!("{name}/migration.sql")}]));
    fs::write(&sql, &before).unwrap();
    vouched();
    fs::create_dir(w.path("db/migrations/20990101000000_by_hand")).unwrap();
    w.write("db/migrations/20990101000000_by_hand/migration.sql", "SELECT 1;");
    let v = check();
    assert_eq!(v["verified"], "scan", "{v}");
    assert_eq!(v["violations"], json!([{"kind": "created", "path": "20990101000000_by_hand/migration.sql"}]));
    fs::remove_dir_all(w.path("db/migrations/20990101000000_by_hand")).unwrap();
    vouched();
    // A command whose environment puts the migrations elsewhere asks about that folder: never vouched for with this one.
    let other =
        w.cmd("dreamerd", &["check", "--json"]).env("MIGRATIONS_OUT", "./elsewhere").output().unwrap();
    let v: Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!((v["out"].as_str(), v["verified"].as_str()), (Some("elsewhere"), Some("scan")), "{v}");
}

/// Both binaries are static position-independent executables (.cargo/config.toml): no program interpreter (the
/// dynamic loader's work was a third of a warm check), yet position-independent, so address-space randomisation
/// still places them.
#[cfg(all(target_os = "linux", target_env = "gnu", target_endian = "little", target_pointer_width = "64"))]
#[test]
fn the_binaries_are_static_and_position_independent() {
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;
    /// The program headers of an ELF64 little-endian executable: (e_type, the p_type of each header).
    fn elf_headers(path: &str) -> (u16, Vec<u32>) {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF", "{path} is not an ELF file");
        let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38) as usize);
        let types = (0..phnum)
            .map(|i| {
                let o = phoff + i * phentsize;
                u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap())
            })
            .collect();
        (u16_at(0x10), types)
    }
    for binary in [env!("CARGO_BIN_EXE_dreamerd"), env!("CARGO_BIN_EXE_dreamer")] {
        let (kind, headers) = elf_headers(binary);
        assert!(
            !headers.contains(&PT_INTERP),
            "{binary} asks for a dynamic loader: it was not linked statically"
        );
        assert_eq!(kind, ET_DYN, "{binary} is not position-independent (no address-space randomisation)");
    }
}
