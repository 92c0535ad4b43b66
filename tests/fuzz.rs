//! Property tests of every parser that reads what a user or another machine wrote (issue 17, first part): the
//! journal and 0.x snapshots, the 1.0 folders and snapshots, drift against any table, the archive reader under
//! truncation and bit flips, the committed sum, drizzle-kit's questions, the project file, the configuration and the
//! IPC decoder. Fixed seeds and bounded case counts: the same cases on every run, a few seconds in all. None may
//! panic; what they must refuse they refuse, and nothing outside their own folder is touched.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use dreamerd::drizzle::{database, folders, hints, journal};

/// A runner with a fixed seed, `cases` cases, and no failure files written. `DREAMERD_FUZZ_SCALE=N` runs N times
/// the cases, from another seed for each N (an opt-in longer run; CI runs the default).
fn runner(cases: u32, seed: u64) -> TestRunner {
    let scale: u32 =
        std::env::var("DREAMERD_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    TestRunner::new(Config {
        cases: cases.saturating_mul(scale),
        rng_seed: RngSeed::Fixed(seed.wrapping_add(u64::from(scale - 1) << 32)),
        failure_persistence: None,
        ..Config::default()
    })
}

/// JSON values a few levels deep: what a hand-edited or corrupted drizzle file holds.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        "(\\.\\./|/|[a-z0-9_]){0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("entries".to_string()),
                    Just("idx".to_string()),
                    Just("when".to_string()),
                    Just("tag".to_string()),
                    Just("id".to_string()),
                    Just("prevId".to_string()),
                    Just("prevIds".to_string()),
                    Just("version".to_string()),
                    Just("dialect".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A journal shaped like drizzle's, with hostile values in every field.
fn journal_like() -> impl Strategy<Value = String> {
    let entry = (any::<i64>(), any::<i64>(), "(\\.\\./|/|[0-9]{4}_|[a-z_]){0,16}").prop_map(
        |(idx, when, tag)| serde_json::json!({"idx": idx, "when": when, "tag": tag, "breakpoints": true}),
    );
    prop::collection::vec(entry, 0..6)
        .prop_map(|e| serde_json::json!({"version": "7", "entries": e}).to_string())
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Everything dreamerd reads of a migration folder, on `dir`: none of it may panic.
fn read_everything(dir: &Path, rows: &[database::Applied]) {
    let _ = journal::faults(dir);
    let _ = journal::layout(dir);
    let _ = journal::read(dir);
    if let Ok(Some(folder)) = dreamerd::safefs::Folder::open(dir) {
        if let Ok(Some(entries)) = journal::read_in(&folder) {
            for layout in [journal::Layout::Journal, journal::Layout::Folders] {
                let _ = database::drift(layout, Some(&folder), &entries, rows);
            }
        }
        let _ = database::to_run(&folder, rows);
    }
    let _ = database::pending_statements(dir, rows);
}

fn rows() -> impl Strategy<Value = Vec<database::Applied>> {
    let row = (".{0,70}", any::<i64>(), prop::option::of("(\\.\\./)?[0-9]{0,14}_?[a-z]{0,6}"))
        .prop_map(|(hash, created_at, name)| database::Applied { hash, created_at, name });
    prop::collection::vec(row, 0..5)
}

#[test]
fn the_journal_and_0_x_snapshots_never_panic() {
    let strategy = (
        prop_oneof![journal_like(), json_value().prop_map(|v| v.to_string()), ".{0,80}"],
        prop::collection::vec((0u16..4, json_value()), 0..4),
        prop::collection::vec("(\\.\\./)?[0-9]{4}_[a-z]{1,5}\\.sql", 0..3),
        rows(),
    );
    runner(300, 0x0015)
        .run(&strategy, |(journal_text, snapshots, sqls, rows)| {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "meta/_journal.json", journal_text.as_bytes());
            for (n, snap) in snapshots {
                write(dir.path(), &format!("meta/{n:04}_snapshot.json"), snap.to_string().as_bytes());
            }
            for sql in sqls.iter().filter(|s| !s.starts_with("..")) {
                write(
                    dir.path(),
                    sql,
                    b"CREATE TABLE x (id integer);--> statement-breakpoint\n-- only a comment",
                );
            }
            read_everything(dir.path(), &rows);
            // A tag leaving the folder is never a path.
            if let Ok(Some(entries)) = journal::read(dir.path()) {
                prop_assert!(entries.iter().all(|e| dreamerd::safefs::plain_name(&e.tag)));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_1_0_folders_and_snapshots_never_panic() {
    let name = "([0-9]{14}|[0-9]{0,16}|[a-zé]{0,3})_?[a-z_é]{0,8}";
    let folder = (name, prop::option::of(".{0,40}"), prop::option::of(json_value()), any::<bool>());
    let strategy = (prop::collection::vec(folder, 0..5), rows());
    runner(300, 0x1000).run(&strategy, |(folders_made, rows)| {
        let dir = tempfile::tempdir().unwrap();
        for (name, sql, snapshot, prev_ids) in folders_made {
            if name.is_empty() || name == "meta" {
                continue;
            }
            let _ = fs::create_dir_all(dir.path().join(&name));
            if let Some(sql) = sql {
                write(dir.path(), &format!("{name}/migration.sql"), sql.as_bytes());
            }
            let snapshot = match (snapshot, prev_ids) {
                // A well-formed snapshot with arbitrary ids and parents.
                (Some(serde_json::Value::String(id)), true) => {
                    serde_json::json!({"version": "7", "dialect": "sqlite", "id": id, "prevIds": [id, folders::ZERO_ID]})
                }
                (Some(v), _) => v,
                (None, _) => continue,
            };
            write(dir.path(), &format!("{name}/snapshot.json"), snapshot.to_string().as_bytes());
        }
        read_everything(dir.path(), &rows);
        Ok(())
    })
    .unwrap();
    // Folder times: anything at all, and the round trip of real ones.
    runner(500, 0x1001)
        .run(&".{0,24}", |s| {
            let _ = folders::millis_of(&s);
            Ok(())
        })
        .unwrap();
    runner(200, 0x1002)
        .run(&(0i64..4_102_444_800), |secs| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            let stamp = humantime::format_rfc3339_seconds(t).to_string();
            let name: String = stamp.chars().filter(char::is_ascii_digit).collect::<String>() + "_x";
            prop_assert_eq!(folders::millis_of(&name), Some(secs * 1000));
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_archive_reader_refuses_truncated_and_bit_flipped_archives_and_writes_nowhere_else() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "0000_a.sql", b"CREATE TABLE a (id integer);");
    write(src.path(), "meta/_journal.json", br#"{"entries":[{"idx":0,"when":1,"tag":"0000_a"}]}"#);
    write(src.path(), "meta/0000_snapshot.json", &vec![b'x'; 3000]);
    let tree = dreamerd::manifest::scan(src.path()).unwrap();
    let packed = dreamerd::archive::pack(src.path(), &tree).unwrap();
    let files = tree.files();
    let original = dreamerd_tree(src.path());
    let strategy = prop_oneof![
        (0..packed.bytes.len()).prop_map(|cut| (cut, None)),
        (0..packed.bytes.len(), 0u8..8).prop_map(|(at, bit)| (usize::MAX, Some((at, bit)))),
    ];
    runner(400, 0x17a)
        .run(&strategy, |(cut, flip)| {
            let mut bytes = packed.bytes.clone();
            if cut != usize::MAX {
                bytes.truncate(cut);
            }
            if let Some((at, bit)) = flip {
                bytes[at] ^= 1 << bit;
            }
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("drizzle");
            let result = dreamerd::archive::unpack_verified(&bytes, &files, &dest, Default::default());
            match result {
                // A flip in padding may change nothing that matters: then the tree is exactly the original.
                Ok(()) => prop_assert_eq!(dreamerd_tree(&dest), original.clone()),
                Err(e) => {
                    prop_assert!(!dest.exists(), "a refused archive leaves nothing");
                    prop_assert!(e.to_string().contains("backup archive refused"), "{e}");
                }
            }
            let left: Vec<_> = fs::read_dir(out.path()).unwrap().collect();
            prop_assert!(left.len() <= 1, "nothing written beside the destination");
            Ok(())
        })
        .unwrap();
    // Arbitrary bytes are refused.
    runner(200, 0x17b)
        .run(&prop::collection::vec(any::<u8>(), 0..600), |bytes| {
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("drizzle");
            prop_assert!(
                dreamerd::archive::unpack_verified(&bytes, &files, &dest, Default::default()).is_err()
            );
            prop_assert!(!dest.exists());
            Ok(())
        })
        .unwrap();
}

fn dreamerd_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    crate::support::tree_of(dir)
}

#[test]
fn the_committed_sum_parses_back_and_refuses_garbage_without_panicking() {
    let origin = Path::new("/p/.dreamerd.sum");
    runner(400, 0x5a)
        .run(&prop_oneof![".{0,200}", "(format 1\n|push x\n|schema -\n|root [0-9a-f]{64}\n|[0-9a-f]{64} [0-9]{1,3} \"[a-z/.]{0,8}\"\n|<<<<<<< a\n|=======\n){0,8}"], |text| {
            let _ = dreamerd::engine::Sum::parse(&text, origin);
            Ok(())
        })
        .unwrap();
    // A sum of any push reads back as itself.
    let file = ("[a-z]{1,6}(/[a-z]{1,6})?\\.(sql|json)", 0u64..1 << 40, "[0-9a-f]{64}");
    let strategy = (
        "[0-9TZ-]{4,20}",
        prop::option::of("[0-9a-f]{64}"),
        prop::collection::btree_map(file.0, (file.1, file.2), 0..6),
    );
    runner(200, 0x5b)
        .run(&strategy, |(push, schema, files)| {
            let files: Vec<dreamerd::manifest::FileEntry> = files
                .into_iter()
                .map(|(path, (size, blake3))| dreamerd::manifest::FileEntry { path, size, blake3 })
                .collect();
            let sum = dreamerd::engine::Sum { push, schema, files };
            let back = dreamerd::engine::Sum::parse(&sum.text(), origin).unwrap();
            prop_assert_eq!(back, sum);
            Ok(())
        })
        .unwrap();
}

#[test]
fn drizzle_kit_s_questions_parse_from_any_text_and_round_trip() {
    runner(400, 0x41)
        .run(
            &prop_oneof![
                ".{0,300}",
                "(missing_hints|\\{|\\}|\"entity\"|\\[|\\]|\"kind\"|:|,| |\"create\"|\"type\"){0,40}"
            ],
            |text| {
                let q = hints::questions(&text);
                let _ = hints::answer(&q, &["a.b=c.d".into(), "=".into(), "x".into()], &["é".into()]);
                for q in &q {
                    let _ = (q.asked(), q.flags(), q.shown());
                }
                Ok(())
            },
        )
        .unwrap();
    // Questions drizzle-kit prints come back as they were, and every answer names the entity it answers.
    let question = (
        prop_oneof![Just("column"), Just("table"), Just("index")],
        prop::collection::vec("[a-z_]{1,8}", 1..4),
    );
    runner(200, 0x42)
        .run(&prop::collection::vec(question, 1..4), |qs| {
            let mut text = format!("missing_hints: {} unresolved decisions\n", qs.len());
            for (kind, entity) in &qs {
                let entity = serde_json::to_string(entity).unwrap();
                text += &format!("   Add to --hints:\n     {{ \"type\": \"create\", \"kind\": \"{kind}\", \"entity\": {entity} }}\n");
            }
            let parsed = hints::questions(&text);
            let mut expected: Vec<hints::Question> =
                qs.iter().map(|(k, e)| hints::Question { kind: k.to_string(), entity: e.clone() }).collect();
            expected.dedup();
            prop_assert_eq!(&parsed, &expected);
            let creates: Vec<String> = parsed.iter().map(|q| q.entity.join(".")).collect();
            let answers = hints::answer(&parsed, &[], &creates).unwrap();
            prop_assert_eq!(answers.len(), parsed.len());
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_project_file_the_configuration_and_the_ipc_decoder_never_panic() {
    let toml_like = "(\\[[a-z_.\"]{0,12}\\]\n|[a-z_]{1,10} = (\"[^\"\n]{0,10}\"|[0-9]{1,4}|true|\\[\\])\n|format = [0-9]{1,3}\n|\\[\\[known_faults\\]\\]\n){0,10}";
    runner(300, 0x70)
        .run(&prop_oneof![".{0,200}", toml_like], |text| {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(".dreamerd.toml"), &text).unwrap();
            let _ = dreamerd::project::ProjectFile::read(dir.path());
            let _ = dreamerd::config::Config::parse(&text, Path::new("/c/config.toml"));
            Ok(())
        })
        .unwrap();
    runner(400, 0x71)
        .run(&prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,200}", request_like()], |line| {
            let _ = serde_json::from_str::<dreamerd::ipc::Envelope>(&line);
            Ok(())
        })
        .unwrap();
}

/// Requests shaped like the real ones, with hostile values.
fn request_like() -> impl Strategy<Value = String> {
    (
        prop_oneof!["status|push|up|rebase|restore|watch|history|events|stop|restart|vouch", ".{0,6}"],
        any::<u32>(),
        json_value(),
        json_value(),
    )
        .prop_map(|(cmd, protocol, dir, options)| {
            serde_json::json!({"protocol": protocol, "cmd": cmd, "dir": dir, "options": options, "env": options,
                               "settings": dir, "custom": options, "backed_up": dir, "folder": dir,
                               "excluded": options})
            .to_string()
        })
}

#[test]
fn a_drizzle_config_of_any_shape_and_the_store_s_records_never_panic() {
    // A JSON config is read as it is (no runtime): hostile `out`, `schema`, credentials of every type.
    let credentials = prop_oneof![
        json_value(),
        (".{0,12}", any::<i64>(), ".{0,8}", any::<bool>()).prop_map(|(host, port, user, ssl)| {
            serde_json::json!({"host": host, "port": port, "user": user, "password": "p@ss:/?#", "database": "d",
                               "ssl": ssl, "url": if ssl { serde_json::Value::Null } else { serde_json::json!(host) }})
        }),
    ];
    let config = (
        prop_oneof!["sqlite|postgresql|mysql|turso|singlestore", ".{0,8}"],
        prop_oneof![json_value(), "(\\.\\./|/|[a-z*{}]){0,16}".prop_map(serde_json::Value::from)],
        prop_oneof![json_value(), "(\\.\\./|/|[a-zé.]){0,16}".prop_map(serde_json::Value::from)],
        credentials,
        json_value(),
    )
        .prop_map(|(dialect, schema, out, credentials, migrations)| {
            serde_json::json!({"dialect": dialect, "schema": schema, "out": out, "dbCredentials": credentials,
                               "migrations": migrations})
            .to_string()
        });
    runner(300, 0xc0)
        .run(&prop_oneof![config, ".{0,100}"], |text| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("proj");
            fs::create_dir_all(&root).unwrap();
            let path = root.join("drizzle.config.json");
            fs::write(&path, &text).unwrap();
            if let Ok(resolved) = dreamerd::project::layout::evaluate(&root, &path, None) {
                let _ = dreamerd::project::layout::schema_files(&root, &resolved.layout);
            }
            Ok(())
        })
        .unwrap();
    // The store's objects: records and generations as any machine may have written them.
    runner(300, 0xc1)
        .run(&prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,100}"], |text| {
            let _ = serde_json::from_str::<dreamerd::store::PushRecord>(&text);
            let _ = serde_json::from_str::<dreamerd::store::Generation>(&text);
            Ok(())
        })
        .unwrap();
}
