//! The backup archive: a deterministic zstd-compressed tar of `drizzle/`, and an unpacker that trusts nothing.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::manifest::{self, FileEntry, Tree};
use crate::safefs::{Folder, Found};

/// zstd level: small drizzle folders compress in milliseconds at this level, and the output is stable.
const ZSTD_LEVEL: i32 = 12;

/// An archive of a `drizzle/` tree, with the manifest entries of exactly the bytes it holds.
#[derive(Debug, Clone)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub files: Vec<FileEntry>,
    /// blake3 of `bytes`.
    pub blake3: String,
}

/// How much an unpack may hold before it is refused as hostile.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_file: u64,
    pub max_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entries: 100_000, max_file: 256 << 20, max_total: 1 << 30 }
    }
}

/// Archives the regular files of `tree` (scanned from `dir`). Sorted entries, fixed mtime, owner and mode, so
/// the same tree always gives the same bytes. Fails if a file changes while it is read.
pub fn pack(dir: &Path, tree: &Tree) -> Result<Packed> {
    if let Some((path, kind)) = tree.specials().next() {
        let path = manifest::escaped(path);
        return Err(Error::failed(
            format!(
                "drizzle/{path} is {}, not a regular file with a UTF-8 name; dreamerd only archives those",
                kind.described()
            ),
            format!("remove drizzle/{path} (drizzle-kit never creates one), then try again"),
        ));
    }
    // A folder that does not exist archives as an empty tree.
    let folder = Folder::open(dir).map_err(io_failed)?;
    // Never back up what restore would refuse to unpack.
    let limits = Limits::default();
    let files = tree.files();
    let total: u64 = files.iter().map(|f| f.size).sum();
    if let Some(big) = files.iter().find(|f| f.size > limits.max_file) {
        return Err(Error::failed(
            format!(
                "drizzle/{} is {} bytes, over the {} byte limit of a backup",
                big.path, big.size, limits.max_file
            ),
            "drizzle/ holds only migrations and snapshots: move the large file out of it",
        ));
    }
    if total > limits.max_total || files.len() > limits.max_entries {
        return Err(Error::failed(
            format!("drizzle/ holds {} files and {total} bytes, over the limits of a backup", files.len()),
            "move what is not a migration out of drizzle/",
        ));
    }
    let encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(io_failed)?;
    let mut builder = tar::Builder::new(encoder);
    let mut packed_files = Vec::new();
    for expected in files {
        let changed = || {
            Error::failed(
                format!("drizzle/{} changed while it was being archived", expected.path),
                "let whatever is writing to drizzle/ finish, then try again",
            )
        };
        let found = match &folder {
            Some(folder) => folder.file(&expected.path).map_err(io_failed)?,
            None => Found::Missing,
        };
        let Found::File(file) = found else { return Err(changed()) };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(expected.size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let mut reader = HashingReader { inner: file.take(expected.size), hasher: blake3::Hasher::new() };
        builder.append_data(&mut header, &expected.path, &mut reader).map_err(io_failed)?;
        if reader.hasher.count() != expected.size {
            return Err(changed());
        }
        let blake3 = reader.hasher.finalize().to_hex().to_string();
        packed_files.push(FileEntry { path: expected.path.clone(), size: expected.size, blake3 });
    }
    let bytes = builder.into_inner().and_then(|e| e.finish()).map_err(io_failed)?;
    let blake3 = blake3::hash(&bytes).to_hex().to_string();
    Ok(Packed { bytes, files: packed_files, blake3 })
}

fn io_failed(e: io::Error) -> Error {
    Error::failed(format!("cannot build the archive of drizzle/: {e}"), "check the disk and try again")
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A reader that fails once more than `left` bytes come out of it (a decompression bomb stops here).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "the archive expands past the size limit")
        })?;
        Ok(n)
    }
}

/// Unpacks `bytes` into the new directory `dest`, checking every entry against `expected` (path, size, blake3).
/// Refuses absolute paths, `..`, links, devices, fifos, duplicates, unexpected or missing files, and anything
/// over `limits`. On error, `dest` is removed and nothing else was touched.
pub fn unpack_verified(bytes: &[u8], expected: &[FileEntry], dest: &Path, limits: Limits) -> Result<()> {
    unpack_except(bytes, expected, dest, limits, &HashSet::new())
}

