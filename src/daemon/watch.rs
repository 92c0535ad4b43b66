//! File events are hints: they mark a project dirty, and after a quiet period the project is rescanned and
//! diffed against its manifest. Lost events (inotify overflow, a full queue, a watch-limit error) force a full
//! rescan and show in status; nothing is dropped silently. While idle, nothing runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Daemon, Wake, Watched, shown};
use crate::config::OnViolation;
use crate::engine::{ProjectState, ProjectStatus};
use crate::error::{Error, Result};
use crate::manifest::escaped;
use crate::project::Project;

/// A project is rescanned at the latest this many quiet periods after its first pending event, even if events
/// keep coming.
const MAX_DELAY_FACTOR: u32 = 10;
/// How long warnings wait for git to let go of its index lock: longer, it is a lock a crashed git left.
const GIT_HOLD_MAX: Duration = Duration::from_secs(30);
/// How long the first changes after a quiet period must settle before they are scanned (watchman settles as long).
pub(super) const SETTLE: Duration = Duration::from_millis(20);
/// How long a `vouch` waits for its cookie to come out of the watcher (a daemon that busy is not vouching).
const COOKIE_WAIT: Duration = Duration::from_secs(1);
/// How long a `vouch` waits for the scan of a folder that changed since the daemon's last look (`check` waits for
/// its answer 5 s, then scans by itself).
const VOUCH_SCAN_WAIT: Duration = Duration::from_secs(3);

/// What a `vouch` can answer.
enum Verdict {
    Vouched(crate::engine::Scanned),
    /// Changed since the last scan: scan first.
    Rescan(PathBuf),
    Refused(&'static str),
}

/// Why a folder is not vouched for when no project's last scan kept it.
const NOT_FOUND: &str = "no watched project's last scan found this folder on a local filesystem";

/// git's index lock of the checkout at `root` (a worktree's own), asked of git itself; `None` outside git.
fn git_index_lock(root: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir).join("index.lock"))
}

/// A violation as the daemon remembers it: what changed, not who.
fn violation_key(v: &crate::manifest::Violation) -> String {
    let mut v = v.clone();
    (v.source, v.commit) = (None, None);
    serde_json::to_string(&v).expect("serialises")
}

/// Whether `path` is on a filesystem whose every change raises an inotify event here: a local one. Over NFS, SMB,
/// FUSE or 9p, another machine (or the FUSE server) changes files without one.
fn local_filesystem(path: &Path) -> bool {
    const LOCAL: [u64; 10] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x2FC1_2FC1, // zfs
        0xF2F5_2010, // f2fs
        0xCA45_1A4E, // bcachefs
        0x794C_7630, // overlayfs
        0x3153_464A, // jfs
        0x5265_4973, // reiserfs
    ];
    rustix::fs::statfs(path).is_ok_and(|s| LOCAL.contains(&(s.f_type as u64)))
}

/// The commit HEAD names in the checkout at `root`.
pub(crate) fn git_head(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "-q", "HEAD"])
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(sha)
}

/// Where a project's files are, as the daemon watches them: the migration folder recursively; the root, the
/// config's folder and the schema's folders without their subfolders (a glob with `**` recursively from its
/// base), so that editors' atomic saves and the deletion and re-creation of folders are seen.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct WatchPaths {
    root: PathBuf,
    out: PathBuf,
    /// Folders holding the schema (any file appearing in them may be schema).
    schema_dirs: Vec<(PathBuf, RecursiveMode)>,
    /// Files whose change matters besides the migration folder: the schema files, the config, `.env` files.
    files: BTreeSet<PathBuf>,
    /// Folders watched for those files.
    file_dirs: BTreeSet<PathBuf>,
}

impl WatchPaths {
    /// What dreamerd 0.1.0 watched: `drizzle/` and `src/schema.ts`.
    pub(super) fn legacy(root: &Path) -> WatchPaths {
        WatchPaths::of(&Project::legacy(root))
    }

