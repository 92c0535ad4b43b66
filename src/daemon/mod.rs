//! The daemon: watches every registered project, warns about hand edits at once, and serves the CLI over the
//! local socket. Push and restore run the very same engine code as in-process, on blocking threads.

mod serve;
mod watch;

pub use serve::RUNNING_PUSH;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_that_ends_never_hides_another_still_running() {
        let (t0, t1) = (Instant::now(), Instant::now() + std::time::Duration::from_secs(1));
        let mut running = Running::default();
        assert!(!running.any());
        let recovery = running.begin(t0);
        let scan = running.begin(t1);
        running.end(recovery);
        assert!(running.any(), "the scan still runs");
        assert_eq!(running.since(), Some(t1), "since the scan's start, not the recovery's");
        running.end(scan);
        running.end(scan);
        assert!(!running.any());
        assert_eq!(running.since(), None);
    }

    #[test]
    fn accept_failures_back_off_and_log_once_per_streak() {
        let mut b = Backoff::default();
        assert_eq!(b.pause(), std::time::Duration::ZERO);
        assert_eq!(b.failed(), Some(1));
        let logged = (0..1000).filter(|_| b.failed().is_some()).count();
        assert_eq!(logged, 0, "a streak of failures is one log line, not one per failure");
        assert_eq!(b.pause(), std::time::Duration::from_secs(1));
        b.succeeded();
        assert_eq!(b.pause(), std::time::Duration::ZERO);
        assert!(connection_cap() >= 8);
    }
}

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName, prelude::*};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::alerts::Desktop;
use crate::config::Settings;
use crate::dirs::Dirs;
use crate::engine::{Engine, ProjectStatus, rfc3339};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::ipc;
use crate::project::Project;

/// Default capacity of the channel between the file watcher and the scheduler. When it is full, events are not
/// queued but every project is marked for a full rescan instead.
const DEFAULT_QUEUE: usize = 4096;
/// How many past events `dreamerd events` shows.
const RECENT_EVENTS: usize = 200;

/// The scans and recoveries running on one project, each by when it started: they can overlap (a recovery's retry
/// and a rescan), and the end of one must not hide another that still runs.
#[derive(Debug, Default)]
struct Running {
    started: Vec<(u64, Instant)>,
}

impl Running {
    /// Notes one that starts at `at`; its token ends it (unique in the process: a project unwatched and watched again
    /// meanwhile has a new `Running`, which a token of the old one never touches).
    fn begin(&mut self, at: Instant) -> u64 {
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let token = LAST.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.started.push((token, at));
        token
    }

    fn end(&mut self, token: u64) {
        self.started.retain(|(t, _)| *t != token);
    }

    fn any(&self) -> bool {
        !self.started.is_empty()
    }

    /// When the oldest of those still running started.
    fn since(&self) -> Option<Instant> {
        self.started.iter().map(|(_, at)| *at).min()
    }
}

/// What the daemon knows about one watched project.
#[derive(Default)]
struct Watched {
    status: Option<ProjectStatus>,
    /// The violations already warned about (as JSON text), so each is logged and notified once.
    reported: BTreeSet<String>,
    schema_pending: Option<bool>,
    rescans: u64,
    overflows: u64,
    warnings: BTreeSet<String>,
    /// Directories with a watch in place.
    watches: BTreeSet<PathBuf>,
    /// Set when one of those directories was deleted or created (or events were lost): its watch must be made
    /// again, since a directory re-created in a hurry can even get the same inode back.
    rewatch: bool,
    /// Serialises rescans of this project.
    scan_lock: Arc<tokio::sync::Mutex<()>>,
    /// A rescan waits for `scan_lock`: later ones only wait for it to be done (it starts after they were asked for).
    scan_queued: bool,
    /// Where its files are, as its config said at the last rescan.
    paths: Option<watch::WatchPaths>,
    /// The scans (and recoveries) running on it now.
    scanning: Running,
    /// git's index lock of the checkout (`<git dir>/index.lock`), asked of git once; `Some(None)`: not in git.
    git_lock: Option<Option<PathBuf>>,
    /// Since when git holds that lock (it writes the working tree meanwhile): warnings wait for it.
    git_since: Option<Instant>,
    /// The migration folder changed while git held its lock: the next scan's new violations are git's.
    git_touched: bool,
    /// The violations git brought (as JSON text, without the source), with the commit.
    from_git: BTreeMap<String, String>,
    /// When the last file event for it came: the first event after a quiet period is scanned as soon as events
    /// settle ([`watch::SETTLE`]), not after the whole quiet period.
    last_event: Option<Instant>,
    /// Since when the events that started after a quiet period are settling (cleared when the scan starts).
    settling: Option<Instant>,
    /// The burst of hand changes being reported (how many so far): one notification, updated, and one summary line
    /// at its end.
    burst: Option<usize>,
    /// Counts what may have changed the project's files: its file events, lost events, rescans asked for.
    epoch: u64,
    /// The migration folder as the last scan found it, with the epoch at that scan's start: while the epoch is the
    /// same, nothing in the folder changed since, and the daemon vouches for it (`vouch`).
    vouch: Option<(u64, crate::engine::Scanned)>,
}

