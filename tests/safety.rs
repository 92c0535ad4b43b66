//! Safety foundations: nothing of a project is read through a link or blocks on a fifo, children never outlive the
//! daemon's decision, the daemon stays bounded under abuse, and what dreamerd 0.1.0 wrote is read forward.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{
    CONFIG_JSON, CONFIG_JSON_DB, GENERATE, MIGRATE_OK, World, alive, stand_in_world, tree_of,
};

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

fn violations(w: &World) -> Value {
    w.status()["violations"].clone()
}

/// Whether the daemon has finished what a crash left: nothing interrupted, and no operation running (a project
/// being recovered is busy, and a busy status says nothing of interruptions).
fn recovered(w: &World) -> bool {
    let s = w.status();
    s["interrupted"].is_null() && s["state"] != "busy"
}

/// Lines of the daemon's log at WARN level.
fn warn_lines(w: &World) -> Vec<String> {
    w.daemon_log().lines().filter(|l| l.contains(" WARN ")).map(String::from).collect()
}

#[test]
fn a_fifo_in_the_folder_never_wedges_the_daemon_or_check() {
    let w = stand_in_world();
    w.push_ok();
    let journal = w.path("drizzle/meta/_journal.json");
    fs::remove_file(&journal).unwrap();
    mkfifo(&journal);
    // The daemon sees it, answers, and says what it is; check does too, in-process.
    w.wait_for("the fifo reported", || {
        violations(&w).as_array().unwrap().iter().any(|v| v["file_type"] == "fifo")
    });
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["violations"][0]["path"], "meta/_journal.json");
    assert_eq!(v["violations"][0]["file_type"], "fifo");
    // A push is refused at once, not hung on the scan lock.
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "drizzle-tampered");
    // Restore puts the journal back; the fifo is kept in quarantine, as everything replaced is.
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    assert!(fs::symlink_metadata(&journal).unwrap().is_file());
    w.push_ok();
    // And the daemon stops when told to.
    let pid = w.daemon_pid().unwrap();
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    w.wait_for("the daemon to exit", || !alive(pid));
}

#[test]
fn a_link_to_dev_zero_and_a_tag_leaving_the_folder_are_never_read() {
    let w = stand_in_world();
    w.push_ok();
    w.push_ok();
    // A snapshot replaced by a link to /dev/zero: a violation, never read (it would never end).
    let snapshot = w.path("drizzle/meta/0001_snapshot.json");
    fs::remove_file(&snapshot).unwrap();
    symlink("/dev/zero", &snapshot).unwrap();
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    assert_eq!(v["violations"][0]["file_type"], "symlink", "{v}");
    assert!(v["drift"].as_array().unwrap().iter().any(|d| d["code"] == "journal-missing-snapshot"), "{v}");
    let (code, _) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0);

    // A journal tag with `../` in it: the journal is refused before any tag becomes a path.
    fs::write(w.tmp.path().join("outside.sql"), "CREATE TABLE stolen (x integer);").unwrap();
    let journal = w.read("drizzle/meta/_journal.json").replace("\"0001_step\"", "\"../../outside\"");
    w.write("drizzle/meta/_journal.json", &journal);
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    let drift = v["drift"].as_array().unwrap();
    assert!(drift.iter().any(|d| d["code"] == "journal-unreadable"), "{v}");
    let unreadable = drift.iter().find(|d| d["code"] == "journal-unreadable").unwrap();
    assert!(unreadable["message"].as_str().unwrap().contains("not a file name"), "{v}");
}

/// The number of inotify watches the process holds.
fn inotify_watches(pid: i32) -> usize {
    let mut n = 0;
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify")) {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
            n += info.lines().filter(|l| l.starts_with("inotify wd:")).count();
        }
    }
    n
}