    /// The paths of a resolved project.
    pub(super) fn of(project: &Project) -> WatchPaths {
        let root = project.root.clone();
        let workdir = project.workdir();
        let mut files: BTreeSet<PathBuf> = project.schema_files().into_iter().collect();
        if let Some(config) = &project.config {
            files.insert(crate::project::layout::normalize(&root.join(config)));
        }
        files.insert(workdir.join(".env"));
        let mut schema_dirs = Vec::new();
        for pattern in &project.layout.schema {
            if pattern.contains(['*', '?', '[', '{']) {
                let base: PathBuf = Path::new(pattern)
                    .components()
                    .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[', '{']))
                    .collect();
                let mode = if pattern.contains("**") {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                schema_dirs.push((crate::project::layout::normalize(&workdir.join(base)), mode));
            } else {
                let path = crate::project::layout::normalize(&workdir.join(pattern));
                if is_dir(&path) {
                    schema_dirs.push((path, RecursiveMode::NonRecursive));
                }
            }
        }
        let file_dirs = files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        WatchPaths { root, out: project.drizzle(), schema_dirs, files, file_dirs }
    }

    /// Every folder to watch, and how.
    fn wanted(&self) -> Vec<(PathBuf, RecursiveMode)> {
        let mut want: Vec<(PathBuf, RecursiveMode)> = vec![(self.root.clone(), RecursiveMode::NonRecursive)];
        for dir in &self.file_dirs {
            want.push((dir.clone(), RecursiveMode::NonRecursive));
        }
        want.extend(self.schema_dirs.iter().cloned());
        want.push((self.out.clone(), RecursiveMode::Recursive));
        // One watch per folder; recursive wins.
        want.sort_by(|a, b| {
            a.0.cmp(&b.0).then((b.1 == RecursiveMode::Recursive).cmp(&(a.1 == RecursiveMode::Recursive)))
        });
        want.dedup_by(|a, b| a.0 == b.0);
        want
    }

    /// Whether an event path matters.
    fn relevant(&self, path: &Path) -> bool {
        if path.starts_with(self.root.join(crate::engine::STAGING)) {
            return false;
        }
        path == self.root
            || path.starts_with(&self.out)
            || self.files.contains(path)
            || self.file_dirs.contains(path)
            || self.schema_dirs.iter().any(|(d, mode)| {
                path == d
                    || path.parent() == Some(d.as_path())
                    || (*mode == RecursiveMode::Recursive && path.starts_with(d))
            })
    }
}

fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

impl Daemon {
    pub(super) fn start_watcher(
        self: &Arc<Self>,
        tx: mpsc::Sender<notify::Result<notify::Event>>,
        cookies: &Path,
    ) -> Result<()> {
        let wake = self.rescan_tx.clone();
        let flagged = self.overflow_flagged.clone();
        // Links are never followed: a link in drizzle/ to $HOME would otherwise put a watch on every folder of it.
        // Opens and read-only closes are not asked of the kernel: every read of a watched file (a scan's hashing,
        // drizzle-kit reading its snapshots, an editor) would queue one in the same queue as the changes and wake
        // this thread for nothing (100,500 reads cost the daemon 160 ms of CPU and 22,000 context switches).
        let kinds = notify::EventKindMask::CORE | notify::EventKindMask::ACCESS_CLOSE;
        let config = notify::Config::default().with_follow_symlinks(false).with_event_kinds(kinds);
        let watcher = notify::RecommendedWatcher::new(move |event: notify::Result<notify::Event>| {
            if let Ok(e) = &event
                && matches!(e.kind, EventKind::Access(a) if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write))
            {
                return; // reads change nothing (the kernel is not asked for them; a backend that sends them anyway)
            }
            // One overflow wake per burst: the flag is cleared when the scheduler takes it.
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event)
                && !flagged.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let _ = wake.send(Wake::Overflow("the event queue was full"));
            }
        }, config)
        .map_err(|e| Error::failed(format!("cannot start the file watcher: {e}"), "check inotify limits"))?;
        let mut watcher = watcher;
        // The cookie folder: emptied of what an earlier daemon left, and watched with the projects (one inotify
        // instance, one queue: a cookie's event comes after those queued before it).
        let _ = std::fs::remove_dir_all(cookies);
        match crate::fsutil::create_private_dir(cookies)
            .map_err(|e| e.to_string())
            .and_then(|()| watcher.watch(cookies, RecursiveMode::NonRecursive).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                let _ = self.cookie_dir.set(cookies.to_path_buf());
            }
            Err(e) => tracing::warn!(
                folder = %cookies.display(),
                error = %escaped(&e),
                "cannot watch the cookie folder: `check` scans every file even while the daemon watches the project"
            ),
        }
        *self.watcher.lock().expect("watcher") = Some(watcher);
        Ok(())
    }

    /// Answers `vouch`: the folder's tree as the last scan found it, when the watch tells that nothing in it changed
    /// since. First a cookie goes through the watcher, so that every event the kernel queued before the request is
    /// taken into account; then the project whose last scan found this folder must have had no event since that
    /// scan started, its watches all in place, and nothing running or pending on it.
    pub(super) async fn vouch(self: &Arc<Self>, folder: &Path, excluded: &[String]) -> serde_json::Value {
        let refused = |why: &str| json!({"vouched": null, "reason": why});
        let Some(dir) = self.cookie_dir.get() else {
            return refused("the daemon cannot watch its cookie folder");
        };
        let known = self
            .state
            .lock()
            .expect("state")
            .projects
            .values()
            .any(|w| w.vouch.as_ref().is_some_and(|(_, s)| s.folder == folder && s.excluded == excluded));
        if !known {
            return refused(NOT_FOUND);
        }
        let n = self.cookie_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cookie = dir.join(format!("{}-{n}", std::process::id()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cookies.lock().expect("cookies").insert(cookie.clone(), tx);
        let made = std::fs::File::create_new(&cookie);
        let seen = match made {
            Ok(_) => tokio::time::timeout(COOKIE_WAIT, rx).await.is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        self.cookies.lock().expect("cookies").remove(&cookie);
        let _ = std::fs::remove_file(&cookie);
        if !seen {
            return refused("the watcher did not deliver the cookie in time");
        }
        if self.overflow_flagged.load(std::sync::atomic::Ordering::SeqCst) {
            return refused("file events were lost");
        }
        match self.vouch_verdict(folder, excluded) {
            Verdict::Rescan(root) => {
                // The folder changed since the last scan and the daemon is about to scan it anyway (or is scanning
                // it): scan it now and answer from that scan, rather than let `check` read every file a second time
                // on the same cores. Taken out of the schedule first (a scan that cannot run now schedules itself
                // again); the scan is its own task, so a wait that ends never leaves it half done.
                self.state.lock().expect("state").pending.remove(&root);
                let this = self.clone();
                let scan = tokio::spawn(async move { this.rescan(&root).await });
                if tokio::time::timeout(VOUCH_SCAN_WAIT, scan).await.is_err() {
                    return refused("the project's scan takes longer than a check waits for it");
                }
                match self.vouch_verdict(folder, excluded) {
                    Verdict::Vouched(scanned) => json!({"vouched": scanned}),
                    Verdict::Rescan(_) => {
                        refused("the project changed again during its scan, or cannot be scanned now")
                    }
                    Verdict::Refused(why) => refused(why),
                }
            }
            Verdict::Vouched(scanned) => json!({"vouched": scanned}),
            Verdict::Refused(why) => refused(why),
        }
    }

    /// What the watch can say of `folder` now (the cookie having come through).
    fn vouch_verdict(&self, folder: &Path, excluded: &[String]) -> Verdict {
        let restores = self.loaded().engine.config.watch.on_violation == OnViolation::Restore;
        let state = self.state.lock().expect("state");
        for (root, w) in &state.projects {
            let Some((epoch, scanned)) = &w.vouch else { continue };
            if scanned.folder != folder || scanned.excluded != excluded {
                continue;
            }
            let running = state.ops.get(root).is_some_and(|&n| n > 0);
            let changed = *epoch != w.epoch || state.pending.contains_key(root) || w.scanning.any();
            return if running {
                Verdict::Refused("the project is being changed")
            } else if !w.warnings.is_empty() {
                Verdict::Refused("the project has warnings")
            } else if changed && restores {
                // Scanning before the quiet period would start the automatic restore while the writer still writes.
                Verdict::Refused("the project is being scanned or changed")
            } else if changed {
                Verdict::Rescan(root.clone())
            } else if !scanned.exists || !w.watches.contains(folder) || w.rewatch {
                Verdict::Refused("the folder has no watch in place")
            } else {
                Verdict::Vouched(scanned.clone())
            };
        }
        Verdict::Refused(NOT_FOUND)
    }

    /// Puts the watches of a project in place: adds missing ones, makes again those of directories that were
    /// deleted or created since, drops those of directories that are gone, and watches the parent while the root
    /// itself is gone. A rescan with nothing of that kind touches no watch. Blocking (adding a recursive watch walks
    /// the folder): called on a blocking thread, and the state lock is never held while the kernel is asked.
    pub(super) fn ensure_watches(&self, project: &Project) {
        let root = &project.root;
        let paths = WatchPaths::of(project);
        let mut want = paths.wanted();
        // git's folder, for its index lock: asked of git once per project.
        let known = self.state.lock().expect("state").projects.get(root).and_then(|w| w.git_lock.clone());
        let lock = match known {
            Some(lock) => lock,
            None => {
                let lock = git_index_lock(root);
                if let Some(w) = self.state.lock().expect("state").projects.get_mut(root) {
                    w.git_lock = Some(lock.clone());
                }
                lock
            }
        };
        if let Some(dir) = lock.as_ref().and_then(|l| l.parent()) {
            want.push((dir.to_path_buf(), RecursiveMode::NonRecursive));
        }
        if !is_dir(root)
            && let Some(parent) = root.parent()
        {
            want.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
        }
        let (have, rewatch) = {
            let mut state = self.state.lock().expect("state");
            let Some(watched) = state.projects.get_mut(root) else { return };
            watched.paths = Some(paths);
            (watched.watches.clone(), std::mem::take(&mut watched.rewatch))
        };
        let wanted_paths: BTreeSet<&PathBuf> = want.iter().map(|(p, _)| p).collect();
        let mut dropped = Vec::new();
        let mut made = Vec::new();
        let mut failed = Vec::new();
        {
            let mut guard = self.watcher.lock().expect("watcher");
            let Some(watcher) = guard.as_mut() else { return };
            for path in &have {
                if !wanted_paths.contains(path) {
                    let _ = watcher.unwatch(path);
                    dropped.push(path.clone());
                }
            }
            for (path, mode) in &want {
                let present = is_dir(path);
                let has_watch = have.contains(path);
                if present && (rewatch || !has_watch) {
                    match watcher.watch(path, *mode) {
                        Ok(()) => made.push(path.clone()),
                        Err(e) => failed.push((path.clone(), e)),
                    }
                } else if !present && has_watch {
                    let _ = watcher.unwatch(path);
                    dropped.push(path.clone());
                }
            }
        }
        let mut state = self.state.lock().expect("state");
        let Some(watched) = state.projects.get_mut(root) else { return };
        for path in dropped {
            watched.watches.remove(&path);
        }
        for path in made {
            let prefix = format!("cannot watch {}:", path.display());
            watched.warnings.retain(|w| !w.starts_with(&prefix));
            watched.watches.insert(path);
        }
        for (path, e) in failed {
            watched.watches.remove(&path);
            let warning = if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                format!(
                    "cannot watch {}: the inotify watch limit is reached; raise fs.inotify.max_user_watches. Changes \
                     are found only by rescans until then",
                    path.display()
                )
            } else {
                format!("cannot watch {}: {e}", path.display())
            };
            if watched.warnings.insert(warning.clone()) {
                tracing::warn!(project = %shown(root), "{}", escaped(&warning));
            }
        }
    }

    /// The single worker that turns file events into rescans.
    pub(super) async fn scheduler(
        self: Arc<Self>,
        mut fs_rx: mpsc::Receiver<notify::Result<notify::Event>>,
        mut wake_rx: mpsc::UnboundedReceiver<Wake>,
    ) {
        // The beat the watchdog checks, only under a watchdog: otherwise nothing wakes an idle daemon.
        let watchdog = sd_notify::watchdog_enabled();
        // Beats twice per watchdog period (the main loop checks them as often), never more.
        let mut beat = tokio::time::interval(
            watchdog.map_or(Duration::from_secs(1), |d| d / 4).max(Duration::from_millis(100)),
        );
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // How long each file event waits before it is taken (a daemon falling behind its events, for tests).
        let lag = std::env::var("DREAMERD_EVENT_LAG_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        loop {
            self.beat();
            let debounce = Duration::from_millis(self.loaded().engine.config.watch.debounce_ms);
            let next_due = {
                let state = self.state.lock().expect("state");
                state.pending.values().map(|(_, due)| *due).chain(state.trim_at).min()
            };
            let sleep = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = beat.tick(), if watchdog.is_some() => {}
                event = fs_rx.recv() => match event {
                    Some(Ok(event)) => {
                        if let Some(lag) = lag {
                            tokio::time::sleep(lag).await;
                        }
                        self.on_event(&event, debounce)
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "file watcher error; rescanning every project");
                        self.mark_all(debounce, "a watcher error");
                    }
                    None => return,
                },
                wake = wake_rx.recv() => match wake {
                    Some(Wake::Rescan(root)) => self.mark(&root, Instant::now()),
                    Some(Wake::Recheck) => {}
                    Some(Wake::Overflow(why)) => {
                        self.overflow_flagged.store(false, std::sync::atomic::Ordering::SeqCst);
                        self.mark_all(debounce, why);
                    }
                    None => return,
                },
                () = sleep => {
                    let now = Instant::now();
                    let due: Vec<PathBuf> = {
                        let mut state = self.state.lock().expect("state");
                        let due: Vec<PathBuf> =
                            state.pending.iter().filter(|(_, (_, d))| *d <= now).map(|(r, _)| r.clone()).collect();
                        for r in &due {
                            state.pending.remove(r);
                        }
                        due
                    };
                    for root in due {
                        let this = self.clone();
                        tokio::spawn(async move { this.rescan(&root).await });
                    }
                    if self.quiet_now(now) {
                        // What a scan, an operation or a burst of 20,000 files took is given back to the system,
                        // not kept for the next one.
                        // On a blocking thread, never awaited: events keep being taken meanwhile.
                        drop(tokio::task::spawn_blocking(trim_memory));
                    }
                }
            }
        }
    }

    /// Marks `root` for a rescan now and wakes the scheduler for it (from anywhere but the scheduler itself).
    pub(super) fn rescan_soon(&self, root: &Path) {
        self.mark(root, Instant::now());
        let _ = self.rescan_tx.send(Wake::Rescan(root.to_path_buf()));
    }

    /// Asks for the freed heap to be given back once the daemon has been quiet for [`TRIM_QUIET`] (called after each
    /// scan and operation; each call moves the moment on).
    pub(super) fn trim_when_quiet(&self) {
        self.state.lock().expect("state").trim_at = Some(Instant::now() + TRIM_QUIET);
        // The scheduler sleeps until the earliest moment it knows of: wake it to see this one.
        let _ = self.rescan_tx.send(Wake::Recheck);
    }

    /// Whether the trim asked for is due at `now` with nothing pending, scanning or running; a due trim is taken
    /// either way (work still going on asks again when it ends).
    fn quiet_now(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("state");
        if state.trim_at.is_none_or(|at| at > now) {
            return false;
        }
        state.trim_at = None;
        state.pending.is_empty() && state.ops.is_empty() && state.projects.values().all(|w| !w.scanning.any())
    }

    fn on_event(&self, event: &notify::Event, debounce: Duration) {
        if event.need_rescan() || event.paths.is_empty() {
            self.mark_all(debounce, "the kernel's event queue overflowed");
            return;
        }
        if let Some(dir) = self.cookie_dir.get()
            && event.paths.iter().all(|p| p.parent() == Some(dir))
        {
            let mut cookies = self.cookies.lock().expect("cookies");
            for path in &event.paths {
                if let Some(waiter) = cookies.remove(path) {
                    let _ = waiter.send(());
                }
            }
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock().expect("state");
        // git taking or letting go of its index lock: what changes meanwhile is git's doing.
        let mut git_done = Vec::new();
        for (root, w) in state.projects.iter_mut() {
            let Some(Some(lock)) = &w.git_lock else { continue };
            if !event.paths.contains(lock) {
                continue;
            }
            match event.kind {
                EventKind::Create(_) => w.git_since = Some(now),
                EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                    if w.git_since.take().is_some() =>
                {
                    git_done.push(root.clone());
                }
                _ => {}
            }
        }
        for root in git_done {
            state.pending.insert(root, (now, now + debounce));
        }
        let roots: Vec<PathBuf> = state
            .projects
            .iter()
            .filter(|(root, w)| {
                let legacy;
                let paths = match &w.paths {
                    Some(p) => p,
                    None => {
                        legacy = WatchPaths::legacy(root);
                        &legacy
                    }
                };
                event.paths.iter().any(|p| paths.relevant(p))
            })
            .map(|(r, _)| r.clone())
            .collect();
        // The first event after a quiet period is scanned at once, so the first violation of a hand edit is known
        // (and warned about) right away; the rest of a burst waits for the quiet period as before. Not when
        // violations are restored automatically: a restore waits for the writer to be done.
        let leading = self.loaded().engine.config.watch.on_violation != OnViolation::Restore;
        for root in roots {
            let quiet = leading
                && !state.pending.contains_key(&root)
                && state
                    .projects
                    .get(&root)
                    .is_some_and(|w| w.last_event.is_none_or(|t| now.duration_since(t) >= debounce));
            let settling = state.projects.get_mut(&root).and_then(|w| {
                w.last_event = Some(now);
                w.epoch += 1;
                if quiet {
                    w.settling = Some(now);
                }
                w.settling
            });
            // An event on a watched directory itself (deleted, created, moved) means its watch must be made again.
            if let Some(w) = state.projects.get_mut(&root)
                && event.paths.iter().any(|p| w.watches.contains(p))
            {
                w.rewatch = true;
            }
            if let Some(w) = state.projects.get_mut(&root)
                && w.git_since.is_some()
                && w.paths.as_ref().is_some_and(|p| event.paths.iter().any(|e| e.starts_with(&p.out)))
            {
                w.git_touched = true;
            }
            let entry = state.pending.entry(root).or_insert((now, now));
            match settling {
                // The first changes after a quiet period: scanned once they settle (a save, a copy of a few files,
                // is done within it), never later than the quiet period.
                Some(since) => entry.1 = (now + SETTLE.min(debounce)).min(since + debounce),
                None => {
                    let cap = entry.0 + debounce * MAX_DELAY_FACTOR;
                    entry.1 = (now + debounce).min(cap);
                }
            }
        }
    }

    /// Schedules a rescan of one project at `when`.
    pub(super) fn mark(&self, root: &Path, when: Instant) {
        let mut state = self.state.lock().expect("state");
        if let Some(w) = state.projects.get_mut(root) {
            w.epoch += 1;
            state.pending.insert(root.to_path_buf(), (when, when));
        }
    }

    /// Events were lost: every project gets a full rescan, and the loss is counted in its status.
    fn mark_all(&self, debounce: Duration, why: &str) {
        let mut state = self.state.lock().expect("state");
        let due = Instant::now() + debounce;
        let roots: Vec<PathBuf> = state.projects.keys().cloned().collect();
        for root in roots {
            if let Some(w) = state.projects.get_mut(&root) {
                w.overflows += 1;
                w.epoch += 1;
                w.rewatch = true; // lost events may have been deletions of watched directories
            }
            state.pending.insert(root, (due, due));
        }
        // One warning per burst of losses (a queue that fills again while the rescan is pending says nothing new);
        // each loss is still counted in the projects' `overflows`.
        if state.overflow_warned.is_none_or(|at| at.elapsed() >= OVERFLOW_WARN_EVERY) {
            state.overflow_warned = Some(Instant::now());
            tracing::warn!(reason = why, "file events were lost; every project will be rescanned in full");
        } else {
            tracing::debug!(
                reason = why,
                "file events were lost again; every project will be rescanned in full"
            );
        }
    }

    /// Rescans a project now (if no push or restore is running on it) and reports what changed.
    pub(super) async fn rescan(self: &Arc<Self>, root: &Path) {
        // One rescan waiting at most: a burst that lost events asks for one at each loss, and each would otherwise
        // wait its turn and read the folder again, long after the burst (measured: minutes of back-to-back scans
        // after a checkout touched 20,000 files a few times). A later one waits for the waiting one, which starts
        // after it was asked for and so sees everything it would have.
        let (lock, covered) = {
            let mut state = self.state.lock().expect("state");
            match state.projects.get_mut(root) {
                Some(w) => (w.scan_lock.clone(), std::mem::replace(&mut w.scan_queued, true)),
                None => return,
            }
        };
        let _scan = lock.lock().await;
        if covered {
            return;
        }
        if let Some(w) = self.state.lock().expect("state").projects.get_mut(root) {
            w.scan_queued = false;
        }
        // What changes the files from here on is an event after this epoch: the scan vouches for nothing older.
        let epoch = self.state.lock().expect("state").projects.get_mut(root).map(|w| {
            w.settling = None;
            w.epoch
        });
        let spec = self.spec(root);
        // While git writes the working tree (it holds its index lock), nothing is judged: look again after it.
        let git_busy = self.state.lock().expect("state").projects.get(root).is_some_and(|w| {
            w.git_since.is_some_and(|since| since.elapsed() < GIT_HOLD_MAX)
                && w.git_lock.as_ref().and_then(|l| l.as_ref()).is_some_and(|l| l.exists())
        });
        if git_busy {
            self.mark(root, Instant::now() + Duration::from_millis(50));
            return;
        }
        let busy = self.state.lock().expect("state").ops.get(root).copied().unwrap_or(0) > 0;
        if busy {
            // Our own writes (or another process's push) are not violations; look again once it is done.
            let later =
                Instant::now() + Duration::from_millis(self.loaded().engine.config.watch.debounce_ms.max(50));
            self.mark(root, later);
            return;
        }
        let this = self.clone();
        let scan = tokio::task::spawn_blocking(move || -> Result<ProjectStatus> {
            this.note_presence(&spec.root);
            let project = spec.resolve()?;
            this.ensure_watches(&project);
            let early = this.clone();
            let mut status = this
                .engine_for(&spec, &project)?
                .status_early(&project, &mut |s| early.early_warning(&spec.root, s))?;
            // Vouched for later only on a filesystem where every change raises an event here (asked now, on this
            // blocking thread: a stalled network mount must not hold the daemon's state).
            if status.scanned.as_ref().is_some_and(|s| !local_filesystem(&s.folder)) {
                status.scanned = None;
            }
            Ok(status)
        });
        let scanned = self.within_limit(root, scan).await;
        let status = match scanned {
            // An operation that started while we scanned makes the scan meaningless: look again after it.
            Ok(Ok(s))
                if s.state == ProjectState::Busy
                    || self.state.lock().expect("state").ops.get(root).copied().unwrap_or(0) > 0 =>
            {
                let later = Instant::now()
                    + Duration::from_millis(self.loaded().engine.config.watch.debounce_ms.max(50));
                self.mark(root, later);
                return;
            }
            Ok(Ok(s)) => {
                if let Some(w) = self.state.lock().expect("state").projects.get_mut(root) {
                    w.vouch = epoch.zip(s.scanned.clone());
                }
                s
            }
            Ok(Err(e)) => {
                let mut state = self.state.lock().expect("state");
                if let Some(w) = state.projects.get_mut(root) {
                    w.rescans += 1;
                    w.status = None;
                    w.warnings.insert(format!("cannot scan the project: {e}"));
                }
                tracing::warn!(project = %root.display(), error = %e, "cannot scan the project");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "a rescan panicked");
                return;
            }
        };
        // Changes git made: the commit it left HEAD at.
        let by_git = self
            .state
            .lock()
            .expect("state")
            .projects
            .get_mut(root)
            .is_some_and(|w| std::mem::take(&mut w.git_touched));
        let commit = if by_git {
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || git_head(&root)).await.ok().flatten().or(Some(String::new()))
        } else {
            None
        };
        let waiting = status.backup_waiting.is_some();
        self.record(root, status, commit);
        if waiting {
            self.backup_waiting.notify_one();
        }
        self.send_status_line();
    }

    /// Awaits `work` on `root` (a scan, or the recovery before the first one), reporting it past the time limit:
    /// one project's slow config or stalled filesystem never holds the others, and is logged, shown in the STATUS=
    /// line and in the project's warnings while it is waited for.
    pub(super) async fn within_limit<T>(self: &Arc<Self>, root: &Path, work: impl Future<Output = T>) -> T {
        let token = self
            .state
            .lock()
            .expect("state")
            .projects
            .get_mut(root)
            .map(|w| w.scanning.begin(Instant::now()));
        let limit = self.scan_limit();
        let mut work = std::pin::pin!(work);
        let done = match tokio::time::timeout(limit, &mut work).await {
            Ok(done) => done,
            Err(_) => {
                let warning = format!("scanning the project takes more than {}s", limit.as_secs());
                tracing::warn!(project = %shown(root), limit_secs = limit.as_secs(), "the project's scan takes longer than its time limit; the other projects go on");
                if let Some(w) = self.state.lock().expect("state").projects.get_mut(root) {
                    w.warnings.insert(warning.clone());
                }
                // The STATUS= line says so now (nothing ticks to refresh it while the daemon waits).
                self.send_status_line();
                let done = work.await;
                if let Some(w) = self.state.lock().expect("state").projects.get_mut(root) {
                    w.warnings.remove(&warning);
                }
                done
            }
        };
        if let Some(token) = token
            && let Some(w) = self.state.lock().expect("state").projects.get_mut(root)
        {
            w.scanning.end(token);
        }
        done
    }

    /// A watched project whose folder is gone is said so, once, and in its status, until it comes back.
    fn note_presence(&self, root: &Path) {
        let warning = format!("the project folder {} no longer exists", root.display());
        let gone = !root.is_dir();
        let changed = {
            let mut state = self.state.lock().expect("state");
            let Some(w) = state.projects.get_mut(root) else { return };
            if gone { w.warnings.insert(warning.clone()) } else { w.warnings.remove(&warning) }
        };
        if changed && gone {
            tracing::warn!(project = %root.display(), "the project folder was deleted or moved; still watching for it");
            self.emit(json!({"type": "project-missing", "root": root}));
        } else if changed {
            tracing::info!(project = %root.display(), "the project folder is back");
        }
    }

    /// Updates the cached status and warns about what is new: each violation once, in the log and in one
    /// desktop notification per project and rescan.
    fn record(self: &Arc<Self>, root: &Path, mut status: ProjectStatus, git: Option<String>) {
        let now: BTreeSet<String> = status.violations.iter().map(violation_key).collect();
        let (new, cleared, schema_changed, arrived) = {
            let mut state = self.state.lock().expect("state");
            let Some(w): Option<&mut Watched> = state.projects.get_mut(root) else { return };
            // Violations that came with a git operation keep saying so while they last.
            w.from_git.retain(|key, _| now.contains(key));
            if let Some(commit) = &git {
                for key in now.iter().filter(|k| !w.reported.contains(*k)) {
                    w.from_git.insert(key.clone(), commit.clone());
                }
            }
            for v in &mut status.violations {
                let key = violation_key(v);
                if let Some(commit) = w.from_git.get(&key) {
                    v.source = Some("git".into());
                    v.commit = (!commit.is_empty()).then(|| commit.clone());
                }
            }
            w.rescans += 1;
            w.warnings.retain(|warning| !warning.starts_with("cannot scan"));
            let new: Vec<_> = status
                .violations
                .iter()
                .filter(|v| !w.reported.contains(&violation_key(v)))
                .cloned()
                .collect();
            let cleared = now.is_empty() && !w.reported.is_empty();
            w.reported = now;
            let schema_changed = status.state != ProjectState::Busy
                && w.schema_pending.replace(status.schema_pending) != Some(status.schema_pending);
            let arrived = status
                .matches
                .clone()
                .filter(|m| w.status.as_ref().and_then(|s| s.matches.as_ref()) != Some(m));
            w.status = Some(status.clone());
            (new, cleared, schema_changed && status.schema_pending, arrived)
        };
        // The burst this scan belongs to: opened by the first new hand change, over once no event came for a
        // quiet period (a scan is scheduled for then, so it always ends).
        let debounce = Duration::from_millis(self.loaded().engine.config.watch.debounce_ms);
        let hand_made = !new.is_empty() && new.iter().all(|v| v.source.is_none());
        let (burst_open, changes, burst_ended) = {
            let mut state = self.state.lock().expect("state");
            let pending = state.pending.contains_key(root);
            let Some(w) = state.projects.get_mut(root) else { return };
            let was_open = w.burst.is_some();
            if hand_made {
                *w.burst.get_or_insert(0) += new.len();
            }
            let changes = w.burst.unwrap_or(0);
            let quiet_since = w.last_event.is_none_or(|t| t.elapsed() >= debounce);
            // Over too once the folder matches again (a restore, an edit undone): the next change is a new burst.
            let settled = (!pending && quiet_since) || status.violations.is_empty();
            let ended = if settled { w.burst.take() } else { None };
            let follow_up = w.burst.is_some() && !pending;
            let due = w.last_event.map_or_else(Instant::now, |t| t + debounce);
            if follow_up {
                state.pending.insert(root.to_path_buf(), (due, due));
            }
            (was_open, changes, ended)
        };
        let shown = shown(root);
        let out_dir = out_dir(&status);
        let by_git = new.iter().any(|v| v.source.is_some());
        if by_git {
            // git brought a folder no push made: said as such, with the commit; never undone automatically.
            let commit = new.iter().find_map(|v| v.commit.clone()).unwrap_or_default();
            let short: String = commit.chars().take(12).collect();
            tracing::warn!(
                project = %shown,
                commit = %commit,
                changes = new.len(),
                "a git operation (checkout, pull, merge, rebase, stash) left {out_dir} as no push made it (HEAD at \
                 {short}): its migrations were not made by `dreamer push` here or on a machine sharing the store. If \
                 two branches that each pushed were merged, restore the push of the branch merged into and push the \
                 merged schema; `dreamer database restore` puts back this checkout's last push"
            );
            self.emit(json!({"type": "violation", "root": root, "violations": new, "source": "git", "commit": commit}));
            self.desktop.notify(
                format!("git changed {out_dir} in {} to a state no push made", project_name(root)),
                format!(
                    "{}\n\nHEAD is at {short}. `dreamerd status` in {shown} says more.",
                    list_violations(&new)
                ),
            );
        } else if !new.is_empty() && burst_open {
            // Later files of a burst already warned about: the same notification, updated; one line at its end.
            self.emit(violation_event(root, &new));
            self.notify_burst(root, &out_dir, changes, &status.violations);
        } else if !new.is_empty() {
            // The first change at once; the rest of a burst is one line at its end (every file is in status and
            // events).
            self.warn_first(root, &out_dir, &new);
            if self.loaded().engine.config.watch.on_violation == OnViolation::Restore {
                let this = self.clone();
                let root = root.to_path_buf();
                tokio::spawn(async move { this.auto_restore(&root, list_violations(&new)).await });
            }
        }
        if let Some(push) = arrived {
            let relation = status.relation.map(|r| serde_json::to_value(r).expect("serialises"));
            tracing::info!(
                project = %shown,
                push = %push,
                relation = %relation.as_ref().and_then(|r| r.as_str()).unwrap_or("-"),
                "{out_dir} now holds push {push} (a pull, a checkout or a copy): accepted as this checkout's last push"
            );
            self.emit(json!({"type": "arrived", "root": root, "push_id": push, "relation": relation}));
        }
        // (The STATUS= line follows at the end of the rescan.)
        if let Some(ended) = burst_ended {
            if ended > 1 {
                tracing::warn!(
                    project = %shown,
                    changes = ended,
                    violations = status.violations.len(),
                    "{ended} change(s) to {out_dir} by hand in that burst; {} file(s) differ from the last push now \
                     (`dreamerd status` lists them)",
                    status.violations.len()
                );
            }
            self.desktop.close_key(&burst_key(root));
        }
        if cleared {
            tracing::info!(project = %shown, "{out_dir} matches the last push again; violation cleared");
            self.emit(json!({"type": "cleared", "root": root}));
        }
        self.trim_when_quiet();
        if schema_changed {
            tracing::info!(project = %shown, "the schema changed since the last push; run `dreamer push` to apply it");
            self.emit(json!({"type": "schema-changed", "root": root, "schema_pending": true}));
        }
    }

    /// The first hand changes of a burst: one warning line, one event, one notification (updated by the rest).
    fn warn_first(self: &Arc<Self>, root: &Path, out_dir: &str, new: &[crate::manifest::Violation]) {
        let first = &new[0];
        let shown = shown(root);
        match &first.from {
            Some(from) => tracing::warn!(
                project = %shown,
                kind = %first.kind,
                path = %escaped(&first.path),
                from = %escaped(from),
                "{out_dir} changed by hand: run `dreamer database restore` to put it back"
            ),
            None => tracing::warn!(
                project = %shown,
                kind = %first.kind,
                path = %escaped(&first.path),
                "{out_dir} changed by hand: run `dreamer database restore` to put it back"
            ),
        }
        self.emit(violation_event(root, new));
        self.notify_burst(root, out_dir, new.len(), new);
    }

    /// The burst's desktop notification, shown or updated in place (none when violations are restored at once: the
    /// restore says so).
    fn notify_burst(
        &self,
        root: &Path,
        out_dir: &str,
        changes: usize,
        listed: &[crate::manifest::Violation],
    ) {
        if self.loaded().engine.config.watch.on_violation == OnViolation::Restore {
            return;
        }
        let count = if changes > 1 { format!(": {changes} change(s)") } else { String::new() };
        self.desktop.notify_as(
            Some(&burst_key(root)),
            format!("{out_dir} changed by hand in {}{count}", project_name(root)),
            format!(
                "{}\n\nOnly `dreamer push` may write {out_dir}. Run `dreamer database restore` in {}.",
                list_violations(listed),
                shown(root)
            ),
        );
    }

    /// Called by a rescan as soon as the folder is judged, before the database is read: hand changes that open a
    /// burst are warned about right away. Git's changes, a burst already open and automatic restores are left to
    /// [`Daemon::record`], which sees these as reported.
    fn early_warning(self: &Arc<Self>, root: &Path, status: &ProjectStatus) {
        if status.violations.is_empty()
            || self.loaded().engine.config.watch.on_violation == OnViolation::Restore
        {
            return;
        }
        let new: Vec<crate::manifest::Violation> = {
            let mut state = self.state.lock().expect("state");
            let Some(w) = state.projects.get_mut(root) else { return };
            if w.git_since.is_some() || w.git_touched || w.burst.is_some() {
                return;
            }
            let new: Vec<crate::manifest::Violation> = status
                .violations
                .iter()
                .filter(|v| !w.reported.contains(&violation_key(v)))
                .cloned()
                .collect();
            if new.is_empty() {
                return;
            }
            w.reported.extend(new.iter().map(violation_key));
            w.burst = Some(new.len());
            new
        };
        self.warn_first(root, &out_dir(status), &new);
    }

    /// `watch.on_violation = "restore"`: puts drizzle/ back at once and says so.
    async fn auto_restore(self: &Arc<Self>, root: &Path, what: String) {
        let this = self.clone();
        let spec = self.spec(root);
        let outcome = self
            .run_op(root, move || {
                let project = spec.resolve()?;
                this.engine_for(&spec, &project)?.restore(&project, None, false, false, &super::LogSink)
            })
            .await;
        let shown = root.display().to_string();
        match outcome {
            Ok(report) => {
                let kept = report.quarantine.as_ref().map(|q| q.display().to_string()).unwrap_or_default();
                tracing::warn!(project = %shown, push_id = %report.push_id, quarantine = %kept, "drizzle/ was changed by hand and has been restored automatically");
                self.emit(json!({"type": "restore", "root": root, "ok": true, "automatic": true,
                                 "push_id": report.push_id, "quarantine": report.quarantine}));
                self.desktop.notify(
                    format!("drizzle/ restored in {}", project_name(root)),
                    format!("{what}\n\nThe hand edits were undone; they are kept in {kept}."),
                );
            }
            Err(e) => {
                tracing::error!(project = %shown, error = %e, "automatic restore failed");
                self.emit(json!({"type": "restore", "root": root, "ok": false, "automatic": true, "error": e.to_string()}));
            }
        }
        self.rescan_soon(root);
    }
}

