//! Backups in S3-compatible storage (issue 12), against a real S3-protocol server on loopback (in-process, on s3s:
//! SigV4 checked, conditional writes serialised): two machines, wrong credentials, a server that goes down, pushers
//! racing, tampered objects, and moving a history between stores.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

use crate::support::s3::S3Server;
use crate::support::{GENERATE, MIGRATE_OK, World, tree_of};

const KEY: &str = "AKIDREAMERDTEST";
const SECRET: &str = "dreamerd-test-secret-4b1d";

fn store_config(server: &S3Server, url: &str) -> String {
    format!(
        "[store]\nurl = \"{url}\"\nendpoint = \"{}\"\nallow_http = true\ntimeout_secs = 3\n",
        server.endpoint()
    )
}

fn stand_in_config() -> &'static str {
    "[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\ntimeout_secs = 30\n"
}

/// A project whose store is the server, with stand-ins for drizzle-kit.
fn s3_world(server: &S3Server, secret: &str) -> World {
    let w = World::empty();
    w.write("gen.sh", GENERATE);
    w.write("mig.sh", MIGRATE_OK);
    w.config(&format!("{}{}", stand_in_config(), store_config(server, "s3://bucket/team")));
    w.set_env("AWS_ACCESS_KEY_ID", KEY);
    w.set_env("AWS_SECRET_ACCESS_KEY", secret);
    w
}

/// Another machine with a clone of `w`'s project (its committed files) and the same store settings.
fn other_machine(w: &World, server: &S3Server) -> World {
    let b = World::empty();
    for f in [".dreamerd.toml", ".dreamerd.sum", "src/schema.ts", "gen.sh", "mig.sh"] {
        if w.path(f).exists() {
            fs::copy(w.path(f), b.path(f)).unwrap();
        }
    }
    b.config(&format!("{}{}", stand_in_config(), store_config(server, "s3://bucket/team")));
    b.set_env("AWS_ACCESS_KEY_ID", KEY);
    b.set_env("AWS_SECRET_ACCESS_KEY", SECRET);
    b
}

fn ids(history: &Value) -> Vec<String> {
    history["pushes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_push_on_one_machine_restores_byte_for_byte_on_another() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let a = World::drizzle();
    a.config(&store_config(&server, "s3://bucket/team"));
    a.set_env("AWS_ACCESS_KEY_ID", KEY);
    a.set_env("AWS_SECRET_ACCESS_KEY", SECRET);
    let (code, v) = a.json("dreamerd", &["store", "check"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["proved"].as_array().unwrap().len(), 2, "{v}");
    let id = a.push_ok();
    assert!(server.keys().iter().any(|k| k.starts_with("team/projects/") && k.contains("/generations/")));
    // Machine B: a clone (its committed files), fresh state and cache, the same store.
    let b = World::drizzle();
    for f in [".dreamerd.toml", ".dreamerd.sum", "src/schema.ts"] {
        fs::copy(a.path(f), b.path(f)).unwrap();
    }
    b.config(&store_config(&server, "s3://bucket/team"));
    b.set_env("AWS_ACCESS_KEY_ID", KEY);
    b.set_env("AWS_SECRET_ACCESS_KEY", SECRET);
    let (code, h) = b.json("dreamerd", &["history"]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(ids(&h), std::slice::from_ref(&id));
    let (code, v) = b.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["push_id"], id.as_str(), "the push the committed sum names");
    assert_eq!(b.tree("drizzle"), a.tree("drizzle"), "byte for byte");
    let cache = b.tmp.path().join(".cache/dreamerd/archives");
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 1, "the archive is cached");
    // A tampered object is refused, naming its key; the cache (which matches its hash) still serves the restore.
    let archive = server.keys().into_iter().find(|k| k.contains("/archives/")).unwrap();
    server.tamper(&archive, b"not the archive");
    fs::remove_dir_all(b.path("drizzle")).unwrap();
    let (code, _) = b.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "served from the cache");
    fs::remove_dir_all(&cache).unwrap();
    fs::remove_dir_all(b.path("drizzle")).unwrap();
    let (code, v) = b.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 1, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("corrupt") && error.contains("archives/"), "{error}");
    assert!(!b.path("drizzle").exists(), "nothing was written");
}

#[test]
fn a_wrong_secret_is_refused_and_never_shown() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let wrong = "wrong-secret-9f8e7d6c5b4a";
    let w = s3_world(&server, wrong);
    let run = w.run("dreamer", &["push"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("refused the credentials"), "{}", run.stderr);
    assert!(run.stderr.contains("AWS_SECRET_ACCESS_KEY"), "it says what to check: {}", run.stderr);
    assert!(!w.path("drizzle").exists(), "nothing ran");
    let run2 = w.run("dreamerd", &["history", "--json"]);
    assert_eq!(run2.code, 2);
    let status = w.run("dreamerd", &["status", "--json"]);
    for (what, text) in [
        ("push", format!("{}{}", run.stdout, run.stderr)),
        ("history", format!("{}{}", run2.stdout, run2.stderr)),
        ("status", format!("{}{}", status.stdout, status.stderr)),
        ("the daemon's log", w.daemon_log()),
    ] {
        assert!(!text.contains(wrong), "the secret is in {what}: {text}");
    }
    for (path, bytes) in tree_of(&w.state()) {
        assert!(!String::from_utf8_lossy(&bytes).contains(wrong), "the secret is in the state file {path}");
    }
}

