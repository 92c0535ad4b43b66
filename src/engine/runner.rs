//! Runs drizzle-kit: in the project root, stdin from /dev/null, under a timeout, its output streamed to the
//! user and kept for diagnosis.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use super::{Sink, Stream};

/// How much of each stream is kept for diagnosis (the tail, which is where errors are).
const KEEP_BYTES: usize = 256 * 1024;

/// How long the output of a finished program is still read, for pipes held open by a stray process.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What a finished (or killed) command did.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// `None` if it was killed for running past the timeout.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    /// The last [`KEEP_BYTES`] of stdout and stderr, ANSI escapes removed.
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// True if the program exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// stdout and stderr together, for pattern matching.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Why a command could not run at all.
#[derive(Debug)]
pub struct SpawnError {
    pub program: PathBuf,
    pub error: io::Error,
}

/// The first executable `name` on a `PATH` value.
pub fn find_on_path(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Resolves argv[0]: a relative path with a `/` is taken relative to the project root, not our cwd.
pub fn program_path(program: &str, root: &Path) -> PathBuf {
    let p = Path::new(program);
    if p.is_relative() && program.contains('/') { root.join(p) } else { p.to_path_buf() }
}

/// A spawn handed to the spawner thread, with where to send the child.
struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The one long-lived thread that starts every child. A child's parent-death signal fires when the *thread* that
/// forked it exits, and tokio's blocking threads exit after a few idle seconds; this thread lives as long as the
/// process, so a drizzle-kit dies with the daemon and never before.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("dreamerd-spawner".into())
            .spawn(move || {
                for mut request in rx {
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("the spawner thread starts");
        tx
    })
}

/// Starts `command` from the spawner thread.
fn spawn(command: Command) -> io::Result<Child> {
    let (reply, answer) = mpsc::channel();
    spawner()
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// Runs `argv` in `root`. The child gets its own process group so a timeout kills node and everything it
/// started, and a parent-death signal so it never outlives this process. `inherit` (the project's lock) is passed
/// down to it and its children, so that whatever it leaves running still holds the project; `on_spawn` gets the
/// child's pid (its process group) before it runs for long.
pub fn run(
    argv: &[String],
    root: &Path,
    timeout: Duration,
    sink: &dyn Sink,
    inherit: Option<BorrowedFd<'_>>,
    on_spawn: impl FnOnce(u32),
) -> Result<RunOutput, SpawnError> {
    run_with(argv, root, timeout, sink, inherit, None, on_spawn)
}

/// [`run`] with exactly the environment `env` (the asking command's) instead of this process's.
pub fn run_with(
    argv: &[String],
    root: &Path,
    timeout: Duration,
    sink: &dyn Sink,
    inherit: Option<BorrowedFd<'_>>,
    env: Option<&std::collections::BTreeMap<String, String>>,
    on_spawn: impl FnOnce(u32),
) -> Result<RunOutput, SpawnError> {
    let mut program = program_path(&argv[0], root);
    let mut command = Command::new(&program);
    if let Some(env) = env {
        command.env_clear().envs(env);
        // A bare program name is looked up on the asking command's PATH, not this process's.
        if !argv[0].contains('/')
            && let Some(found) = env.get("PATH").and_then(|path| find_on_path(&argv[0], path))
        {
            program = found;
            command = Command::new(&program);
            command.env_clear().envs(env);
        }
    }
    command
        .args(&argv[1..])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = rustix::process::getpid();
    let keep = inherit.map(|fd| fd.as_raw_fd());
    // SAFETY: between fork and exec only async-signal-safe system calls run (prctl, getppid, fcntl), on memory
    // captured by value; nothing allocates or takes a lock.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died before the signal was armed.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("the parent exited"));
            }
            if let Some(fd) = keep {
                // Only in the child: the descriptor stays close-on-exec in this process, so the children of other
                // projects' pushes never get it.
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let mut child = spawn(command).map_err(|error| SpawnError { program: program.clone(), error })?;
    let pid = child.id();
    on_spawn(pid);
    let kept = Arc::new(Mutex::new((Vec::<u8>::new(), Vec::<u8>::new())));
    let (line_tx, line_rx) = mpsc::channel::<(Stream, String)>();
    let readers = [
        reader(
            child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
            Stream::Stdout,
            line_tx.clone(),
        ),
        reader(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>), Stream::Stderr, line_tx),
    ];
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });

    // Lines are forwarded on this thread so the sink need not be Send; the wait runs beside it.
    let deadline = std::time::Instant::now() + timeout;
    let mut status = None;
    let mut timed_out = false;
    let mut lines_open = true;
    let mut drained = false;
    loop {
        if status.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                timed_out = true;
                kill_group(pid);
                status = done_rx.recv().ok();
                continue;
            }
            if lines_open {
                match line_rx.recv_timeout(left.min(Duration::from_millis(100))) {
                    Ok((stream, line)) => forward(&kept, sink, stream, &line),
                    Err(mpsc::RecvTimeoutError::Disconnected) => lines_open = false,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                if let Ok(result) = done_rx.try_recv() {
                    status = Some(result);
                }
            } else if let Ok(result) = done_rx.recv_timeout(left) {
                status = Some(result);
            }
            if status.is_some() {
                // Whatever the program left running (esbuild services...) must not keep our pipes open.
                kill_group(pid);
            }
        } else {
            // The program is gone: forward what the readers still hold, until both pipes close; something that
            // escaped the process group may hold them open, so not forever.
            let drain_until = std::time::Instant::now() + DRAIN_LIMIT;
            loop {
                let left = drain_until.saturating_duration_since(std::time::Instant::now());
                match line_rx.recv_timeout(left) {
                    Ok((stream, line)) => forward(&kept, sink, stream, &line),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        drained = true;
                        break;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                }
            }
            break;
        }
    }
    let _ = waiter.join();
    if drained {
        for r in readers.into_iter().flatten() {
            let _ = r.join();
        }
    }
    let (out, err) = std::mem::take(&mut *kept.lock().expect("not poisoned"));
    let exit = match status {
        Some(Ok(s)) if !timed_out => Some(s),
        _ => None,
    };
    Ok(RunOutput {
        status: exit,
        timed_out,
        stdout: strip_ansi(&String::from_utf8_lossy(&out)),
        stderr: strip_ansi(&String::from_utf8_lossy(&err)),
    })
}

