//! The one way dreamerd reads files it does not own: below a folder opened once, never through a symbolic link
//! (not even a directory link in the middle of a path), never blocking on a fifo, regular files only, and never
//! more than a size cap.
//!
//! A [`Folder`] is a directory file descriptor. Paths below it are opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` where the kernel has it, else one component at a time with `O_NOFOLLOW`, always with
//! `O_NONBLOCK`; what was opened is then checked to be a regular file. The folder itself may sit behind links
//! (its parent is canonicalised when it is opened), but is never a link itself.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// Set once `openat2` turned out to be missing (old kernel, seccomp filter): the component walk is used instead.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
/// Set once the kernel refused `O_NOATIME` (a file of another owner): files are then opened without it.
static NOATIME_REFUSED: AtomicBool = AtomicBool::new(false);

/// The kinds of entries that are not what dreamerd expected at a path. Never followed or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecialKind {
    Directory,
    Symlink,
    Fifo,
    Socket,
    Device,
    /// A regular file where a directory was expected (the migration folder replaced by a file).
    File,
    /// An entry whose name is not UTF-8: reported, never archived.
    #[serde(rename = "non-utf8-name")]
    NonUtf8Name,
}

impl SpecialKind {
    /// The kind of a file type that is not what was expected.
    pub fn of(ft: &std::fs::FileType) -> SpecialKind {
        if ft.is_dir() {
            SpecialKind::Directory
        } else if ft.is_symlink() {
            SpecialKind::Symlink
        } else if ft.is_fifo() {
            SpecialKind::Fifo
        } else if ft.is_socket() {
            SpecialKind::Socket
        } else if ft.is_file() {
            SpecialKind::File
        } else {
            SpecialKind::Device
        }
    }

    /// `a fifo`, `a symbolic link`...
    pub fn described(self) -> &'static str {
        match self {
            SpecialKind::Directory => "a directory",
            SpecialKind::Symlink => "a symbolic link",
            SpecialKind::Fifo => "a fifo",
            SpecialKind::Socket => "a socket",
            SpecialKind::Device => "a device",
            SpecialKind::File => "a regular file",
            SpecialKind::NonUtf8Name => "a file whose name is not UTF-8",
        }
    }
}

/// What is at a path below a folder.
#[derive(Debug)]
pub enum Found {
    /// A regular file, open for reading.
    File(File),
    Missing,
    /// Something that is not a regular file (or a path through a link), never opened for reading.
    Not(SpecialKind),
}

/// What is at the path of a folder.
#[derive(Debug)]
pub enum FolderAt {
    Folder(Folder),
    Missing,
    /// Something else is there (a link, a file...), never followed.
    Not(SpecialKind),
}

/// A directory to read beneath.
#[derive(Debug)]
pub struct Folder {
    path: PathBuf,
    fd: OwnedFd,
}

fn refused(path: &Path, kind: SpecialKind) -> io::Error {
    let what = match kind {
        SpecialKind::Symlink => {
            "is a symbolic link or a path through one; dreamerd never follows links here".into()
        }
        other => format!("is {}, not a regular file; dreamerd does not read it", other.described()),
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("{} {what}", path.display()))
}

/// The relative path as plain names, or an error for anything that could leave the folder.
fn plain(rel: &str) -> io::Result<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{rel:?} is not a plain relative path"),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{rel:?} names no file")));
    }
    Ok(out)
}

const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY)
    .union(OFlags::NOFOLLOW);
const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW);

/// The outcome of opening one path below a folder, before the file-type check.
enum Opened {
    Fd(OwnedFd),
    Missing,
    Link,
}

