//! The real daemon on throwaway XDG directories, over its real socket.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{GENERATE, World, alive, stand_in_world};

fn violations(w: &World) -> Value {
    w.status()["violations"].clone()
}

fn wait_violations(w: &World, expected: Value) {
    w.wait_for(&format!("status violations {expected}"), || violations(w) == expected);
}

fn restore(w: &World) {
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn each_violation_kind_shows_in_status_and_clears_after_restore() {
    let w = stand_in_world();
    w.push_ok(); // spawns the daemon, which watches the project from then on
    assert_eq!(w.status()["state"], "clean");
    assert_eq!(w.status()["watch"]["watched"], true);
    let cases: Vec<(Box<dyn Fn()>, Value)> = vec![
        (
            Box::new(|| w.write("drizzle/meta/_journal.json", "{}")),
            json!([{"kind": "modified", "path": "meta/_journal.json"}]),
        ),
        (
            Box::new(|| fs::remove_file(w.path("drizzle/0000_step.sql")).unwrap()),
            json!([{"kind": "deleted", "path": "0000_step.sql"}]),
        ),
        (
            Box::new(|| w.write("drizzle/meta/extra.json", "{}")),
            json!([{"kind": "created", "path": "meta/extra.json"}]),
        ),
        (
            Box::new(|| {
                fs::rename(w.path("drizzle/0000_step.sql"), w.path("drizzle/0000_moved.sql")).unwrap()
            }),
            json!([{"kind": "renamed", "path": "0000_moved.sql", "from": "0000_step.sql"}]),
        ),
    ];
    for (change, expected) in cases {
        change();
        wait_violations(&w, expected);
        assert_eq!(w.status()["state"], "violated");
        let (code, _) = w.json("dreamerd", &["status"]);
        assert_eq!(code, 1, "status exits 1 while violated");
        restore(&w);
        wait_violations(&w, json!([]));
        assert_eq!(w.status()["state"], "clean");
    }
    let log = w.daemon_log();
    assert!(
        log.contains("WARN") && log.contains("kind=modified") && log.contains("path=meta/_journal.json"),
        "{log}"
    );
    assert!(
        log.contains("kind=renamed")
            && log.contains("path=0000_moved.sql")
            && log.contains("from=0000_step.sql")
    );
    assert!(log.contains("violation cleared"));
    // The daemon's own restores were never reported as violations: one warning per hand change.
    assert_eq!(log.matches("drizzle/ changed by hand").count(), 4, "{log}");

    let run = w.run("dreamerd", &["events", "--json"]);
    let kinds: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "violation").count(), 4, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "cleared").count(), 4, "{kinds:?}");
    assert!(kinds.contains(&"push".to_string()) && kinds.contains(&"restore".to_string()));
}