fn project_name(root: &Path) -> String {
    root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| root.display().to_string())
}

/// The migration folder as messages name it (`drizzle/`).
fn out_dir(status: &ProjectStatus) -> String {
    if status.out.is_empty() { "drizzle/".to_string() } else { format!("{}/", status.out) }
}

/// The key of a project's burst notification.
fn burst_key(root: &Path) -> String {
    format!("burst:{}", root.display())
}

/// At most this many violations go into one event (`more` counts the rest; status lists them all).
const EVENT_VIOLATIONS: usize = 100;

/// A `violation` event: the first [`EVENT_VIOLATIONS`] new violations, and how many more there were.
fn violation_event(root: &Path, new: &[crate::manifest::Violation]) -> serde_json::Value {
    let shown = &new[..new.len().min(EVENT_VIOLATIONS)];
    json!({"type": "violation", "root": root, "violations": shown, "more": new.len() - shown.len()})
}

/// At most one warning about lost file events in this long (a burst that overflows the queue does so many times).
const OVERFLOW_WARN_EVERY: Duration = Duration::from_secs(10);

/// How long the daemon must be quiet before the heap a burst or a scan freed is given back.
const TRIM_QUIET: Duration = Duration::from_secs(1);

/// Gives freed heap memory back to the system (glibc keeps it otherwise).
fn trim_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists; it takes its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// At most a handful of lines: a burst of 50 files is one short notification.
fn list_violations(violations: &[crate::manifest::Violation]) -> String {
    let mut lines: Vec<String> =
        violations.iter().take(5).map(|v| v.human().trim_end().to_string()).collect();
    if violations.len() > 5 {
        lines.push(format!("… and {} more", violations.len() - 5));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_filesystems_are_vouched_for() {
        let here = tempfile::tempdir().unwrap();
        assert!(local_filesystem(here.path()), "a temporary folder (ext4 or tmpfs) raises every event here");
        assert!(!local_filesystem(Path::new("/proc")), "procfs is not on the list");
        assert!(!local_filesystem(&here.path().join("gone")), "nor a folder that is not there");
    }

    #[test]
    fn relevance() {
        let paths = WatchPaths::legacy(Path::new("/p/app"));
        let relevant = |p: &str| paths.relevant(Path::new(p));
        assert!(relevant("/p/app/drizzle/meta/_journal.json"));
        assert!(relevant("/p/app/drizzle"));
        assert!(relevant("/p/app/src/schema.ts"));
        assert!(relevant("/p/app/src"));
        assert!(relevant("/p/app"));
        assert!(!relevant("/p/app/local.db"));
        assert!(!relevant("/p/app/src/other.ts"));
        assert!(!relevant("/p/app/.dreamerd-tmp/new/x.sql"));
        assert!(!relevant("/p/other"));
    }
}