/// Per-project watch details added to status by the daemon (an addition to the contract).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchInfo {
    pub watched: bool,
    /// Rescans since the daemon started.
    pub rescans: u64,
    /// Times events were lost (inotify overflow, full queue) and a full rescan was forced instead.
    pub overflows: u64,
    pub warnings: Vec<String>,
}

/// What the last command for a project carried: the config it named, its environment and its settings (in memory
/// only).
#[derive(Clone, Default)]
pub(crate) struct Context {
    pub config: Option<String>,
    pub env: Option<crate::project::Env>,
    pub settings: Option<Settings>,
}

/// A project to resolve on a blocking thread: root, config, and the environment to evaluate it with.
#[derive(Clone)]
pub(crate) struct Spec {
    root: PathBuf,
    context: Context,
}

impl Spec {
    /// Finds the config (the one named, else the root's default) and evaluates it.
    pub(crate) fn resolve(&self) -> Result<Project> {
        let config = match &self.context.config {
            Some(c) => Some(c.clone()),
            None => Project::locate(Some(&self.root), None)?.1,
        };
        Project::resolve(&self.root, config.as_deref(), self.context.env.clone())
    }
}

#[derive(Default)]
struct State {
    projects: BTreeMap<PathBuf, Watched>,
    /// The last command's config and environment per project root.
    contexts: HashMap<PathBuf, Context>,
    /// Push or restore operations in flight, by project root.
    ops: HashMap<PathBuf, usize>,
    /// Projects with file events waiting for the quiet period: (first event, due).
    pending: HashMap<PathBuf, (Instant, Instant)>,
    /// When to give freed heap back to the system, if the daemon is quiet by then (see `trim_when_quiet`).
    trim_at: Option<Instant>,
    /// When lost file events were last warned about (see `mark_all`).
    overflow_warned: Option<Instant>,
}

/// The configuration the daemon runs with: read at start, read again on SIGHUP (`systemctl --user reload dreamerd`).
pub struct Loaded {
    pub engine: Engine,
    /// The configuration file read, told to clients so they can warn when theirs differs.
    pub config_file: Option<PathBuf>,
    /// The settings read: what work the daemon does by itself uses, until a command carries its own.
    pub settings: Settings,
}

/// Reads the configuration again (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Loaded> + Send + Sync>;

/// The running daemon.
pub(crate) struct Daemon {
    loaded: std::sync::RwLock<Arc<Loaded>>,
    reload: Reload,
    dirs: Dirs,
    state: Mutex<State>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    events: broadcast::Sender<serde_json::Value>,
    recent: Mutex<VecDeque<serde_json::Value>>,
    desktop: Arc<Desktop>,
    shutdown: Notify,
    stopping: AtomicBool,
    /// Flips to true when shutdown starts, for the tasks that wait on it (`events --follow`).
    stopped: tokio::sync::watch::Sender<bool>,
    ops_in_flight: AtomicU64,
    ops_done: Notify,
    /// Open client connections, so shutdown delivers the last answers before the process exits.
    connections: AtomicU64,
    /// Serialises writes of the watch list.
    watchlist_write: Mutex<()>,
    /// Wakes the scheduler: a project needs a rescan now, or events were lost.
    rescan_tx: mpsc::UnboundedSender<Wake>,
    /// Set while an overflow wake is on its way, so a burst of dropped events sends one.
    overflow_flagged: Arc<AtomicBool>,
    /// When the scheduler last went round its loop (ms since `started`): the watchdog is pinged only while it is
    /// recent, so a wedged loop gets the daemon restarted.
    scheduler_beat: AtomicU64,
    started: Instant,
    /// The systemd unit that runs this daemon, if one does.
    unit: Option<String>,
    /// Whether systemd passed the listening socket (socket activation).
    activated: bool,
    /// Set by a restart request: the daemon exits with [`RESTART_EXIT`] instead of 0.
    restart: AtomicBool,
    /// The STATUS= line systemd was sent last.
    status_sent: Mutex<String>,
    /// Wakes the uploader of waiting backups: a push left one (it sleeps while none waits).
    backup_waiting: Notify,
    /// The folder (in the runtime directory, watched with the projects) where a `vouch` makes its cookie: the
    /// cookie's creation comes out of the watcher after every event the kernel queued before it. Unset when it
    /// cannot be watched: then nothing is vouched for.
    cookie_dir: std::sync::OnceLock<PathBuf>,
    /// The cookies on their way through the watcher, and who waits for each.
    cookies: Mutex<HashMap<PathBuf, tokio::sync::oneshot::Sender<()>>>,
    cookie_seq: AtomicU64,
}

