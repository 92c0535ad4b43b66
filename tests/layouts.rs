//! Real projects: the migration folder, schema and database are what the drizzle config says, evaluated by the
//! real drizzle-kit's loader, with the environment of the command that asked.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::support::{World, fixture_dir};

const USERS: &str = "import { integer, sqliteTable, text } from 'drizzle-orm/sqlite-core';\n\n\
                     export const users = sqliteTable('users', {\n  id: integer('id').primaryKey(),\n  \
                     name: text('name').notNull(),\n});\n";
const POSTS: &str = "import { integer, sqliteTable, text } from 'drizzle-orm/sqlite-core';\n\n\
                     export const posts = sqliteTable('posts', {\n  id: integer('id').primaryKey(),\n  \
                     title: text('title').notNull(),\n});\n";

/// A project with the real drizzle-kit (node_modules linked in at `modules_at`), the config `config_path` with
/// `config`, and the schema files given.
fn project(config_path: &str, config: &str, files: &[(&str, &str)], modules_at: &str) -> World {
    let w = World::empty();
    fs::remove_file(w.path("drizzle.config.json")).unwrap();
    fs::remove_dir_all(w.path("src")).unwrap();
    let modules = fixture_dir().join("node_modules");
    assert!(
        modules.join(".bin/drizzle-kit").exists(),
        "run scripts/test: the drizzle fixture is not installed"
    );
    let package = fs::read_to_string(fixture_dir().join("package.json")).unwrap();
    w.write(&format!("{modules_at}package.json"), &package);
    std::os::unix::fs::symlink(&modules, w.path(&format!("{modules_at}node_modules"))).unwrap();
    w.write(config_path, config);
    for (path, body) in files {
        w.write(path, body);
    }
    w
}

fn config(out: &str, schema: &str, db: &str) -> String {
    format!(
        "import {{ defineConfig }} from 'drizzle-kit';\n\nexport default defineConfig({{\n  dialect: 'sqlite',\n  \
         schema: {schema},\n  out: '{out}',\n  dbCredentials: {{ url: {db} }},\n}});\n"
    )
}

fn json_ok(w: &World, bin: &str, args: &[&str]) -> Value {
    let (code, v) = w.json(bin, args);
    assert_eq!(code, 0, "{bin} {args:?}: {v}");
    v
}

/// The flow every layout must pass: push, a hand edit flagged at its path in the right folder, a schema change
/// seen, a restore that puts the folder back byte for byte, messages that name the real folder.
fn guarded(w: &World, extra: &[&str], out: &str, schema_file: &str) {
    let mut args = vec!["push"];
    args.extend(extra);
    let v = json_ok(w, "dreamer", &args);
    assert!(v["files"].as_u64().unwrap() >= 3, "{v}");
    let sql: Vec<String> = fs::read_dir(w.path(out))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    assert_eq!(sql.len(), 1, "the migration is in {out}: {sql:?}");
    let before = w.tree(out);

    let mut check = vec!["check"];
    check.extend(extra);
    let v = json_ok(w, "dreamerd", &check);
    assert_eq!(v["state"], "clean", "{v}");
    assert_eq!(v["out"], out.trim_end_matches('/'), "{v}");
    assert_eq!(v["database"]["checked"], true, "{v}");

    // A hand edit in the migration folder is a violation at its path there.
    w.write(&format!("{out}/0001_by_hand.sql"), "CREATE TABLE x (id integer);");
    let (code, v) = w.json("dreamerd", &check);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["violations"][0]["path"], "0001_by_hand.sql", "{v}");
    let mut push = vec!["push"];
    push.extend(extra);
    let (code, v) = w.json("dreamer", &push);
    assert_eq!(code, 1);
    assert!(
        v["diagnosis"]["message"].as_str().unwrap().contains(&format!("{}/", out.trim_end_matches('/'))),
        "{v}"
    );

    // Restore puts it back byte for byte.
    let mut restore = vec!["database", "restore"];
    restore.extend(extra);
    json_ok(w, "dreamer", &restore);
    assert_eq!(w.tree(out), before);

    // A schema change is seen, and pushes a second migration into the same folder.
    let schema = w.read(schema_file);
    w.write(schema_file, &schema.replace("notNull(),\n});", "notNull(),\n  bio: text('bio'),\n});"));
    let v = json_ok(w, "dreamerd", &check);
    assert_eq!(v["schema_pending"], true, "{v}");
    json_ok(w, "dreamer", &push);
    let v = json_ok(w, "dreamerd", &check);
    assert_eq!(v["state"], "clean", "{v}");
    assert_eq!(v["schema_pending"], false, "{v}");
}