impl Folder {
    /// What is at `path`: its parent is canonicalised once (it may sit behind a link); the folder itself must be a
    /// directory and not a link.
    pub fn at(path: &Path) -> io::Result<FolderAt> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (if p.as_os_str().is_empty() { Path::new(".") } else { p }, n),
            // `/` or a path ending in `..`: canonicalise it whole.
            _ => (path, std::ffi::OsStr::new(".")),
        };
        let parent = match std::fs::canonicalize(parent) {
            Ok(p) => p,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Ok(FolderAt::Missing);
            }
            Err(e) => return Err(e),
        };
        let full = if name == "." { parent.clone() } else { parent.join(name) };
        match rustix::fs::openat(rustix::fs::CWD, &full, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(FolderAt::Folder(Folder { path: full, fd })),
            Err(Errno::NOENT) => Ok(FolderAt::Missing),
            Err(Errno::LOOP | Errno::NOTDIR) => match std::fs::symlink_metadata(&full) {
                Ok(m) => Ok(FolderAt::Not(SpecialKind::of(&m.file_type()))),
                Err(_) => Ok(FolderAt::Missing),
            },
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Opens `path` to read beneath (see [`Folder::at`]); `Ok(None)` when it does not exist, an error naming what
    /// is there instead of a directory.
    pub fn open(path: &Path) -> io::Result<Option<Folder>> {
        match Folder::at(path)? {
            FolderAt::Folder(f) => Ok(Some(f)),
            FolderAt::Missing => Ok(None),
            FolderAt::Not(kind) => Err(refused(path, kind)),
        }
    }

    /// The folder's path (its parent canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` below the folder, for messages.
    pub fn shown(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// [`Folder::open_raw`] without moving the file's access time where the kernel allows it (the file is ours): a
    /// scan hashing thousands of freshly touched files would otherwise dirty every inode it reads.
    fn open_quiet(&self, rel: &str, flags: OFlags) -> io::Result<Opened> {
        if !NOATIME_REFUSED.load(Ordering::Relaxed) {
            match self.open_raw(rel, flags.union(OFlags::NOATIME)) {
                // Not the file's owner: from now on the access times are the kernel's to keep.
                Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => {
                    NOATIME_REFUSED.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        self.open_raw(rel, flags)
    }

    fn open_raw(&self, rel: &str, flags: OFlags) -> io::Result<Opened> {
        let parts = plain(rel)?;
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(Opened::Fd(fd)),
                Err(Errno::NOENT | Errno::NOTDIR) => return Ok(Opened::Missing),
                Err(Errno::LOOP | Errno::XDEV) => return Ok(Opened::Link),
                // With O_NOATIME, EPERM says the file is not ours (see `open_quiet`), not that openat2 is refused.
                Err(Errno::PERM) if flags.contains(OFlags::NOATIME) => return Err(Errno::PERM.into()),
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                Err(Errno::AGAIN) => {} // the kernel asks to retry; the walk below does it its own way
                Err(e) => return Err(e.into()),
            }
        }
        // One component at a time, each opened without following a link.
        let mut dir: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let at = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
            let last = i + 1 == parts.len();
            let f = if last { flags } else { DIR_FLAGS };
            match rustix::fs::openat(at, *part, f, Mode::empty()) {
                Ok(fd) if last => return Ok(Opened::Fd(fd)),
                Ok(fd) => dir = Some(fd),
                Err(Errno::NOENT) => return Ok(Opened::Missing),
                Err(Errno::LOOP) => return Ok(Opened::Link),
                Err(Errno::NOTDIR) => {
                    // A link in the middle fails with ENOTDIR under O_DIRECTORY|O_NOFOLLOW.
                    let st = rustix::fs::statat(at, *part, AtFlags::SYMLINK_NOFOLLOW);
                    return Ok(match st {
                        Ok(s) if rustix::fs::FileType::from_raw_mode(s.st_mode).is_symlink() => Opened::Link,
                        _ => Opened::Missing,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("plain() returns at least one part")
    }

    /// Opens the regular file at `rel` for reading, or says what is there instead.
    pub fn file(&self, rel: &str) -> io::Result<Found> {
        Ok(match self.file_stat(rel)? {
            Ok((file, _)) => Found::File(file),
            Err(None) => Found::Missing,
            Err(Some(kind)) => Found::Not(kind),
        })
    }

    /// [`Folder::file`], a regular file with the status its type was checked with (its identity, without asking
    /// again); `Err` says what is there instead (`None`: nothing).
    pub fn file_stat(&self, rel: &str) -> io::Result<Result<(File, rustix::fs::Stat), Option<SpecialKind>>> {
        match self.open_quiet(rel, READ_FLAGS) {
            Ok(Opened::Fd(fd)) => {
                let st = rustix::fs::fstat(&fd)?;
                let file = File::from(fd);
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile {
                    Ok(Ok((file, st)))
                } else {
                    Ok(Err(Some(SpecialKind::of(&file.metadata()?.file_type()))))
                }
            }
            Ok(Opened::Missing) => Ok(Err(None)),
            Ok(Opened::Link) => Ok(Err(Some(SpecialKind::Symlink))),
            // A socket cannot be opened at all.
            Err(e) if e.raw_os_error() == Some(Errno::NXIO.raw_os_error()) => {
                Ok(Err(Some(SpecialKind::Socket)))
            }
            Err(e) => Err(e),
        }
    }

    /// The bytes of the regular file at `rel`, `Ok(None)` if nothing is there, an error for anything that is not a
    /// regular file or is larger than `cap` bytes.
    pub fn read(&self, rel: &str, cap: u64) -> io::Result<Option<Vec<u8>>> {
        match self.file(rel)? {
            Found::File(f) => read_capped(f, cap, &self.shown(rel)).map(Some),
            Found::Missing => Ok(None),
            Found::Not(kind) => Err(refused(&self.shown(rel), kind)),
        }
    }

    /// Like [`Folder::read`], as UTF-8 text.
    pub fn read_string(&self, rel: &str, cap: u64) -> io::Result<Option<String>> {
        self.read(rel, cap)?
            .map(|b| {
                String::from_utf8(b).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not UTF-8 text", self.shown(rel).display()),
                    )
                })
            })
            .transpose()
    }

    /// What is at `rel` below this folder, as a folder (never through a link).
    pub fn sub(&self, rel: &str) -> io::Result<FolderAt> {
        match self.open_raw(rel, DIR_FLAGS)? {
            Opened::Fd(fd) => Ok(FolderAt::Folder(Folder { path: self.path.join(rel), fd })),
            // ENOTDIR on the last component: something else may be there.
            Opened::Missing => Ok(self.kind(rel)?.map_or(FolderAt::Missing, FolderAt::Not)),
            Opened::Link => Ok(FolderAt::Not(SpecialKind::Symlink)),
        }
    }

    /// The folder at `rel` below this one; `Ok(None)` if it does not exist, an error if something else is there.
    pub fn folder(&self, rel: &str) -> io::Result<Option<Folder>> {
        match self.sub(rel)? {
            FolderAt::Folder(f) => Ok(Some(f)),
            FolderAt::Missing => Ok(None),
            FolderAt::Not(kind) => Err(refused(&self.shown(rel), kind)),
        }
    }

    /// What is at `rel` without following a link: `None` if nothing, `Some(Directory)`, `Some(File)` for a regular
    /// file, and so on.
    pub fn kind(&self, rel: &str) -> io::Result<Option<SpecialKind>> {
        Ok(self.lstat(rel)?.map(|st| match st {
            Ok(st) => match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::RegularFile => SpecialKind::File,
                rustix::fs::FileType::Directory => SpecialKind::Directory,
                rustix::fs::FileType::Symlink => SpecialKind::Symlink,
                rustix::fs::FileType::Fifo => SpecialKind::Fifo,
                rustix::fs::FileType::Socket => SpecialKind::Socket,
                _ => SpecialKind::Device,
            },
            Err(kind) => kind,
        }))
    }

    /// The identity of the regular file at `rel` (see [`crate::facts`]), without opening it or following a link;
    /// `None` when no regular file is there.
    pub fn identity(&self, rel: &str) -> io::Result<Option<crate::facts::Identity>> {
        Ok(match self.lstat(rel)? {
            Some(Ok(st))
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile =>
            {
                Some(crate::facts::Identity::of(&st))
            }
            _ => None,
        })
    }

    /// The status of what is at `rel`, never following a link: `None` if nothing, `Err(Symlink)` for a link on the
    /// way to it.
    fn lstat(&self, rel: &str) -> io::Result<Option<Result<rustix::fs::Stat, SpecialKind>>> {
        let parts = plain(rel)?;
        let (last, dirs) = parts.split_last().expect("at least one part");
        let holder;
        let at = if dirs.is_empty() {
            self.fd.as_fd()
        } else {
            let dir_rel: PathBuf = dirs.iter().collect();
            match self.open_raw(&dir_rel.to_string_lossy(), DIR_FLAGS)? {
                Opened::Fd(fd) => {
                    holder = fd;
                    holder.as_fd()
                }
                Opened::Missing => return Ok(None),
                Opened::Link => return Ok(Some(Err(SpecialKind::Symlink))),
            }
        };
        match rustix::fs::statat(at, *last, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Ok(st))),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The names in this folder (not `.` and `..`), with their type where the filesystem says it.
    pub fn entries(&self) -> io::Result<Vec<(OsString, Option<rustix::fs::FileType>)>> {
        use rustix::fs::{Mode, OFlags};
        // Its own descriptor (its own offset), read with one large buffer: ext4 fills a hashed directory's listing
        // per call, and small buffers (growing from 768 bytes) cost a dozen calls on a folder of 2,000 migrations.
        let fd = rustix::fs::openat(
            &self.fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut buf = Vec::with_capacity(DIR_BUFFER);
        let mut dir = rustix::fs::RawDir::new(&fd, buf.spare_capacity_mut());
        let mut out = Vec::new();
        while let Some(entry) = dir.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let ft = entry.file_type();
            let hint = (ft != rustix::fs::FileType::Unknown).then_some(ft);
            out.push((OsString::from_vec(name.to_vec()), hint));
        }
        Ok(out)
    }
}

/// The buffer a folder's entries are read with (as glibc's readdir).
const DIR_BUFFER: usize = 32 << 10;

/// Reads at most `cap` bytes of `file`; more is an error naming `shown`.
pub fn read_capped(file: File, cap: u64, shown: &Path) -> io::Result<Vec<u8>> {
    // Sized once from what the file says it holds (a file that grows meanwhile is still read to its end).
    let expected = rustix::fs::fstat(&file).map_or(0, |st| st.st_size.max(0) as u64).min(cap + 1);
    let mut data = Vec::with_capacity(expected as usize + 1);
    file.take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than the {cap} byte limit for such a file", shown.display()),
        ));
    }
    Ok(data)
}

