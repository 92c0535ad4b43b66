//! One connection: hello, one bounded request, the streamed answer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use interprocess::local_socket::tokio::Stream as LocalStream;
use interprocess::local_socket::traits::StreamCommon as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{Daemon, WatchInfo};
use crate::engine::{ProjectStatus, PushReport, Sink, Stream};
use crate::error::{Error, Result};
use crate::ipc::{self, Envelope, Reply, Request};

pub use crate::engine::RUNNING_PUSH;

/// How long a client may take to send its request after the hello.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of replies waiting for a slow client (`DREAMERD_CLIENT_QUEUE` overrides it). Past it, operation
/// output is dropped (and counted) and an `events --follow` client is told it `lagged`; nothing grows without bound.
const CLIENT_QUEUE: usize = 256;

fn client_queue() -> usize {
    std::env::var("DREAMERD_CLIENT_QUEUE").ok().and_then(|q| q.parse().ok()).unwrap_or(CLIENT_QUEUE).max(1)
}

/// Streams an operation's output to the client from the blocking thread that runs it, never waiting for a client
/// that reads slowly (or not at all): what does not fit is counted and said once there is room again.
struct ChannelSink {
    tx: mpsc::Sender<Reply>,
    dropped: std::sync::atomic::AtomicU64,
}

impl ChannelSink {
    fn new(tx: mpsc::Sender<Reply>) -> ChannelSink {
        ChannelSink { tx, dropped: std::sync::atomic::AtomicU64::new(0) }
    }

    fn send(&self, reply: Reply) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = Reply::Progress {
                message: format!("{dropped} line(s) of output were not shown: this client read too slowly"),
            };
            if self.tx.try_send(note).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.dropped.fetch_sub(dropped, Ordering::Relaxed);
        }
        if self.tx.try_send(reply).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sink for ChannelSink {
    fn output(&self, stream: Stream, line: &str) {
        self.send(Reply::Output { stream, line: line.to_string() });
    }
    fn progress(&self, message: &str) {
        self.send(Reply::Progress { message: message.to_string() });
    }
}

/// The project root at `dir`, which must be absolute. Only located here: the config is evaluated on a blocking
/// thread, with the environment the request carried.
fn resolve(dir: &Path) -> Result<std::path::PathBuf> {
    if !dir.is_absolute() {
        return Err(Error::Usage(format!("{} is not an absolute path", dir.display())));
    }
    Ok(crate::project::Project::find_root(Some(dir), None)?.0)
}

fn error_reply(e: &Error) -> Reply {
    Reply::Error { exit: e.exit_code(), error: e.to_string(), hint: e.hint() }
}

impl Daemon {
    /// Serves one connection; `_permit` is its place under the connection cap, given back when it ends.
    pub(super) async fn handle(
        self: Arc<Self>,
        conn: LocalStream,
        _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.clone().serve_connection(conn).await;
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }

