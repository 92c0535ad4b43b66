//! The test harness: throwaway projects and XDG directories, and the real binaries run inside them.

#![allow(dead_code)]

pub mod s3;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The node_modules the test command installs for the drizzle fixture.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture")
}

/// The second drizzle fixture: drizzle-kit and drizzle-orm 1.0 (1.0.0-rc.5).
pub fn fixture_v1_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture-1.0")
}

/// One test's world: a project folder and its own XDG directories.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// Extra environment for every command (and so for the daemon they spawn).
    pub env: std::cell::RefCell<Vec<(String, String)>>,
}

impl World {
    /// A project with the real drizzle-kit (the fixture's node_modules linked in).
    pub fn drizzle() -> World {
        let modules = fixture_dir().join("node_modules");
        assert!(
            modules.join(".bin/drizzle-kit").exists(),
            "the drizzle fixture is not installed: run scripts/test (it runs npm ci in tests/fixture)"
        );
        let world = World::empty();
        for f in ["package.json", "drizzle.config.ts", "src/schema.ts"] {
            world.write(f, &fs::read_to_string(fixture_dir().join(f)).unwrap());
        }
        std::os::unix::fs::symlink(&modules, world.root.join("node_modules")).unwrap();
        world
    }

    /// A project with the real drizzle-kit 1.0 (the second fixture's node_modules linked in).
    pub fn drizzle_v1() -> World {
        let world = World::drizzle();
        world.install_kit_v1();
        world
    }

    /// Installs drizzle-kit 1.0 in the project in place of 0.31 (its node_modules and package.json), as a team
    /// upgrading does.
    pub fn install_kit_v1(&self) {
        let modules = fixture_v1_dir().join("node_modules");
        assert!(
            modules.join(".bin/drizzle-kit").exists(),
            "the drizzle 1.0 fixture is not installed: run scripts/test (it runs npm ci in tests/fixture-1.0)"
        );
        fs::remove_file(self.root.join("node_modules")).unwrap();
        std::os::unix::fs::symlink(&modules, self.root.join("node_modules")).unwrap();
        self.write("package.json", &fs::read_to_string(fixture_v1_dir().join("package.json")).unwrap());
        // drizzle-kit 1.0 loads the config with jiti, which caches it in node_modules/.cache: the shared fixture's.
        self.set_env("JITI_FS_CACHE", "false");
    }

