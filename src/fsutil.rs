//! Small filesystem primitives that make crash safety possible: atomic writes, durable renames,
//! atomic directory exchange, and moves that fall back to copying across filesystems.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, renameat_with};

/// Creates `dir` and its missing parents with mode 0700, durably: each new directory's entry is flushed into its
/// parent, so a crash never loses a folder that a later write inside it relies on.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    loop {
        match fs::symlink_metadata(at) {
            Ok(m) if m.is_dir() => break,
            // Something else is there: let mkdir say what.
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at);
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for new in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(new) {
            Ok(()) => {
                fsync_dir(new.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is not a directory", dir.display())))
        }
        Err(e) => Err(e),
    }
}

/// Creates one new directory (mode 0700) and flushes its entry into the parent; fails if it exists.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(dir)?;
    fsync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Flushes a directory's entries (a rename inside it) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    // O_DIRECTORY: whatever else is there (a fifo put in its place) fails at once instead of blocking.
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::fs::fsync(&fd)?;
    Ok(())
}

/// Makes everything written under `dir` durable at once: one `syncfs` of its filesystem rather than an fsync per
/// file (a tree of 2,000 migrations is one call, not 2,000).
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::fs::syncfs(&fd)?;
    Ok(())
}

/// A name for a temporary sibling of `path` that no other writer picks.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), &unique[..8]))
}

/// Writes `data` to `path` so that a crash at any moment leaves either the old or the new content:
/// temp file in the same directory, fsync, rename, fsync of the directory.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, data, 0o644)
}

/// [`atomic_write`] with the file's permission bits (0600 for what only the user may read).
pub fn atomic_write_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` with `data` atomically (a reader sees the old file or the new one) but without syncing: for
/// caches, which a power cut may only make stale or empty, never wrong.
pub fn replace_unsynced(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `data` to `path` only if nothing is there yet; returns false if something was.
pub fn write_new(path: &Path, data: &[u8]) -> io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(path);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    // A hard link fails if the target exists, which makes the publish atomic and exclusive.
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => fsync_dir(dir).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Swaps two paths atomically (both must exist). Returns `Ok(false)` when the filesystem does not support
/// the exchange, so the caller can fall back to two journaled renames.
pub fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Moves a file or directory tree; across filesystems it copies (symlinks as symlinks) and then removes.
pub fn move_tree(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        create_private_dir(parent)?;
    }
    match fs::rename(from, to) {
        Ok(()) => {
            fsync_dir(to.parent().unwrap_or(Path::new(".")))?;
            match from.parent() {
                Some(p) if Some(p) != to.parent() => fsync_dir(p),
                _ => Ok(()),
            }
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            // Across filesystems: the copy is on disk before the source goes.
            copy_tree(from, to)?;
            sync_tree(to.parent().unwrap_or(to))?;
            remove_any(from)?;
            if let Some(parent) = from.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Copies a tree without following symlinks. Special files (fifos, devices) are skipped: they hold no data.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if ft.is_file() {
        fs::copy(from, to).map(|_| ())
    } else {
        Ok(())
    }
}

/// Removes a file, symlink or directory tree; a missing path is not an error.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// True if the path exists without following a final symlink.
/// The bytes an unprivileged user may still write on the filesystem holding `path` (`None` when it cannot be told).
pub fn available(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

pub fn exists_nofollow(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id");
        assert!(write_new(&p, b"a").unwrap());
        assert!(!write_new(&p, b"b").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"a");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn exchange_swaps_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), "in a").unwrap();
        if exchange(&a, &b).unwrap() {
            assert!(b.join("x").exists());
            assert!(!a.join("x").exists());
        }
    }
}