fn reader(
    pipe: Option<Box<dyn Read + Send>>,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
) -> Option<thread::JoinHandle<()>> {
    let pipe = pipe?;
    Some(thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            }
        }
    }))
}

fn forward(kept: &Mutex<(Vec<u8>, Vec<u8>)>, sink: &dyn Sink, stream: Stream, line: &str) {
    keep(kept, stream, line);
    sink.output(stream, line);
}

fn keep(kept: &Mutex<(Vec<u8>, Vec<u8>)>, stream: Stream, line: &str) {
    let mut guard = kept.lock().expect("not poisoned");
    let buf = if stream == Stream::Stdout { &mut guard.0 } else { &mut guard.1 };
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    if buf.len() > KEEP_BYTES {
        let cut = buf.len() - KEEP_BYTES;
        buf.drain(..cut);
    }
}

fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        // ESRCH (already gone) is fine.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Removes ANSI escape sequences (drizzle-kit's spinner redraws) and keeps what a terminal would show last
/// on each line.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters until a final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NullSink;
    use std::os::fd::AsFd;

    fn sh(script: &str, timeout: Duration) -> RunOutput {
        let dir = tempfile::tempdir().unwrap();
        run(&["/bin/sh".into(), "-c".into(), script.into()], dir.path(), timeout, &NullSink, None, |_| {})
            .unwrap()
    }

    #[test]
    fn captures_both_streams_and_status() {
        let out = sh("echo out; echo err >&2; exit 3", Duration::from_secs(30));
        assert_eq!(out.status.unwrap().code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn stdin_is_dev_null() {
        let out = sh("read x; echo \"got:$x:$?\"", Duration::from_secs(30));
        assert_eq!(out.stdout, "got::1\n");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let out = sh("sleep 60 & sleep 60; echo never", Duration::from_millis(300));
        assert!(out.timed_out);
        assert!(out.status.is_none());
        assert!(!out.stdout.contains("never"));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            &["./node_modules/.bin/nope".into()],
            dir.path(),
            Duration::from_secs(5),
            &NullSink,
            None,
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::NotFound);
        assert_eq!(err.program, dir.path().join("node_modules/.bin/nope"));
    }

    #[test]
    fn the_child_holds_the_inherited_descriptor_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let lock = std::fs::File::create(dir.path().join("lock")).unwrap();
        let fd = lock.as_raw_fd();
        let script = format!("test -e /proc/self/fd/{fd} && echo held || echo free");
        let argv = ["/bin/sh".into(), "-c".into(), script];
        let t = Duration::from_secs(30);
        let held = run(&argv, dir.path(), t, &NullSink, Some(lock.as_fd()), |_| {}).unwrap();
        assert_eq!(held.stdout, "held\n");
        let free = run(&argv, dir.path(), t, &NullSink, None, |_| {}).unwrap();
        assert_eq!(free.stdout, "free\n", "close-on-exec everywhere else");
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("[⣷] a\u{1b}[2K\u{1b}[1G[✓] ok"), "[⣷] a[✓] ok");
    }
}