    /// A project folder with only src/schema.ts and no drizzle-kit; configure stand-ins with `config`.
    pub fn empty() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("proj");
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("src/schema.ts"), "export const x = 1;\n").unwrap();
        fs::write(root.join("drizzle.config.json"), CONFIG_JSON).unwrap();
        let root = fs::canonicalize(root).unwrap();
        let run = tmp.path().join("xdg/run");
        fs::create_dir_all(&run).unwrap();
        fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        World { tmp, root, env: Default::default() }
    }

    pub fn xdg(&self, which: &str) -> PathBuf {
        self.tmp.path().join("xdg").join(which)
    }

    pub fn state(&self) -> PathBuf {
        self.xdg("state").join("dreamerd")
    }

    pub fn store(&self) -> PathBuf {
        self.xdg("data").join("dreamerd/store")
    }

    /// Writes the user configuration file ($XDG_CONFIG_HOME/dreamerd/config.toml).
    pub fn config(&self, toml: &str) {
        let p = self.xdg("config").join("dreamerd/config.toml");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, toml).unwrap();
    }

    /// Configures shell scripts as generate and migrate.
    pub fn stand_ins(&self, generate: &str, migrate: &str) {
        self.write("gen.sh", generate);
        self.write("mig.sh", migrate);
        self.config(
            "[push]\ngenerate = [\"/bin/sh\", \"./gen.sh\"]\nmigrate = [\"/bin/sh\", \"./mig.sh\"]\ntimeout_secs = 5\n",
        );
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, body: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    /// A command for one of the binaries, with this world's environment and the project as cwd.
    pub fn cmd(&self, bin: &str, args: &[&str]) -> Command {
        let exe = match bin {
            "dreamerd" => env!("CARGO_BIN_EXE_dreamerd"),
            "dreamer" => env!("CARGO_BIN_EXE_dreamer"),
            other => panic!("no binary {other}"),
        };
        let mut c = Command::new(exe);
        c.args(args)
            .current_dir(&self.root)
            .env("HOME", self.tmp.path())
            .env("XDG_CONFIG_HOME", self.xdg("config"))
            .env("XDG_STATE_HOME", self.xdg("state"))
            .env("XDG_DATA_HOME", self.xdg("data"))
            .env("XDG_RUNTIME_DIR", self.xdg("run"))
            // Caches follow HOME (tests look for them there), whatever the shell running the tests exports.
            .env_remove("XDG_CACHE_HOME")
            // No test talks to the desktop of whoever runs it; the notification test brings its own bus.
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("DREAMERD_CONFIG")
            .env_remove("DREAMERD_EVENT_QUEUE")
            .env_remove("DREAMERD_EVENT_LAG_MS")
            .env_remove("DREAMERD_LOG");
        for (k, v) in self.env.borrow().iter() {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, bin: &str, args: &[&str]) -> Run {
        Run::from(self.cmd(bin, args).output().unwrap())
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, bin: &str, args: &[&str]) -> (i32, Value) {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let run = self.run(bin, &all);
        let value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {run:?}"));
        (run.code, value)
    }

    /// Runs with `--json` in `dir` (instead of the project root) and parses stdout.
    pub fn json_in(&self, dir: &Path, bin: &str, args: &[&str]) -> (i32, Value) {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let mut cmd = self.cmd(bin, &all);
        cmd.current_dir(dir);
        let run = Run::from(cmd.output().unwrap());
        let value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {run:?}"));
        (run.code, value)
    }

    /// Every regular file under `rel`, with its bytes.
    pub fn tree(&self, rel: &str) -> BTreeMap<String, Vec<u8>> {
        tree_of(&self.path(rel))
    }

    /// Pushes (real drizzle-kit or stand-ins) and asserts it worked; returns the push id.
    pub fn push_ok(&self) -> String {
        let (code, v) = self.json("dreamer", &["push"]);
        assert_eq!(code, 0, "push failed: {v}");
        assert_eq!(v["ok"], true);
        v["push_id"].as_str().unwrap().to_string()
    }
}

impl World {
    pub fn set_env(&self, key: &str, value: &str) {
        self.env.borrow_mut().push((key.into(), value.into()));
    }

    pub fn runtime(&self) -> PathBuf {
        self.xdg("run").join("dreamerd")
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime().join("dreamerd.sock")
    }

    /// The pid of this world's daemon, if one runs.
    pub fn daemon_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.runtime().join("dreamerd.pid")).ok()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// The daemon's log (a spawned daemon writes it in the state directory).
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.state().join("dreamerd.log")).unwrap_or_default()
    }

    /// Waits until `check` holds, polling; panics with `what` after a generous deadline (never a timing assertion:
    /// the deadline only keeps a broken build from hanging).
    pub fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}\nlog:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A power cut in the middle of a push: starts `dreamer push`, waits until the stand-in it runs has written
    /// its pid to `pid_file` (and hangs), then kills the daemon and that process with SIGKILL.
    pub fn push_and_crash(&self, pid_file: &str) {
        let mut push = self
            .cmd("dreamer", &["push"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.wait_for("the push to hang", || self.path(pid_file).exists());
        let daemon = self.daemon_pid().expect("the push runs in the daemon");
        std::process::Command::new("kill").args(["-KILL", &daemon.to_string()]).status().unwrap();
        let hung = self.read(pid_file);
        let _ = std::process::Command::new("kill").args(["-KILL", hung.trim()]).status();
        push.wait().unwrap();
        fs::remove_file(self.path(pid_file)).unwrap();
    }

    /// `status --json` of the project, through the daemon.
    /// `dreamerd check --json`, in-process (no daemon).
    pub fn status_in_process(&self) -> Value {
        self.json("dreamerd", &["check"]).1
    }

    pub fn status(&self) -> Value {
        let (_, v) = self.json("dreamerd", &["status"]);
        v["projects"][0].clone()
    }
}

/// Held by the tests that write a burst of 20,000 files: two at once on two cores stall each writer past the quiet
/// period that ends a burst.
pub static BURSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`BURSTS`] (a test that failed holding it does not poison the others).
pub fn one_burst_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    BURSTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn alive(pid: i32) -> bool {
    // Signal 0 only checks; a zombie still counts as gone once reaped by init.
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

impl Drop for World {
    /// Every daemon a test started is stopped with the test.
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if alive(pid) {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

/// The config of a project without drizzle-kit (stand-ins run instead): read as it is, no runtime needed.
pub const CONFIG_JSON: &str = r#"{"dialect": "sqlite", "schema": "./src/schema.ts", "out": "./drizzle"}"#;
/// The same with a local SQLite database.
pub const CONFIG_JSON_DB: &str = r#"{"dialect": "sqlite", "schema": "./src/schema.ts", "out": "./drizzle", "dbCredentials": {"url": "./local.db"}}"#;

/// A generate stand-in that writes one new migration per run, like drizzle-kit does.
pub const GENERATE: &str = r#"
mkdir -p drizzle/meta
n=$(ls drizzle/*.sql 2>/dev/null | wc -l)
printf 'CREATE TABLE t%s (id integer);' "$n" > "drizzle/000${n}_step.sql"
entries=""
i=0
while [ $i -le $n ]; do
  [ -n "$entries" ] && entries="$entries,"
  entries="$entries{\"idx\":$i,\"version\":\"6\",\"when\":$((1700000000000 + i)),\"tag\":\"000${i}_step\",\"breakpoints\":true}"
  i=$((i + 1))
done
printf '{"version":"7","dialect":"sqlite","entries":[%s]}' "$entries" > drizzle/meta/_journal.json
if [ "$n" -eq 0 ]; then prev=00000000-0000-0000-0000-000000000000; else prev="snap-$((n - 1))"; fi
printf '{"id":"snap-%s","prevId":"%s"}' "$n" "$prev" > "drizzle/meta/000${n}_snapshot.json"
echo "[ok] wrote migration $n"
"#;
pub const MIGRATE_OK: &str = "echo migrated\n";

pub fn stand_in_world() -> World {
    let w = World::empty();
    w.stand_ins(GENERATE, MIGRATE_OK);
    w
}

/// Sets `file`'s modification time to now, its contents the same (as a checkout that rewrites a file unchanged).
pub fn touch(file: &Path) {
    fs::File::options().write(true).open(file).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
}

/// Every regular file under `dir`, with its bytes (symlinks are listed with their target). A file that vanishes
/// while it is read (a polled folder the daemon is swapping) is left out: the caller polls again.
pub fn tree_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(&e.path(), &rel, out);
            } else if ft.is_symlink() {
                if let Ok(target) = fs::read_link(e.path()) {
                    out.insert(rel, format!("-> {}", target.display()).into_bytes());
                }
            } else if let Ok(bytes) = fs::read(e.path()) {
                out.insert(rel, bytes);
            }
        }
    }
    walk(dir, "", &mut out);
    out
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A hand change a scenario applies.
pub type Change<'a> = Box<dyn Fn() + 'a>;
