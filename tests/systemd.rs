//! Under a real `systemd --user` manager (issue 13), run for a throwaway user, as a user's manager runs: readiness,
//! socket activation, restarts after a crash and after a stalled loop (the watchdog), reload, a clean stop, journald
//! fields, a daemon of another protocol restarted through systemd, and the strict sandbox with its probe.
//!
//! These machines have no systemd as PID 1. The manager gets what PID 1 would have made for it, in a private mount
//! namespace (`unshare -m`): `/run/systemd/system` (so it runs as a user manager), `/run/systemd/unit-root` (where it
//! builds namespaces), a journald of its own, a delegated control group, and `/run/user/UID`. CI runs as root, and
//! root's manager is privileged: the namespace options would pass there and fail for real users, so the manager is
//! a plain user's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Run, fixture_dir};

/// Sets up what PID 1 would have, then becomes the user's manager. Arguments: user, private folder, runtime folder,
/// control group name, and whether to make `/run/systemd/unit-root`.
const SETUP: &str = r#"
set -eu
U=$1; P=$2; RT=$3; CG=$4; UNIT_ROOT=$5
mount --make-rprivate /
mkdir -p "$P/run-systemd/system" "$P/run-log"
[ "$UNIT_ROOT" = yes ] && mkdir -p "$P/run-systemd/unit-root"
mount --bind "$P/run-systemd" /run/systemd
mkdir -p /run/log
mount --bind "$P/run-log" /run/log
/lib/systemd/systemd-journald > "$P/journald.log" 2>&1 &
echo $! > "$P/journald.pid"
i=0
while [ ! -S /run/systemd/journal/stdout ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
for h in unified systemd; do
  if [ -d "/sys/fs/cgroup/$h" ]; then
    mkdir -p "/sys/fs/cgroup/$h/$CG"
    chown -R "$U" "/sys/fs/cgroup/$h/$CG"
    echo $$ > "/sys/fs/cgroup/$h/$CG/cgroup.procs"
  fi
done
exec runuser -u "$U" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$(getent passwd "$U" | cut -d: -f6)" \
  USER="$U" XDG_RUNTIME_DIR="$RT" SYSTEMD_LOG_TARGET=console /lib/systemd/systemd --user
"#;

/// A user's service manager, and the user's world: home, runtime folder, the dreamerd binary, a drizzle project.
struct Manager {
    user: String,
    home: PathBuf,
    runtime: PathBuf,
    private: tempfile::TempDir,
    cgroup: String,
    shell: Child,
    /// The dreamerd binary the user runs (a copy where the build's own is out of the user's reach).
    bin: PathBuf,
    /// The fixture's node_modules, as the user can reach it.
    modules: PathBuf,
}

/// Whether these tests can run: as root, with the manager's binaries. Outside CI they are skipped, said loudly,
/// where not; in CI that is a failure.
fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools =
        Path::new("/lib/systemd/systemd").exists() && Path::new("/lib/systemd/systemd-journald").exists();
    if root && tools {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the systemd tests: root {root}, systemd installed {tools}"
    );
    eprintln!("SKIPPED: the systemd --user tests need root and systemd (scripts/test installs it)");
    false
}

fn sh(cmd: &str, args: &[&str]) -> Run {
    Run::from(Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}")))
}