#[test]
fn a_backup_refused_while_the_store_is_down_lands_when_it_is_back() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let w = s3_world(&server, SECRET);
    w.set_env("DREAMERD_UPLOAD_SECS", "1");
    w.push_ok();
    // The server goes down while migrate runs: the migration is applied, its backup waits.
    w.write("mig.sh", "touch migrating\nwhile [ ! -f go ]; do sleep 0.05; done\necho migrated\n");
    let push =
        w.cmd("dreamer", &["push", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    w.wait_for("migrate to start", || w.path("migrating").exists());
    server.pause();
    fs::write(w.path("go"), "").unwrap();
    let out = push.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["stage"], "backup", "{v}");
    let status = w.status();
    let waiting = status["backup_waiting"]["push"].as_str().expect("status says what waits").to_string();
    let why = status["backup_waiting"]["reason"].as_str().expect("and why");
    assert!(why.contains("cannot be reached"), "{why}");
    assert!(!why.contains(SECRET));
    // Back: the daemon stores it by itself.
    server.resume();
    w.wait_for("the waiting backup to land", || w.status()["backup_waiting"].is_null());
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(ids(&h)[0], waiting, "{h}");
    assert_eq!(h["pushes"][0]["generation"], 2, "{h}");
}

#[test]
fn two_machines_pushing_at_once_lose_nothing() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let a = s3_world(&server, SECRET);
    let first = a.push_ok();
    let b = other_machine(&a, &server);
    b.json("dreamer", &["database", "restore"]);
    let mut pushed = vec![first];
    let mut told = 0;
    for round in 0..20 {
        let spawn = |w: &World| {
            w.cmd("dreamer", &["push", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        for out in [pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap()] {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(out.status.code(), Some(0), "round {round}: {v}");
            pushed.push(v["push_id"].as_str().unwrap().to_string());
            told += v["others"].as_array().map_or(0, Vec::len);
        }
    }
    let (_, h) = a.json("dreamerd", &["history"]);
    let mut got = ids(&h);
    assert_eq!(got.len(), 41, "no push lost: {h}");
    let generations: Vec<u64> =
        h["pushes"].as_array().unwrap().iter().map(|p| p["generation"].as_u64().unwrap()).collect();
    assert_eq!(generations, (1..=41).rev().collect::<Vec<u64>>(), "a consistent history");
    got.sort();
    pushed.sort();
    assert_eq!(got, pushed, "every push reported is in the history, once");
    assert!(told >= 20, "each pusher is told of the other's pushes ({told})");
    // Each checkout stands on its own line.
    let (code, v) = b.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn a_history_moves_between_stores_and_back() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let w = s3_world(&server, SECRET);
    // Starting local.
    w.config(&format!(
        "{}[store]\nendpoint = \"{}\"\nallow_http = true\ntimeout_secs = 3\n",
        stand_in_config(),
        server.endpoint()
    ));
    let pushes = [w.push_ok(), w.push_ok(), w.push_ok()];
    let (_, before) = w.json("dreamerd", &["history"]);
    let (code, v) = w.json("dreamerd", &["store", "migrate", "--to", "s3://bucket/moved"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!((v["pushes"].as_u64(), v["copied"].as_u64()), (Some(3), Some(3)), "{v}");
    w.config(&format!("{}{}", stand_in_config(), store_config(&server, "s3://bucket/moved")));
    let (code, after) = w.json("dreamerd", &["history"]);
    assert_eq!(code, 0, "{after}");
    assert_eq!(ids(&after), ids(&before));
    let parents = |h: &Value| -> Vec<Value> {
        h["pushes"].as_array().unwrap().iter().map(|p| p["parent"].clone()).collect()
    };
    assert_eq!(parents(&after), parents(&before));
    let (code, v) = w.json("dreamer", &["database", "restore", "--push", &pushes[0]]);
    assert_eq!(code, 0, "{v}");
    // And back to a local folder.
    let back = w.tmp.path().join("back");
    let to = format!("file://{}", back.display());
    let (code, v) = w.json("dreamerd", &["store", "migrate", "--to", &to]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["copied"], 3);
    w.config(&format!("{}[store]\nurl = \"{to}\"\n", stand_in_config()));
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(ids(&h), ids(&before));
    assert!(Path::new(&back).join("format.json").exists());
}

#[test]
fn each_store_fault_is_one_line_that_names_the_cause_and_changes_nothing() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let w = s3_world(&server, SECRET);
    let fails = |config: &str, cause: &str| {
        w.config(&format!("{}{config}", stand_in_config()));
        let run = w.run("dreamer", &["push"]);
        assert_eq!(run.code, 2, "{config}: {run:?}");
        assert!(run.stderr.contains(cause), "{config}: {}", run.stderr);
        assert!(!w.path("drizzle").exists(), "{config}: nothing ran");
        assert!(!run.stderr.contains(SECRET));
    };
    fails(&store_config(&server, "s3://nobucket/team"), "does not exist");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    fails(
        &format!(
            "[store]\nurl = \"s3://bucket/x\"\nendpoint = \"http://127.0.0.1:{closed}\"\nallow_http = true\ntimeout_secs = 1\n"
        ),
        "cannot be reached",
    );
    // A port that takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fails(
        &format!(
            "[store]\nurl = \"s3://bucket/x\"\nendpoint = \"http://{}\"\nallow_http = true\ntimeout_secs = 1\n",
            silent.local_addr().unwrap()
        ),
        "did not answer within 3s",
    );
    drop(silent);
    // TLS spoken to a server that does not speak it.
    fails(
        &format!(
            "[store]\nurl = \"s3://bucket/x\"\nendpoint = \"{}\"\ntimeout_secs = 2\n",
            server.endpoint().replace("http://", "https://")
        ),
        "TLS",
    );
    // Credentials from a named profile of ~/.aws/credentials (none in the environment).
    let p = World::empty();
    p.write("gen.sh", GENERATE);
    p.write("mig.sh", MIGRATE_OK);
    let aws = p.tmp.path().join(".aws");
    fs::create_dir_all(&aws).unwrap();
    fs::write(
        aws.join("credentials"),
        format!("[team]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    p.config(&format!(
        "{}{}profile = \"team\"\n",
        stand_in_config(),
        store_config(&server, "s3://bucket/profiles")
    ));
    p.push_ok();
    assert!(server.keys().iter().any(|k| k.starts_with("profiles/")));
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_push_is_told_of_pushes_from_elsewhere_and_whether_they_are_on_its_branch() {
    let server = S3Server::start("bucket", KEY, SECRET);
    let a = s3_world(&server, SECRET);
    git(&a.root, &["init", "-q", "-b", "main"]);
    a.push_ok();
    let b = other_machine(&a, &server);
    git(&b.root, &["init", "-q", "-b", "feature"]);
    b.json("dreamer", &["database", "restore"]);
    let theirs = b.push_ok();
    let (code, v) = a.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["others"][0]["id"], theirs.as_str(), "{v}");
    assert_eq!(v["others"][0]["branch"], "feature");
    assert_eq!(v["others"][0]["same_branch"], false, "another branch is no race: {v}");
    let (_, h) = a.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"][0]["generation"], 3, "the history says which came second: {h}");
}

/// s3s-fs, a second S3-protocol server (objects as files), started on a free port; stopped when dropped.
struct S3sFs {
    child: std::process::Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl S3sFs {
    fn start() -> S3sFs {
        let binary = std::env::var("DREAMERD_S3S_FS").unwrap_or_else(|_| {
            format!(
                "{}/.cache/dreamerd-ci/s3s-fs-0.14.1/bin/s3s-fs",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        assert!(
            Path::new(&binary).is_file(),
            "s3s-fs is not installed at {binary}: run scripts/test (it builds it once)"
        );
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("bucket")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(&binary)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                KEY,
                "--secret-key",
                SECRET,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        S3sFs { child, endpoint: format!("http://127.0.0.1:{port}"), _root: root }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_same_end_to_end_path_through_a_second_independent_server() {
    let server = S3sFs::start();
    let config = format!(
        "[store]\nurl = \"s3://bucket/team\"\nendpoint = \"{}\"\nallow_http = true\ntimeout_secs = 5\n",
        server.endpoint
    );
    let a = World::drizzle();
    a.config(&config);
    a.set_env("AWS_ACCESS_KEY_ID", KEY);
    a.set_env("AWS_SECRET_ACCESS_KEY", SECRET);
    let (code, v) = a.json("dreamerd", &["store", "check"]);
    assert_eq!(code, 0, "{v}");
    let id = a.push_ok();
    let b = World::drizzle();
    for f in [".dreamerd.toml", ".dreamerd.sum", "src/schema.ts"] {
        fs::copy(a.path(f), b.path(f)).unwrap();
    }
    b.config(&config);
    b.set_env("AWS_ACCESS_KEY_ID", KEY);
    b.set_env("AWS_SECRET_ACCESS_KEY", SECRET);
    let (code, v) = b.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["push_id"], id.as_str());
    assert_eq!(b.tree("drizzle"), a.tree("drizzle"), "byte for byte");
    let (code, v) = b.json("dreamer", &["push"]);
    assert_eq!(code, 0, "the other machine pushes on top: {v}");
}
