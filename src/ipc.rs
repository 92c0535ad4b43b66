//! The local socket between the CLI and the daemon: a versioned, line-delimited JSON protocol, the secure runtime
//! directory, and the client that finds (or starts) the daemon.
//!
//! One request per connection. On accept the daemon sends a `hello` line (its version and protocol version); the
//! client then sends one request line; the daemon answers with zero or more `output`, `progress` or `event`
//! lines and ends with one `result` or `error` line (except `events` with `follow`, which streams until either
//! side closes).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interprocess::local_socket::{GenericFilePath, Stream as LocalStream, ToFsName, prelude::*};
use serde::{Deserialize, Serialize};

use crate::dirs::Dirs;
use crate::engine::Stream;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// The protocol version; a CLI that finds another one restarts the daemon. 2: requests carry the drizzle config
/// and the environment of the command that asked; 3: `push` carries `custom`, `restore` carries `with_database`, and `up`;
/// 4: `restart`; 5: `push` carries `options` (answers to drizzle-kit 1.0's questions), `up` carries `backed_up`,
/// and `rebase`; 6: `vouch`.
pub const PROTOCOL: u32 = 6;
/// How long `check` waits for the daemon's vouch (its hello, then its answer) before it scans by itself.
/// The daemon may first scan a folder that changed since its last look (for at most 3 s: see the daemon's
/// `VOUCH_SCAN_WAIT`) rather than let `check` read it a second time on the same cores.
const VOUCH_TIMEOUT: Duration = Duration::from_secs(5);
/// This build's version, carried in `hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long a client waits for the daemon's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request line the daemon reads (an environment is carried with it); anything longer is refused.
pub const MAX_REQUEST: usize = 1 << 20;

/// A request, as the client sends it: `{"protocol": 2, "cmd": "status", ...}`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub protocol: u32,
    #[serde(flatten)]
    pub request: Request,
    /// The drizzle config the command named or found (relative to the project root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drizzle_config: Option<String>,
    /// The environment of the command: drizzle-kit and the config run with it. Never logged or persisted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<crate::project::Env>,
    /// The command's configuration file (its text), layered over the project file's settings for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::config::Settings>,
}

/// What the client asks. Directories are project roots the client already resolved (absolute).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status {
        #[serde(default)]
        dir: Option<PathBuf>,
        #[serde(default)]
        all: bool,
    },
    Watch {
        dir: PathBuf,
    },
    Unwatch {
        dir: PathBuf,
    },
    /// Whether the migration folder `folder` (with the files `excluded` left out) is still the tree the daemon's
    /// last scan found, as its watch tells (protocol 6). Answered `{"vouched": Scanned}` or
    /// `{"vouched": null, "reason": …}`.
    Vouch {
        folder: PathBuf,
        #[serde(default)]
        excluded: Vec<String>,
    },
    Push {
        dir: PathBuf,
        /// `push --custom NAME` (protocol 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom: Option<String>,
        /// `--rename`, `--create` (protocol 5).
        #[serde(default)]
        options: crate::engine::PushOptions,
    },
    /// `dreamerd rebase` (protocol 5).
    Rebase {
        dir: PathBuf,
        #[serde(default)]
        options: crate::engine::PushOptions,
    },
    /// `dreamerd up` (protocol 3).
    Up {
        dir: PathBuf,
        /// `up --backed-up` (protocol 5).
        #[serde(default)]
        backed_up: bool,
    },
    Restore {
        dir: PathBuf,
        #[serde(default)]
        push: Option<String>,
        #[serde(default)]
        dry_run: bool,
        /// `restore --with-database` (protocol 3).
        #[serde(default)]
        with_database: bool,
    },
    History {
        dir: PathBuf,
    },
    Events {
        #[serde(default)]
        follow: bool,
    },
    Stop,
    /// Exit once running operations finish, for systemd to start the daemon again (protocol 4; only a daemon
    /// systemd runs accepts it). The strict sandbox's paths take effect so.
    Restart,
}

/// One line from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply {
    Hello {
        daemon_version: String,
        protocol: u32,
        pid: u32,
        /// The configuration file the daemon read (at start, or at its last reload), if any.
        #[serde(default)]
        config: Option<PathBuf>,
        /// The systemd unit that runs the daemon, if one does (protocol 4; older daemons say nothing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
        /// Whether systemd passed the daemon its socket (socket activation): the socket's path is systemd's.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        activated: bool,
    },
    Output {
        stream: Stream,
        line: String,
    },
    Progress {
        message: String,
    },
    Event {
        event: serde_json::Value,
    },
    Result {
        exit: i32,
        data: serde_json::Value,
    },
    Error {
        exit: i32,
        error: String,
        hint: Option<String>,
    },
}