#[test]
fn a_link_to_a_big_tree_puts_no_watch_on_it() {
    let w = stand_in_world();
    w.push_ok();
    // A home folder of 200 directories, linked into drizzle/; the daemon then starts with the link in place (the
    // watches are made at start, as after a reboot or an overflow).
    let home = w.tmp.path().join("home");
    for i in 0..200 {
        fs::create_dir_all(home.join(format!("d{i}/sub"))).unwrap();
    }
    symlink(&home, w.path("drizzle/home")).unwrap();
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    w.wait_for("the link reported", || {
        violations(&w).as_array().unwrap().iter().any(|v| v["path"] == "home" && v["file_type"] == "symlink")
    });
    let pid = w.daemon_pid().unwrap();
    let watches = inotify_watches(pid);
    // The project root, src/, drizzle/ and drizzle/meta/.
    assert!(watches <= 6, "{watches} inotify watches: the link was followed into the linked tree");
}

#[test]
fn a_drizzle_kit_left_running_by_a_killed_daemon_is_stopped_before_recovery() {
    let w = stand_in_world();
    w.push_ok();
    let before = w.tree("drizzle");
    // generate starts a helper that would write into drizzle/ later, then waits for it, as node waits for esbuild.
    w.write(
        "gen.sh",
        "( sleep 30; echo 'CREATE TABLE late (x integer);' > drizzle/0009_late.sql ) &\n\
         echo $! > orphan.pid\necho $$ > gen.pid\nwait\n",
    );
    let mut push = w.cmd("dreamer", &["push"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    w.wait_for("generate to start its helper", || {
        w.path("orphan.pid").exists() && w.path("gen.pid").exists()
    });
    let daemon = w.daemon_pid().unwrap();
    Command::new("kill").args(["-KILL", &daemon.to_string()]).status().unwrap();
    push.wait().unwrap();
    let orphan: i32 = w.read("orphan.pid").trim().parse().unwrap();
    let generate: i32 = w.read("gen.pid").trim().parse().unwrap();
    w.wait_for("generate to die with its daemon", || !alive(generate));
    assert!(alive(orphan), "the helper outlived generate, as node's children can");

    // The next daemon stops the helper before it rolls the push back.
    w.write("gen.sh", GENERATE);
    w.wait_for("recovery", || recovered(&w));
    assert!(!alive(orphan), "the helper that outlived the daemon was stopped");
    assert!(w.daemon_log().contains("outlived"), "{}", w.daemon_log());
    assert_eq!(w.tree("drizzle"), before, "rolled back");
    // Nothing is left that could write into the folder later.
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn held_connections_past_the_fd_limit_neither_spin_nor_flood_the_log() {
    let w = stand_in_world();
    w.push_ok();
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    // A daemon with 64 file descriptors, started as a command would start it (logging to its file).
    let log = w.state().join("dreamerd.log");
    let mut daemon = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec '{}' daemon --log-file '{}'",
            env!("CARGO_BIN_EXE_dreamerd"),
            log.display()
        ))
        .envs(w.cmd("dreamerd", &[]).get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .env("HOME", w.tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    w.wait_for("the daemon", || w.socket().exists());
    let held: Vec<UnixStream> = (0..120).filter_map(|_| UnixStream::connect(w.socket()).ok()).collect();
    assert_eq!(held.len(), 120, "connections are queued, not refused");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let size = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(size < 64 * 1024, "the log grew to {size} bytes while connections were held");
    drop(held);
    // Once they are gone it answers as before.
    w.wait_for("status to answer", || w.run("dreamerd", &["status", "--no-spawn"]).code == 0);
    let (code, _) = w.json("dreamerd", &["stop"]);
    assert_eq!(code, 0);
    daemon.wait().unwrap();
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let w = stand_in_world();
    w.push_ok();
    for i in 0..3000 {
        w.write(&format!("drizzle/many/{i:04}-a-rather-long-name-to-fill-the-pipe.sql"), "x");
    }
    w.wait_for("the daemon to see them", || violations(&w).as_array().unwrap().len() == 3000);
    let exe = env!("CARGO_BIN_EXE_dreamerd");
    for command in ["status", "check"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("'{exe}' {command} 2>err.txt | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"))
            .current_dir(&w.root)
            .envs(w.cmd("dreamerd", &[]).get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let err = w.read("err.txt");
        assert!(!err.contains("panicked"), "{command}: {err}");
        assert_eq!(code, "1", "{command} still says there are violations: {err}");
    }
}

#[test]
fn a_newline_in_a_file_name_forges_no_line() {
    let w = stand_in_world();
    w.push_ok();
    w.write("drizzle/evil\nWARN forged line.sql", "x");
    let run = w.run("dreamerd", &["check"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("evil\\nWARN forged line.sql"), "{}", run.stdout);
    assert!(!run.stdout.lines().any(|l| l.starts_with("WARN forged")), "{}", run.stdout);
    let (_, v) = w.json("dreamerd", &["check"]);
    assert_eq!(v["violations"][0]["path"], "evil\nWARN forged line.sql", "JSON keeps the real name");
    w.wait_for("the daemon's warning", || w.daemon_log().contains("forged"));
    let log = w.daemon_log();
    assert!(log.contains("evil\\nWARN forged"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("WARN forged")), "{log}");
    assert!(!log.contains("from="), "no empty from= on a created file: {log}");
}

#[test]
fn a_burst_of_twenty_thousand_files_is_two_log_lines_not_twenty_thousand() {
    let _burst = crate::support::one_burst_at_a_time();
    let w = stand_in_world();
    // A quiet period long enough that a loaded machine writing the files never pauses that long.
    w.config(
        "[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\ntimeout_secs = 5\n\
         [watch]\ndebounce_ms = 1000\n[notify]\ndesktop = false\n",
    );
    w.push_ok();
    let before = warn_lines(&w).len();
    for i in 0..20_000 {
        w.write(&format!("drizzle/burst/{i:05}.sql"), "x");
    }
    w.wait_for("20,000 violations", || violations(&w).as_array().unwrap().len() == 20_000);
    // The first file is warned about at once; the burst ends in one line with the count.
    w.wait_for("the burst's summary", || warn_lines(&w).iter().any(|l| l.contains("20000 file(s) differ")));
    let warns = warn_lines(&w);
    // Events the queue could not hold are one more line at most, however often it filled.
    let (lost, burst): (Vec<&String>, Vec<&String>) =
        warns[before..].iter().partition(|l| l.contains("file events were lost"));
    assert_eq!(burst.len(), 2, "warning lines for one burst: {warns:?}");
    assert!(lost.len() <= 1, "one line for the events lost: {warns:?}");
}

#[test]
fn a_follower_that_stops_reading_gets_lagged_and_the_queue_stays_bounded() {
    let w = stand_in_world();
    w.config(
        "[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\ntimeout_secs = 5\n\
         [watch]\ndebounce_ms = 5\n[notify]\ndesktop = false\n",
    );
    w.set_env("DREAMERD_CLIENT_QUEUE", "2");
    w.push_ok();
    // A follower that sends its request and then reads nothing.
    let mut follower = UnixStream::connect(w.socket()).unwrap();
    let mut hello = String::new();
    let mut reader = BufReader::new(follower.try_clone().unwrap());
    reader.read_line(&mut hello).unwrap();
    let request =
        format!("{{\"protocol\":{},\"cmd\":\"events\",\"follow\":true}}\n", dreamerd::ipc::PROTOCOL);
    follower.write_all(request.as_bytes()).unwrap();
    // Rounds of big violation events (100 files with long names each: an event carries at most 100) until the
    // socket and the queue are full many times over.
    let padding = "padding-".repeat(24);
    for round in 0..30 {
        for i in 0..100 {
            w.write(&format!("drizzle/r{round}/{i:03}-{padding}.sql"), "x");
        }
        w.wait_for("the round seen", || violations(&w).as_array().unwrap().len() == 100);
        fs::remove_dir_all(w.path(&format!("drizzle/r{round}"))).unwrap();
        w.wait_for("the round cleared", || violations(&w).as_array().unwrap().is_empty());
    }
    // One more event after the follower starts reading again, to carry the count.
    follower.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("\"lagged\"") {
                let _ = tx.send(line.clone());
                return;
            }
            line.clear();
        }
    });
    // Events keep coming until the count is carried (it rides on the next event that finds room).
    let mut lagged = None;
    for i in 0..200 {
        w.write(&format!("drizzle/one-more-{i}.sql"), "x");
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(300)) {
            lagged = Some(line);
            break;
        }
    }
    let lagged = lagged.expect("a lagged event");
    let v: Value = serde_json::from_str(&lagged).unwrap();
    assert!(v["event"]["missed"].as_u64().unwrap() > 0, "{v}");
    // The daemon answers everyone else meanwhile.
    assert_eq!(w.run("dreamerd", &["status"]).code, 1);
    drop(follower);
}