#[test]
fn out_migrations_and_schema_in_src_db() {
    let w = project(
        "drizzle.config.ts",
        &config("./migrations", "'./src/db/schema.ts'", "'./local.db'"),
        &[("src/db/schema.ts", USERS)],
        "",
    );
    guarded(&w, &[], "migrations", "src/db/schema.ts");
    assert!(!w.path("drizzle").exists(), "nothing is made where the config does not say");
    assert!(w.path("local.db").is_file());
}

#[test]
fn schema_kept_inside_the_migration_folder_is_not_a_migration() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./drizzle/schema.ts'", "'./local.db'"),
        &[("drizzle/schema.ts", USERS)],
        "",
    );
    guarded(&w, &[], "drizzle", "drizzle/schema.ts");
    // An edit of the schema is no violation, and a restore carries it across untouched.
    let schema = w.read("drizzle/schema.ts").replace("bio", "biography");
    w.write("drizzle/schema.ts", &schema);
    w.write("drizzle/stray.sql", "x");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    assert_eq!(v["violations"].as_array().unwrap().len(), 1, "only the stray file: {v}");
    json_ok(&w, "dreamer", &["database", "restore"]);
    assert_eq!(w.read("drizzle/schema.ts"), schema, "the schema edit survives the restore");
    assert!(!w.path("drizzle/stray.sql").exists());
}

#[test]
fn migrations_in_a_subfolder_with_the_schema_beside_them() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle/migrations", "'./drizzle/schema.ts'", "'./local.db'"),
        &[("drizzle/schema.ts", USERS)],
        "",
    );
    guarded(&w, &[], "drizzle/migrations", "drizzle/schema.ts");
}