/// The exit status of a daemon that asks systemd to start it again (the unit's `RestartForceExitStatus=` and
/// `SuccessExitStatus=`): EX_TEMPFAIL.
pub const RESTART_EXIT: i32 = 75;

/// What the scheduler is told besides file events.
enum Wake {
    Rescan(PathBuf),
    Overflow(&'static str),
    /// Only look at the moments due again (a trim was asked for).
    Recheck,
}

/// How long a start waits for the pid lock of a daemon that holds it but does not answer (one dying, or one starting).
const PID_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The daemon's pid file, locked for as long as it runs: the guarantee of one daemon per user.
struct PidLock {
    _file: File,
    path: PathBuf,
}

impl PidLock {
    /// Takes the pid lock. A holder whose socket does not answer is waited for a while: a daemon that was just
    /// killed releases its socket before its lock (the kernel closes a dying process's files one by one), so a
    /// command that saw it die and starts the next one at once would otherwise be told that it still runs.
    fn acquire(runtime: &Path, socket: &Path) -> Result<PidLock> {
        let path = runtime.join("dreamerd.pid");
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .ctx("open", &path)?;
        let deadline = Instant::now() + PID_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock)
                    if Instant::now() < deadline && !ipc::daemon_alive(socket) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    return Err(Error::Usage(format!(
                        "another dreamerd daemon is already running (pid {}); there is one per user. Stop it with \
                         `dreamerd stop` first",
                        pid.trim()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e).ctx("lock", &path),
            }
        }
        file.set_len(0).ctx("write", &path)?;
        writeln!(file, "{}", std::process::id()).ctx("write", &path)?;
        Ok(PidLock { _file: file, path })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reports an operation the daemon runs on its own (recovery, automatic restore) to the log.
struct LogSink;

impl crate::engine::Sink for LogSink {
    fn output(&self, _: crate::engine::Stream, line: &str) {
        tracing::debug!(%line, "output");
    }
    fn progress(&self, message: &str) {
        tracing::info!("{message}");
    }
}

/// The watch list's format. 1: `{"projects": [...]}` (dreamerd 0.1.0 wrote it without `format`).
const WATCHLIST_FORMAT: u32 = 1;

/// The persisted watch list.
#[derive(Default, Serialize, Deserialize)]
struct WatchList {
    #[serde(default = "first_format")]
    format: u32,
    projects: Vec<PathBuf>,
    /// The drizzle config a project was watched with, where a command named one (older daemons ignore it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    configs: BTreeMap<PathBuf, String>,
}

fn first_format() -> u32 {
    1
}

/// Runs the daemon in the foreground until SIGTERM, SIGINT or `dreamerd stop`.
/// Returns whether the daemon should be started again (a restart request).
pub fn run(loaded: Loaded, reload: Reload, dirs: Dirs) -> Result<bool> {
    // glibc gives every thread that allocates its own arena (up to 8 per core), each keeping what it freed: a
    // long-running daemon whose scans run on short-lived threads holds on to tens of megabytes that way. Two arenas
    // are plenty for a daemon that mostly waits.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Fixed thresholds (setting them turns glibc's dynamic ones off): by default freeing a large block raises
        // both, up to 32 and 64 MiB, after which big buffers come from the arenas and the top of a thread arena may
        // keep that much, which malloc_trim never gives back. Blocks from 256 KiB are their own mappings (returned
        // when freed) and an arena's top past 1 MiB is returned at once.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
    // Each scan reads its checkout's stat cache afresh (a millisecond for 2,000 files) rather than the daemon holding
    // every watched folder's in memory between events.
    crate::facts::transient();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
            Error::failed(format!("cannot start the async runtime: {e}"), "check system limits")
        })?;
    runtime.block_on(main_loop(loaded, reload, dirs))
}