/// Reads a file dreamerd owns or the user named directly (a configuration file, a state file, a store object):
/// never blocking on a fifo, regular files only, at most `cap` bytes. The last component is followed only when
/// `follow` is set (a dotfile manager's link to the user's config). `Ok(None)` if it does not exist.
pub fn read_file(path: &Path, cap: u64, follow: bool) -> io::Result<Option<Vec<u8>>> {
    let mut flags = READ_FLAGS;
    if follow {
        flags.remove(OFlags::NOFOLLOW);
    }
    let fd = match rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(refused(path, SpecialKind::Symlink)),
        Err(Errno::NXIO) => return Err(refused(path, SpecialKind::Socket)),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(refused(path, SpecialKind::of(&ft)));
    }
    read_capped(file, cap, path).map(Some)
}

/// True when `path` (its final component not followed) is a regular file. For files that must be opened by path by
/// a library (SQLite), after which a fifo would block: check first.
pub fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// A file name from a drizzle journal (a migration's tag) is used as a path only if it is a plain name.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o644), 0)
            .unwrap();
    }

    fn setup() -> (tempfile::TempDir, Folder) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("p/meta")).unwrap();
        fs::write(dir.path().join("p/meta/a.json"), "{}").unwrap();
        fs::write(dir.path().join("secret"), "outside").unwrap();
        let folder = Folder::open(&dir.path().join("p")).unwrap().unwrap();
        (dir, folder)
    }

    #[test]
    fn reads_regular_files_and_missing_is_none() {
        let (_d, f) = setup();
        assert_eq!(f.read("meta/a.json", 10).unwrap().unwrap(), b"{}");
        assert!(f.read("meta/b.json", 10).unwrap().is_none());
        assert!(f.read("nope/b.json", 10).unwrap().is_none());
        let err = f.read("meta/a.json", 1).unwrap_err();
        assert!(err.to_string().contains("byte limit"), "{err}");
    }

    #[test]
    fn never_follows_a_link_at_the_end_or_in_the_middle() {
        let (d, f) = setup();
        symlink("/dev/zero", d.path().join("p/meta/zero.json")).unwrap();
        symlink(d.path().join("secret"), d.path().join("p/last")).unwrap();
        symlink(d.path(), d.path().join("p/middle")).unwrap();
        for rel in ["meta/zero.json", "last", "middle/secret"] {
            let err = f.read(rel, 1 << 20).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{rel}: {err}");
        }
        assert!(matches!(f.file("middle/secret").unwrap(), Found::Not(SpecialKind::Symlink)));
        assert_eq!(f.kind("last").unwrap(), Some(SpecialKind::Symlink));
        assert!(f.folder("middle").is_err());
    }

    #[test]
    fn the_component_walk_is_as_strict() {
        let (d, f) = setup();
        symlink(d.path(), d.path().join("p/middle")).unwrap();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        let walked = f.read("middle/secret", 100);
        let good = f.read("meta/a.json", 100);
        NO_OPENAT2.store(false, Ordering::Relaxed);
        assert!(walked.unwrap_err().to_string().contains("symbolic link"));
        assert_eq!(good.unwrap().unwrap(), b"{}");
    }

    #[test]
    fn never_blocks_on_a_fifo() {
        let (d, f) = setup();
        mkfifo(&d.path().join("p/meta/_journal.json"));
        let err = f.read("meta/_journal.json", 100).unwrap_err();
        assert!(err.to_string().contains("a fifo"), "{err}");
        assert!(read_file(&d.path().join("p/meta/_journal.json"), 100, true).is_err());
        assert!(!is_regular_file(&d.path().join("p/meta/_journal.json")));
    }

    #[test]
    fn refuses_paths_that_leave_the_folder() {
        let (_d, f) = setup();
        for bad in ["../secret", "/etc/passwd", "meta/../../secret", ""] {
            assert!(f.read(bad, 100).is_err(), "{bad}");
        }
        assert!(plain_name("0000_a"));
        for bad in ["../x", "a/b", "..", "", "a\nb"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_folder_larger_than_one_read_is_listed_whole() {
        let d = tempfile::tempdir().unwrap();
        // About 60 bytes an entry: 3,000 of them take several reads of the 32 KiB buffer.
        let mut want: Vec<OsString> =
            (0..3000).map(|i| OsString::from(format!("{i:04}_a_migration_with_a_long_name.sql"))).collect();
        for name in &want {
            fs::write(d.path().join(name), "").unwrap();
        }
        let f = Folder::open(d.path()).unwrap().unwrap();
        for _ in 0..2 {
            // Twice: each listing reads from the start.
            let mut names: Vec<OsString> = f.entries().unwrap().into_iter().map(|(n, _)| n).collect();
            names.sort();
            want.sort();
            assert_eq!(names, want);
        }
    }

    #[test]
    fn the_folder_itself_may_not_be_a_link_but_its_parent_may() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("real/drizzle")).unwrap();
        fs::write(d.path().join("real/drizzle/x"), "x").unwrap();
        symlink(d.path().join("real"), d.path().join("via")).unwrap();
        let f = Folder::open(&d.path().join("via/drizzle")).unwrap().unwrap();
        assert_eq!(f.read("x", 10).unwrap().unwrap(), b"x");
        symlink(d.path().join("real/drizzle"), d.path().join("real/linked")).unwrap();
        assert!(Folder::open(&d.path().join("real/linked")).is_err());
        assert!(Folder::open(&d.path().join("real/none")).unwrap().is_none());
        let names: Vec<_> = f.entries().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, [OsString::from("x")]);
    }

    /// The access time of `path`, in seconds.
    fn atime(path: &Path) -> i64 {
        rustix::fs::stat(path).unwrap().st_atime as i64
    }

    #[test]
    fn reads_leave_access_times_alone_and_files_of_others_still_open() {
        // Ours: the access time stays (relatime would move an access time older than the change time).
        let (d, f) = setup();
        let file = d.path().join("p/meta/a.json");
        let old = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 0 },
            last_modification: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        };
        rustix::fs::utimensat(rustix::fs::CWD, &file, &old, AtFlags::empty()).unwrap();
        assert_eq!(f.read("meta/a.json", 10).unwrap().unwrap(), b"{}");
        assert_eq!(atime(&file), 1_000_000_000, "the read moved the access time");
        assert!(!NOATIME_REFUSED.load(Ordering::Relaxed));
        // Another owner's file: the kernel refuses O_NOATIME; the file is read all the same. Root is refused only
        // without CAP_FOWNER, which this thread alone gives up (capabilities are per thread).
        std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let (folder, name) = if rustix::process::geteuid().is_root() {
                fs::write(dir.path().join("theirs"), "read me").unwrap();
                std::os::unix::fs::chown(dir.path().join("theirs"), Some(65534), Some(65534)).unwrap();
                let mut caps = rustix::thread::capabilities(None).unwrap();
                caps.effective.remove(rustix::thread::CapabilitySet::FOWNER);
                rustix::thread::set_capabilities(None, caps).unwrap();
                (Folder::open(dir.path()).unwrap().unwrap(), "theirs")
            } else {
                (Folder::open(Path::new("/etc")).unwrap().unwrap(), "passwd")
            };
            let bytes = folder.read(name, 1 << 20).unwrap().expect("the file is read");
            if name == "theirs" {
                assert_eq!(bytes, b"read me");
            }
            assert!(NOATIME_REFUSED.load(Ordering::Relaxed), "the refusal is remembered");
        })
        .join()
        .unwrap();
    }
}
