//! Where logs go: stderr for commands and for a daemon that runs in the foreground (systemd's journal reads it),
//! and a file rotated by size for a daemon that a command started in the background.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Starts logging at `default` level (`DREAMERD_LOG` overrides it), to `file` when given, else to stderr.
pub fn init(default: &str, file: Option<Arc<RotatingFile>>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DREAMERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match file {
        Some(file) => builder.with_ansi(false).with_writer(file).try_init(),
        None => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).with_writer(std::io::stderr).try_init()
        }
    };
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