async fn main_loop(loaded: Loaded, reload: Reload, dirs: Dirs) -> Result<bool> {
    let runtime_dir = ipc::runtime_dir(&dirs);
    ipc::secure_runtime_dir(&runtime_dir)?;
    let socket = ipc::socket_path(&dirs);
    let pid_lock = PidLock::acquire(&runtime_dir, &socket)?;
    let (listener, activated) = match activated_listener()? {
        // Socket activation (dreamerd.socket): systemd bound the socket and owns its path.
        Some(listener) => (listener, true),
        None => {
            reclaim_stale_socket(&socket)?;
            let name = socket.as_path().to_fs_name::<GenericFilePath>().ctx("name", &socket)?;
            (ListenerOptions::new().name(name).mode(0o600).create_tokio().ctx("listen on", &socket)?, false)
        }
    };

    let queue =
        std::env::var("DREAMERD_EVENT_QUEUE").ok().and_then(|q| q.parse().ok()).unwrap_or(DEFAULT_QUEUE);
    let (fs_tx, fs_rx) = mpsc::channel(queue.max(1));
    let (rescan_tx, rescan_rx) = mpsc::unbounded_channel();
    let desktop = Arc::new(Desktop::new(loaded.engine.config.notify.desktop));
    let daemon = Arc::new(Daemon {
        loaded: std::sync::RwLock::new(Arc::new(loaded)),
        reload,
        dirs,
        state: Mutex::new(State::default()),
        watcher: Mutex::new(None),
        events: broadcast::channel(1024).0,
        recent: Mutex::new(VecDeque::new()),
        desktop,
        shutdown: Notify::new(),
        stopping: AtomicBool::new(false),
        stopped: tokio::sync::watch::Sender::new(false),
        ops_in_flight: AtomicU64::new(0),
        ops_done: Notify::new(),
        connections: AtomicU64::new(0),
        watchlist_write: Mutex::new(()),
        rescan_tx,
        overflow_flagged: Arc::new(AtomicBool::new(false)),
        scheduler_beat: AtomicU64::new(0),
        started: Instant::now(),
        unit: systemd_unit(),
        activated,
        restart: AtomicBool::new(false),
        status_sent: Mutex::new(String::new()),
        backup_waiting: Notify::new(),
        cookie_dir: std::sync::OnceLock::new(),
        cookies: Mutex::new(HashMap::new()),
        cookie_seq: AtomicU64::new(0),
    });
    let watchlist = daemon.load_watchlist()?;
    daemon.start_watcher(fs_tx, &runtime_dir.join("cookies"))?;
    tokio::spawn(daemon.clone().scheduler(fs_rx, rescan_rx));
    for root in watchlist {
        daemon.add_project(&root, false);
        let this = daemon.clone();
        tokio::spawn(async move { this.recover_project(&root).await });
    }
    tokio::spawn(daemon.clone().upload_waiting());
    tokio::spawn(daemon.clone().prune_daily());
    tracing::info!(
        version = ipc::VERSION,
        protocol = ipc::PROTOCOL,
        pid = std::process::id(),
        socket = %socket.display(),
        "dreamerd daemon listening"
    );
    // Under systemd (Type=notify): ready once the socket is bound and the watch list loaded; the scans go on after,
    // their progress in STATUS= lines. Without NOTIFY_SOCKET these do nothing.
    let status_line = daemon.status_line();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status_line)]);
    *daemon.status_sent.lock().expect("status line") = status_line;
    // The watchdog is pinged from this loop only, and only while the scheduler goes round too: a daemon whose loops
    // stop answering is restarted by systemd.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    // Only the watchdog wakes an idle daemon: the STATUS= line is also sent after each rescan, when it changes.
    let mut tick =
        tokio::time::interval(watchdog.unwrap_or(STATUS_EVERY).max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    let supervised = std::env::var_os("NOTIFY_SOCKET").is_some();

    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::failed(e.to_string(), ""))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::failed(e.to_string(), ""))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::failed(e.to_string(), ""))?;
    // Connections beyond the cap wait in the kernel's queue rather than take the last file descriptors, and accept
    // errors (out of descriptors) back off instead of spinning.
    let permits = Arc::new(tokio::sync::Semaphore::new(connection_cap()));
    let mut backoff = Backoff::default();
    loop {
        let pause = backoff.pause();
        let accept = async {
            tokio::time::sleep(pause).await;
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            (permit, listener.accept().await)
        };
        tokio::select! {
            (permit, conn) = accept => match conn {
                Ok(conn) => {
                    backoff.succeeded();
                    tokio::spawn(daemon.clone().handle(conn, Some(permit)));
                }
                Err(e) => {
                    if let Some(failures) = backoff.failed() {
                        tracing::warn!(error = %e, failures, "accepting connections fails; backing off");
                    }
                }
            },
            // Only under a systemd watchdog: otherwise nothing wakes an idle daemon.
            _ = tick.tick(), if supervised && watchdog.is_some() => {
                daemon.send_status_line();
                if let Some(every) = watchdog
                    && last_ping.elapsed() >= every
                {
                    // The scheduler beats every 500 ms: a shorter watchdog period must not read that as wedged.
                    if daemon.healthy((every * 2).max(std::time::Duration::from_millis(1500))) {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        last_ping = Instant::now();
                    } else {
                        tracing::error!("the scheduler has not gone round for a watchdog period; no longer pinging the watchdog");
                    }
                }
            }
            _ = sighup.recv() => {
                daemon.clone().reload().await;
                daemon.status_sent.lock().expect("status line").clear();
                daemon.send_status_line(); // replacing "reloading"
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = daemon.shutdown.notified() => { tracing::info!("stop requested: shutting down"); break; }
        }
    }
    daemon.stopping.store(true, Ordering::SeqCst);
    daemon.stopped.send_replace(true);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // A running push or restore finishes or rolls back by itself; it is never cut in the middle. Meanwhile the
    // socket still answers (new operations are refused as the daemon is stopping), so no client hangs.
    loop {
        let done = daemon.ops_done.notified();
        if daemon.ops_in_flight.load(Ordering::SeqCst) == 0 {
            break;
        }
        tracing::info!("waiting for running operations to finish");
        tokio::select! {
            () = done => {}
            conn = listener.accept() => {
                if let Ok(conn) = conn {
                    let permit = permits.clone().try_acquire_owned().ok();
                    tokio::spawn(daemon.clone().handle(conn, permit));
                }
            }
        }
    }
    // Let the handlers deliver their final answers (a streaming `events --follow` ends itself on shutdown).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while daemon.connections.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(listener); // removes the socket file
    drop(pid_lock);
    let restart = daemon.restart.load(Ordering::SeqCst);
    tracing::info!(restart, "dreamerd stopped");
    Ok(restart)
}