/// [`unpack_verified`] without writing the files at `skip` (the caller has them already): they are still checked to
/// be in the archive, as large as the manifest says, and safe; only their bytes are passed over.
pub fn unpack_except(
    bytes: &[u8],
    expected: &[FileEntry],
    dest: &Path,
    limits: Limits,
    skip: &HashSet<&str>,
) -> Result<()> {
    fs::create_dir(dest).map_err(|e| {
        Error::failed(format!("cannot create {}: {e}", dest.display()), "check permissions and disk space")
    })?;
    let result = unpack_into(bytes, expected, dest, limits, skip);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_into(
    bytes: &[u8],
    expected: &[FileEntry],
    dest: &Path,
    limits: Limits,
    skip: &HashSet<&str>,
) -> Result<()> {
    let corrupt = |why: String| Error::Corrupt(format!("backup archive refused: {why}"));
    let want: HashMap<&str, &FileEntry> = expected.iter().map(|f| (f.path.as_str(), f)).collect();
    let decoder = zstd::stream::Decoder::new(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut archive = tar::Archive::new(Capped { inner: decoder, left: limits.max_total });
    let mut seen = HashSet::new();
    let entries = archive.entries().map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        if seen.len() >= limits.max_entries {
            return Err(corrupt(format!("more than {} entries", limits.max_entries)));
        }
        let raw = entry.path().map_err(|e| corrupt(e.to_string()))?.into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(corrupt(format!("entry {shown:?} is a {kind:?}, only regular files are allowed")));
        }
        let rel = safe_relative(&raw).ok_or_else(|| corrupt(format!("unsafe path {shown:?}")))?;
        if !seen.insert(rel.clone()) {
            return Err(corrupt(format!("duplicate entry {rel:?}")));
        }
        let size = entry.size();
        if size > limits.max_file {
            return Err(corrupt(format!("{rel:?} is {size} bytes, over the {} limit", limits.max_file)));
        }
        let Some(want) = want.get(rel.as_str()) else {
            return Err(corrupt(format!("{rel:?} is not in the push's manifest")));
        };
        if want.size != size {
            return Err(corrupt(format!("{rel:?} is {size} bytes, the manifest says {}", want.size)));
        }
        if skip.contains(rel.as_str()) {
            let passed =
                io::copy(&mut entry, &mut io::sink()).map_err(|e| corrupt(format!("{rel:?}: {e}")))?;
            if passed != want.size {
                return Err(corrupt(format!("{rel:?} is cut short")));
            }
            continue;
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| written(&rel, dest, e))?;
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .map_err(|e| written(&rel, dest, e))?;
        let mut hashing = HashingReader { inner: &mut entry, hasher: blake3::Hasher::new() };
        let copied = io::copy(&mut hashing, &mut out).map_err(|e| {
            if out_of_room(&e) { written(&rel, dest, e) } else { corrupt(format!("{rel:?}: {e}")) }
        })?;
        let got = hashing.hasher.finalize().to_hex().to_string();
        if copied != want.size || got != want.blake3 {
            return Err(corrupt(format!("{rel:?} does not match the manifest's blake3")));
        }
        out.flush().map_err(|e| written(&rel, dest, e))?;
    }
    if let Some(missing) = expected.iter().find(|f| !seen.contains(&f.path)) {
        return Err(corrupt(format!("{:?} is in the manifest but not in the archive", missing.path)));
    }
    // One flush of the whole tree, not one fsync per file: it is durable before anyone renames it into place.
    fsutil::sync_tree(dest).map_err(|e| {
        Error::failed(format!("cannot flush {} to disk: {e}", dest.display()), "check the disk and try again")
    })
}