/// A user made for one test, removed with it.
struct ThrowawayUser {
    name: String,
    uid: u32,
    home: PathBuf,
}

impl ThrowawayUser {
    fn new(tag: &str) -> Option<ThrowawayUser> {
        if rustix_euid() != 0 {
            return None;
        }
        let name = format!("drd{tag}{}", std::process::id() % 100_000);
        let tmp = std::env::temp_dir().join(format!("{name}-home"));
        let _ = fs::remove_dir_all(&tmp);
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--home-dir"])
            .arg(&tmp)
            .args(["--shell", "/bin/sh", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let id = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid: u32 = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
        fs::create_dir_all(&tmp).unwrap();
        std::os::unix::fs::chown(&tmp, Some(uid), Some(uid)).unwrap();
        Some(ThrowawayUser { name, uid, home: tmp })
    }

    /// A command run as this user, with a clean environment.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.uid),
            "--clear-groups",
            "--",
            program,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &self.home)
        .current_dir(&self.home);
        c
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ = fs::remove_dir_all(&self.home);
        let _ = fs::remove_dir_all(format!("/run/user/{}", self.uid));
        let _ = fs::remove_dir_all(format!("/tmp/dreamerd-{}", self.uid));
    }
}

fn rustix_euid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_command_from_cron_without_xdg_runtime_dir_finds_the_same_daemon() {
    let Some(user) = ThrowawayUser::new("cron") else {
        eprintln!("skipped: needs root and useradd to run as a throwaway user");
        return;
    };
    // The user's session has /run/user/<uid>, as logind makes it.
    let run_user = PathBuf::from(format!("/run/user/{}", user.uid));
    fs::create_dir_all(&run_user).unwrap();
    std::os::unix::fs::chown(&run_user, Some(user.uid), Some(user.uid)).unwrap();
    fs::set_permissions(&run_user, fs::Permissions::from_mode(0o700)).unwrap();
    let exe = env!("CARGO_BIN_EXE_dreamerd");
    // A dreamerd binary the user can run (the build folder may not be reachable for them).
    let bin = user.home.join("dreamerd");
    fs::copy(exe, &bin).unwrap();
    let pid_of = |out: std::process::Output| -> i64 {
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        v["daemon"]["pid"].as_i64().unwrap()
    };
    // From a login shell.
    let session = pid_of(
        user.cmd(bin.to_str().unwrap())
            .args(["status", "--all", "--json"])
            .env("XDG_RUNTIME_DIR", &run_user)
            .output()
            .unwrap(),
    );
    // From cron: no XDG_RUNTIME_DIR, and a TMPDIR of its own.
    let tmpdir = user.home.join("tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    std::os::unix::fs::chown(&tmpdir, Some(user.uid), Some(user.uid)).unwrap();
    let cron = pid_of(
        user.cmd(bin.to_str().unwrap())
            .args(["status", "--all", "--json", "--no-spawn"])
            .env("TMPDIR", &tmpdir)
            .output()
            .unwrap(),
    );
    assert_eq!(session, cron, "one daemon for the user, found from cron too");
    let stop = user.cmd(bin.to_str().unwrap()).arg("stop").output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
}

#[test]
fn the_migration_folder_replaced_by_a_file_is_said_so() {
    let w = stand_in_world();
    w.push_ok();
    fs::remove_dir_all(w.path("drizzle")).unwrap();
    w.write("drizzle", "not a folder");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1);
    let dot = v["violations"].as_array().unwrap().iter().find(|x| x["path"] == ".").cloned().unwrap();
    assert_eq!(dot["file_type"], "file", "{v}");
    let run = w.run("dreamerd", &["check"]);
    assert!(run.stdout.contains("the folder itself (now a regular file)"), "{}", run.stdout);
}