/// Whether every folder above `path` lets others through (so the test user reaches it).
fn reachable_by_others(path: &Path) -> bool {
    path.ancestors().skip(1).all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

impl Manager {
    fn start(user: &str, unit_root: bool) -> Manager {
        // Two tests may add their users at once: useradd refuses while the other holds /etc/passwd's lock.
        for attempt in 0.. {
            if sh("id", &["-u", user]).code == 0 {
                break;
            }
            let made = sh("useradd", &["--create-home", "--shell", "/bin/sh", user]);
            assert!(made.code == 0 || attempt < 50, "useradd: {made:?}");
            if made.code != 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let uid: u32 = sh("id", &["-u", user]).stdout.trim().parse().unwrap();
        let home = PathBuf::from(sh("getent", &["passwd", user]).stdout.split(':').nth(5).unwrap());
        // A fresh home every run: nothing of a previous run (units, state, projects) is found again.
        let _ = fs::remove_dir_all(&home);
        fs::create_dir_all(&home).unwrap();
        // What logind makes: /run/user/UID, the user's, 0700.
        let runtime = PathBuf::from(format!("/run/user/{uid}"));
        let _ = fs::remove_dir_all(&runtime);
        fs::create_dir_all(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        let bin_dir = home.join("bin");
        fs::create_dir_all(&bin_dir).unwrap();
        let bin = bin_dir.join("dreamerd");
        fs::copy(env!("CARGO_BIN_EXE_dreamerd"), &bin).unwrap();
        let modules = fixture_dir().join("node_modules");
        // Under /tmp it would be hidden from a service with PrivateTmp= (the strict sandbox).
        let modules = if reachable_by_others(&modules) && !modules.starts_with("/tmp") {
            modules
        } else {
            // Named node_modules, so that node finds each package's dependencies beside it.
            let copy = home.join("fixture/node_modules");
            fs::create_dir_all(copy.parent().unwrap()).unwrap();
            assert_eq!(sh("cp", &["-a", modules.to_str().unwrap(), copy.to_str().unwrap()]).code, 0);
            copy
        };
        assert_eq!(sh("chown", &["-R", user, home.to_str().unwrap(), runtime.to_str().unwrap()]).code, 0);
        let private = tempfile::tempdir().unwrap();
        let cgroup = format!("{user}-{}", std::process::id());
        let shell = Command::new("unshare")
            .args(["-m", "sh", "-c", SETUP, "setup", user])
            .arg(private.path())
            .arg(&runtime)
            .arg(&cgroup)
            .arg(if unit_root { "yes" } else { "no" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(private.path().join("manager.log")).unwrap())
            .spawn()
            .unwrap();
        let m = Manager { user: user.into(), home, runtime, private, cgroup, shell, bin, modules };
        m.wait_for("the user manager to run", || {
            // `is-system-running` would say "offline" out here, where /run/systemd/system does not exist.
            let state = m.systemctl(&["show", "-p", "SystemState", "--value"]).stdout;
            matches!(state.trim(), "running" | "degraded")
        });
        m
    }

    /// Runs `program` as the user, in `dir`, with the environment of a login session.
    fn cmd(&self, dir: &Path, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.user, "--", "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.user))
            .arg(format!("XDG_RUNTIME_DIR={}", self.runtime.display()))
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, dir: &Path, program: &str, args: &[&str]) -> Run {
        Run::from(self.cmd(dir, program, args).output().unwrap())
    }

    fn dreamerd(&self, dir: &Path, args: &[&str]) -> Run {
        self.run(dir, self.bin.to_str().unwrap(), args)
    }

    fn json(&self, dir: &Path, args: &[&str]) -> (i32, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let run = self.dreamerd(dir, &all);
        let value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {run:?}"));
        (run.code, value)
    }

    fn systemctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--user"];
        all.extend_from_slice(args);
        self.run(&self.home, "systemctl", &all)
    }

    /// `systemctl --user show -p NAME --value dreamerd.service`.
    fn show(&self, property: &str) -> String {
        self.systemctl(&["show", "-p", property, "--value", "dreamerd.service"]).stdout.trim().to_string()
    }

    /// What systemd and the journal say about the service, for a failed assertion.
    fn diagnose(&self) -> String {
        let status = self.systemctl(&["status", "--no-pager", "dreamerd.service"]).stdout;
        let dir = self.private.path().join("run-log/journal");
        let journal =
            sh("journalctl", &["--directory", dir.to_str().unwrap(), "--no-pager", "-n", "40"]).stdout;
        format!("{status}\n--- journal ---\n{journal}")
    }

    fn assert_active(&self) {
        assert_eq!(self.show("ActiveState"), "active", "{}", self.diagnose());
    }

    fn main_pid(&self) -> u32 {
        self.show("MainPID").parse().unwrap()
    }

    fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; manager log: {}",
                fs::read_to_string(self.private.path().join("manager.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the service runs again, under another pid than `old`.
    fn wait_restarted(&self, old: u32, why: &str) -> u32 {
        self.wait_for(why, || {
            let pid = self.main_pid();
            pid != 0 && pid != old && self.show("ActiveState") == "active"
        });
        self.main_pid()
    }

    /// A drizzle project of the user's, in their home, with the real drizzle-kit.
    fn project(&self, name: &str) -> PathBuf {
        let root = self.home.join(name);
        fs::create_dir_all(root.join("src")).unwrap();
        for f in ["package.json", "drizzle.config.ts", "src/schema.ts"] {
            fs::copy(fixture_dir().join(f), root.join(f)).unwrap();
        }
        std::os::unix::fs::symlink(&self.modules, root.join("node_modules")).unwrap();
        assert_eq!(sh("chown", &["-R", &self.user, root.to_str().unwrap()]).code, 0);
        root
    }

    fn unit_dir(&self) -> PathBuf {
        self.home.join(".config/systemd/user")
    }

    /// Adds a drop-in to dreamerd.service (as the user would) and reloads the manager.
    fn drop_in(&self, name: &str, text: &str) {
        let dir = self.unit_dir().join("dreamerd.service.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), text).unwrap();
        assert_eq!(sh("chown", &["-R", &self.user, self.home.join(".config").to_str().unwrap()]).code, 0);
        assert_eq!(self.systemctl(&["daemon-reload"]).code, 0);
    }

    fn remove_drop_in(&self, name: &str) {
        fs::remove_file(self.unit_dir().join("dreamerd.service.d").join(name)).unwrap();
        assert_eq!(self.systemctl(&["daemon-reload"]).code, 0);
    }

    /// The journal entries dreamerd wrote, as JSON objects, that have `FIELD=value` for each of `matches`.
    fn journal(&self, matches: &[&str]) -> Vec<Value> {
        let mut args = vec!["--directory", self.private.path().to_str().unwrap(), "-o", "json", "--no-pager"];
        let dir = self.private.path().join("run-log/journal");
        args[1] = dir.to_str().unwrap();
        args.push("SYSLOG_IDENTIFIER=dreamerd");
        args.extend_from_slice(matches);
        let out = Command::new("journalctl").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Drop for Manager {
    /// Stops the manager (and so its units), journald, and whatever is left in the control group.
    fn drop(&mut self) {
        let _ = self.systemctl(&["stop", "dreamerd.socket", "dreamerd.service"]);
        let pids = |cg: &str| -> Vec<String> {
            let mut out = Vec::new();
            for h in ["unified", "systemd"] {
                let top = PathBuf::from(format!("/sys/fs/cgroup/{h}/{cg}"));
                let find = sh("find", &[top.to_str().unwrap(), "-name", "cgroup.procs"]);
                for file in find.stdout.lines() {
                    out.extend(fs::read_to_string(file).unwrap_or_default().lines().map(String::from));
                }
            }
            out
        };
        for pid in pids(&self.cgroup) {
            let _ = sh("kill", &["-TERM", &pid]);
        }
        let _ = self.shell.wait();
        for pid in pids(&self.cgroup) {
            let _ = sh("kill", &["-KILL", &pid]);
        }
        if let Ok(pid) = fs::read_to_string(self.private.path().join("journald.pid")) {
            let _ = sh("kill", &["-KILL", pid.trim()]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for h in ["unified", "systemd"] {
            let top = format!("/sys/fs/cgroup/{h}/{}", self.cgroup);
            let _ = sh("find", &[&top, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"]);
        }
        let _ = fs::remove_dir_all(&self.runtime);
    }
}

/// The exposure `systemd-analyze security --offline` gives the installed unit (with its drop-ins).
fn exposure(m: &Manager) -> f64 {
    let unit = m.unit_dir().join("dreamerd.service");
    let run =
        m.run(&m.home, "systemd-analyze", &["security", "--user", "--offline=yes", unit.to_str().unwrap()]);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{run:?}"));
    line.split(": ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn under_a_real_user_manager_the_service_starts_by_socket_restarts_reloads_and_logs_to_the_journal() {
    if !can_run() {
        return;
    }
    let m = Manager::start("dreamerd-sd1", true);
    let root = m.project("app");
    let run = m.dreamerd(&root, &["service", "install", "--socket", "--now"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(m.systemctl(&["is-active", "dreamerd.socket"]).stdout.trim(), "active");
    assert_eq!(m.show("ActiveState"), "inactive", "socket activation: nothing runs before the first command");

    // The first command is answered by the service systemd starts for it: no daemon of the command's own.
    let (code, v) = m.json(&root, &["status", "--no-spawn"]);
    assert_eq!(code, 0, "{v}");
    let pid = m.main_pid();
    assert_eq!(v["daemon"]["pid"], pid, "answered by the service: {v}");
    assert_eq!(m.show("ActiveState"), "active", "READY=1 reached systemd");
    assert!(m.show("StatusText").contains("project(s)"), "STATUS= lines: {}", m.show("StatusText"));
    assert!(
        !m.home.join(".local/state/dreamerd/dreamerd.log").exists(),
        "no daemon was spawned in the background"
    );

    // A push through the service runs the real drizzle-kit under the unit's hardening.
    let run = m.dreamerd(&root, &["push"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(m.main_pid(), pid);

    // A hand edit is a warning in the journal, with fields a user can filter on.
    let sql = fs::read_dir(root.join("drizzle"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension() == Some("sql".as_ref()));
    let sql = sql.expect("drizzle-kit wrote a migration").path();
    let name = sql.file_name().unwrap().to_str().unwrap().to_string();
    let mut text = fs::read_to_string(&sql).unwrap();
    text.push_str("\n-- edited by hand\n");
    fs::write(&sql, text).unwrap();
    let project = format!("PROJECT={}", root.display());
    m.wait_for("the violation in the journal", || !m.journal(&[&project, "KIND=modified"]).is_empty());
    let entry = &m.journal(&[&project, "KIND=modified"])[0];
    assert_eq!(entry["PATH"], name, "{entry}");
    assert_eq!(entry["PRIORITY"], "4", "a warning: {entry}");
    assert!(entry["MESSAGE"].as_str().unwrap().contains("changed"), "{entry}");
    assert!(entry.get("F_PROJECT").is_none(), "fields are not prefixed");

    // SIGHUP (systemctl reload) reads the configuration again and keeps the daemon, its watches and the watch list.
    let config = m.home.join(".config/dreamerd/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, "[watch]\nscan_limit_secs = 7\n").unwrap();
    assert_eq!(sh("chown", &["-R", &m.user, m.home.join(".config").to_str().unwrap()]).code, 0);
    assert_eq!(m.systemctl(&["reload", "dreamerd.service"]).code, 0);
    m.wait_for("the reload event", || {
        m.dreamerd(&root, &["events", "--json"]).stdout.contains("config-reloaded")
    });
    let events = m.dreamerd(&root, &["events", "--json"]).stdout;
    assert!(events.contains(r#""ok":true"#) && events.contains(config.to_str().unwrap()), "{events}");
    assert_eq!(m.main_pid(), pid, "a reload is no restart");
    // A configuration broken since is refused; the daemon goes on with the one it has.
    fs::write(&config, "[watch\n").unwrap();
    assert_eq!(m.systemctl(&["reload", "dreamerd.service"]).code, 0);
    m.wait_for("the failed reload event", || {
        m.dreamerd(&root, &["events", "--json"]).stdout.contains(r#""ok":false"#)
    });
    fs::remove_file(&config).unwrap();
    assert_eq!((m.main_pid(), m.show("ActiveState").as_str()), (pid, "active"));
    let (_, v) = m.json(&root, &["status", "--no-spawn"]);
    assert_eq!(v["projects"][0]["state"], "violated", "still watched after the reloads: {v}");

    // `dreamerd stop` with systemd's socket: the daemon exits cleanly, the command waits for the process (the socket
    // stays systemd's), and the next command starts the service again.
    let run = m.dreamerd(&root, &["stop"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!((m.show("ActiveState").as_str(), m.show("Result").as_str()), ("inactive", "success"));
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the daemon is gone when stop returns");
    let (code, v) = m.json(&root, &["status", "--no-spawn"]);
    assert_eq!(code, 1, "answered again, by socket activation (the project is violated): {v}");
    let pid = m.main_pid();
    assert_eq!(v["daemon"]["pid"], pid, "{v}");

    // kill -9: systemd starts it again (Restart=on-failure), and the watch list comes back with it.
    assert_eq!(sh("kill", &["-KILL", &pid.to_string()]).code, 0);
    let pid = m.wait_restarted(pid, "a restart after kill -9");
    assert!(m.show("NRestarts").parse::<u32>().unwrap() >= 1);
    let (_, v) = m.json(&root, &["status", "--no-spawn"]);
    assert_eq!(v["daemon"]["pid"], pid, "{v}");

    // A daemon of another protocol that systemd runs is restarted through systemd, not replaced by a spawned one.
    m.drop_in("protocol.conf", "[Service]\nEnvironment=DREAMERD_TEST_ADVERTISE_PROTOCOL=3\n");
    assert_eq!(m.systemctl(&["restart", "dreamerd.service"]).code, 0);
    let old = m.main_pid();
    m.remove_drop_in("protocol.conf");
    let (code, v) = m.json(&root, &["status"]);
    assert_eq!(code, 1, "answered (the project is violated): {v}");
    let pid = m.main_pid();
    assert_ne!(pid, old, "restarted");
    assert_eq!(v["daemon"]["pid"], pid, "the restarted service answered: {v}");
    assert!(!m.home.join(".local/state/dreamerd/dreamerd.log").exists(), "no daemon of the command's own");

    // The watchdog: a daemon whose loop stops (SIGSTOP) stops pinging and is restarted.
    m.drop_in("watchdog.conf", "[Service]\nWatchdogSec=2\nTimeoutAbortSec=2\n");
    assert_eq!(m.systemctl(&["restart", "dreamerd.service"]).code, 0);
    let pid = m.main_pid();
    let restarts: u32 = m.show("NRestarts").parse().unwrap();
    assert_eq!(sh("kill", &["-STOP", &pid.to_string()]).code, 0);
    m.wait_restarted(pid, "the watchdog's restart");
    assert!(m.show("NRestarts").parse::<u32>().unwrap() > restarts);
    m.remove_drop_in("watchdog.conf");

    // A clean stop: the daemon exits 0 by itself on SIGTERM.
    assert_eq!(m.systemctl(&["stop", "dreamerd.service"]).code, 0);
    assert_eq!(
        (m.show("ActiveState").as_str(), m.show("Result").as_str(), m.show("ExecMainStatus").as_str()),
        ("inactive", "success", "0")
    );
}

#[test]
fn the_strict_sandbox_is_probed_first_then_confines_the_service_and_widens_for_new_projects() {
    if !can_run() {
        return;
    }
    // Where the manager cannot build namespaces (as where user namespaces are blocked), --strict is refused and
    // nothing is written.
    let m = Manager::start("dreamerd-sd2", false);
    let first = m.project("first");
    let run = m.dreamerd(&first, &["service", "install", "--strict"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("226/NAMESPACE") && run.stderr.contains("nothing was changed"), "{run:?}");
    assert!(!m.unit_dir().join("dreamerd.service").exists(), "a refusal writes nothing");
    // The default unit needs no namespaces: it installs and runs there.
    let run = m.dreamerd(&first, &["service", "install", "--now"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("the strict sandbox works here"), "{run:?}");
    m.assert_active();
    let default = exposure(&m);

    // Once namespaces work (what PID 1 provides on a real host), the probe passes.
    fs::create_dir_all(m.private.path().join("run-systemd/unit-root")).unwrap();
    let run = m.dreamerd(&first, &["service", "install", "--now"]);
    assert!(
        run.stdout.contains("the strict sandbox works here"),
        "install says --strict would work: {run:?}"
    );
    let run = m.dreamerd(&first, &["service", "install", "--strict", "--now"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (_, v) = m.json(&first, &["service", "status"]);
    let options = v["strict"]["options"].to_string();
    assert!(options.contains("PrivateUsers=yes") && options.contains("ProtectHome=read-only"), "{v}");
    m.assert_active();
    let pid = m.main_pid();
    let uid_map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert!(!uid_map.trim().starts_with("0 0 4294967295"), "the service runs in a user namespace: {uid_map}");
    let strict = exposure(&m);
    assert!(strict <= 3.0 && strict < default, "exposure: strict {strict}, default {default}");
    println!("measured exposure: default {default}, strict {strict}");

    // A push in a project the sandbox does not cover yet: the sandbox is widened, the service restarted into it,
    // and drizzle-kit writes the project from inside it.
    let run = m.dreamerd(&first, &["push"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("strict sandbox now lets the service write in") && run.stderr.contains("first"),
        "{run:?}"
    );
    let pid = m.wait_restarted(pid, "the restart into the widened sandbox");
    assert!(first.join("drizzle/meta/_journal.json").exists());
    let dropin = fs::read_to_string(m.unit_dir().join("dreamerd.service.d/strict.conf")).unwrap();
    assert!(dropin.contains(&format!("ReadWritePaths=\"-{}\"", first.display())), "{dropin}");
    // The service really is confined: the file system is read-only to it but for the paths it writes.
    let outside = m.project("second");
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let options = |point: &Path| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == point.to_str())
            .map(|l| l.split(' ').nth(5).unwrap().to_string())
    };
    assert!(options(Path::new("/")).unwrap().starts_with("ro"), "{mounts}");
    assert!(options(&first).unwrap().starts_with("rw"), "{mounts}");
    assert_eq!(options(&outside), None, "nothing makes the second project writable yet: {mounts}");
    // A second project is covered when it is first written in, and said so; the first stays covered.
    let run = m.dreamerd(&outside, &["push"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("second"), "{run:?}");
    m.wait_restarted(pid, "the second restart");
    let (code, _) = m.json(&first, &["push"]);
    assert_eq!(code, 0, "the first project is still writable");
    // A database outside its project (the config says `../dbs/third.db`): its folder is made writable too, and the
    // paths added before stay.
    let third = m.project("third");
    let config = fs::read_to_string(third.join("drizzle.config.ts")).unwrap();
    fs::write(third.join("drizzle.config.ts"), config.replace("'./local.db'", "'../dbs/third.db'")).unwrap();
    fs::create_dir_all(m.home.join("dbs")).unwrap();
    assert_eq!(sh("chown", &["-R", &m.user, m.home.join("dbs").to_str().unwrap()]).code, 0);
    let pid = m.main_pid();
    let run = m.dreamerd(&third, &["push"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&m.home.join("dbs").display().to_string()), "{run:?}");
    m.wait_restarted(pid, "the third restart");
    assert!(m.home.join("dbs/third.db").is_file(), "drizzle-kit wrote the database outside the project");
    let dropin = fs::read_to_string(m.unit_dir().join("dreamerd.service.d/strict.conf")).unwrap();
    assert!(dropin.contains(&format!("ReadWritePaths=\"-{}\"", first.display())), "{dropin}");
    let run = m.dreamerd(&first, &["service", "uninstall"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!m.unit_dir().join("dreamerd.service.d/strict.conf").exists());
}