/// The path as `a/b/c` if it is relative and made only of plain names.
/// Whether an I/O error is the destination's disk or quota being full.
fn out_of_room(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

/// An error writing the unpacked tree (not the archive's fault): says where, and what to do.
fn written(rel: &str, dest: &Path, e: io::Error) -> Error {
    let hint = if out_of_room(&e) {
        "free space on that disk, then try again; nothing was changed"
    } else {
        "check that folder's permissions and disk, then try again; nothing was changed"
    };
    Error::failed(format!("cannot write {rel:?} into {}: {e}", dest.display()), hint)
}

fn safe_relative(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => parts.push(name.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, body) in files {
            let path = dir.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        dir
    }

    fn pack_dir(dir: &Path) -> Packed {
        pack(dir, &manifest::scan(dir).unwrap()).unwrap()
    }

    fn raw_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    #[test]
    fn same_tree_same_bytes_and_roundtrip() {
        let a = tree_with(&[("0000_x.sql", "create"), ("meta/_journal.json", "{}")]);
        let b = tree_with(&[("meta/_journal.json", "{}"), ("0000_x.sql", "create")]);
        let (pa, pb) = (pack_dir(a.path()), pack_dir(b.path()));
        assert_eq!(pa.bytes, pb.bytes);
        assert_eq!(pa.blake3, pb.blake3);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("new");
        unpack_verified(&pa.bytes, &pa.files, &dest, Limits::default()).unwrap();
        assert_eq!(fs::read(dest.join("meta/_journal.json")).unwrap(), b"{}");
        assert_eq!(manifest::scan(&dest).unwrap().files(), pa.files);
    }

    #[test]
    fn large_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join("big.sql"), &big).unwrap();
        let p = pack_dir(dir.path());
        let out = tempfile::tempdir().unwrap();
        unpack_verified(&p.bytes, &p.files, &out.path().join("n"), Limits::default()).unwrap();
        assert_eq!(fs::read(out.path().join("n/big.sql")).unwrap(), big);
    }

    fn refused(bytes: &[u8], expected: &[FileEntry], limits: Limits) -> String {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("new");
        let err = unpack_verified(bytes, expected, &dest, limits).unwrap_err();
        assert!(!dest.exists(), "a refused archive leaves nothing behind");
        assert_eq!(err.exit_code(), 1);
        err.to_string()
    }

    fn entry(path: &str, body: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: body.len() as u64,
            blake3: blake3::hash(body.as_bytes()).to_hex().to_string(),
        }
    }

    #[test]
    fn refuses_dotdot_and_absolute_paths() {
        for bad in ["../evil.sql", "/etc/evil", "a/../../evil"] {
            let bytes = raw_tar(|b| {
                let mut h = file_header(4);
                // set_path refuses `..`, so write the name bytes directly as a hostile tool would.
                h.as_old_mut().name[..bad.len()].copy_from_slice(bad.as_bytes());
                h.set_cksum();
                b.append(&h, &b"evil"[..]).unwrap();
            });
            let err = refused(&bytes, &[entry(bad, "evil")], Limits::default());
            assert!(err.contains("unsafe path"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_links_and_fifos() {
        for kind in
            [tar::EntryType::Symlink, tar::EntryType::Link, tar::EntryType::Fifo, tar::EntryType::Char]
        {
            let bytes = raw_tar(|b| {
                let mut h = file_header(0);
                h.set_entry_type(kind);
                h.set_link_name("/etc/passwd").ok();
                b.append_data(&mut h, "x.sql", &b""[..]).unwrap();
            });
            let err = refused(&bytes, &[entry("x.sql", "")], Limits::default());
            assert!(err.contains("only regular files"), "{err}");
        }
    }

    #[test]
    fn refuses_duplicates_extras_missing_and_tampered() {
        let dup = raw_tar(|b| {
            b.append_data(&mut file_header(1), "a", &b"1"[..]).unwrap();
            b.append_data(&mut file_header(1), "a", &b"1"[..]).unwrap();
        });
        assert!(refused(&dup, &[entry("a", "1")], Limits::default()).contains("duplicate"));
        let one = raw_tar(|b| b.append_data(&mut file_header(1), "a", &b"1"[..]).unwrap());
        assert!(refused(&one, &[], Limits::default()).contains("not in the push's manifest"));
        assert!(
            refused(&one, &[entry("a", "1"), entry("b", "2")], Limits::default())
                .contains("but not in the archive")
        );
        assert!(refused(&one, &[entry("a", "2")], Limits::default()).contains("blake3"));
        assert!(refused(b"not zstd at all", &[], Limits::default()).contains("refused"));
    }

    #[test]
    fn refuses_past_size_caps() {
        let body = "x".repeat(10_000);
        let bytes = raw_tar(|b| b.append_data(&mut file_header(10_000), "a", body.as_bytes()).unwrap());
        let small_file = Limits { max_file: 100, ..Limits::default() };
        assert!(refused(&bytes, &[entry("a", &body)], small_file).contains("limit"));
        let small_total = Limits { max_total: 2048, ..Limits::default() };
        assert!(refused(&bytes, &[entry("a", &body)], small_total).contains("limit"));
        let few = Limits { max_entries: 0, ..Limits::default() };
        assert!(refused(&bytes, &[entry("a", &body)], few).contains("entries"));
    }

    #[test]
    fn pack_refuses_symlinks() {
        let dir = tree_with(&[("a.sql", "x")]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("b.sql")).unwrap();
        let err = pack(dir.path(), &manifest::scan(dir.path()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("b.sql"), "{err}");
    }
}