#[test]
fn probes_and_clients_that_leave_early_are_no_warning() {
    let w = stand_in_world();
    w.push_ok();
    let before = warn_lines(&w).len();
    // Each leaves with the hello unread, as `dreamerd stop` and the spawn check do: the daemon's read then fails
    // with a reset, which is a client leaving, not something to warn about.
    for _ in 0..5 {
        let probe = UnixStream::connect(w.socket()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(probe);
    }
    assert_eq!(w.run("dreamerd", &["status"]).code, 0);
    // Let the daemon finish with the probes (not an assertion on time: a late line would only hide a failure).
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(warn_lines(&w).len(), before, "{}", w.daemon_log());
}

#[test]
fn the_daemon_log_is_rotated_by_size() {
    let w = stand_in_world();
    w.config(
        "[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\ntimeout_secs = 5\n\
         [log]\nmax_bytes = 2048\nfiles = 2\n",
    );
    w.push_ok();
    for i in 0..30 {
        w.write(&format!("drizzle/x{i}.sql"), "x");
        w.wait_for("seen", || violations(&w).as_array().unwrap().len() == 1);
        fs::remove_file(w.path(&format!("drizzle/x{i}.sql"))).unwrap();
        w.wait_for("cleared", || violations(&w).as_array().unwrap().is_empty());
    }
    let log = w.state().join("dreamerd.log");
    assert!(fs::metadata(&log).unwrap().len() <= 2048 + 1024);
    assert!(w.state().join("dreamerd.log.1").exists());
    assert!(w.state().join("dreamerd.log.2").exists());
    assert!(!w.state().join("dreamerd.log.3").exists());
}

/// A quarantine folder of the given age.
fn old_quarantine(w: &World, stamp: &str) -> PathBuf {
    let q = w.state().join("quarantine/proj-x").join(format!("{stamp}-restore"));
    fs::create_dir_all(q.join("drizzle")).unwrap();
    fs::write(q.join("drizzle/mine.sql"), "hand edit").unwrap();
    q
}

#[test]
fn prune_removes_only_what_is_older_than_the_retention_age() {
    let w = stand_in_world();
    w.push_ok();
    let old = old_quarantine(&w, "20200101T000000Z");
    let young = old_quarantine(&w, &dreamerd::engine::compact_timestamp(std::time::SystemTime::now()));
    let (code, v) = w.json("dreamerd", &["prune", "--dry-run"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["removed"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["removed"][0]["path"], old.to_str().unwrap());
    assert!(old.exists(), "a dry run removes nothing");
    let (code, v) = w.json("dreamerd", &["prune"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["kept"], 1);
    assert!(!old.exists());
    assert!(young.exists(), "younger than the retention age: kept");
}

#[test]
fn a_replaced_tree_that_is_a_stored_push_is_not_kept_twice() {
    let w = stand_in_world();
    let first = w.push_ok();
    w.push_ok();
    let (code, v) = w.json("dreamer", &["database", "restore", "--push", &first]);
    assert_eq!(code, 0, "{v}");
    assert!(v["quarantine"].is_null(), "the replaced tree is the latest push, in the store: {v}");
    // A hand edit is not a stored push: it is kept.
    w.write("drizzle/mine.sql", "hand edit");
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    let q = PathBuf::from(v["quarantine"].as_str().unwrap());
    assert_eq!(fs::read_to_string(q.join("drizzle/mine.sql")).unwrap(), "hand edit");
}

/// Copies what dreamerd 0.1.0 wrote (tests/formats/0.1.0) into this world: its store, its state directory moved to
/// this project's checkout key, and the project's files.
fn release_world() -> World {
    let w = World::empty();
    w.stand_ins(GENERATE, MIGRATE_OK);
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats/0.1.0");
    let key = dreamerd::project::Project::legacy(&w.root).local_key();
    let copy = |from: &Path, to: &Path| {
        for (rel, bytes) in tree_of(from) {
            let dest = to.join(rel.replace("proj-9bd3e8aaccdc", &key));
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(dest, bytes).unwrap();
        }
    };
    copy(&release.join("store"), &w.store());
    copy(&release.join("state"), &w.state());
    copy(&release.join("project"), &w.root);
    // The release project's drizzle.config.ts needs drizzle-kit's loader to run; these worlds have no node_modules.
    fs::remove_file(w.path("drizzle.config.ts")).unwrap();
    w.write("drizzle.config.json", CONFIG_JSON);
    let list = w.state().join("watchlist.json");
    fs::write(&list, fs::read_to_string(&list).unwrap().replace("/tmp/fx/proj", w.root.to_str().unwrap()))
        .unwrap();
    w
}

fn set_phase(w: &World, phase: &str) {
    let key = dreamerd::project::Project::legacy(&w.root).local_key();
    let path = w.state().join("ops").join(key).join("journal.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"phase\": \"generate\"", &format!("\"phase\": \"{phase}\""));
    fs::write(path, text).unwrap();
}

#[test]
fn what_the_first_release_wrote_is_read_and_its_interrupted_push_rolled_back() {
    let w = release_world();
    let before = w.tree("drizzle");
    // Generate phase: the push is rolled back (drizzle/ was as before the push), the history is intact.
    w.write("drizzle/0002_step.sql", "what generate had written");
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["interrupted"]["op"], "push", "{v}");
    assert_eq!(v["interrupted"]["phase"], "generate");
    let (code, history) = w.json("dreamerd", &["history"]);
    assert_eq!(code, 0, "{history}");
    assert_eq!(history["pushes"].as_array().unwrap().len(), 2);
    w.wait_for("recovery by the daemon", || recovered(&w));
    assert_eq!(w.tree("drizzle"), before);
    assert_eq!(w.status()["state"], "clean");
    // The formats are recorded from now on, and a push builds on the old history.
    w.push_ok();
    let (_, history) = w.json("dreamerd", &["history"]);
    assert_eq!(history["pushes"].as_array().unwrap().len(), 3);
    assert!(w.store().join("format.json").exists());
    assert!(w.state().join("format.json").exists());
}

/// The release world as a push left it in the middle of migrate: generate had written migration 0002, and the
/// database applied 0000 and 0001 (and 0002 too when `applied`).
fn release_world_in_migrate(applied: bool) -> World {
    let w = release_world();
    w.write("drizzle.config.json", CONFIG_JSON_DB);
    let out = Command::new("sh").arg("gen.sh").current_dir(&w.root).output().unwrap();
    assert!(out.status.success());
    let db = rusqlite::Connection::open(w.path("local.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE __drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at numeric)",
    )
    .unwrap();
    for n in 0..if applied { 3 } else { 2 } {
        let sql = fs::read(w.path(&format!("drizzle/000{n}_step.sql"))).unwrap();
        db.execute(
            "INSERT INTO __drizzle_migrations (hash, created_at) VALUES (?1, ?2)",
            rusqlite::params![dreamerd::drizzle::database::sql_hash(&sql), 1_700_000_000_000i64 + n],
        )
        .unwrap();
    }
    w
}

#[test]
fn a_release_journal_in_migrate_is_decided_by_the_database() {
    // Nothing applied: rolled back to the tree from before the push.
    let w = release_world_in_migrate(false);
    let before = tree_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats/0.1.0/project/drizzle"));
    set_phase(&w, "migrate");
    w.wait_for("recovery", || recovered(&w));
    assert_eq!(w.tree("drizzle"), before);
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"].as_array().unwrap().len(), 2, "{h}");
    drop(w);

    // All applied: the push is completed and recorded as it stands.
    let w = release_world_in_migrate(true);
    set_phase(&w, "migrate");
    let generated = w.tree("drizzle");
    w.wait_for("recovery", || recovered(&w));
    assert_eq!(w.tree("drizzle"), generated);
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"].as_array().unwrap().len(), 3, "{h}");
    assert_eq!(w.status()["state"], "clean");
}

#[test]
fn a_release_journal_in_backup_or_swap_is_finished() {
    // backup: migrate had succeeded, so the push is completed without asking the database.
    let w = release_world();
    let out = Command::new("sh").arg("gen.sh").current_dir(&w.root).output().unwrap();
    assert!(out.status.success());
    set_phase(&w, "backup");
    let generated = w.tree("drizzle");
    w.wait_for("recovery", || recovered(&w));
    assert_eq!(w.tree("drizzle"), generated);
    let (_, h) = w.json("dreamerd", &["history"]);
    assert_eq!(h["pushes"].as_array().unwrap().len(), 3, "{h}\n{}", w.daemon_log());
    drop(w);

    // swap: the new tree waits complete beside drizzle/, which holds a hand edit: the swap is finished and the
    // edit kept.
    let w = release_world();
    let key = dreamerd::project::Project::legacy(&w.root).local_key();
    let path = w.state().join("ops").join(&key).join("journal.json");
    let mut journal: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    journal["phase"] = json!("swap");
    journal["target"] = journal["before"].clone();
    fs::write(&path, serde_json::to_string_pretty(&journal).unwrap()).unwrap();
    let target = w.tree("drizzle");
    for (rel, bytes) in &target {
        let dest = w.path(&format!(".dreamerd-tmp/new/{rel}"));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(dest, bytes).unwrap();
    }
    w.write("drizzle/mine.sql", "hand edit");
    w.wait_for("recovery", || recovered(&w));
    assert_eq!(w.tree("drizzle"), target);
    assert!(!w.path(".dreamerd-tmp").exists());
    let kept: Vec<_> =
        tree_of(&w.state().join("quarantine")).into_keys().filter(|k| k.ends_with("mine.sql")).collect();
    assert_eq!(kept.len(), 1, "the hand edit is kept in quarantine");
}

#[test]
fn an_unreadable_or_newer_journal_keeps_everything_and_says_so() {
    let w = release_world();
    let key = dreamerd::project::Project::legacy(&w.root).local_key();
    let ops = w.state().join("ops").join(&key);
    for (journal, expect) in [
        ("{ this is not json".to_string(), "cannot be read"),
        (
            fs::read_to_string(ops.join("journal.json")).unwrap().replace("\"generate\"", "\"frobnicate\""),
            "cannot be read",
        ),
        ("{\"format\": 9, \"op\": \"push\"}".to_string(), "newer dreamerd"),
    ] {
        fs::write(ops.join("journal.json"), &journal).unwrap();
        let before = tree_of(&w.state());
        let (code, v) = w.json("dreamerd", &["check"]);
        assert_eq!(code, 1, "{v}");
        assert!(v["interrupted"]["message"].as_str().unwrap().contains(expect), "{v}");
        let run = w.run("dreamerd", &["restore"]);
        assert_ne!(run.code, 0, "restore refuses while the journal cannot be read");
        assert!(run.stderr.contains(expect), "{}", run.stderr);
        assert!(ops.join("before-push.tar.zst").exists(), "the tree from before the push is kept");
        let after = tree_of(&w.state());
        assert_eq!(
            before.keys().filter(|k| k.starts_with("ops/")).collect::<Vec<_>>(),
            after.keys().filter(|k| k.starts_with("ops/")).collect::<Vec<_>>()
        );
        assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    }
}

#[test]
fn formats_newer_than_this_dreamerd_are_refused_by_name() {
    let w = stand_in_world();
    w.push_ok();
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    fs::write(w.store().join("format.json"), "{\"format\": 7}").unwrap();
    let run = w.run("dreamerd", &["history"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("format 7"), "{}", run.stderr);
    fs::write(w.store().join("format.json"), "{\"format\": 1}").unwrap();
    assert_eq!(w.run("dreamerd", &["stop"]).code, 0);
    fs::write(w.state().join("watchlist.json"), "{\"format\": 5, \"projects\": []}").unwrap();
    let mut daemon = w.cmd("dreamerd", &["daemon"]);
    let exe = daemon.get_program().to_owned();
    let run: crate::support::Run = Command::new("timeout")
        .arg("30")
        .arg(exe)
        .arg("daemon")
        .envs(daemon.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .output()
        .unwrap()
        .into();
    let _ = &mut daemon;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("format 5"), "{}", run.stderr);
    assert!(fs::read_to_string(w.state().join("watchlist.json")).unwrap().contains("\"format\": 5"));
}

#[test]
fn a_backup_that_cannot_be_kept_anywhere_keeps_the_crash_journal() {
    let w = stand_in_world();
    w.push_ok();
    let project_id = w.read(".dreamerd.toml").split('"').nth(1).unwrap().to_string();
    let pushes = w.store().join("projects").join(&project_id).join("pushes");
    let pending = w.state().join("pending");
    fs::create_dir_all(&pending).unwrap();
    struct Immutable(Vec<PathBuf>);
    impl Drop for Immutable {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = Command::new("chattr").arg("-i").arg(p).status();
            }
        }
    }
    let mut guard = Immutable(Vec::new());
    for p in [&pushes, &pending] {
        if !Command::new("chattr").arg("+i").arg(p).status().is_ok_and(|s| s.success()) {
            eprintln!("skipped: chattr +i is not supported here");
            return;
        }
        guard.0.push(p.clone());
    }
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stage"], "backup");
    let (_, status) = w.json("dreamerd", &["check"]);
    assert_eq!(status["interrupted"]["phase"], "backup", "the journal stays: {status}");
    drop(guard);
    // Once the store takes writes again, the next operation completes the push.
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    let (_, h) = w.json("dreamerd", &["history"]);
    assert!(h["pushes"].as_array().unwrap().len() >= 2, "{h}");
    let (code, check) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 0, "{check}");
}

#[test]
fn a_migrate_killed_inside_its_transaction_is_rolled_back_by_what_the_database_says() {
    // migrate is a python script holding a write transaction on the SQLite database (rollback-journal mode) when
    // the daemon and it are killed: the database is left with a hot journal that a read-only open cannot replay.
    let w = World::empty();
    w.write("drizzle.config.json", CONFIG_JSON_DB);
    let migrate = r#"python3 - <<'PY'
import sqlite3, os, time, json, hashlib
db = sqlite3.connect('local.db', isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS __drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at numeric)")
entries = json.load(open('drizzle/meta/_journal.json'))['entries']
done = {r[0] for r in db.execute('SELECT created_at FROM __drizzle_migrations')}
pending = [e for e in entries if e['when'] not in done]
db.execute('BEGIN IMMEDIATE')
for e in pending:
    sql = open('drizzle/%s.sql' % e['tag'], 'rb').read()
    db.execute('INSERT INTO __drizzle_migrations (hash, created_at) VALUES (?, ?)', (hashlib.sha256(sql).hexdigest(), e['when']))
    db.execute('CREATE TABLE big%d (x blob)' % e['idx'])
    db.execute('INSERT INTO big%d VALUES (randomblob(3000000))' % e['idx'])
if os.path.exists('hang'):
    open('mig.pid', 'w').write(str(os.getpid()))
    time.sleep(300)
db.execute('COMMIT')
print('migrated')
PY
"#;
    w.stand_ins(GENERATE, migrate);
    w.push_ok();
    let before = w.tree("drizzle");
    w.write("hang", "");
    w.push_and_crash("mig.pid");
    assert!(w.path("local.db-journal").exists(), "a hot journal is left");
    fs::remove_file(w.path("hang")).unwrap();
    let (code, v) = w.json("dreamer", &["database", "restore", "--dry-run"]);
    assert_eq!(code, 0, "{v}");
    w.wait_for("recovery", || recovered(&w));
    assert_eq!(w.tree("drizzle"), before, "the migrate did not commit: rolled back");
    let log = w.daemon_log();
    assert!(log.contains("rolling back a push whose migrate did not apply"), "{log}");
}

#[test]
fn a_socket_or_fifo_in_place_of_the_database_is_never_opened() {
    let w = World::empty();
    w.write("drizzle.config.json", CONFIG_JSON_DB);
    w.stand_ins(GENERATE, MIGRATE_OK);
    w.push_ok();
    mkfifo(&w.path("local.db"));
    let (code, v) = w.json("dreamerd", &["check"]);
    assert_eq!(code, 1, "{v}");
    let drift = v["drift"].as_array().unwrap();
    assert!(
        drift
            .iter()
            .any(|d| d["code"] == "database-unreadable" && d["message"].as_str().unwrap().contains("fifo")),
        "{v}"
    );
}