impl Reply {
    /// The reply as one protocol line.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("replies serialise");
        s.push('\n');
        s
    }
}

/// `$XDG_RUNTIME_DIR/dreamerd`. Where the variable is unset (cron, ssh without a session, `su`), the user's runtime
/// directory `/run/user/<uid>` if it exists and is theirs (it is what `XDG_RUNTIME_DIR` names in their sessions),
/// else `/tmp/dreamerd-<uid>`, never under `$TMPDIR`: every command of one user must find the same daemon.
pub fn runtime_dir(dirs: &Dirs) -> PathBuf {
    dirs.runtime.clone().unwrap_or_else(|| {
        let uid = rustix::process::geteuid().as_raw();
        let run_user = PathBuf::from(format!("/run/user/{uid}"));
        match fs::symlink_metadata(&run_user) {
            Ok(m) if m.is_dir() && m.uid() == uid => run_user.join("dreamerd"),
            _ => PathBuf::from(format!("/tmp/dreamerd-{uid}")),
        }
    })
}

/// The socket file.
pub fn socket_path(dirs: &Dirs) -> PathBuf {
    runtime_dir(dirs).join("dreamerd.sock")
}

/// Creates the runtime directory (0700) and refuses it if another user owns it or others can write to it:
/// the directory's permissions are what protect the socket.
pub fn secure_runtime_dir(dir: &Path) -> Result<()> {
    fsutil::create_private_dir(dir).ctx("create", dir)?;
    let meta = fs::symlink_metadata(dir).ctx("inspect", dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(Error::Usage(format!("{} is not a directory; remove it", dir.display())));
    }
    if meta.uid() != me {
        return Err(Error::Usage(format!(
            "{} belongs to uid {}, not to you (uid {me}); refusing to put the socket there",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::Usage(format!(
            "{} can be written by other users (mode {:o}); refusing to put the socket there. Fix it with \
             `chmod 700 {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).ctx("chmod", dir)?;
    }
    Ok(())
}

/// A connection to the daemon that has passed the hello.
pub struct Client {
    reader: BufReader<LocalStream>,
    /// What the daemon said in its hello.
    pub hello: Option<Reply>,
}

fn connect_raw(socket: &Path) -> io::Result<LocalStream> {
    let name = socket.to_fs_name::<GenericFilePath>()?;
    LocalStream::connect(name)
}

/// Whether a daemon answers on `socket` right now.
pub fn daemon_alive(socket: &Path) -> bool {
    connect_raw(socket).is_ok()
}

impl Client {
    fn open(socket: &Path) -> io::Result<(Client, Reply)> {
        let stream = connect_raw(socket)?;
        // A wedged daemon must not hang the command: the hello comes at once or not at all. Later replies may
        // be far apart (a long migrate), so the timeout is for the hello only.
        stream.set_recv_timeout(Some(HELLO_TIMEOUT))?;
        let mut client = Client { reader: BufReader::new(stream), hello: None };
        let hello =
            client.next_reply()?.ok_or_else(|| io::Error::other("the daemon closed the connection"))?;
        client.reader.get_ref().set_recv_timeout(None)?;
        client.hello = Some(hello.clone());
        Ok((client, hello))
    }

    /// Connects to the running daemon, starting one (unless `no_spawn`) when none runs or when it speaks another
    /// protocol or version.
    pub fn connect(dirs: &Dirs, config: Option<&Path>, no_spawn: bool) -> Result<Client> {
        let socket = socket_path(dirs);
        let unreachable =
            |why: String| Error::DaemonUnreachable(format!("{why} (and --no-spawn forbids starting one)"));
        match Client::open(&socket) {
            Ok((client, Reply::Hello { protocol, daemon_version, .. }))
                if protocol == PROTOCOL && (daemon_version == VERSION || no_spawn) =>
            {
                return Ok(client);
            }
            Ok((client, Reply::Hello { protocol, daemon_version, pid, unit, .. })) => {
                if no_spawn {
                    return Err(unreachable(format!(
                        "the running daemon speaks protocol {protocol}, not {PROTOCOL}"
                    )));
                }
                drop(client);
                // A daemon systemd runs is restarted by systemd (which then starts the unit's binary), never stopped
                // and replaced by one of our own behind its back. Older daemons do not say their unit: their control
                // group does.
                if let Some(unit) = unit.or_else(|| crate::daemon::unit_of_pid(pid)) {
                    tracing::info!(
                        pid,
                        daemon_version,
                        protocol,
                        unit,
                        "restarting a daemon of another version through systemd"
                    );
                    return restart_through_systemd(&unit, &socket);
                }
                tracing::info!(pid, daemon_version, protocol, "restarting a daemon of another version");
                stop_and_wait(&socket)?;
            }
            Ok(_) => {
                return Err(Error::failed(
                    "the daemon did not greet properly",
                    "run `dreamerd stop` and retry",
                ));
            }
            Err(e) if no_spawn => {
                return Err(unreachable(format!("no daemon is running at {} ({e})", socket.display())));
            }
            Err(_) => {}
        }
        spawn_daemon(dirs, config)?;
        match Client::open(&socket) {
            Ok((client, Reply::Hello { .. })) => Ok(client),
            Ok(_) => Err(Error::failed("the daemon did not greet properly", "run `dreamerd stop` and retry")),
            Err(e) => Err(Error::failed(
                format!("the daemon was started but does not answer on {}: {e}", socket.display()),
                format!("see its log in {}", daemon_log(dirs).display()),
            )),
        }
    }

    /// Connects to whatever daemon answers, whatever its protocol or version (to stop it); `None` if none does.
    pub fn connect_existing(dirs: &Dirs) -> Option<Client> {
        Client::open(&socket_path(dirs)).ok().map(|(client, _)| client)
    }

    /// Sends the request, with no config and no environment.
    pub fn send(&mut self, request: Request) -> Result<()> {
        self.send_with(request, None, None, None)
    }

    /// Sends the request with the command's drizzle config and environment.
    pub fn send_with(
        &mut self,
        request: Request,
        drizzle_config: Option<String>,
        env: Option<crate::project::Env>,
        settings: Option<crate::config::Settings>,
    ) -> Result<()> {
        let envelope = Envelope { protocol: PROTOCOL, request, drizzle_config, env, settings };
        let mut line = serde_json::to_string(&envelope).expect("serialises");
        line.push('\n');
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes()).and_then(|()| stream.flush()).map_err(lost)
    }

    /// The next reply line, or `None` when the daemon closed the connection.
    pub fn next_reply(&mut self) -> io::Result<Option<Reply>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad reply from the daemon: {e}"))
        })
    }

    /// Reads replies until the final one, handing the others to `each`. Returns the result's exit code and data.
    pub fn finish(&mut self, mut each: impl FnMut(&Reply)) -> Result<(i32, serde_json::Value)> {
        loop {
            match self.next_reply().map_err(lost)? {
                Some(Reply::Result { exit, data }) => return Ok((exit, data)),
                Some(Reply::Error { exit, error, hint }) => return Err(remote_error(exit, error, hint)),
                Some(other) => each(&other),
                None => return Err(lost(io::Error::other("the daemon closed the connection"))),
            }
        }
    }
}

/// What a daemon already running (none is started for this) vouches for `folder`: still the tree its last scan
/// found, as [`crate::engine::Scanned`] says; `None` when none runs, it speaks another protocol, it does not watch
/// the folder, anything in it changed since, or it does not answer within [`VOUCH_TIMEOUT`].
pub fn vouch(dirs: &Dirs, folder: &Path, excluded: &[String]) -> Option<crate::engine::Scanned> {
    let stream = connect_raw(&socket_path(dirs)).ok()?;
    stream.set_recv_timeout(Some(VOUCH_TIMEOUT)).ok()?;
    stream.set_send_timeout(Some(VOUCH_TIMEOUT)).ok()?;
    let mut client = Client { reader: BufReader::new(stream), hello: None };
    match client.next_reply().ok()?? {
        Reply::Hello { protocol: PROTOCOL, .. } => {}
        _ => return None,
    }
    client.send(Request::Vouch { folder: folder.to_path_buf(), excluded: excluded.to_vec() }).ok()?;
    let (_, data) = client.finish(|_| {}).ok()?;
    let vouched: Option<crate::engine::Scanned> = serde_json::from_value(data["vouched"].clone()).ok()?;
    if vouched.is_none() {
        tracing::debug!(reason = %data["reason"], "the daemon does not vouch for the folder; scanning it");
    }
    vouched
}

fn lost(e: io::Error) -> Error {
    Error::failed(format!("lost the connection to the daemon: {e}"), "check the daemon's log, then retry")
}

/// Rebuilds a daemon-side error with the exit code the daemon chose.
fn remote_error(exit: i32, error: String, hint: Option<String>) -> Error {
    match exit {
        2 => Error::Usage(match hint {
            Some(h) => format!("{error}\nhint: {h}"),
            None => error,
        }),
        3 => Error::DaemonUnreachable(error),
        _ => Error::Failed { message: error, hint },
    }
}

/// Asks a daemon to stop and waits until its socket no longer answers.
/// `systemctl --user restart UNIT` (it returns once the new daemon said READY=1), then connects to it. A unit that
/// still starts a daemon of another protocol (it points at an older binary) is an error that says how to fix it.
fn restart_through_systemd(unit: &str, socket: &Path) -> Result<Client> {
    crate::service::systemctl(&["restart", unit])
        .map_err(|e| Error::failed(e, format!("see `systemctl --user status {unit}`")))?;
    match Client::open(socket) {
        Ok((client, Reply::Hello { protocol, .. })) if protocol == PROTOCOL => Ok(client),
        Ok((_, Reply::Hello { protocol, daemon_version, .. })) => Err(Error::failed(
            format!(
                "systemd's {unit} starts dreamerd {daemon_version} (protocol {protocol}), not this dreamerd {VERSION} \
                 (protocol {PROTOCOL})"
            ),
            "run `dreamerd service install --now` so the unit starts this binary",
        )),
        Ok(_) => Err(Error::failed("the daemon did not greet properly", "run `dreamerd stop` and retry")),
        Err(e) => Err(Error::failed(
            format!("systemd restarted {unit} but it does not answer on {}: {e}", socket.display()),
            format!("see `systemctl --user status {unit}` and `journalctl --user -u {unit}`"),
        )),
    }
}

fn stop_and_wait(socket: &Path) -> Result<()> {
    if let Ok((mut client, _)) = Client::open(socket) {
        let _ = client.send(Request::Stop);
        let _ = client.finish(|_| {});
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon_alive(socket) {
        if Instant::now() > deadline {
            return Err(Error::failed("the old daemon does not stop", "stop it by hand (`dreamerd stop`)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Where a spawned daemon writes its log.
pub fn daemon_log(dirs: &Dirs) -> PathBuf {
    dirs.state.join("dreamerd.log")
}

/// The `dreamerd` executable: beside the running one (so `dreamer` finds it), else on PATH.
fn dreamerd_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("dreamerd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("dreamerd"))
}

/// Starts a detached daemon, under a start-up lock so that two CLI calls never start two daemons.
fn spawn_daemon(dirs: &Dirs, config: Option<&Path>) -> Result<()> {
    let runtime = runtime_dir(dirs);
    secure_runtime_dir(&runtime)?;
    let lock_path = runtime.join("spawn.lock");
    let lock =
        File::options().create(true).truncate(false).write(true).open(&lock_path).ctx("open", &lock_path)?;
    lock.lock().ctx("lock", &lock_path)?;
    let socket = socket_path(dirs);
    if daemon_alive(&socket) {
        return Ok(()); // another CLI started it while we waited for the lock
    }
    fsutil::create_private_dir(&dirs.state).ctx("create", &dirs.state)?;
    let log_path = daemon_log(dirs);
    let log = File::options().create(true).append(true).open(&log_path).ctx("open", &log_path)?;
    let mut cmd = Command::new(dreamerd_exe());
    cmd.arg("daemon").arg("--log-file").arg(&log_path);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().ctx("open", &log_path)?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            Error::failed(format!("cannot start the daemon: {e}"), "is dreamerd installed on PATH?")
        })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if daemon_alive(&socket) {
            // The daemon lives on; its exit status is collected by init once we exit.
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(Error::Environment {
                context: format!("the daemon exited at start ({status}); see {}", log_path.display()),
                source: io::Error::other(last),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Environment {
                context: format!("the daemon did not open its socket within 20s; see {}", log_path.display()),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