    async fn serve_connection(self: Arc<Self>, conn: LocalStream) {
        let me = rustix::process::geteuid().as_raw();
        match conn.peer_creds().map(|c| c.euid()) {
            Ok(Some(uid)) if uid == me => {}
            other => {
                tracing::warn!(peer = ?other, "refused a connection from another user");
                return;
            }
        }
        let mut send = &conn;
        let hello = Reply::Hello {
            daemon_version: ipc::VERSION.into(),
            protocol: advertised_protocol(),
            pid: std::process::id(),
            config: self.loaded().config_file.clone(),
            unit: self.unit.clone(),
            activated: self.activated,
        };
        if send.write_all(hello.line().as_bytes()).await.is_err() {
            return;
        }
        let mut reader = BufReader::new(&conn);
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            REQUEST_TIMEOUT,
            (&mut reader).take(ipc::MAX_REQUEST as u64 + 1).read_until(b'\n', &mut line),
        )
        .await;
        let request = match read {
            Err(_) => Err(format!("no request within {}s", REQUEST_TIMEOUT.as_secs())),
            // A probe (is a daemon there?) connects and leaves without a request: nothing to warn about.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                tracing::debug!("a client left before sending a request");
                return;
            }
            Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
            Ok(Ok(0)) => return, // the client went away
            Ok(Ok(_)) if line.len() > ipc::MAX_REQUEST => {
                Err(format!("the request is larger than {} bytes", ipc::MAX_REQUEST))
            }
            Ok(Ok(_)) => {
                serde_json::from_slice::<Envelope>(&line).map_err(|e| format!("malformed request: {e}"))
            }
        };
        let (request, context) = match request {
            Ok(env) if env.protocol == ipc::PROTOCOL => (
                env.request,
                super::Context { config: env.drizzle_config, env: env.env, settings: env.settings },
            ),
            Ok(env) => {
                let e = Error::Usage(format!(
                    "protocol {} is not spoken here; this daemon speaks protocol {}",
                    env.protocol,
                    ipc::PROTOCOL
                ));
                let _ = send.write_all(error_reply(&e).line().as_bytes()).await;
                return;
            }
            Err(why) => {
                tracing::warn!(%why, "refused a bad request");
                let _ = send.write_all(error_reply(&Error::Usage(why)).line().as_bytes()).await;
                return;
            }
        };
        let (tx, mut rx) = mpsc::channel::<Reply>(client_queue());
        let follows = matches!(request, Request::Events { follow: true });
        let work = tokio::spawn(self.clone().dispatch(request, context, tx));
        let mut probe = [0u8; 512];
        let mut probing = true;
        loop {
            tokio::select! {
                reply = rx.recv() => match reply {
                    Some(reply) => {
                        if send.write_all(reply.line().as_bytes()).await.is_err() {
                            break; // the client left; the operation itself goes on to its end
                        }
                    }
                    None => break,
                },
                // A client sends nothing after its request. A reset means it left; so does the end of stream of an
                // `events --follow` (interrupted), and dropping `rx` then ends the streaming task. Any other client
                // may half-close after its request (`nc -N`, socat) and still wants its answer.
                read = reader.read(&mut probe), if probing => match read {
                    Ok(0) if !follows => probing = false,
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        drop(rx);
        let _ = work.await;
    }

    /// Runs one request; every reply, the last included, goes through `tx`.
    async fn dispatch(self: Arc<Self>, request: Request, context: super::Context, tx: mpsc::Sender<Reply>) {
        // Directories come from a client: each must be a project root, whatever the client resolved.
        let request = match request {
            Request::Push { dir, custom, options } => {
                resolve(&dir).map(|dir| Request::Push { dir, custom, options })
            }
            Request::Up { dir, backed_up } => resolve(&dir).map(|dir| Request::Up { dir, backed_up }),
            Request::Restore { dir, push, dry_run, with_database } => {
                resolve(&dir).map(|dir| Request::Restore { dir, push, dry_run, with_database })
            }
            Request::Rebase { dir, options } => resolve(&dir).map(|dir| Request::Rebase { dir, options }),
            Request::History { dir } => resolve(&dir).map(|dir| Request::History { dir }),
            Request::Watch { dir } => resolve(&dir).map(|dir| Request::Watch { dir }),
            other => Ok(other),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(error_reply(&e)).await;
                return;
            }
        };
        // The command's config and environment are what this project's work runs with, now and when the daemon
        // rescans it by itself later (in memory only).
        let dir = match &request {
            Request::Push { dir, .. }
            | Request::Up { dir, .. }
            | Request::Rebase { dir, .. }
            | Request::Restore { dir, .. }
            | Request::History { dir }
            | Request::Watch { dir }
            | Request::Status { dir: Some(dir), .. } => Some(dir.clone()),
            _ => None,
        };
        if let Some(dir) = &dir {
            self.remember(dir, context.clone());
        }
        if let (Request::Push { dir, .. } | Request::Up { dir, .. } | Request::Rebase { dir, .. }, Some(env)) =
            (&request, &context.env)
            && let Some(running) = env.get(RUNNING_PUSH)
        {
            let e = Error::failed(
                format!(
                    "a push of {running} is running and a command it started asked for another push of {}; \
                     pushes do not nest",
                    dir.display()
                ),
                "the generate and migrate commands must run drizzle-kit, not `dreamer push`: check push.generate and \
                 push.migrate",
            );
            let _ = tx.send(error_reply(&e)).await;
            return;
        }
        let result = match request {
            Request::Events { follow } => {
                self.stream_events(follow, &tx).await;
                return;
            }
            Request::Stop => {
                self.shutdown.notify_one();
                Ok((0, json!({"ok": true, "stopping": true})))
            }
            Request::Restart => match &self.unit {
                // The daemon exits with RESTART_EXIT once running operations finish; the unit's
                // RestartForceExitStatus= has systemd start it again (with the unit as reloaded meanwhile).
                Some(unit) => {
                    self.restart.store(true, Ordering::SeqCst);
                    self.shutdown.notify_one();
                    let running = self.ops_in_flight.load(Ordering::SeqCst);
                    tracing::info!(
                        unit,
                        running,
                        "restart requested: restarting once running operations finish"
                    );
                    Ok((
                        0,
                        json!({"ok": true, "restarting": true, "unit": unit, "running_operations": running}),
                    ))
                }
                None => Err(Error::Usage(
                    "this daemon is not run by systemd, so nothing would start it again: use `dreamerd stop`"
                        .into(),
                )),
            },
            Request::Status { dir, all } => self.status(dir.as_deref(), all).await,
            Request::Vouch { folder, excluded } => Ok((0, self.vouch(&folder, &excluded).await)),
            Request::Watch { dir } => self.watch(&dir).await,
            Request::Unwatch { dir } => self
                .remove_project(&dir)
                .map(|removed| (0, json!({"ok": true, "root": dir, "was_watched": removed}))),
            Request::History { dir } => {
                let this = self.clone();
                let spec = self.spec(&dir);
                tokio::task::spawn_blocking(move || -> Result<(i32, Value)> {
                    let project = spec.resolve()?;
                    let engine = this.engine_for(&spec, &project)?;
                    Ok((0, serde_json::to_value(engine.history(&project)?).expect("serialises")))
                })
                .await
                .unwrap_or_else(|e| Err(Error::failed(format!("history panicked: {e}"), "")))
            }
            Request::Push { .. } | Request::Up { .. } => {
                let (dir, custom, up, options) = match request {
                    Request::Push { dir, custom, options } => (dir, custom, false, options),
                    Request::Up { dir, backed_up } => {
                        (dir, None, true, crate::engine::PushOptions { backed_up, ..Default::default() })
                    }
                    _ => unreachable!("matched above"),
                };
                let this = self.clone();
                let sink = ChannelSink::new(tx.clone());
                let spec = self.spec(&dir);
                let op = move || {
                    let project = spec.resolve()?;
                    let engine = this.engine_for(&spec, &project)?;
                    match (custom, up) {
                        (_, true) => engine.up(&project, &options, &sink),
                        (Some(name), _) => engine.push_custom(&project, &name, &sink),
                        (None, _) => engine.push_answered(&project, &options, &sink),
                    }
                };
                let report = self.run_op(&dir, op).await;
                if let Ok(r) = &report {
                    let event = match r {
                        PushReport::Ok { push_id, files, unchanged, .. } => {
                            json!({"type": "push", "root": dir, "ok": true, "push_id": push_id, "files": files, "unchanged": unchanged})
                        }
                        PushReport::Opened { custom, .. } => {
                            json!({"type": "push", "root": dir, "ok": true, "custom": custom})
                        }
                        PushReport::Failed(f) => {
                            json!({"type": "push", "root": dir, "ok": false, "stage": f.stage, "code": f.diagnosis.code})
                        }
                    };
                    tracing::info!(project = %dir.display(), event = %event, "push finished");
                    self.emit(event);
                }
                self.after_op(&dir).await;
                report.map(|r| (if r.ok() { 0 } else { 1 }, serde_json::to_value(r).expect("serialises")))
            }
            Request::Rebase { dir, options } => {
                let this = self.clone();
                let sink = ChannelSink::new(tx.clone());
                let spec = self.spec(&dir);
                let report = self
                    .run_op(&dir, move || {
                        let project = spec.resolve()?;
                        this.engine_for(&spec, &project)?.rebase(&project, &options, &sink)
                    })
                    .await;
                if let Ok(r) = &report {
                    let push_id = match &r.push {
                        PushReport::Ok { push_id, .. } => Some(push_id.clone()),
                        _ => None,
                    };
                    tracing::info!(project = %dir.display(), base = %r.base, ok = r.ok, "rebased");
                    self.emit(json!({"type": "rebase", "root": dir, "ok": r.ok, "base": r.base,
                                     "push_id": push_id, "dropped": r.dropped}));
                }
                self.after_op(&dir).await;
                report.map(|r| (if r.ok { 0 } else { 1 }, serde_json::to_value(r).expect("serialises")))
            }
            Request::Restore { dir, push, dry_run, with_database } => {
                let this = self.clone();
                let sink = ChannelSink::new(tx.clone());
                let spec = self.spec(&dir);
                let report = self
                    .run_op(&dir, move || {
                        let project = spec.resolve()?;
                        this.engine_for(&spec, &project)?.restore(
                            &project,
                            push.as_deref(),
                            dry_run,
                            with_database,
                            &sink,
                        )
                    })
                    .await;
                if let Ok(r) = &report
                    && !dry_run
                {
                    tracing::info!(project = %dir.display(), push_id = %r.push_id, "restored");
                    self.emit(json!({"type": "restore", "root": dir, "ok": true, "automatic": false,
                                     "push_id": r.push_id, "quarantine": r.quarantine}));
                }
                if !dry_run {
                    self.after_op(&dir).await;
                }
                report.map(|r| (0, serde_json::to_value(r).expect("serialises")))
            }
        };
        let last = match result {
            Ok((exit, data)) => Reply::Result { exit, data },
            Err(e) => error_reply(&e),
        };
        // The last answer waits for room: it is the one a client must get.
        let _ = tx.send(last).await;
    }

    /// Runs a push or restore on a blocking thread, marked so that its own writes are never reported as
    /// violations and so that shutdown waits for it.
    pub(super) async fn run_op<T: Send + 'static>(
        self: &Arc<Self>,
        root: &Path,
        op: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // Counted before the check: shutdown sets `stopping` and then waits for the count, so an operation either
        // sees `stopping` or is waited for, never neither.
        self.ops_in_flight.fetch_add(1, Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            self.ops_in_flight.fetch_sub(1, Ordering::SeqCst);
            self.ops_done.notify_waiters();
            return Err(Error::Busy("the daemon is shutting down".into()));
        }
        *self.state.lock().expect("state").ops.entry(root.to_path_buf()).or_default() += 1;
        let outcome = tokio::task::spawn_blocking(op).await;
        {
            let mut state = self.state.lock().expect("state");
            if let Some(n) = state.ops.get_mut(root) {
                *n -= 1;
                if *n == 0 {
                    state.ops.remove(root);
                }
            }
        }
        self.ops_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.ops_done.notify_waiters();
        self.trim_when_quiet();
        outcome.unwrap_or_else(|e| {
            Err(Error::failed(format!("the operation panicked: {e}"), "see the daemon's log"))
        })
    }

    /// A project pushed or restored through the daemon is watched from then on. It is rescanned before the
    /// client gets its answer, so a status asked right after never shows the state from before the operation.
    async fn after_op(self: &Arc<Self>, root: &Path) {
        if !self.stopping.load(Ordering::SeqCst) {
            self.add_project(root, true);
            self.rescan(root).await;
        }
    }

    async fn watch(self: &Arc<Self>, dir: &Path) -> Result<(i32, Value)> {
        let added = self.add_project(dir, true);
        self.recover_project(dir).await;
        self.rescan(dir).await;
        let status = self.project_status(dir).await?;
        Ok((0, json!({"ok": true, "root": dir, "newly_watched": added, "project": status})))
    }

    /// Waits until the rescan scheduled for `root` is due (the scheduler never puts it later than ten quiet periods
    /// after its first event).
    async fn await_quiet(&self, root: &Path) {
        let debounce = Duration::from_millis(self.loaded().engine.config.watch.debounce_ms);
        let deadline = tokio::time::Instant::now() + debounce * 11 + Duration::from_secs(1);
        loop {
            let due = self.state.lock().expect("state").pending.get(root).map(|&(_, due)| due);
            let Some(due) = due else { return };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            // Once due, the scheduler takes it at its next turn.
            let due = tokio::time::Instant::from_std(due);
            let wake = if due > now { due } else { now + Duration::from_millis(5) };
            tokio::time::sleep_until(wake.min(deadline)).await;
        }
    }

    /// The daemon's view of one project: the cached status of a watched one (rescanned first if events are
    /// pending), or a fresh scan of an unwatched one.
    async fn project_status(self: &Arc<Self>, root: &Path) -> Result<Value> {
        let restores = self.loaded().engine.config.watch.on_violation == crate::config::OnViolation::Restore;
        let (watched, stale, unwatched) = {
            let state = self.state.lock().expect("state");
            let unwatched = state
                .projects
                .get(root)
                .is_some_and(|w| w.warnings.iter().any(|x| x.starts_with("cannot watch")));
            // Pending events, or watches that could not be set (no events will come): scan now.
            (state.projects.contains_key(root), state.pending.contains_key(root) || unwatched, unwatched)
        };
        // When violations are restored automatically, the daemon's scan waits for the quiet period (made early, it
        // would start the restore under a writer still writing): the answer waits for it too.
        if watched && stale && restores && !unwatched {
            self.await_quiet(root).await;
        }
        if watched && stale {
            self.rescan(root).await;
        }
        let cached = {
            let state = self.state.lock().expect("state");
            state.projects.get(root).map(|w| {
                (
                    w.status.clone(),
                    WatchInfo {
                        watched: true,
                        rescans: w.rescans,
                        overflows: w.overflows,
                        warnings: w.warnings.iter().cloned().collect(),
                    },
                )
            })
        };
        let busy_now = self.state.lock().expect("state").ops.contains_key(root);
        let (status, info) = match cached {
            Some((Some(mut status), info)) if !busy_now => {
                // File events keep violations current; the database changes without any, so read it now.
                let this = self.clone();
                let spec = self.spec(root);
                let mut refreshed = status.clone();
                let fresh = tokio::task::spawn_blocking(move || -> Result<_> {
                    let project = spec.resolve()?;
                    let engine = this.engine_for(&spec, &project)?;
                    (refreshed.drift, refreshed.database) = engine.database_check(&project);
                    engine.name_database_push(&project, &mut refreshed);
                    refreshed.settings = engine.sources;
                    Ok(refreshed)
                });
                if let Ok(Ok(refreshed)) = fresh.await {
                    status = refreshed;
                }
                (status, info)
            }
            other => {
                let info = other.map(|(_, i)| i).unwrap_or(WatchInfo {
                    watched: false,
                    rescans: 0,
                    overflows: 0,
                    warnings: Vec::new(),
                });
                let this = self.clone();
                let spec = self.spec(root);
                let status: ProjectStatus = tokio::task::spawn_blocking(move || {
                    let project = spec.resolve()?;
                    this.engine_for(&spec, &project)?.status(&project)
                })
                .await
                .unwrap_or_else(|e| Err(Error::failed(format!("status panicked: {e}"), "")))?;
                (status, info)
            }
        };
        let mut value = serde_json::to_value(status).expect("serialises");
        value["watch"] = serde_json::to_value(info).expect("serialises");
        Ok(value)
    }

    async fn status(self: &Arc<Self>, dir: Option<&Path>, all: bool) -> Result<(i32, Value)> {
        let roots: Vec<std::path::PathBuf> = match (dir, all) {
            (Some(d), false) => vec![d.to_path_buf()],
            _ => self.state.lock().expect("state").projects.keys().cloned().collect(),
        };
        let mut projects = Vec::new();
        let mut exit = 0;
        for root in roots {
            let value = self.project_status(&root).await?;
            let clean = matches!(value["state"].as_str(), Some("clean" | "no-baseline"))
                && value["drift"].as_array().is_none_or(Vec::is_empty);
            if !clean {
                exit = 1;
            }
            projects.push(value);
        }
        let daemon = json!({"version": ipc::VERSION, "protocol": ipc::PROTOCOL, "pid": std::process::id()});
        Ok((exit, json!({"daemon": daemon, "projects": projects})))
    }

    /// The recent events, then (with `follow`) new ones as they come. A follower that reads too slowly is never
    /// queued for without bound: what does not fit its queue is counted and it gets a `lagged` event.
    async fn stream_events(&self, follow: bool, tx: &mpsc::Sender<Reply>) {
        // Subscribe before copying the backlog so nothing falls between the two.
        let mut live = self.events.subscribe();
        let backlog: Vec<Value> = self.recent.lock().expect("recent").iter().cloned().collect();
        let mut missed: u64 = 0;
        for event in backlog {
            if !offer(tx, Reply::Event { event }, &mut missed) {
                return;
            }
        }
        if !follow {
            let _ = tx.send(Reply::Result { exit: 0, data: json!({"ok": true}) }).await;
            return;
        }
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) => {
                        if !offer(tx, Reply::Event { event }, &mut missed) {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => missed += n,
                    Err(_) => return,
                },
                () = tx.closed() => return,
                () = self.shutdown_signalled() => {
                    let _ = tx.send(Reply::Result { exit: 0, data: json!({"ok": true, "daemon": "stopped"}) }).await;
                    return;
                }
            }
        }
    }

    async fn shutdown_signalled(&self) {
        let mut stopped = self.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// Queues a reply for a follower without waiting: a `lagged` event first when some were missed, and the reply
/// counted as missed when there is no room. False once the client is gone.
fn offer(tx: &mpsc::Sender<Reply>, reply: Reply, missed: &mut u64) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    if *missed > 0 {
        match tx.try_send(Reply::Event { event: json!({"type": "lagged", "missed": *missed}) }) {
            Ok(()) => *missed = 0,
            Err(TrySendError::Full(_)) => {
                *missed += 1;
                return true;
            }
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    match tx.try_send(reply) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            *missed += 1;
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// The protocol version the hello announces. `DREAMERD_TEST_ADVERTISE_PROTOCOL` makes a daemon pose as one of another
/// version, so the tests can prove how a command replaces it (through systemd when systemd runs it); it is for
/// tests only and changes nothing else.
fn advertised_protocol() -> u32 {
    std::env::var("DREAMERD_TEST_ADVERTISE_PROTOCOL")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(ipc::PROTOCOL)
}