#[test]
fn atomic_schema_save_and_recreated_drizzle_are_seen() {
    let w = stand_in_world();
    w.push_ok();
    assert_eq!(w.status()["schema_pending"], false);
    // An editor's atomic save: temp file, then rename over src/schema.ts.
    w.write("src/.schema.ts.swp", "export const x = 2;\n");
    fs::rename(w.path("src/.schema.ts.swp"), w.path("src/schema.ts")).unwrap();
    w.wait_for("schema_pending", || w.status()["schema_pending"] == true);

    let pushed = w.tree("drizzle");
    fs::remove_dir_all(w.path("drizzle")).unwrap();
    w.wait_for("drizzle/ deleted", || violations(&w).as_array().unwrap().len() == pushed.len());
    // Re-created by hand with the same content: clean again, and its new watch works.
    for (path, body) in &pushed {
        let p = w.path(&format!("drizzle/{path}"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    wait_violations(&w, json!([]));
    w.write("drizzle/meta/_journal.json", "edited in the new folder");
    wait_violations(&w, json!([{"kind": "modified", "path": "meta/_journal.json"}]));

    // src/ deleted and re-created is seen too.
    w.json("dreamer", &["database", "restore"]);
    w.push_ok();
    assert_eq!(w.status()["schema_pending"], false);
    let schema = w.read("src/schema.ts");
    fs::remove_dir_all(w.path("src")).unwrap();
    w.wait_for("schema gone", || w.status()["schema_pending"] == true);
    w.write("src/schema.ts", &schema);
    w.wait_for("schema back as pushed", || w.status()["schema_pending"] == false);
    w.write("src/schema.ts", "export const x = 3;\n");
    w.wait_for("schema changed in the new src/", || w.status()["schema_pending"] == true);
}

/// A private session bus with python-dbusmock's notification daemon logging every Notify call.
struct Bus {
    daemon: std::process::Child,
    mock: std::process::Child,
    address: String,
    log: std::path::PathBuf,
}

impl Bus {
    fn start(dir: &std::path::Path) -> Bus {
        let socket = dir.join("bus");
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon is installed by scripts/test");
        let mut address = String::new();
        BufReader::new(daemon.stdout.take().unwrap()).read_line(&mut address).unwrap();
        let address = address.trim().to_string();
        let log = dir.join("notifications.log");
        let mock = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--session", "-t", "notification_daemon", "-l"])
            .arg(&log)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3-dbusmock is installed by scripts/test");
        let bus = Bus { daemon, mock, address, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = Command::new("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.Notifications",
                ])
                .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                return bus;
            }
            assert!(std::time::Instant::now() < deadline, "the mock notification daemon did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Each Notify call as logged (its body spans several lines).
    fn notifications(&self) -> Vec<String> {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.split(" Notify ").skip(1).map(String::from).collect()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.mock.kill();
        let _ = self.daemon.kill();
        let _ = self.mock.wait();
        let _ = self.daemon.wait();
    }
}

#[test]
fn desktop_notification_over_a_real_session_bus() {
    let w = stand_in_world();
    let bus = Bus::start(w.tmp.path());
    w.set_env("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    w.push_ok();
    w.write("drizzle/0000_step.sql", "-- edited by an agent");
    w.wait_for("a notification", || !bus.notifications().is_empty());
    let n = bus.notifications();
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(n[0].contains("proj"), "names the project: {n:?}");
    assert!(n[0].contains("0000_step.sql"), "names the file: {n:?}");
    assert!(n[0].contains("dreamer database restore"), "says what to do: {n:?}");
    restore(&w);
    wait_violations(&w, json!([]));

    // A burst of 50 files is one notification: the first file at once, the others updating it in place
    // (replaces_id), ending with the count.
    for i in 0..50 {
        w.write(&format!("drizzle/burst_{i:02}.sql"), "x");
    }
    w.wait_for("the burst", || violations(&w).as_array().unwrap().len() == 50);
    w.wait_for("its last update", || bus.notifications().last().is_some_and(|n| n.contains("50 change(s)")));
    let burst: Vec<String> = bus.notifications()[1..].to_vec();
    let new = burst.iter().filter(|n| replaces_id(n) == 0).count();
    assert_eq!(new, 1, "one notification for the burst, then updates of it: {burst:?}");
    assert!(burst.iter().skip(1).all(|n| replaces_id(n) != 0), "{burst:?}");
}

/// The `replaces_id` of a Notify call as the mock logs it: `"app" <replaces_id> "icon" ...`.
fn replaces_id(logged: &str) -> u32 {
    logged.split_whitespace().nth(1).and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("{logged}"))
}

#[test]
fn without_any_bus_the_daemon_keeps_working() {
    let w = stand_in_world();
    w.set_env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus");
    w.push_ok();
    w.write("drizzle/0000_step.sql", "edit 1");
    wait_violations(&w, json!([{"kind": "modified", "path": "0000_step.sql"}]));
    restore(&w);
    w.write("drizzle/meta/_journal.json", "edit 2");
    wait_violations(&w, json!([{"kind": "modified", "path": "meta/_journal.json"}]));
    w.wait_for("the warning", || w.daemon_log().contains("desktop notifications are unavailable"));
    w.write("drizzle/0000_step.sql", "edit 3");
    wait_violations(
        &w,
        json!([{"kind": "modified", "path": "0000_step.sql"}, {"kind": "modified", "path": "meta/_journal.json"}]),
    );
    let log = w.daemon_log();
    assert_eq!(log.matches("desktop notifications are unavailable").count(), 1, "logged once: {log}");

    // And with notify.desktop = false nothing is even tried.
    let quiet = stand_in_world();
    quiet.config(
        &(fs::read_to_string(quiet.xdg("config").join("dreamerd/config.toml")).unwrap()
            + "[notify]\ndesktop = false\n"),
    );
    quiet.push_ok();
    quiet.write("drizzle/0000_step.sql", "edit");
    wait_violations(&quiet, json!([{"kind": "modified", "path": "0000_step.sql"}]));
    assert!(!quiet.daemon_log().contains("desktop notifications are unavailable"));
}

/// Sends raw bytes on the socket after reading the hello; returns what the daemon answered.
fn raw(w: &World, payload: &[u8]) -> String {
    let mut s = UnixStream::connect(w.socket()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    assert!(hello.contains("\"hello\""), "{hello}");
    let _ = s.write_all(payload); // the daemon may close early on a huge line
    let mut reply = String::new();
    let _ = reader.read_to_string(&mut reply);
    reply
}

#[test]
fn socket_permissions_and_hostile_clients() {
    let w = stand_in_world();
    let (code, _) = w.json("dreamerd", &["status", "--all"]);
    assert_eq!(code, 0);
    let dir_mode = fs::metadata(w.runtime()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let sock_mode = fs::metadata(w.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(sock_mode, 0o600);

    let garbage = raw(&w, b"this is not json\n");
    let v: Value = serde_json::from_str(garbage.trim()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["exit"], 2);
    assert!(v["error"].as_str().unwrap().contains("malformed request"));

    let unknown = raw(&w, b"{\"protocol\":1,\"cmd\":\"format-disk\"}\n");
    assert!(unknown.contains("malformed request"), "{unknown}");
    let other_protocol = raw(&w, b"{\"protocol\":99,\"cmd\":\"stop\"}\n");
    assert!(other_protocol.contains("protocol 99"), "{other_protocol}");

    let huge = vec![b'x'; 8 << 20];
    let reply = raw(&w, &huge);
    assert!(reply.is_empty() || reply.contains("larger than"), "{reply}");

    // Abrupt disconnects: before the hello is read, and in the middle of a request.
    drop(UnixStream::connect(w.socket()).unwrap());
    let mut s = UnixStream::connect(w.socket()).unwrap();
    s.write_all(b"{\"protocol\":1,\"cmd\":\"sta").unwrap();
    drop(s);

    let (code, v) = w.json("dreamerd", &["status", "--all"]);
    assert_eq!(code, 0, "the daemon still answers: {v}");
    assert_eq!(v["daemon"]["protocol"], dreamerd::ipc::PROTOCOL);
    assert!(v["daemon"]["version"].is_string());
}

#[test]
fn runtime_directory_writable_by_others_is_refused() {
    let w = stand_in_world();
    fs::create_dir_all(w.runtime()).unwrap();
    fs::set_permissions(w.runtime(), fs::Permissions::from_mode(0o777)).unwrap();
    let run = w.run("dreamerd", &["status", "--all"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("can be written by other users"), "{}", run.stderr);
    assert!(!w.socket().exists());
    if rustix_euid() == 0 {
        fs::set_permissions(w.runtime(), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(w.runtime(), Some(65534), Some(65534)).unwrap();
        let run = w.run("dreamerd", &["status", "--all"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("not to you"), "{}", run.stderr);
    }
}

fn rustix_euid() -> u32 {
    // SAFETY-free: read our uid from /proc.
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn lifecycle_spawn_no_spawn_second_daemon_and_stale_socket() {
    let w = stand_in_world();
    let run = w.run("dreamerd", &["status", "--all", "--no-spawn"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(w.daemon_pid().is_none(), "--no-spawn started nothing");
    let run = w.run("dreamer", &["push", "--no-spawn"]);
    assert_eq!(run.code, 3);

    // Auto-spawn from cold.
    let (code, _) = w.json("dreamerd", &["status", "--all"]);
    assert_eq!(code, 0);
    let first = w.daemon_pid().expect("a daemon was started");

    // A second daemon is refused while the first runs.
    let run = w.run("dreamerd", &["daemon"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("already running"), "{}", run.stderr);
    assert_eq!(w.daemon_pid(), Some(first));

    // kill -9 leaves the socket behind; the next command reclaims it with a new daemon.
    Command::new("kill").args(["-KILL", &first.to_string()]).status().unwrap();
    w.wait_for("the daemon to die", || !alive(first));
    assert!(w.socket().exists());
    let (code, _) = w.json("dreamerd", &["status", "--all"]);
    assert_eq!(code, 0);
    let second = w.daemon_pid().unwrap();
    assert_ne!(first, second);
    assert!(w.daemon_log().contains("removing the stale socket"));

    // A daemon killed an instant ago may still hold its pid lock after its socket stopped answering (the kernel
    // closes a dying process's files one by one): the next command's daemon waits for it, never says "already
    // running" to a command that just saw it die. Here the test holds the lock for the dying daemon.
    Command::new("kill").args(["-KILL", &second.to_string()]).status().unwrap();
    w.wait_for("the daemon to die", || !alive(second));
    let dying = fs::File::options().write(true).open(w.runtime().join("dreamerd.pid")).unwrap();
    dying.lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        drop(dying);
    });
    let (code, v) = w.json("dreamerd", &["status", "--all"]);
    release.join().unwrap();
    assert_eq!(code, 0, "the new daemon waited for the dying one's lock: {v}");
    let second = w.daemon_pid().unwrap();

    // Clean stop removes the socket and the pid file.
    let run = w.run("dreamerd", &["stop"]);
    assert_eq!(run.code, 0);
    assert!(!w.socket().exists());
    w.wait_for("the daemon to exit", || !alive(second));
    let run = w.run("dreamerd", &["stop"]);
    assert_eq!(run.code, 0, "stopping no daemon is fine");
    assert!(run.stdout.contains("no daemon"));

    // SIGTERM and SIGINT are clean shutdowns too.
    for signal in ["-TERM", "-INT"] {
        w.json("dreamerd", &["status", "--all"]);
        let pid = w.daemon_pid().unwrap();
        Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        w.wait_for("the shutdown", || !alive(pid));
        assert!(!w.socket().exists(), "{signal} removed the socket");
    }
}

#[test]
fn two_concurrent_pushes_one_runs_the_other_is_told_busy() {
    let w = stand_in_world();
    w.write("gen.sh", &format!("touch started\nwhile [ ! -f release ]; do sleep 0.05; done\n{GENERATE}"));
    let first =
        w.cmd("dreamer", &["push", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    w.wait_for("the first push to run generate", || w.path("started").exists());
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1);
    assert_eq!(v["stage"], "precheck", "{v}");
    assert_eq!(v["diagnosis"]["code"], "busy", "{v}");
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 1, "restore is refused too while a push runs: {v}");
    let (_, status) = w.json("dreamerd", &["check"]);
    assert_eq!(status["state"], "busy");
    fs::write(w.path("release"), "").unwrap();
    let out = first.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "the first push ran to its end: {v}");
    assert_eq!(w.tree("drizzle").len(), 3);
    wait_violations(&w, json!([]));
}

#[test]
fn a_burst_of_thousands_of_changes_ends_with_the_right_status() {
    let w = stand_in_world();
    w.push_ok();
    for i in 0..3000 {
        w.write(&format!("drizzle/burst/{i:04}.sql"), "x");
    }
    w.wait_for("3000 created", || violations(&w).as_array().unwrap().len() == 3000);
    restore(&w);
    wait_violations(&w, json!([]));
    assert!(!w.path("drizzle/burst").exists());
}

#[test]
fn an_overflow_forced_with_a_small_queue_rescans_and_shows_in_status() {
    let w = stand_in_world();
    w.set_env("DREAMERD_EVENT_QUEUE", "1");
    w.push_ok();
    for i in 0..2000 {
        w.write(&format!("drizzle/flood_{i:04}.sql"), "x");
    }
    fs::remove_file(w.path("drizzle/0000_step.sql")).unwrap();
    w.wait_for("the flood", || violations(&w).as_array().unwrap().len() == 2001);
    let status = w.status();
    assert!(status["watch"]["overflows"].as_u64().unwrap() > 0, "{}", status["watch"]);
    // However often the one-event queue filled during the flood, the log says so once.
    let log = w.daemon_log();
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains("file events were lost")).count();
    assert_eq!(warned, 1, "{log}");
    restore(&w);
    wait_violations(&w, json!([]));
}

/// The masks of the inotify watches `pid` holds, from /proc (`inotify wd:1 ino:… sdev:… mask:fce …` per watch).
fn inotify_masks(pid: i32) -> Vec<u32> {
    let mut masks = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else { continue };
        for line in info.lines().filter(|l| l.starts_with("inotify wd:")) {
            let mask = line.split_whitespace().find_map(|f| f.strip_prefix("mask:")).unwrap();
            masks.push(u32::from_str_radix(mask, 16).unwrap());
        }
    }
    masks
}

#[test]
fn reads_of_watched_files_are_not_asked_of_the_kernel_changes_are() {
    // inotify's bits: a read is IN_ACCESS, IN_OPEN and IN_CLOSE_NOWRITE; a change is the others.
    const READS: u32 = 0x1 | 0x10 | 0x20;
    const CHANGES: u32 = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200;
    let w = stand_in_world();
    w.push_ok();
    assert_eq!(w.status()["watch"]["watched"], true);
    let masks = inotify_masks(w.daemon_pid().expect("the push spawned a daemon"));
    // drizzle/, drizzle/meta, the project root, src/ and the cookie folder at least.
    assert!(masks.len() >= 4, "{masks:x?}");
    for mask in &masks {
        assert_eq!(mask & READS, 0, "a watch asks for reads: {mask:#x} in {masks:x?}");
        assert_eq!(mask & CHANGES, CHANGES, "a watch misses changes: {mask:#x} in {masks:x?}");
    }
    // And the changes are still seen.
    w.write("drizzle/meta/extra.json", "{}");
    wait_violations(&w, json!([{"kind": "created", "path": "meta/extra.json"}]));
}

#[test]
fn watch_list_survives_restarts_and_unwatch_removes() {
    let w = stand_in_world();
    let other = World::empty();
    let other_root = other.root.to_str().unwrap().to_string();
    w.push_ok();
    let (code, v) = w.json("dreamerd", &["watch", &other_root]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["project"]["state"], "no-baseline");
    let roots = |w: &World| -> Vec<String> {
        let (_, v) = w.json("dreamerd", &["status", "--all"]);
        v["projects"].as_array().unwrap().iter().map(|p| p["root"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(roots(&w).len(), 2);
    w.run("dreamerd", &["stop"]);
    let after = roots(&w); // spawns a new daemon
    assert!(
        after.contains(&other_root) && after.contains(&w.root.to_str().unwrap().to_string()),
        "{after:?}"
    );
    w.write("drizzle/0000_step.sql", "edited after the restart");
    wait_violations(&w, json!([{"kind": "modified", "path": "0000_step.sql"}]));

    let (code, v) = w.json("dreamerd", &["unwatch", &other_root]);
    assert_eq!(code, 0);
    assert_eq!(v["was_watched"], true);
    assert_eq!(roots(&w), vec![w.root.to_str().unwrap().to_string()]);
    let nowhere = w.tmp.path().join("nowhere");
    fs::create_dir_all(&nowhere).unwrap();
    let run = w.run("dreamerd", &["watch", nowhere.to_str().unwrap()]);
    assert_eq!(run.code, 2);
}

#[test]
fn on_violation_restore_puts_drizzle_back_by_itself() {
    let w = stand_in_world();
    let bus = Bus::start(w.tmp.path());
    w.set_env("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    let cfg = fs::read_to_string(w.xdg("config").join("dreamerd/config.toml")).unwrap();
    w.config(&(cfg + "[watch]\non_violation = \"restore\"\n"));
    w.push_ok();
    let pushed = w.tree("drizzle");
    w.write("drizzle/0000_step.sql", "-- an agent's edit");
    w.wait_for("the automatic restore", || w.tree("drizzle") == pushed);
    w.wait_for("the restore event", || {
        let run = w.run("dreamerd", &["events", "--json"]);
        run.stdout.lines().any(|l| l.contains("\"automatic\":true") && l.contains("\"ok\":true"))
    });
    let kept = crate::support::tree_of(&w.state().join("quarantine"));
    assert!(kept.values().any(|v| v == b"-- an agent's edit"), "the edit is kept in quarantine");
    assert!(w.daemon_log().contains("restored automatically"));
    w.wait_for("the notification", || {
        bus.notifications().iter().any(|n| n.contains("drizzle/ restored in proj"))
    });
    let n = bus.notifications();
    assert!(n.iter().any(|n| n.contains("0000_step.sql") && n.contains("kept in")), "{n:?}");
}

#[test]
fn events_follow_streams_live() {
    let w = stand_in_world();
    w.push_ok();
    let mut follow =
        w.cmd("dreamerd", &["events", "--follow", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    // The backlog comes first: the push.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "push");
    w.write("drizzle/meta/_journal.json", "live edit");
    let violation = lines
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
        .find(|e| e["type"] == "violation")
        .unwrap();
    assert_eq!(violation["violations"], json!([{"kind": "modified", "path": "meta/_journal.json"}]));
    assert_eq!(violation["root"], json!(w.root));
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn check_beside_a_daemon_of_another_protocol_scans_and_leaves_it_alone() {
    let w = stand_in_world();
    fs::create_dir_all(w.runtime()).unwrap();
    fs::set_permissions(w.runtime(), fs::Permissions::from_mode(0o700)).unwrap();
    w.config("[check]\nvouch_min_files = 0\n");
    // A daemon of an earlier release (protocol 5: no `vouch`), which would stop if asked.
    let listener = std::os::unix::net::UnixListener::bind(w.socket()).unwrap();
    let old = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"{\"type\":\"hello\",\"daemon_version\":\"0.4.0\",\"protocol\":5,\"pid\":1}\n")
            .unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(conn).read_line(&mut line);
        line
    });
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!((code, v["verified"].as_str()), (0, Some("scan")), "{v}");
    assert_eq!(
        old.join().unwrap(),
        "",
        "check hung up after the hello: nothing asked of that daemon, no stop"
    );
    assert!(w.socket().exists(), "its socket is left alone");
}

#[test]
fn a_daemon_of_another_protocol_is_stopped_and_replaced() {
    let w = stand_in_world();
    fs::create_dir_all(w.runtime()).unwrap();
    fs::set_permissions(w.runtime(), fs::Permissions::from_mode(0o700)).unwrap();
    // An old daemon: speaks protocol 0, and stops when asked.
    let listener = std::os::unix::net::UnixListener::bind(w.socket()).unwrap();
    let socket = w.socket();
    let old = std::thread::spawn(move || {
        let mut asked_to_stop = false;
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            conn.write_all(b"{\"type\":\"hello\",\"daemon_version\":\"0.0.1\",\"protocol\":0,\"pid\":1}\n")
                .unwrap();
            let mut line = String::new();
            let _ = BufReader::new(conn.try_clone().unwrap()).read_line(&mut line);
            if line.contains("\"stop\"") {
                let _ = conn.write_all(b"{\"type\":\"result\",\"exit\":0,\"data\":{}}\n");
                asked_to_stop = true;
                break;
            }
        }
        fs::remove_file(socket).unwrap();
        asked_to_stop
    });
    let (code, v) = w.json("dreamerd", &["status", "--all"]);
    assert!(old.join().unwrap(), "the CLI asked the old daemon to stop");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["daemon"]["protocol"], dreamerd::ipc::PROTOCOL, "a new daemon answered");
    assert!(w.daemon_pid().is_some());
}

#[test]
fn sigterm_during_a_push_lets_it_finish_first() {
    let w = stand_in_world();
    w.write("gen.sh", &format!("touch started\nwhile [ ! -f release ]; do sleep 0.05; done\n{GENERATE}"));
    let push =
        w.cmd("dreamer", &["push", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    w.wait_for("generate to start", || w.path("started").exists());
    let pid = w.daemon_pid().unwrap();
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    w.wait_for("the daemon to log the shutdown", || {
        w.daemon_log().contains("waiting for running operations")
    });
    assert!(alive(pid), "the daemon waits for the push");
    let run = w.run("dreamer", &["push", "--no-spawn"]);
    assert_ne!(run.code, 0, "no new operation is taken while stopping");
    fs::write(w.path("release"), "").unwrap();
    let out = push.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    w.wait_for("the daemon to exit", || !alive(pid));
    assert!(!w.socket().exists());
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "the push was recorded: {v}");
    assert_eq!(v["state"], "clean");
}

#[test]
fn the_loss_of_the_whole_project_is_seen_and_its_return_too() {
    let w = stand_in_world();
    w.push_ok();
    let copy = w.tmp.path().join("copy");
    fs::rename(&w.root, &copy).unwrap();
    let all = |w: &World| {
        let out =
            w.cmd("dreamerd", &["status", "--all", "--json"]).current_dir(w.tmp.path()).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["projects"][0].clone()
    };
    w.wait_for("the missing project warning", || {
        all(&w)["watch"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains("no longer exists"))
    });
    fs::rename(&copy, &w.root).unwrap();
    w.wait_for("the project back and clean", || {
        let p = all(&w);
        p["state"] == "clean" && p["watch"]["warnings"] == json!([])
    });
    w.write("drizzle/0000_step.sql", "edited after its return");
    wait_violations(&w, json!([{"kind": "modified", "path": "0000_step.sql"}]));
}

#[test]
fn a_client_of_another_user_is_refused() {
    if rustix_euid() != 0 {
        eprintln!("skipped: needs root to run a daemon as another user");
        return;
    }
    // A daemon of user 65534; root can connect to any socket file, so only the peer uid check stands in the way.
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_dreamerd"))
        .arg("daemon")
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = KillOnDrop(daemon);
    let socket = home.join("dreamerd/dreamerd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the daemon of user 65534 did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = UnixStream::connect(&socket).expect("root may connect to the file");
    let mut hello = String::new();
    let read = BufReader::new(s).read_line(&mut hello);
    assert!(matches!(read, Ok(0)) || read.is_err(), "no hello for another user: {hello:?}");
    drop(daemon);
}

#[test]
fn a_command_whose_configuration_differs_from_the_daemons_says_so() {
    let w = stand_in_world();
    w.push_ok(); // the daemon reads the world's config file
    // Push, store and database keys apply to the command that names them: no warning, and the file is named.
    w.write("ci.toml", "[push]\ntimeout_secs = 7\n");
    let run = w.run("dreamerd", &["status", "--config", "ci.toml", "--json"]);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    assert!(run.stdout.contains("ci.toml"), "the settings name it: {}", run.stdout);
    // Keys only a daemon at its start applies are said not to apply.
    w.write("watch.toml", "[watch]\ndebounce_ms = 5\n");
    let run = w.run("dreamerd", &["status", "--config", "watch.toml"]);
    assert!(run.stderr.contains("watch.debounce_ms"), "{}", run.stderr);
    assert!(run.stderr.contains("dreamerd stop"), "{}", run.stderr);
    let run = w.run("dreamerd", &["status", "-v"]);
    assert!(!run.stderr.contains("warning"), "same configuration, no warning: {}", run.stderr);
    assert!(run.stderr.contains("settings from"), "-v names the files: {}", run.stderr);
}

#[test]
fn commands_racing_from_cold_start_one_daemon() {
    let w = stand_in_world();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            w.cmd("dreamerd", &["status", "--all", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in racers {
        let out = r.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(w.daemon_log().matches("dreamerd daemon listening").count(), 1, "{}", w.daemon_log());
    assert!(
        !w.daemon_log().contains("already running"),
        "the start-up lock kept a second daemon from even trying"
    );
}

#[test]
fn different_projects_push_in_parallel() {
    let a = stand_in_world();
    let b_root = a.tmp.path().join("other");
    fs::create_dir_all(b_root.join("src")).unwrap();
    fs::write(b_root.join("src/schema.ts"), "export const b = 1;\n").unwrap();
    let gate = a.tmp.path().join("gate");
    // Each generate announces itself, then waits until both have started: only parallel pushes get through.
    let script = format!(
        "touch {gate}-$(basename $PWD)\nwhile [ ! -f {gate}-proj ] || [ ! -f {gate}-other ]; do sleep 0.05; done\n{GENERATE}",
        gate = gate.display()
    );
    a.write("gen.sh", &script);
    fs::write(b_root.join("gen.sh"), &script).unwrap();
    fs::write(b_root.join("mig.sh"), "echo migrated\n").unwrap();
    let first =
        a.cmd("dreamer", &["push", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let second = a
        .cmd("dreamer", &["push", "--json", b_root.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for push in [first, second] {
        let out = push.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], true, "{v}");
    }
}

#[test]
fn a_client_that_never_sends_its_request_is_dropped() {
    let w = stand_in_world();
    w.json("dreamerd", &["status", "--all"]);
    let s = UnixStream::connect(w.socket()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    // Say nothing: the daemon gives up after its request timeout with an error, and closes.
    let mut reply = String::new();
    reader.read_to_string(&mut reply).unwrap();
    let v: Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(v["type"], "error");
    assert!(v["error"].as_str().unwrap().contains("no request within"), "{v}");
    let (code, _) = w.json("dreamerd", &["status", "--all"]);
    assert_eq!(code, 0);
}
