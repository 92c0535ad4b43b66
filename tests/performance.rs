//! What makes dreamerd fast on big histories, checked for correctness (speed itself is measured by scripts/bench,
//! never asserted): the config evaluated once until what it read changes, the stat cache that never trusts what it
//! should not, and restores that move what they keep.

use std::fs;
use std::os::unix::fs::MetadataExt;

use serde_json::json;

use crate::support::{World, stand_in_world, tree_of};

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
    let facts = || -> Vec<std::path::PathBuf> {
        fs::read_dir(w.state().join("facts")).unwrap().flatten().map(|e| e.path()).collect()
    };
    assert_eq!(facts().len(), 1, "one stat cache per checkout");
    let saved = fs::read_to_string(&facts()[0]).unwrap();
    assert!(saved.starts_with("dreamerd-facts\t1\n"), "{saved}");
    let mode = fs::metadata(&facts()[0]).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Same size, rewritten at once: seen.
    let sql = "drizzle/0000_step.sql";
    let body = w.read(sql);
    w.write(sql, &"x".repeat(body.len()));
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    assert_eq!(v["violations"], json!([{"kind": "modified", "path": "0000_step.sql"}]));
    w.write(sql, &body);
    assert_eq!(w.json("dreamerd", &["check"]).0, 0, "written back: clean again");
    // Damaged in every way a file can be: ignored, then written again.
    for damage in ["", "garbage", "dreamerd-facts\t9\n\"x\"\n", "dreamerd-facts\t1\n\"x\"\n1\t2\t3\n"] {
        fs::write(&facts()[0], damage).unwrap();
        w.write(sql, "-- changed");
        let (code, v) = w.json("dreamerd", &["check"]);
        assert_eq!(code, 1, "{damage:?}: {v}");
        w.write(sql, &body);
        assert_eq!(w.json("dreamerd", &["check"]).0, 0, "{damage:?}");
        assert!(fs::read_to_string(&facts()[0]).unwrap().starts_with("dreamerd-facts\t1\n"), "rebuilt");
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