/// How often the STATUS= line is brought up to date (and at most how long between watchdog checks).
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How soon, and at most how seldom, a recovery that found the project's lock held tries again.
const RECOVER_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const RECOVER_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The systemd unit this process runs in: the last `.service` of its control group, when systemd started it
/// (`INVOCATION_ID`).
fn systemd_unit() -> Option<String> {
    std::env::var_os("INVOCATION_ID")?;
    unit_of_pid(std::process::id())
}

/// The service whose control group holds process `pid` (`/proc/PID/cgroup`), other than a user manager's own.
pub(crate) fn unit_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let last = path.rsplit('/').next()?;
        (last.ends_with(".service") && !last.starts_with("user@")).then(|| last.to_string())
    })
}

/// How many client connections are served at once: a quarter of the open-file limit (at least 8, at most 512), so
/// that held connections never take the descriptors the daemon needs for its own work.
fn connection_cap() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1024);
    (limit / 4).clamp(8, 512) as usize
}

/// Pauses between failing accepts (10 ms doubling to 1 s), and says when a failure is worth a log line: the first
/// of a streak, then at most one every 10 s.
#[derive(Default)]
struct Backoff {
    failures: u64,
    last_logged: Option<Instant>,
}

impl Backoff {
    fn pause(&self) -> std::time::Duration {
        if self.failures == 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_millis(10u64 << self.failures.min(7)).min(std::time::Duration::from_secs(1))
    }

    /// Counts a failure; returns the streak's length when it should be logged.
    fn failed(&mut self) -> Option<u64> {
        self.failures += 1;
        let due = self.last_logged.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10));
        if due {
            self.last_logged = Some(Instant::now());
        }
        due.then_some(self.failures)
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.last_logged = None;
    }
}

/// Removes a socket file left by a daemon that died, but only once connecting to it is refused.
/// The listening socket systemd passed (socket activation: `LISTEN_FDS`, `LISTEN_PID`), if any. It is used as it is;
/// its path stays systemd's (never unlinked here), and every connection's peer uid is still checked.
fn activated_listener() -> Result<Option<interprocess::local_socket::tokio::Listener>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds: Vec<i32> = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect(),
        Err(e) => return Err(Error::failed(format!("cannot take the sockets systemd passed: {e}"), "")),
    };
    let Some(&fd) = fds.first() else { return Ok(None) };
    // SAFETY: systemd passes the descriptor to this process alone, once; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    rustix::fs::fcntl_setfl(&owned, rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::failed(format!("cannot use the socket systemd passed: {e}"), ""))?;
    let listener =
        interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(owned).map_err(|e| {
            Error::failed(
                format!("the descriptor systemd passed is not a listening Unix socket: {e}"),
                "check dreamerd.socket",
            )
        })?;
    tracing::info!("listening on the socket systemd passed (socket activation)");
    Ok(Some(listener.into()))
}