#[test]
fn schema_as_a_glob_of_two_files() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema/*.ts'", "'./local.db'"),
        &[("src/schema/users.ts", USERS), ("src/schema/posts.ts", POSTS)],
        "",
    );
    guarded(&w, &[], "drizzle", "src/schema/users.ts");
    let v = json_ok(&w, "dreamerd", &["check"]);
    assert_eq!(v["schema"], serde_json::json!(["src/schema/*.ts"]));
    // The other file of the glob is schema too.
    let posts =
        w.read("src/schema/posts.ts").replace("notNull(),\n});", "notNull(),\n  body: text('body'),\n});");
    w.write("src/schema/posts.ts", &posts);
    let v = json_ok(&w, "dreamerd", &["check"]);
    assert_eq!(v["schema_pending"], true, "{v}");
}

#[test]
fn a_config_with_another_name_in_a_subfolder() {
    let w = project(
        "configs/app.config.ts",
        &config("./migrations/sqlite", "'./src/schema.ts'", "'./app.db'"),
        &[("src/schema.ts", USERS)],
        "",
    );
    // No drizzle.config.* anywhere: named on the command line, and drizzle-kit is given --config.
    guarded(&w, &["--drizzle-config", "configs/app.config.ts"], "migrations/sqlite", "src/schema.ts");
    assert!(w.path("app.db").is_file());
    // The project file remembers it as the default, so commands without the flag find it.
    let v = json_ok(&w, "dreamerd", &["check"]);
    assert_eq!(v["config"], "configs/app.config.ts", "{v}");
}

#[test]
fn a_monorepo_package_with_drizzle_kit_hoisted_to_the_root() {
    let w = project(
        "packages/db/drizzle.config.ts",
        &config("./migrations", "'./schema.ts'", "'./db.sqlite'"),
        &[("packages/db/schema.ts", USERS)],
        "",
    );
    w.write("packages/db/package.json", r#"{"name": "db", "private": true, "type": "module"}"#);
    let pkg = w.path("packages/db");
    let (code, v) = w.json_in(&pkg, "dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert!(w.path("packages/db/migrations/meta/_journal.json").is_file());
    assert!(w.path("packages/db/db.sqlite").is_file(), "drizzle-kit ran in the package");
    let (code, v) = w.json_in(&pkg, "dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["root"], pkg.to_str().unwrap());
}

#[test]
fn each_command_migrates_the_database_its_own_environment_names() {
    // Two projects whose configs read DATABASE_URL, pushed through one daemon from shells with different values.
    let cfg = config("./drizzle", "'./src/schema.ts'", "process.env.DATABASE_URL!");
    let a = project("drizzle.config.ts", &cfg, &[("src/schema.ts", USERS)], "");
    let b = project("drizzle.config.ts", &cfg, &[("src/schema.ts", POSTS)], "");
    // One daemon: b's commands use a's XDG folders.
    let b_in_a = |args: &[&str]| {
        let mut c = a.cmd("dreamer", args);
        c.current_dir(&b.root).env("DATABASE_URL", "./b.db");
        crate::support::Run::from(c.output().unwrap())
    };
    a.set_env("DATABASE_URL", "./a.db");
    json_ok(&a, "dreamer", &["push"]);
    let run = b_in_a(&["push", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let tables = |db: &Path| -> Vec<String> {
        let c = rusqlite::Connection::open(db).unwrap();
        let mut s = c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
        s.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(tables(&a.path("a.db")), ["__drizzle_migrations", "users"]);
    assert_eq!(tables(&b.path("b.db")), ["__drizzle_migrations", "posts"]);
    assert!(!a.path("b.db").exists() && !b.path("a.db").exists(), "each only its own");
}

#[test]
fn a_push_started_by_a_push_is_refused() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema.ts'", "'./local.db'"),
        &[("src/schema.ts", USERS)],
        "",
    );
    let dreamer = env!("CARGO_BIN_EXE_dreamer");
    w.write("gen.sh", &format!("'{dreamer}' push\n"));
    w.config("[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\ntimeout_secs = 60\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "generate");
    let log = fs::read_dir(v["quarantine"].as_str().unwrap())
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(log.contains("pushes do not nest"), "{log}");
}

#[test]
fn a_config_that_imports_a_helper_and_reads_dotenv() {
    let w = project(
        "drizzle.config.ts",
        "import 'dotenv/config';\nimport { defineConfig } from 'drizzle-kit';\nimport { folders } from './config/paths';\n\n\
         export default defineConfig({\n  dialect: 'sqlite',\n  schema: folders.schema,\n  out: folders.out,\n  \
         dbCredentials: { url: process.env.DATABASE_URL! },\n});\n",
        &[
            (
                "config/paths.ts",
                "export const folders = { schema: './lib/db/schema.ts', out: './lib/db/migrations' };\n",
            ),
            ("lib/db/schema.ts", USERS),
            (".env", "DATABASE_URL=./from-dotenv.db\n"),
        ],
        "",
    );
    guarded(&w, &[], "lib/db/migrations", "lib/db/schema.ts");
    assert!(w.path("from-dotenv.db").is_file(), "the database .env names was migrated");
    // The helper is an input of the config: moving the migration folder there is seen.
    w.write(
        "config/paths.ts",
        "export const folders = { schema: './lib/db/schema.ts', out: './lib/db/other' };\n",
    );
    let (_, v) = w.json("dreamerd", &["check"]);
    assert_eq!(v["out"], "lib/db/other", "{v}");
}

#[test]
fn two_configs_in_one_repository_are_two_projects() {
    let w = project(
        "configs/one.config.ts",
        &config("./migrations/one", "'./src/schema.ts'", "'./one.db'"),
        &[("src/schema.ts", USERS), ("src/posts.ts", POSTS)],
        "",
    );
    w.write("configs/two.config.ts", &config("./migrations/two", "'./src/posts.ts'", "'./two.db'"));
    let one = ["--drizzle-config", "configs/one.config.ts"];
    let two = ["--drizzle-config", "configs/two.config.ts"];
    json_ok(&w, "dreamer", &["push", one[0], one[1]]);
    json_ok(&w, "dreamer", &["push", two[0], two[1]]);
    let file = w.read(".dreamerd.toml");
    assert!(file.contains("default = \"configs/one.config.ts\""), "{file}");
    assert!(file.contains("[configs.\"configs/two.config.ts\"]"), "{file}");
    // Each has its own baseline: an edit in one folder is a violation of that project only.
    w.write("migrations/two/by-hand.sql", "x");
    let (code, v) = w.json("dreamerd", &["check", two[0], two[1]]);
    assert_eq!(code, 1, "{v}");
    let (code, v) = w.json("dreamerd", &["check", one[0], one[1]]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "without the flag, the default: {v}");
    assert_eq!(v["config"], "configs/one.config.ts");
    let (_, h1) = w.json("dreamerd", &["history", one[0], one[1]]);
    let (_, h2) = w.json("dreamerd", &["history", two[0], two[1]]);
    assert_ne!(h1["pushes"][0]["id"], h2["pushes"][0]["id"]);
    assert_eq!(h1["pushes"].as_array().unwrap().len(), 1);
}

#[test]
fn a_postgresql_project_is_guarded_and_says_why_its_unreachable_server_was_not_compared() {
    let w = project(
        "drizzle.config.ts",
        "import { defineConfig } from 'drizzle-kit';\nexport default defineConfig({ dialect: 'postgresql', \
         schema: './src/schema.ts', out: './drizzle', dbCredentials: { url: process.env.DATABASE_URL! } });\n",
        &[("src/schema.ts", USERS)],
        "",
    );
    w.set_env("DATABASE_URL", "postgres://app:s3cret-pw@127.0.0.1:1/app");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["dialect"], "postgresql");
    assert_eq!(v["database"]["checked"], false);
    let reason = v["database"]["reason"].as_str().unwrap();
    assert!(reason.contains("127.0.0.1:1/app") && reason.contains("refused"), "{v}");
    assert_eq!(v["database"]["server"], "127.0.0.1:1/app");
    assert!(!v.to_string().contains("s3cret-pw"), "the password is nowhere: {v}");
}

#[test]
fn settings_come_from_the_project_file_and_an_explicit_config_wins() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema.ts'", "'./local.db'"),
        &[("src/schema.ts", USERS)],
        "",
    );
    let kit = "./node_modules/.bin/drizzle-kit";
    w.write("team-gen.sh", &format!("echo team >> ran.txt\nexec {kit} generate\n"));
    w.write("mine-gen.sh", &format!("echo mine >> ran.txt\nexec {kit} generate\n"));
    // The project's own generate command, committed in the project file.
    w.write(".dreamerd.toml", "format = 2\n[push]\ngenerate = [\"/bin/sh\", \"./team-gen.sh\"]\n");
    json_ok(&w, "dreamer", &["push"]);
    assert_eq!(w.read("ran.txt"), "team\n");
    // An explicit --config wins over it, for this command only (the daemon is already running).
    fs::write(w.tmp.path().join("mine.toml"), "[push]\ngenerate = [\"/bin/sh\", \"./mine-gen.sh\"]\n")
        .unwrap();
    let mine = w.tmp.path().join("mine.toml");
    let schema = w.read("src/schema.ts").replace("notNull(),\n});", "notNull(),\n  bio: text('bio'),\n});");
    w.write("src/schema.ts", &schema);
    let v = json_ok(&w, "dreamer", &["--config", mine.to_str().unwrap(), "push"]);
    assert!(v["settings"].as_array().unwrap().iter().any(|s| s.as_str() == mine.to_str()), "{v}");
    assert_eq!(w.read("ran.txt"), "team\nmine\n");
    // A committed file may not point the store at a local path.
    w.write(
        ".dreamerd.toml",
        &format!("{}[store]\nurl = \"file:///tmp/elsewhere\"\n", w.read(".dreamerd.toml")),
    );
    let run = w.run("dreamerd", &["check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("store.url"), "{}", run.stderr);
}

#[test]
fn a_bun_project_pushes_with_bun_run_push() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema.ts'", "'./local.db'"),
        &[("src/schema.ts", USERS)],
        "",
    );
    // The projects dreamerd was made for: bun, and a "push" script that runs `dreamer push`.
    w.write(
        "package.json",
        r#"{"name": "agent-app", "private": true, "type": "module", "scripts": {"push": "dreamer push"}}"#,
    );
    w.write(
        "bun.lock",
        r#"{"lockfileVersion": 1, "workspaces": {"": {"name": "agent-app"}}, "packages": {}}"#,
    );
    let bin = fixture_dir().join("node_modules/.bin");
    let dreamer_dir = Path::new(env!("CARGO_BIN_EXE_dreamer")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}:/usr/bin:/bin", dreamer_dir.display(), bin.display());
    let mut cmd = w.cmd("dreamer", &[]);
    let envs: Vec<_> = cmd.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
    cmd = std::process::Command::new(bin.join("bun"));
    cmd.args(["run", "push"]).current_dir(&w.root).envs(envs).env("PATH", &path);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bun run push: {err}");
    assert!(err.contains("running bun x drizzle-kit generate"), "drizzle-kit ran under bun: {err}");
    assert!(w.path("drizzle/meta/_journal.json").is_file());
    assert!(w.path("local.db").is_file());
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn without_node_modules_the_layout_recorded_at_the_last_push_is_used() {
    let w = project(
        "drizzle.config.ts",
        &config("./db/migrations", "'./db/schema.ts'", "'./local.db'"),
        &[("db/schema.ts", USERS)],
        "",
    );
    json_ok(&w, "dreamer", &["push"]);
    assert!(w.read(".dreamerd.toml").contains("out = \"db/migrations\""), "{}", w.read(".dreamerd.toml"));
    // A CI checkout: no node_modules, so the config cannot run.
    fs::remove_file(w.path("node_modules")).unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["layout"], "recorded");
    assert_eq!(v["out"], "db/migrations");
    assert!(v["reason"].as_str().unwrap().contains("cannot evaluate"), "{v}");
    w.write("db/migrations/by-hand.sql", "x");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "still guarded: {v}");
    // Without a recorded layout there is nothing to guess from: unresolved, exit 2.
    w.write(".dreamerd.toml", w.read(".dreamerd.toml").split("[layout]").next().unwrap());
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["state"], "unresolved");
}

#[test]
fn after_a_restart_the_daemon_waits_for_a_command_to_read_a_database_the_environment_names() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema.ts'", "process.env.DATABASE_URL!"),
        &[("src/schema.ts", USERS)],
        "",
    );
    w.set_env("DATABASE_URL", "./env.db");
    json_ok(&w, "dreamer", &["push"]);
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    // `status --all` names no project: the restarted daemon has no environment for this one yet.
    let (_, v) = w.json("dreamerd", &["status", "--all"]);
    let project = &v["projects"][0];
    assert_eq!(project["database"]["checked"], false, "{v}");
    assert!(
        project["database"]["reason"].as_str().unwrap().contains("not checked until the next command"),
        "{v}"
    );
    // A command for the project carries one.
    let (_, v) = w.json("dreamerd", &["status"]);
    assert_eq!(v["projects"][0]["database"]["checked"], true, "{v}");
}

#[test]
fn several_configs_and_no_choice_is_a_usage_error_listing_them() {
    let w = project(
        "configs/sqlite.config.ts",
        &config("./migrations/sqlite", "'./src/schema.ts'", "'./local.db'"),
        &[("src/schema.ts", USERS)],
        "",
    );
    fs::remove_dir_all(w.path("src")).unwrap();
    w.write("db/schema.ts", USERS);
    w.write("configs/sqlite.config.ts", &config("./migrations/sqlite", "'./db/schema.ts'", "'./local.db'"));
    w.write("configs/turso.config.ts", &config("./migrations/turso", "'./db/schema.ts'", "'./turso.db'"));
    let run = w.run("dreamerd", &["check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("configs/sqlite.config.ts, configs/turso.config.ts"), "{}", run.stderr);
    assert!(run.stderr.contains("--drizzle-config"), "{}", run.stderr);
    let (code, v) = w.json("dreamerd", &["check", "--drizzle-config", "configs/turso.config.ts"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["out"], "migrations/turso");
}

#[test]
fn a_migration_folder_moved_by_the_config_or_gone_is_unresolved() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema.ts'", "'./local.db'"),
        &[("src/schema.ts", USERS)],
        "",
    );
    json_ok(&w, "dreamer", &["push"]);
    // The folder is gone while the database applied its migration.
    fs::rename(w.path("drizzle"), w.path("elsewhere")).unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["state"], "unresolved");
    assert!(v["reason"].as_str().unwrap().contains("drizzle/ does not exist"), "{v}");
    // The config now names another folder, without the files: said, not guarded in silence.
    w.write("drizzle.config.ts", &config("./migrations", "'./src/schema.ts'", "'./local.db'"));
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 2, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("last push had them in drizzle/"), "{v}");
    // Moved with its files: clean, and the next push records the new place.
    fs::rename(w.path("elsewhere"), w.path("migrations")).unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
    json_ok(&w, "dreamer", &["push"]);
    assert!(w.read(".dreamerd.toml").contains("out = \"migrations\""));
}

#[test]
fn schema_as_a_folder() {
    let w = project(
        "drizzle.config.ts",
        &config("./drizzle", "'./src/schema'", "'./local.db'"),
        &[("src/schema/users.ts", USERS), ("src/schema/posts.ts", POSTS)],
        "",
    );
    guarded(&w, &[], "drizzle", "src/schema/users.ts");
    // A new file in the folder is schema too.
    w.write("src/schema/more.ts", &POSTS.replace("posts", "more"));
    let v = json_ok(&w, "dreamerd", &["check"]);
    assert_eq!(v["schema_pending"], true, "{v}");
}
