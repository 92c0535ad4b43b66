//! PostgreSQL and MariaDB projects (issue 14, first part): the real drizzle-kit with its driver (`pg`, `mysql2`)
//! pushes to a real server that scripts/test starts; dreamerd reads the applied-migrations table read-only, reports
//! drift after a hand change of it, and says why a server it cannot reach was not checked, without the password.

use std::process::Command;

use serde_json::Value;

use crate::support::World;

/// The administrator URL scripts/test exported for `var`, or `None` outside it (then the test is skipped, loudly;
/// in CI that is a failure).
fn admin(var: &str) -> Option<url::Url> {
    match std::env::var(var) {
        Ok(u) => Some(url::Url::parse(&u).unwrap()),
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "CI must run the server tests: {var} is not set");
            eprintln!("SKIPPED: {var} is not set (scripts/test starts the servers and sets it)");
            None
        }
    }
}

/// A database of its own for one test, and its URL (the administrator's credentials).
fn fresh_database(admin: &url::Url, name: &str) -> String {
    let mut url = admin.clone();
    match admin.scheme() {
        "postgres" => {
            let out = Command::new("psql")
                .arg(admin.as_str())
                .args([
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name}"),
                    "-c",
                    &format!("CREATE DATABASE {name}"),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        _ => sql_mysql(admin, "", &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")),
    }
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn sql_pg(url: &str, sql: &str) {
    let out = Command::new("psql").args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sql_mysql(admin: &url::Url, database: &str, sql: &str) {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-h", admin.host_str().unwrap(), "-P", &admin.port().unwrap().to_string()])
        .args(["-u", admin.username(), &format!("-p{}", admin.password().unwrap()), "-e", sql])
        .args((!database.is_empty()).then_some(database))
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A project of `dialect` whose config reads its URL from `DATABASE_URL` (as real projects do).
fn project(dialect: &str, url: &str) -> World {
    let w = World::drizzle();
    w.write(
        "drizzle.config.ts",
        &format!(
            "import {{ defineConfig }} from 'drizzle-kit';\n\nexport default defineConfig({{\n  dialect: '{dialect}',\n  \
             schema: './src/schema.ts',\n  out: './drizzle',\n  dbCredentials: {{ url: process.env.DATABASE_URL! }},\n}});\n"
        ),
    );
    let schema = match dialect {
        "postgresql" => {
            "import { pgTable, serial, text } from 'drizzle-orm/pg-core';\n\nexport const users = pgTable('users', \
             {\n  id: serial('id').primaryKey(),\n  name: text('name'),\n});\n"
        }
        _ => {
            // Not `serial`: drizzle-kit writes `serial AUTO_INCREMENT`, which MariaDB refuses (1064).
            "import { int, mysqlTable, varchar } from 'drizzle-orm/mysql-core';\n\nexport const users = \
             mysqlTable('users', {\n  id: int('id').autoincrement().primaryKey(),\n  name: varchar('name', { length: 255 \
             }),\n});\n"
        }
    };
    w.write("src/schema.ts", schema);
    w.set_env("DATABASE_URL", url);
    w
}

fn check(w: &World) -> (i32, Value) {
    w.json("dreamerd", &["check"])
}

fn codes(v: &Value) -> Vec<String> {
    v["drift"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap().to_string()).collect()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_postgresql_project_is_checked_against_its_applied_table_and_an_unreachable_server_is_said_so() {
    let Some(admin) = admin("DREAMERD_TEST_PG") else { return };
    let name = format!("dreamerd_pg_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("postgresql", &url);
    w.push_ok();
    let (code, v) = check(&w);
    let server = format!("127.0.0.1:{}/{name}", admin.port().unwrap());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["database"], serde_json::json!({"checked": true, "server": server}), "{v}");
    assert_eq!(v["drift"], serde_json::json!([]));

    // A hand change of the applied table: the migration now looks pending, and a row no file has is missing.
    sql_pg(&url, "DELETE FROM drizzle.__drizzle_migrations");
    sql_pg(&url, "INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('feed', 1)");
    let (code, v) = check(&w);
    assert_eq!(code, 1, "{v}");
    let found = codes(&v);
    assert!(
        found.contains(&"migration-pending".into()) && found.contains(&"migration-missing".into()),
        "{v}"
    );
    // The status from the daemon says the same.
    let (_, s) = w.json("dreamerd", &["status"]);
    assert_eq!(s["projects"][0]["database"]["server"], server.as_str(), "{s}");
    // Credentials given as parts (host, port, user, password, database, ssl) are read the same.
    let config = w.read("drizzle.config.ts");
    w.write(
        "drizzle.config.ts",
        &config.replace(
            "dbCredentials: { url: process.env.DATABASE_URL! }",
            "dbCredentials: { host: '127.0.0.1', port: Number(process.env.PGPORT), user: 'postgres', \
             password: process.env.PGPASSWORD!, database: process.env.PGDATABASE!, ssl: false }",
        ),
    );
    w.set_env("PGPORT", &admin.port().unwrap().to_string());
    w.set_env("PGPASSWORD", admin.password().unwrap());
    w.set_env("PGDATABASE", &name);
    let (_, v) = check(&w);
    assert_eq!(v["database"]["server"], server.as_str(), "{v}");
    assert!(codes(&v).contains(&"migration-missing".into()), "read with the parts: {v}");
    w.write("drizzle.config.ts", &config);

    // Servers that cannot be read: the check says why, names the server, never the password, and refuses nothing.
    sql_pg(&url, "DELETE FROM drizzle.__drizzle_migrations WHERE created_at = 1");
    unreadable_servers_are_said_so(&w, &admin, &url, &name, ["28P01", "3D000"]);
}

#[test]
fn a_mysql_project_is_checked_against_its_applied_table_and_an_unreachable_server_is_said_so() {
    let Some(admin) = admin("DREAMERD_TEST_MYSQL") else { return };
    let name = format!("dreamerd_my_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("mysql", &url);
    w.push_ok();
    let (code, v) = check(&w);
    let server = format!("127.0.0.1:{}/{name}", admin.port().unwrap());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["database"], serde_json::json!({"checked": true, "server": server}), "{v}");

    sql_mysql(&admin, &name, "DELETE FROM __drizzle_migrations");
    let (code, v) = check(&w);
    assert_eq!(code, 1, "{v}");
    assert!(codes(&v).contains(&"migration-pending".into()), "{v}");

    sql_mysql(&admin, &name, "INSERT INTO __drizzle_migrations (hash, created_at) SELECT 'feed', 1");
    let (_, v) = check(&w);
    assert!(codes(&v).contains(&"migration-missing".into()), "{v}");

    sql_mysql(&admin, &name, "DELETE FROM __drizzle_migrations WHERE created_at = 1");
    unreadable_servers_are_said_so(&w, &admin, &url, &name, ["1045", "1049"]);
}

/// Servers that cannot be read (nothing listening, a wrong password, no such database): the check says why with the
/// server's code, names the server, never shows the password, and refuses nothing (the folder is clean).
fn unreadable_servers_are_said_so(
    w: &World,
    admin: &url::Url,
    url: &str,
    name: &str,
    server_codes: [&str; 2],
) {
    let password = admin.password().unwrap().to_string();
    let port = closed_port();
    let cases = [
        (
            url.replace(&format!(":{}/", admin.port().unwrap()), &format!(":{port}/")),
            format!("127.0.0.1:{port}"),
        ),
        (url.replace(&password, "wrong-password"), server_codes[0].to_string()),
        (url.replace(name, "no_such_database"), server_codes[1].to_string()),
    ];
    for (bad, says) in cases {
        w.set_env("DATABASE_URL", &bad);
        let run = w.run("dreamerd", &["check", "--json"]);
        let v: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(v["database"]["checked"], false, "{v}");
        let reason = v["database"]["reason"].as_str().unwrap();
        assert!(
            reason.contains(&says) && reason.starts_with("cannot read the database at 127.0.0.1:"),
            "{reason}"
        );
        assert!(!run.stdout.contains(&password) && !run.stderr.contains(&password), "{run:?}");
        assert!(!run.stdout.contains("wrong-password"), "{run:?}");
        assert_eq!(run.code, 0, "the folder is clean: not reaching the server fails nothing: {run:?}");
    }
}

/// Pushes and returns the failure (`ok: false`).
fn push_fails(w: &World) -> Value {
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!((code, v["ok"].as_bool()), (1, Some(false)), "{v}");
    v
}

#[test]
fn a_failed_migrate_on_postgresql_is_diagnosed_from_a_rolled_back_replay() {
    let Some(admin) = admin("DREAMERD_TEST_PG") else { return };
    let name = format!("dreamerd_pgdiag_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("postgresql", &url);
    w.push_ok();
    let before = w.tree("drizzle");
    // A table created by hand that the next migration creates: drizzle-kit says nothing and exits 1.
    let schema = w.read("src/schema.ts");
    w.write(
        "src/schema.ts",
        &format!("{schema}\nexport const posts = pgTable('posts', {{ id: serial('id').primaryKey(), title: text('title') }});\n"),
    );
    sql_pg(&url, "CREATE TABLE posts (id integer)");
    let v = push_fails(&w);
    assert_eq!(v["diagnosis"]["code"], "out-of-sync", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    assert!(
        message.contains("relation \"posts\" already exists (42P07)") && message.contains("CREATE TABLE"),
        "{v}"
    );
    assert_eq!(w.tree("drizzle"), before, "drizzle/ is as it was");
    assert_eq!(v["database"], serde_json::json!({"changed": false, "migrations_recorded": 0}), "{v}");
    // The replay left nothing: the table is the hand-made one, and the migration is still not applied.
    let (_, c) = check(&w);
    assert_eq!(c["drift"], serde_json::json!([]), "{c}");
    sql_pg(&url, "SELECT id FROM posts");
    let columns = Command::new("psql")
        .args([
            url.as_str(),
            "-tAc",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'posts'",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&columns.stdout).trim(), "1", "the replay's CREATE was rolled back");

    // A NOT NULL column without a default on a table with rows: 23502, its own code.
    sql_pg(&url, "DROP TABLE posts");
    w.write(
        "src/schema.ts",
        &schema
            .replace("name: text('name'),", "name: text('name'),\n  age: integer('age').notNull(),")
            .replace("serial, text", "integer, serial, text"),
    );
    sql_pg(&url, "INSERT INTO users (name) VALUES ('ada')");
    let v = push_fails(&w);
    assert_eq!(v["diagnosis"]["code"], "not-null-without-default", "{v}");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("(23502)"), "{v}");

    // drizzle-kit on a machine whose clock is a day behind: its new migration's `when` is older than what the server
    // applied, so migrate says success and skips it. The push verifies on the server that every migration was applied.
    w.write("src/schema.ts", &schema);
    sql_pg(&url, "DELETE FROM users");
    let clock = w.tmp.path().join("clock-behind.cjs");
    std::fs::write(
        &clock,
        "const RealDate = Date; const shift = 86400000;\n\
         global.Date = class extends RealDate {\n\
           constructor(...a) { if (a.length === 0) { super(RealDate.now() - shift); } else { super(...a); } }\n\
           static now() { return RealDate.now() - shift; }\n\
         };\n",
    )
    .unwrap();
    w.set_env("NODE_OPTIONS", &format!("--require {}", clock.display()));
    w.write(
        "src/schema.ts",
        &format!("{schema}\nexport const tags = pgTable('tags', {{ id: serial('id').primaryKey() }});\n"),
    );
    let v = push_fails(&w);
    assert_eq!(v["stage"], "verify", "{v}");
    assert_eq!(v["diagnosis"]["code"], "migration-skipped", "{v}");
    w.set_env("NODE_OPTIONS", "");
    w.write("src/schema.ts", &schema);

    // A server that went away meanwhile: said so, with its address.
    let port = closed_port();
    w.set_env("DATABASE_URL", &url.replace(&format!(":{}/", admin.port().unwrap()), &format!(":{port}/")));
    let v = push_fails(&w);
    assert_eq!(v["diagnosis"]["code"], "database-unreachable", "{v}");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains(&format!("127.0.0.1:{port}/{name}")), "{v}");
}

#[test]
fn a_failed_migrate_on_mysql_is_predicted_never_replayed_and_says_what_it_left() {
    let Some(admin) = admin("DREAMERD_TEST_MYSQL") else { return };
    let name = format!("dreamerd_mydiag_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("mysql", &url);
    w.push_ok();
    let schema = w.read("src/schema.ts");
    w.write(
        "src/schema.ts",
        &format!(
            "{schema}\nexport const posts = mysqlTable('posts', {{ id: int('id').autoincrement().primaryKey(), title: \
             varchar('title', {{ length: 100 }}) }});\n"
        ),
    );
    sql_mysql(&admin, &name, "CREATE TABLE posts (id int)");
    let v = push_fails(&w);
    assert_eq!(v["diagnosis"]["code"], "out-of-sync", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    assert!(
        message.contains("Table 'posts' already exists (1050) (predicted from the database's tables"),
        "{v}"
    );
    assert_eq!(v["rolled_back"], true, "the folder is put back: {v}");
    assert_eq!(v["database"]["changed"], false, "the first statement failed: nothing stayed: {v}");

    // A migration whose first statement runs and whose second fails: MySQL keeps the first (DDL commits), and the
    // failure says so instead of pretending the database is as it was.
    sql_mysql(&admin, &name, "DROP TABLE posts; ALTER TABLE users ADD COLUMN age int");
    w.write(
        "src/schema.ts",
        &w.read("src/schema.ts").replace(
            "name: varchar('name', { length: 255 }),",
            "name: varchar('name', { length: 255 }),\n  age: int('age'),",
        ),
    );
    let v = push_fails(&w);
    assert_eq!(v["diagnosis"]["code"], "out-of-sync", "{v}");
    assert!(
        v["diagnosis"]["message"].as_str().unwrap().contains("Duplicate column name 'age' (1060)"),
        "{v}"
    );
    assert_eq!(v["database"]["changed"], true, "{v}");
    assert_eq!(v["database"]["tables_created"], serde_json::json!(["posts"]), "{v}");
    let applied = v["database"]["statements_applied"].to_string();
    assert!(applied.contains("CREATE TABLE `posts`") && !applied.contains("ALTER TABLE"), "{v}");
    assert_eq!(v["rolled_back"], true, "{v}");
}

#[test]
fn rows_that_vanish_on_a_server_fail_the_push_which_keeps_the_applied_migration() {
    let Some(admin) = admin("DREAMERD_TEST_PG") else { return };
    let name = format!("dreamerd_pgrows_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("postgresql", &url);
    w.push_ok();
    sql_pg(&url, "INSERT INTO users (name) VALUES ('ada'), ('bob')");
    // Something on the server deletes rows when the migration runs (here an event trigger; in real life a cascade,
    // a trigger, a statement hand-added to the migration).
    sql_pg(
        &url,
        "CREATE FUNCTION lose_bob() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM public.users WHERE \
         name = 'bob'; END $$; CREATE EVENT TRIGGER lose_bob ON ddl_command_end EXECUTE FUNCTION lose_bob();",
    );
    let schema = w.read("src/schema.ts");
    w.write(
        "src/schema.ts",
        &format!("{schema}\nexport const posts = pgTable('posts', {{ id: serial('id').primaryKey(), title: text('title') }});\n"),
    );
    let v = push_fails(&w);
    assert_eq!(v["diagnosis"]["code"], "rows-lost", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    assert!(
        message.contains("public.users lost 1 of 2 rows") && message.contains("no automatic undo"),
        "{v}"
    );
    assert_eq!(v["rolled_back"], false, "drizzle/ keeps what the server applied: {v}");
    // The push was recorded: the folder, the database and the last push agree.
    let (code, c) = check(&w);
    assert_eq!((code, c["drift"].clone()), (0, serde_json::json!([])), "{c}");
    assert_eq!(c["state"], "clean", "{c}");
    assert_eq!(w.tree("drizzle").keys().filter(|k| k.ends_with(".sql")).count(), 2);
}

/// The applied rows' names on PostgreSQL (`None` in a table drizzle-kit 1.0 has not upgraded yet).
fn pg_names(url: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args([
            url,
            "-At",
            "-c",
            "SELECT coalesce(name, '-') FROM drizzle.__drizzle_migrations ORDER BY created_at",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

#[test]
fn a_postgresql_project_is_converted_to_drizzle_kit_1_0_only_after_its_own_backup() {
    let Some(admin) = admin("DREAMERD_TEST_PG") else { return };
    let name = format!("dreamerd_pg1_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("postgresql", &url);
    w.push_ok();
    sql_pg(&url, "INSERT INTO users (name) VALUES ('ann')");
    let before = w.tree("drizzle");
    w.install_kit_v1();
    // The server's table is upgraded by the conversion, and dreamerd copies no server: the user's backup first.
    let (code, v) = w.json("dreamerd", &["up"]);
    assert_eq!((code, v["diagnosis"]["code"].as_str()), (1, Some("backup-first")), "{v}");
    assert!(v["diagnosis"]["hint"].as_str().unwrap().contains("--backed-up"), "{v}");
    assert_eq!(w.tree("drizzle"), before);
    let (code, v) = w.json("dreamerd", &["up", "--backed-up"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = check(&w);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["migration_layout"], "folders");
    let names = pg_names(&url);
    assert_eq!(names.len(), 1);
    assert!(w.path(&format!("drizzle/{}/migration.sql", names[0])).is_file(), "{names:?}");
    // Drift by name on the server: a row drizzle/ lacks, named as 1.0 names it.
    sql_pg(
        &url,
        "INSERT INTO drizzle.__drizzle_migrations (hash, created_at, name) VALUES ('x', 1, '20200101000000_gone')",
    );
    let (code, v) = check(&w);
    assert_eq!(code, 1);
    let missing = v["drift"].as_array().unwrap().iter().find(|d| d["code"] == "migration-missing").cloned();
    assert_eq!(missing.map(|d| d["migration"].clone()), Some(Value::from("20200101000000_gone")), "{v}");
}

#[test]
fn a_mysql_project_on_drizzle_kit_1_0_pushes_and_is_checked_by_name() {
    let Some(admin) = admin("DREAMERD_TEST_MYSQL") else { return };
    let name = format!("dreamerd_my1_{}", std::process::id());
    let url = fresh_database(&admin, &name);
    let w = project("mysql", &url);
    w.install_kit_v1();
    w.push_ok();
    let (code, v) = check(&w);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["migration_layout"], "folders");
    // The row of the applied migration renamed: by name, the migration is pending and the row is missing.
    sql_mysql(&admin, &name, "UPDATE __drizzle_migrations SET name = '20200101000000_other'");
    let (code, v) = check(&w);
    assert_eq!(code, 1);
    let found = codes(&v);
    assert!(
        found.contains(&"migration-missing".into()) && found.contains(&"migration-pending".into()),
        "{v}"
    );
}