fn reclaim_stale_socket(socket: &Path) -> Result<()> {
    if !fsutil::exists_nofollow(socket) {
        return Ok(());
    }
    let name = socket.to_fs_name::<GenericFilePath>().ctx("name", socket)?;
    match interprocess::local_socket::Stream::connect(name) {
        Ok(_) => Err(Error::Usage(format!(
            "another daemon answers on {} although the pid lock was free; stop it first",
            socket.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "removing the stale socket of a daemon that died");
            std::fs::remove_file(socket).ctx("remove", socket)
        }
        Err(e) => {
            Err(Error::Usage(format!("{} exists and cannot be used: {e}; remove it", socket.display())))
        }
    }
}

impl Daemon {
    /// The configuration in force now.
    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGHUP: reads the configuration again. Watches, the watch list and running operations are kept; a
    /// configuration that cannot be read leaves the running one in force.
    async fn reload(self: Arc<Self>) {
        // With MONOTONIC_USEC, as Type=notify-reload (systemd 253 and later) requires; older managers ignore it.
        let mut reloading = vec![
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::Status("reloading the configuration"),
        ];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        let _ = sd_notify::notify(&reloading);
        let this = self.clone();
        match tokio::task::spawn_blocking(move || (this.reload)()).await {
            Ok(Ok(loaded)) => {
                self.desktop.set_enabled(loaded.engine.config.notify.desktop);
                let file = loaded.config_file.clone();
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                tracing::info!(config = %file.as_deref().map(shown).unwrap_or_else(|| "-".into()), "SIGHUP: configuration reloaded; every project is rescanned with it");
                self.emit(serde_json::json!({"type": "config-reloaded", "ok": true, "config": file}));
                let roots: Vec<PathBuf> =
                    self.state.lock().expect("state").projects.keys().cloned().collect();
                for root in roots {
                    self.mark(&root, Instant::now());
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: the configuration cannot be read; the daemon keeps running with the one it had");
                self.emit(
                    serde_json::json!({"type": "config-reloaded", "ok": false, "error": e.to_string()}),
                );
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reading the configuration panicked"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// Whether the scheduler went round within `within`.
    fn healthy(&self, within: std::time::Duration) -> bool {
        let beat = std::time::Duration::from_millis(self.scheduler_beat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat) <= within
    }

    pub(super) fn beat(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.scheduler_beat.store(now, Ordering::Relaxed);
    }

    /// Sends the STATUS= line to systemd when it changed (after each rescan, at each watchdog tick).
    pub(super) fn send_status_line(&self) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        let line = self.status_line();
        let mut sent = self.status_sent.lock().expect("status line");
        if *sent != line {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
            *sent = line;
        }
    }

    /// The STATUS= line: first-scan progress, violated projects, and scans past their time limit.
    fn status_line(&self) -> String {
        let limit = self.scan_limit();
        let state = self.state.lock().expect("state");
        let total = state.projects.len();
        let scanned = state.projects.values().filter(|w| w.rescans > 0).count();
        let mut line = if scanned < total {
            format!("scanning: {scanned} of {total} project(s) done")
        } else {
            format!("watching {total} project(s)")
        };
        let names = |roots: Vec<&PathBuf>| {
            let mut shown: Vec<String> = roots.iter().take(3).map(|r| shown(r)).collect();
            if roots.len() > 3 {
                shown.push(format!("and {} more", roots.len() - 3));
            }
            shown.join(", ")
        };
        let violated: Vec<&PathBuf> = state
            .projects
            .iter()
            .filter(|(_, w)| {
                w.status.as_ref().is_some_and(|s| s.state == crate::engine::ProjectState::Violated)
            })
            .map(|(r, _)| r)
            .collect();
        if !violated.is_empty() {
            line += &format!("; {} violated: {}", violated.len(), names(violated));
        }
        let stalled: Vec<&PathBuf> = state
            .projects
            .iter()
            .filter(|(_, w)| w.scanning.since().is_some_and(|t| t.elapsed() > limit))
            .map(|(r, _)| r)
            .collect();
        if !stalled.is_empty() {
            line += &format!("; {} scan(s) over {}s: {}", stalled.len(), limit.as_secs(), names(stalled));
        }
        line
    }

    /// How long one project's scan may take before it is reported as stalled (the others go on meanwhile).
    pub(super) fn scan_limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.loaded().engine.config.watch.scan_limit_secs.max(1))
    }

    fn watchlist_path(&self) -> PathBuf {
        self.dirs.state.join("watchlist.json")
    }

    /// The persisted watch list. One of a newer format is an error (the daemon does not start and so never
    /// overwrites it); one that cannot be parsed is set aside and reported.
    fn load_watchlist(&self) -> Result<Vec<PathBuf>> {
        let path = self.watchlist_path();
        let bytes = match crate::safefs::read_file(&path, 16 << 20, false) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("read", &path),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let format = value.get("format").and_then(serde_json::Value::as_u64).unwrap_or(1);
        crate::error::check_format(u32::try_from(format).unwrap_or(u32::MAX), WATCHLIST_FORMAT, || {
            format!("the watch list {}", path.display())
        })?;
        match serde_json::from_value::<WatchList>(value) {
            Ok(list) => {
                let mut state = self.state.lock().expect("state");
                for (root, config) in list.configs {
                    state.contexts.entry(root).or_default().config = Some(config);
                }
                Ok(list.projects)
            }
            Err(e) => {
                let aside = path.with_extension(format!("json.unreadable-{}", std::process::id()));
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(error = %e, kept = %shown(&aside), "the watch list is unreadable; it was set aside and the daemon starts with none");
                Ok(Vec::new())
            }
        }
    }

    /// Writes the watch list as it is now. Saves are serialised and each writes the list as it is at that moment,
    /// so two concurrent watch and unwatch calls can never leave the older list on disk.
    fn save_watchlist(&self) -> Result<()> {
        let _one_at_a_time = self.watchlist_write.lock().expect("watch list writer");
        let (projects, configs) = {
            let state = self.state.lock().expect("state");
            let projects: Vec<PathBuf> = state.projects.keys().cloned().collect();
            let configs = projects
                .iter()
                .filter_map(|r| state.contexts.get(r).and_then(|c| c.config.clone()).map(|c| (r.clone(), c)))
                .collect();
            (projects, configs)
        };
        let path = self.watchlist_path();
        fsutil::create_private_dir(&self.dirs.state).ctx("create", &self.dirs.state)?;
        let list = WatchList { format: WATCHLIST_FORMAT, projects, configs };
        let json = serde_json::to_vec_pretty(&list).expect("serialises");
        fsutil::atomic_write(&path, &json).ctx("write", &path)
    }

    /// Starts watching a project (idempotent) and schedules its first scan.
    fn add_project(&self, root: &Path, persist: bool) -> bool {
        let added = {
            let mut state = self.state.lock().expect("state");
            if state.projects.contains_key(root) {
                false
            } else {
                state.projects.insert(root.to_path_buf(), Watched::default());
                true
            }
        };
        if added {
            tracing::info!(project = %shown(root), "watching");
            // The watches are put in place by the rescan scheduled below, on a blocking thread.
            if persist && let Err(e) = tokio::task::block_in_place(|| self.save_watchlist()) {
                tracing::error!(error = %e, "cannot save the watch list");
            }
        }
        // Pending at once (not only when the scheduler reads its wake), so a status in between rescans first.
        self.rescan_soon(root);
        added
    }

    /// Finishes what a crash left in a project (a half-done swap, an interrupted push) without waiting for the
    /// next push or restore. A project lock held by someone else (a status adopting a push for an instant, another
    /// command's operation, a helper that outlived the crashed one) is waited for in the background: giving up
    /// would leave the project interrupted until the next push or restore.
    async fn recover_project(self: &Arc<Self>, root: &Path) {
        if let Err(why) = self.try_recover(root).await {
            tracing::info!(project = %shown(root), reason = %why, "an interrupted operation waits for the project's lock");
            let this = self.clone();
            let root = root.to_path_buf();
            tokio::spawn(async move {
                let mut pause = RECOVER_RETRY_FIRST;
                loop {
                    tokio::time::sleep(pause).await;
                    let watched = this.state.lock().expect("state").projects.contains_key(&root);
                    if this.stopping.load(Ordering::SeqCst)
                        || !watched
                        || this.try_recover(&root).await.is_ok()
                    {
                        break;
                    }
                    pause = (pause * 2).min(RECOVER_RETRY_MAX);
                }
                this.rescan_soon(&root);
            });
        }
        self.rescan_soon(root);
    }

    /// One attempt at [`Daemon::recover_project`]; `Err` (why) when the project's lock is held.
    async fn try_recover(self: &Arc<Self>, root: &Path) -> std::result::Result<(), String> {
        let this = self.clone();
        let spec = self.spec(root);
        let op = move || {
            let project = spec.resolve()?;
            this.engine_for(&spec, &project)?.recover_now(&project, &LogSink)
        };
        match self.within_limit(root, self.run_op(root, op)).await {
            Ok(true) => {
                tracing::info!(project = %root.display(), "finished what an interrupted operation left");
                Ok(())
            }
            Ok(false) => Ok(()),
            // Shutting down: the next start finishes it.
            Err(Error::Busy(_)) if self.stopping.load(Ordering::SeqCst) => Ok(()),
            Err(Error::Busy(why)) => Err(why),
            Err(e) => {
                tracing::warn!(project = %root.display(), error = %e, "cannot finish an interrupted operation");
                Ok(())
            }
        }
    }

    fn remove_project(&self, root: &Path) -> Result<bool> {
        let removed = self.state.lock().expect("state").projects.remove(root);
        let Some(watched) = removed else { return Ok(false) };
        tokio::task::block_in_place(|| {
            if let Some(w) = self.watcher.lock().expect("watcher").as_mut() {
                for path in &watched.watches {
                    let _ = notify::Watcher::unwatch(w, path);
                }
            }
        });
        tracing::info!(project = %root.display(), "no longer watching");
        tokio::task::block_in_place(|| self.save_watchlist())?;
        self.send_status_line();
        Ok(true)
    }

    /// Records and broadcasts an event.
    fn emit(&self, mut event: serde_json::Value) {
        event["at"] = serde_json::Value::String(rfc3339(std::time::SystemTime::now()));
        {
            let mut recent = self.recent.lock().expect("recent");
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.events.send(event);
    }

    /// The project at `root` as the last command for it named it (config, environment).
    pub(crate) fn spec(&self, root: &Path) -> Spec {
        let context = self.state.lock().expect("state").contexts.get(root).cloned().unwrap_or_default();
        Spec { root: root.to_path_buf(), context }
    }

    /// The engine of an operation on `project`: the settings the last command carried (else the daemon's own),
    /// layered with the project file's.
    pub(crate) fn engine_for(&self, spec: &Spec, project: &Project) -> Result<Engine> {
        let loaded = self.loaded();
        let settings = spec.context.settings.as_ref().unwrap_or(&loaded.settings);
        Engine::for_project(settings, project, self.dirs.clone())
    }

    /// Keeps what a command carried for a project. A command without an environment (an older client) keeps the
    /// one known.
    pub(crate) fn remember(&self, root: &Path, context: Context) {
        let mut state = self.state.lock().expect("state");
        let known = state.contexts.entry(root.to_path_buf()).or_default();
        if context.config.is_some() {
            known.config = context.config;
        }
        if context.env.is_some() {
            known.env = context.env;
        }
        if context.settings.is_some() {
            known.settings = context.settings;
        }
    }

    /// Stores, in the background, the backups of successful pushes that the store refused (it was down, the network
    /// was), as soon as it answers again: every `DREAMERD_UPLOAD_SECS` (30), for each watched project with one waiting,
    /// with the credentials the last command for it carried (in memory only) or those the daemon finds itself.
    async fn upload_waiting(self: Arc<Self>) {
        let every =
            std::env::var("DREAMERD_UPLOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30u64).max(1);
        loop {
            // Asleep while no watched project has a backup waiting (not scanned yet counts: it may have one; a rescan
            // that finds one wakes it).
            let waiting = |this: &Self| -> Vec<PathBuf> {
                let state = this.state.lock().expect("state");
                let waits = |w: &Watched| w.status.as_ref().is_none_or(|s| s.backup_waiting.is_some());
                state.projects.iter().filter(|(_, w)| waits(w)).map(|(r, _)| r.clone()).collect()
            };
            while waiting(&self).is_empty() {
                self.backup_waiting.notified().await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(every)).await;
            let roots = waiting(&self);
            for root in roots {
                let this = self.clone();
                let spec = self.spec(&root);
                let done = tokio::task::spawn_blocking(move || -> Result<Option<String>> {
                    let project = spec.resolve()?;
                    let engine = this.engine_for(&spec, &project)?;
                    engine.upload_waiting(&project)
                })
                .await;
                match done {
                    Ok(Ok(Some(push))) => {
                        tracing::info!(project = %shown(&root), push = %push, "stored the backup that was waiting for the store");
                        self.emit(
                            serde_json::json!({"type": "backup-stored", "root": root, "push_id": push}),
                        );
                        // No file changed: the status is looked at again now.
                        self.rescan(&root).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(project = %shown(&root), error = %e, "the waiting backup still cannot be stored")
                    }
                    _ => {}
                }
            }
        }
    }

    /// Prunes the quarantine now and then once a day (`retention.auto_prune`, as the configuration says at the
    /// time), so it stays bounded by itself.
    async fn prune_daily(self: Arc<Self>) {
        loop {
            let loaded = self.loaded();
            if !loaded.engine.config.retention.auto_prune {
                tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
                continue;
            }
            let pruned =
                tokio::task::spawn_blocking(move || loaded.engine.prune(false, std::time::SystemTime::now()))
                    .await;
            match pruned {
                Ok(Ok(r)) if !r.removed.is_empty() => tracing::info!(
                    removed = r.removed.len(),
                    freed_bytes = r.freed_bytes,
                    retention_days = r.retention_days,
                    "pruned the quarantine of what is older than the retention age"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the quarantine"),
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
        }
    }
}

/// A path as a log field: control characters escaped, so a name cannot forge a log line.
pub(crate) fn shown(path: &Path) -> String {
    crate::manifest::escaped(&path.to_string_lossy()).into_owned()
}
