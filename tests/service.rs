//! Running as a user service (issue 13, first part): the unit `service install` writes (verified by systemd's own
//! analyzer), `service status` and `uninstall`, completions and the man page, and the daemon's readiness and watchdog
//! notifications over a real NOTIFY_SOCKET.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::World;

#[test]
fn service_install_writes_a_unit_systemd_verifies_and_status_sees_an_upgrade() {
    let w = World::empty();
    let (code, v) = w.json("dreamerd", &["service", "install", "--socket"]);
    assert_eq!(code, 0, "{v}");
    let unit = w.xdg("config").join("systemd/user/dreamerd.service");
    assert_eq!(v["unit"], unit.to_str().unwrap());
    let text = fs::read_to_string(&unit).unwrap();
    let binary = fs::canonicalize(env!("CARGO_BIN_EXE_dreamerd")).unwrap();
    assert!(text.contains(&format!("ExecStart={} daemon", binary.display())), "{text}");
    assert!(text.contains("Type=notify") && text.contains("WatchdogSec="), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("MemoryDenyWriteExecute=")), "node's JIT needs W+X memory");
    let steps = v["steps"].to_string();
    assert!(steps.contains("no user service manager") && steps.contains("enable-linger"), "{steps}");
    let bash = w.xdg("data").join("bash-completion/completions/dreamerd");
    assert!(fs::read_to_string(&bash).unwrap().contains("dreamerd"), "completions are installed");
    // systemd's own analyzer finds nothing to say about it (any output is a failure: it exits 0 on warnings).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(&unit)
        .arg(unit.with_file_name("dreamerd.socket"))
        .env("XDG_RUNTIME_DIR", w.xdg("run"))
        .env("XDG_CONFIG_HOME", w.xdg("config"))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // Its exposure, as systemd measures it offline, is the figure README gives.
    let out = Command::new("systemd-analyze")
        .args(["security", "--user", "--offline=yes"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", w.xdg("run"))
        .env("XDG_CONFIG_HOME", w.xdg("config"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let line =
        said.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{said}"));
    let figure = line.split(": ").nth(1).unwrap().split_whitespace().next().unwrap();
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&format!("default unit: exposure {figure}")),
        "README states the exposure {figure}"
    );
    let (_, v) = w.json("dreamerd", &["service", "status"]);
    assert_eq!((v["installed"].as_bool(), v["current"].as_bool()), (Some(true), Some(true)), "{v}");
    // A unit left pointing at a binary that is gone (an upgrade moved it): status says so, install fixes it.
    fs::write(&unit, text.replace(binary.to_str().unwrap(), "/nonexistent/dreamerd")).unwrap();
    let (_, v) = w.json("dreamerd", &["service", "status"]);
    assert_eq!(v["binary_exists"], false, "{v}");
    assert!(v["steps"].to_string().contains("no longer exists"), "{v}");
    w.json("dreamerd", &["service", "install"]);
    let (_, v) = w.json("dreamerd", &["service", "status"]);
    assert_eq!(v["current"], true, "{v}");
    let (code, _) = w.json("dreamerd", &["service", "uninstall"]);
    assert_eq!(code, 0);
    assert!(!unit.exists() && !bash.exists() && !unit.with_file_name("dreamerd.socket").exists());
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let w = World::empty();
    let run = w.run("dreamerd", &["completions", "bash"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("_dreamerd") && run.stdout.contains("restore"), "{}", run.stdout);
    let run = w.run("dreamerd", &["completions", "fish", "--binary", "dreamer"]);
    assert!(run.stdout.contains("complete -c dreamer"), "{}", run.stdout);
    let run = w.run("dreamerd", &["man"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains(".TH dreamerd") && run.stdout.contains("restore"), "{}", run.stdout);
    let run = w.run("dreamerd", &["man", "--binary", "nope"]);
    assert_eq!(run.code, 2);
}

/// A NOTIFY_SOCKET of the test's own: what the daemon tells systemd, accumulated as text, a message a line.
struct Notified {
    socket: std::path::PathBuf,
    listener: UnixDatagram,
    said: String,
}

impl Notified {
    fn bind(w: &World) -> Notified {
        let socket = w.tmp.path().join("notify.sock");
        let listener = UnixDatagram::bind(&socket).unwrap();
        listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Notified { socket, listener, said: String::new() }
    }

    /// Receives until `until` holds of all said so far (30 s at most).
    fn until(&mut self, until: impl Fn(&str) -> bool) -> &str {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while !until(&self.said) && Instant::now() < deadline {
            if let Ok(n) = self.listener.recv(&mut buf) {
                self.said += &String::from_utf8_lossy(&buf[..n]);
                self.said.push('\n');
            }
        }
        &self.said
    }
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_pings_the_watchdog_and_says_it_stops() {
    let w = World::empty();
    let mut notified = Notified::bind(&w);
    let mut daemon = w
        .cmd("dreamerd", &["daemon"])
        .env("NOTIFY_SOCKET", &notified.socket)
        .env("WATCHDOG_USEC", "300000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let said = notified.until(|s| s.matches("WATCHDOG=1").count() >= 2).to_string();
    assert!(said.contains("READY=1") && said.contains("STATUS=watching 0 project(s)"), "{said}");
    assert!(said.matches("WATCHDOG=1").count() >= 2, "the main loop pings the watchdog: {said}");
    assert!(said.find("READY=1") < said.find("WATCHDOG=1"), "{said}");
    // The socket answers once READY was sent.
    let (code, v) = w.json("dreamerd", &["status", "--no-spawn"]);
    assert_eq!(code, 0, "{v}");
    Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
    let said = notified.until(|s| s.contains("STOPPING=1"));
    assert!(said.contains("STOPPING=1"), "{said}");
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn a_socket_passed_by_systemd_answers_the_first_command_without_a_spawned_daemon() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let w = World::empty();
    // What dreamerd.socket does: the runtime folder 0700, the socket 0600, bound and listening before the daemon runs.
    let dir = w.runtime();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = w.socket();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let fd = listener.as_raw_fd();
    let cmd = w.cmd("dreamerd", &[]);
    let program = cmd.get_program().to_owned();
    // LISTEN_PID must be the daemon's own pid: a shell sets it, then becomes the daemon.
    let mut daemon = Command::new("/bin/sh");
    daemon.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" daemon"]).arg(&program);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => daemon.env(k, v),
            None => daemon.env_remove(k),
        };
    }
    daemon.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec (dup2).
    unsafe {
        daemon.pre_exec(move || {
            if fd == 3 {
                let flags = libc_fcntl_clear_cloexec(3);
                return flags;
            }
            if libc_dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = daemon.spawn().unwrap();
    drop(listener);
    let (code, v) = w.json("dreamerd", &["status", "--no-spawn"]);
    assert_eq!(code, 0, "the passed socket answers: {v}");
    assert_eq!(v["daemon"]["pid"], child.id(), "answered by the activated daemon: {v}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(socket.exists(), "the socket's path is systemd's: never unlinked by the daemon");
}

fn libc_dup2(from: i32, to: i32) -> i32 {
    // rustix's dup2 needs owned descriptors; in the child the raw call is all there is.
    unsafe extern "C" {
        fn dup2(oldfd: i32, newfd: i32) -> i32;
    }
    unsafe { dup2(from, to) }
}

fn libc_fcntl_clear_cloexec(fd: i32) -> std::io::Result<()> {
    unsafe extern "C" {
        fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    }
    const F_SETFD: i32 = 2;
    if unsafe { fcntl(fd, F_SETFD, 0) } < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[test]
fn a_stalled_scan_is_reported_in_the_status_line_while_the_other_projects_are_scanned() {
    let w = World::drizzle();
    // A config whose evaluation takes a while (it could be a network filesystem, a hung import...).
    let config = w.read("drizzle.config.ts");
    w.write("drizzle.config.ts", &format!("require('child_process').execSync('sleep 6');\n{config}"));
    w.config("[watch]\nscan_limit_secs = 1\n");
    // A second project that scans at once.
    let other = w.tmp.path().join("other");
    fs::create_dir_all(other.join("src")).unwrap();
    fs::write(other.join("src/schema.ts"), "export const x = 1;\n").unwrap();
    fs::write(other.join("drizzle.config.json"), crate::support::CONFIG_JSON).unwrap();
    let mut notified = Notified::bind(&w);
    let mut daemon = w
        .cmd("dreamerd", &["daemon"])
        .env("NOTIFY_SOCKET", &notified.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    notified.until(|s| s.contains("READY=1"));
    let slow = std::thread::spawn({
        let mut cmd = w.cmd("dreamerd", &["watch", w.root.to_str().unwrap(), "--no-spawn"]);
        move || cmd.output().unwrap()
    });
    let said = notified.until(|s| s.contains("scan(s) over 1s"));
    assert!(said.contains(&format!("1 scan(s) over 1s: {}", w.root.display())), "{said}");
    // Meanwhile the other project is watched and scanned.
    let (code, v) = w.json_in(&other, "dreamerd", &["watch", ".", "--no-spawn"]);
    assert_eq!(code, 0, "{v}");
    let (_, v) = w.json_in(&other, "dreamerd", &["status", "--no-spawn"]);
    assert_eq!(v["projects"][0]["state"], "no-baseline", "{v}");
    let (_, v) = w.json("dreamerd", &["status", "--no-spawn", "--all"]);
    let slow_one =
        v["projects"].as_array().unwrap().iter().find(|p| p["root"] == w.root.to_str().unwrap()).cloned();
    let warnings = slow_one.map(|p| p["watch"]["warnings"].to_string()).unwrap_or_default();
    assert!(warnings.contains("takes more than 1s"), "the project's warnings say so too: {v}");
    // Once it is done, the line says so no more.
    slow.join().unwrap();
    let said =
        notified.until(|s| s.rsplit("STATUS=").next().is_some_and(|last| last.starts_with("watching 2")));
    assert!(said.rsplit("STATUS=").next().unwrap().starts_with("watching 2 project(s)"), "{said}");
    Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
    assert!(daemon.wait().unwrap().success());
}
