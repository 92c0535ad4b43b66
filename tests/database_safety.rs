//! Nothing lost in the database either (issue 11): a copy before every migrate, the rows guard, the database put
//! back, `restore --with-database`, and a database another process holds. Real drizzle-kit, real SQLite files.

use std::fs;
use std::path::Path;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::{World, tree_of};

fn count(db: &Path, table: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// drizzle-orm's migrator (sqlite-proxy) run through @libsql/client with foreign keys on, as D1 always runs it.
const MIGRATE_WITH_FOREIGN_KEYS: &str = r#"
import { createClient } from '@libsql/client';
import { drizzle } from 'drizzle-orm/sqlite-proxy';
import { migrate } from 'drizzle-orm/sqlite-proxy/migrator';
const client = createClient({ url: 'file:local.db' });
await client.execute('PRAGMA foreign_keys=ON');
const db = drizzle(async (sql, params, method) => {
  const rs = await client.execute({ sql, args: params });
  return { rows: method === 'get' ? rs.rows[0] && Object.values(rs.rows[0]) : rs.rows.map((r) => Object.values(r)) };
});
await migrate(db, async (queries) => { await client.batch(queries, 'write'); }, { migrationsFolder: './drizzle' });
console.log('migrated with foreign keys on');
"#;

fn schema(users: &str) -> String {
    format!(
        "import {{ integer, sqliteTable, text }} from 'drizzle-orm/sqlite-core';\n\n\
         export const users = sqliteTable('users', {{\n  id: integer('id').primaryKey(),\n{users}}});\n\n\
         export const posts = sqliteTable('posts', {{\n  id: integer('id').primaryKey(),\n  \
         userId: integer('user_id').notNull().references(() => users.id, {{ onDelete: 'cascade' }}),\n}});\n"
    )
}

#[test]
fn a_rebuild_that_cascades_deletes_fails_as_rows_lost_and_the_database_is_put_back() {
    let w = World::drizzle();
    w.write("migrate.mjs", MIGRATE_WITH_FOREIGN_KEYS);
    w.config("[push]\nmigrate = [\"node\", \"migrate.mjs\"]\n");
    w.write("src/schema.ts", &schema("  name: text('name').notNull(),\n"));
    w.push_ok();
    let db = w.path("local.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("INSERT INTO users VALUES (1, 'a'); INSERT INTO posts VALUES (1, 1), (2, 1), (3, 1);")
        .unwrap();
    // name becomes nullable: drizzle-kit rebuilds users, and its DROP TABLE cascades to posts.
    w.write("src/schema.ts", &schema("  name: text('name'),\n"));
    let before = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "verify", "{v}");
    assert_eq!(v["diagnosis"]["code"], "rows-lost", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    assert!(message.contains("posts lost 3 of 3 rows"), "{message}");
    assert_eq!(count(&db, "posts"), 3, "the database has all its rows again");
    assert_eq!(count(&db, "__drizzle_migrations"), 1);
    assert_eq!(w.tree("drizzle"), before, "the folder is rolled back");
    let quarantine = Path::new(v["quarantine"].as_str().unwrap());
    assert_eq!(count(&quarantine.join("database.sqlite"), "posts"), 0, "the damaged database is kept");
    // The same kind of change made safely (a new column, no rebuild) pushes, rows and all.
    w.write("src/schema.ts", &schema("  name: text('name').notNull(),\n  bio: text('bio'),\n"));
    w.push_ok();
    assert_eq!(count(&db, "posts"), 3);
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn restore_with_database_brings_folder_and_database_back_to_a_push() {
    let w = World::drizzle();
    let first = w.push_ok();
    let db = w.path("local.db");
    Connection::open(&db).unwrap().execute_batch("INSERT INTO users VALUES (1, 'a')").unwrap();
    let schema = w.read("src/schema.ts");
    w.write(
        "src/schema.ts",
        &schema
            .replace("name: text('name').notNull(),", "name: text('name').notNull(),\n  bio: text('bio'),"),
    );
    let second = w.push_ok();
    Connection::open(&db).unwrap().execute_batch("INSERT INTO users VALUES (2, 'b', 'x')").unwrap();
    let (_, h) = w.json("dreamerd", &["history"]);
    let copy_of = |id: &str| {
        h["pushes"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["database_copy"].clone()
    };
    assert_eq!(copy_of(&first), true, "{h}");
    assert_eq!(copy_of(&second), Value::Null, "{h}");
    // The newest push has no later copy: said, nothing changed.
    let run = w.run("dreamer", &["database", "restore", "--with-database"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("has no database copy"), "{}", run.stderr);
    let (code, v) = w.json("dreamer", &["database", "restore", "--with-database", "--push", &first]);
    assert_eq!(code, 0, "{v}");
    assert!(v["database"]["quarantine"].is_string(), "{v}");
    assert_eq!(count(&db, "users"), 1, "the database as the first push left it");
    let columns: Vec<String> = Connection::open(&db)
        .unwrap()
        .prepare("SELECT name FROM pragma_table_info('users')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(columns, ["id", "name"]);
    let kept = Path::new(v["database"]["quarantine"].as_str().unwrap());
    assert_eq!(count(kept, "users"), 2, "the database it replaced is kept");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "folder and database agree: {v}");
    assert_eq!(v["last_push"]["id"], first.as_str());
}

#[test]
fn a_database_locked_by_another_process_is_waited_for_then_copied_and_past_the_limit_said() {
    let w = World::drizzle();
    w.push_ok();
    let db = w.path("local.db");
    let schema = w.read("src/schema.ts");
    // A write transaction held for a moment: the push waits for it, then copies and pushes.
    let holder = Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE; INSERT INTO users VALUES (7, 'held');").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        holder.execute_batch("COMMIT").unwrap();
    });
    w.write(
        "src/schema.ts",
        &schema
            .replace("name: text('name').notNull(),", "name: text('name').notNull(),\n  bio: text('bio'),"),
    );
    let (code, v) = w.json("dreamer", &["push"]);
    release.join().unwrap();
    assert_eq!(code, 0, "{v}");
    assert_eq!(count(&db, "users"), 1, "the app's write is kept");
    // Held past database.copy_wait_secs: a clear message, nothing changed.
    w.config("[database]\ncopy_wait_secs = 1\n");
    let holder = Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE; INSERT INTO users VALUES (8, 'held', NULL);").unwrap();
    w.write(
        "src/schema.ts",
        &schema.replace(
            "name: text('name').notNull(),",
            "name: text('name').notNull(),\n  bio: text('bio'),\n  age: integer('age'),",
        ),
    );
    let before = tree_of(&w.path("drizzle"));
    let (code, v) = w.json("dreamer", &["push"]);
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "database-busy", "{v}");
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("write lock"), "{v}");
    assert_eq!(tree_of(&w.path("drizzle")), before, "nothing changed");
    let copies = fs::read_dir(w.state().join("databases")).unwrap().next().unwrap().unwrap().path();
    assert!(
        fs::read_dir(copies).unwrap().all(|e| {
            let p = e.unwrap().path();
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&p).unwrap().permissions()) & 0o077 == 0
        }),
        "database copies are the user's only"
    );
}
