//! Where logs go: stderr for commands and for a daemon that runs in the foreground (systemd's journal reads it),
//! and a file rotated by size for a daemon that a command started in the background.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How much a command or the daemon says: `-q` (less), the default, `-v` (more). `DREAMERD_LOG` overrides both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    Quiet,
    #[default]
    Normal,
    Verbose,
}

impl Verbosity {
    /// The level for a process whose normal level is `normal` (`warn` for commands, `info` for the daemon).
    pub fn level(self, normal: &'static str) -> &'static str {
        match (self, normal) {
            (Verbosity::Normal, n) => n,
            (Verbosity::Verbose, _) => "debug",
            (Verbosity::Quiet, "info") => "warn",
            (Verbosity::Quiet, _) => "error",
        }
    }
}

/// Where log lines went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File,
    /// systemd's journal, natively: fields such as `PROJECT`, `PATH` and `KIND` can be filtered on
    /// (`journalctl --user -u dreamerd PROJECT=/home/me/app`).
    Journal,
}

/// Starts logging at `level` (`DREAMERD_LOG` overrides it): to `file` when given; to the journal, natively, when
/// stderr is the journal's stream (`JOURNAL_STREAM`, as under a systemd unit); else readable lines on stderr.
pub fn init(level: &str, file: Option<Arc<RotatingFile>>) -> Target {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DREAMERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if let Some(file) = file {
        let _ =
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(file).try_init();
        return Target::File;
    }
    if stderr_is_journal()
        && let Ok(journal) = tracing_journald::layer()
    {
        // Field names as written (`PROJECT=`, not tracing-journald's default `F_PROJECT=`), under the name
        // `dreamerd` whichever binary logs.
        let journal = journal.with_field_prefix(None).with_syslog_identifier("dreamerd".into());
        if tracing_subscriber::registry().with(filter).with(journal).try_init().is_ok() {
            return Target::Journal;
        }
        return Target::Stderr;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
    Target::Stderr
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` names its device and inode (systemd sets it for a
/// unit's processes; a process whose stderr was redirected since inherits the variable but not the stream).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    // The field types differ between targets (u64 here, u32 on some).
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev as u64 == dev && st.st_ino as u64 == ino)
}

/// A log file that is rotated once it would grow past `max_bytes`: `dreamerd.log` becomes `dreamerd.log.1`, and so
/// on up to `keep` old files. The process's stdout and stderr follow the current file, so a panic message lands in
/// it too.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// Whether stdout and stderr follow the current file (the daemon), or are left alone (tests).
    redirect: bool,
    current: Mutex<(File, u64)>,
}

impl RotatingFile {
    /// Opens (appends to) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64, keep: u32, redirect: bool) -> io::Result<Arc<RotatingFile>> {
        let file = open_log(path)?;
        let size = file.metadata()?.len();
        if redirect {
            follow(&file);
        }
        let current = Mutex::new((file, size));
        Ok(Arc::new(RotatingFile { path: path.to_path_buf(), max_bytes, keep, redirect, current }))
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self, current: &mut (File, u64)) -> io::Result<()> {
        if self.keep == 0 {
            current.0.set_len(0)?;
            current.1 = 0;
            return Ok(());
        }
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.numbered(n), self.numbered(n + 1));
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        let file = open_log(&self.path)?;
        if self.redirect {
            follow(&file);
        }
        *current = (file, 0);
        Ok(())
    }

    fn write_entry(&self, buf: &[u8]) -> io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 > 0 && current.1 + buf.len() as u64 > self.max_bytes {
            // A failed rotation keeps writing to the old file rather than losing the line.
            let _ = self.rotate(&mut current);
        }
        current.0.write_all(buf)?;
        current.1 += buf.len() as u64;
        Ok(())
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Points stdout and stderr at `file`.
fn follow(file: &File) {
    let _ = rustix::stdio::dup2_stdout(file);
    let _ = rustix::stdio::dup2_stderr(file);
}

/// Each log entry is written whole (tracing formats it first), so it never straddles a rotation.
impl Write for &RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_entry(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_and_verbose_move_the_level_from_its_normal() {
        assert_eq!(Verbosity::Normal.level("warn"), "warn");
        assert_eq!(Verbosity::Quiet.level("warn"), "error");
        assert_eq!(Verbosity::Quiet.level("info"), "warn");
        assert_eq!(Verbosity::Verbose.level("info"), "debug");
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_is_not_the_journal() {
        // SAFETY: tests in this module do not read the environment concurrently with this write.
        unsafe { std::env::set_var("JOURNAL_STREAM", "1:2") };
        assert!(!stderr_is_journal());
        unsafe { std::env::set_var("JOURNAL_STREAM", "garbage") };
        assert!(!stderr_is_journal());
        unsafe { std::env::remove_var("JOURNAL_STREAM") };
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let log = RotatingFile::open(&path, 100, 2, false).unwrap();
        for i in 0..50 {
            log.write_entry(format!("line {i:03} of the log\n").as_bytes()).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(std::fs::metadata(dir.path().join("d.log.1")).unwrap().len() <= 100);
        assert!(dir.path().join("d.log.2").exists());
        assert!(!dir.path().join("d.log.3").exists(), "no more than `keep` old files");
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("line 049 of the log\n"));
    }
}
