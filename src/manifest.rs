//! What `drizzle/` holds: scanning and hashing the tree, and diffing it against the manifest of a push.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::facts::{Digest, Identity};
pub use crate::safefs::SpecialKind;
use crate::safefs::{Folder, FolderAt, Found};

/// One regular file of a manifest: its path relative to `drizzle/` (with `/`), size and blake3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

impl FileEntry {
    /// Whether a file of `size` bytes with the blake3 `digest` is this entry's.
    pub fn is(&self, size: u64, digest: &Digest) -> bool {
        size == self.size && crate::facts::unhex(&self.blake3).is_some_and(|d| d == *digest)
    }
}

/// The hash of a whole tree: blake3 over one line per file (`<blake3> <size> <json path>`), in path order. A push's
/// manifest is stored under it, the committed sum carries it as its `root`, and the index finds a push by it.
pub fn tree_hash(files: &[FileEntry]) -> String {
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(file_line(f).as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// One file's line in a tree hash and in the committed sum.
pub fn file_line(f: &FileEntry) -> String {
    format!("{} {} {}", f.blake3, f.size, serde_json::to_string(&f.path).expect("a string serialises"))
}

/// What is found at one path of the current tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        size: u64,
        blake3: Digest,
    },
    /// Anything that is not a regular file; never followed or read.
    Special(SpecialKind),
}

/// The current state of a `drizzle/` directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    /// False when `drizzle/` does not exist at all.
    pub exists: bool,
    /// Every entry below `drizzle/`, directories included, keyed by relative path. If `drizzle/` itself is not a
    /// directory, it appears under the key `.`.
    pub nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// The regular files, as manifest entries in path order.
    pub fn files(&self) -> Vec<FileEntry> {
        self.nodes
            .iter()
            .filter_map(|(path, node)| match node {
                Node::File { size, blake3 } => {
                    Some(FileEntry { path: path.clone(), size: *size, blake3: crate::facts::hex(blake3) })
                }
                Node::Special(_) => None,
            })
            .collect()
    }

    /// True when the tree holds exactly `files`, in their order, and nothing else but folders: judged in one ordered
    /// walk, without building maps (a folder that is exactly its push is the common case).
    pub fn holds_exactly(&self, files: &[FileEntry]) -> bool {
        let mut expected = files.iter();
        for (path, node) in &self.nodes {
            match node {
                Node::File { size, blake3 } => match expected.next() {
                    Some(entry) if entry.path == *path && entry.is(*size, blake3) => {}
                    _ => return false,
                },
                Node::Special(SpecialKind::Directory) => {}
                Node::Special(_) => return false,
            }
        }
        expected.next().is_none()
    }

    /// A digest of everything the scan found: every path with its size and blake3, or what else is there. Two scans
    /// with the same digest found the same folder, byte for byte.
    pub fn digest(&self) -> Digest {
        // Written out whole, then hashed at once: blake3 hashes a large buffer on every SIMD lane, and 2,000 small
        // updates one block at a time.
        let mut text = Vec::with_capacity(self.nodes.keys().map(|p| p.len() + 48).sum::<usize>() + 8);
        text.extend_from_slice(if self.exists { b"tree 1\n" } else { b"none 1\n" });
        for (path, node) in &self.nodes {
            text.extend_from_slice(path.as_bytes());
            match node {
                Node::File { size, blake3 } => {
                    text.extend_from_slice(b"\0f");
                    text.extend_from_slice(&size.to_le_bytes());
                    text.extend_from_slice(blake3);
                }
                Node::Special(kind) => {
                    text.extend_from_slice(b"\0s");
                    text.extend_from_slice(kind.described().as_bytes());
                }
            }
            text.push(b'\n');
        }
        *blake3::hash(&text).as_bytes()
    }

    /// Entries that are neither regular files nor directories.
    pub fn specials(&self) -> impl Iterator<Item = (&String, SpecialKind)> {
        self.nodes.iter().filter_map(|(p, n)| match n {
            Node::Special(k) if *k != SpecialKind::Directory => Some((p, *k)),
            _ => None,
        })
    }
}

/// Hashes one file by streaming it; never loads it whole.
pub fn hash_file(file: &mut File) -> io::Result<(u64, Digest)> {
    hash_sized(file, None)
}

/// The read buffer of each hashing thread, zeroed once (blake3's `update_reader` zeroes 64 KiB for every file).
const HASH_BUFFER: usize = 64 * 1024;

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`hash_file`], stopping once `expected` bytes are read when given (the size its status said): the read that
/// would only say "the end" is spared. What is hashed is what was read, and the size returned is its length; a file
/// that grew since has another identity, so it is read again at the next look, as one rewritten during the read is.
fn hash_sized(file: &mut File, expected: Option<u64>) -> io::Result<(u64, Digest)> {
    use std::io::Read;
    BUFFER.with_borrow_mut(|buf| {
        if buf.len() < HASH_BUFFER {
            buf.resize(HASH_BUFFER, 0);
        }
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        while expected.is_none_or(|e| total < e) {
            match file.read(buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((total, *hasher.finalize().as_bytes()))
    })
}

/// The blake3 of the regular file at `rel` below `folder`; `None` when there is none (or something else is there).
pub fn hash_in(folder: &Folder, rel: &str) -> io::Result<Option<String>> {
    match folder.file(rel)? {
        Found::File(mut f) => Ok(Some(crate::facts::hex(&hash_file(&mut f)?.1))),
        Found::Missing | Found::Not(_) => Ok(None),
    }
}

/// Scans and hashes everything under `dir`, never following a link below it and never blocking on a fifo.
pub fn scan(dir: &Path) -> io::Result<Tree> {
    scan_known(dir).map(|(tree, _)| tree)
}

/// A regular file a scan found: where, who, and its blake3.
pub type Seen = (std::path::PathBuf, Identity, Digest);

/// [`scan`], and the regular files found with their identities (see [`crate::facts`]). A file whose identity is
/// known and settled is not read again; the others are hashed on every core.
pub fn scan_known(dir: &Path) -> io::Result<(Tree, Vec<Seen>)> {
    let mut tree = Tree::default();
    let mut ids = Vec::new();
    match Folder::at(dir)? {
        FolderAt::Missing => {}
        FolderAt::Not(kind) => {
            tree.exists = true;
            tree.nodes.insert(".".into(), Node::Special(kind));
        }
        FolderAt::Folder(folder) => {
            tree.exists = true;
            let mut todo = Vec::new();
            walk(&Arc::new(folder), "", &mut tree.nodes, &mut todo, &mut ids)?;
            for (rel, node, seen) in hash_all(todo)? {
                ids.extend(seen);
                tree.nodes.insert(rel, node);
            }
        }
    }
    Ok((tree, ids))
}

/// A regular file to read: its folder, its name there, its path in the tree.
type ToHash = (Arc<Folder>, String, String);

fn walk(
    folder: &Arc<Folder>,
    prefix: &str,
    out: &mut BTreeMap<String, Node>,
    todo: &mut Vec<ToHash>,
    ids: &mut Vec<Seen>,
) -> io::Result<()> {
    use rustix::fs::FileType;
    let rel_of = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            let mut rel = String::with_capacity(prefix.len() + 1 + name.len());
            rel.push_str(prefix);
            rel.push('/');
            rel.push_str(name);
            rel
        }
    };
    let mut files = Vec::new();
    for (name, hint) in folder.entries()? {
        let name = match name.into_string() {
            Ok(name) => name,
            Err(name) => {
                // Never hashed under a lossy name that would not open again: reported, never archived.
                out.insert(rel_of(&name.to_string_lossy()), Node::Special(SpecialKind::NonUtf8Name));
                continue;
            }
        };
        // A file can vanish between readdir and open: that is simply "not there".
        let kind = match hint {
            Some(FileType::Directory) => Some(SpecialKind::Directory),
            Some(FileType::RegularFile) => Some(SpecialKind::File),
            _ => folder.kind(&name)?,
        };
        match kind {
            None => {}
            Some(SpecialKind::Directory) => match folder.sub(&name)? {
                FolderAt::Folder(sub) => {
                    let rel = rel_of(&name);
                    out.insert(rel.clone(), Node::Special(SpecialKind::Directory));
                    walk(&Arc::new(sub), &rel, out, todo, ids)?;
                }
                FolderAt::Missing => {}
                FolderAt::Not(kind) => {
                    out.insert(rel_of(&name), Node::Special(kind));
                }
            },
            Some(SpecialKind::File) => files.push(name),
            Some(kind) => {
                out.insert(rel_of(&name), Node::Special(kind));
            }
        }
    }
    // Every file's identity (the stat calls are most of a warm scan: spread over the cores, as git's preload does),
    // then what is known of it, under one lock.
    let found = identities(folder, &files)?;
    ids.reserve(files.len());
    let known = crate::facts::lookup();
    for (name, id) in files.into_iter().zip(found) {
        let rel = rel_of(&name);
        match id.and_then(|id| Some((id, known.hash(&id)?))) {
            Some((id, blake3)) => {
                ids.push((folder.shown(&name), id, blake3));
                out.insert(rel, Node::File { size: id.size, blake3 });
            }
            None => todo.push((folder.clone(), name, rel)),
        }
    }
    Ok(())
}

/// The identities of the regular files `names` of `folder` (`None`: not a regular file any more), stat'ed on every
/// core when there are many.
fn identities(folder: &Folder, names: &[String]) -> io::Result<Vec<Option<Identity>>> {
    on_cores(names, 256, |n| folder.identity(n))
}

/// The cores this process may use, asked once (std reads the cgroup's files for it every time).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `f` of each item, in order, on as many threads as there are cores but never one for fewer than `per_thread`
/// items (this thread works too); threads take the next item as they finish one.
fn on_cores<T: Sync, R: Send>(
    items: &[T],
    per_thread: usize,
    f: impl Fn(&T) -> io::Result<R> + Sync,
) -> io::Result<Vec<R>> {
    // The cores are only asked when there is work for two threads (asking reads the cgroup's files).
    let wanted = items.len() / per_thread.max(1);
    let threads = if wanted < 2 { 1 } else { cores().min(wanted) };
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> io::Result<Vec<(usize, R)>> {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else { return Ok(done) };
            done.push((i, f(item)?));
        }
    };
    let mut all = std::thread::scope(|scope| -> io::Result<Vec<(usize, R)>> {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work()?;
        for other in others {
            all.extend(other.join().expect("a worker thread panicked")?);
        }
        Ok(all)
    })?;
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Hashes the files to read, on every core, and remembers what was read (under one lock, once all are read).
fn hash_all(todo: Vec<ToHash>) -> io::Result<Vec<(String, Node, Option<Seen>)>> {
    let hashed: Vec<_> = on_cores(&todo, 8, hash_one)?.into_iter().flatten().collect();
    crate::facts::note_hashes(
        hashed.iter().filter_map(|(_, _, seen, read_at)| {
            seen.as_ref().map(|(_, id, blake3)| (*id, *read_at, *blake3))
        }),
    );
    Ok(hashed.into_iter().map(|(rel, node, seen, _)| (rel, node, seen)).collect())
}

/// A file read: its path in the tree, what it is, who it was, and when it was read.
type Hashed = (String, Node, Option<Seen>, i64);

/// One file read and hashed, with the moment it was read; `None` when it vanished.
fn hash_one((folder, name, rel): &ToHash) -> io::Result<Option<Hashed>> {
    let read_at = crate::facts::now_ns();
    Ok(match folder.file_stat(name)? {
        Ok((mut f, st)) => {
            let id = Identity::of(&st);
            let (size, blake3) = hash_sized(&mut f, Some(id.size))?;
            let seen = (folder.shown(name), id, blake3);
            Some((rel.clone(), Node::File { size, blake3 }, Some(seen), read_at))
        }
        Err(None) => None,
        // Replaced by something else between readdir and open.
        Err(Some(kind)) => Some((rel.clone(), Node::Special(kind), None, read_at)),
    })
}

/// How the current tree departs from a manifest at one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationKind {
    Modified,
    Deleted,
    Created,
    Renamed,
}

impl std::fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ViolationKind::Modified => "modified",
            ViolationKind::Deleted => "deleted",
            ViolationKind::Created => "created",
            ViolationKind::Renamed => "renamed",
        })
    }
}

/// One departure from the manifest, in the contract's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Set when the entry at `path` is not a regular file (a symlink, fifo, directory...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<SpecialKind>,
    /// `git` when git wrote the change (a checkout, pull, merge, rebase or stash the daemon saw holding git's index
    /// lock), not a person; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// With `source: git`: the commit HEAD named once git was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl Violation {
    fn new(kind: ViolationKind, path: &str) -> Violation {
        Violation { kind, path: path.to_string(), from: None, file_type: None, source: None, commit: None }
    }

    /// One human line: `modified  meta/_journal.json`.
    pub fn human(&self) -> String {
        let what = match (&self.from, self.file_type) {
            (Some(from), _) => format!("{} -> {}", escaped(from), escaped(&self.path)),
            (None, Some(kind)) if self.path == "." => format!("the folder itself (now {})", kind.described()),
            (None, Some(kind)) => format!("{} (now {})", escaped(&self.path), kind.described()),
            (None, None) => escaped(&self.path).into_owned(),
        };
        format!("{:<9} {what}", self.kind.to_string())
    }
}

/// A name as it may be shown in text or a log line: control characters (a newline in a file name could forge a
/// line) are written as escapes.
pub fn escaped(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Compares `tree` with the files of a manifest. Identical content that moved is one `renamed`; moved and
/// changed is a `deleted` plus a `created`. The result is sorted by path.
pub fn diff(baseline: &[FileEntry], tree: &Tree) -> Vec<Violation> {
    if tree.holds_exactly(baseline) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut deleted: Vec<&FileEntry> = Vec::new();
    let known: HashMap<&str, &FileEntry> = baseline.iter().map(|f| (f.path.as_str(), f)).collect();

    for entry in baseline {
        match tree.nodes.get(&entry.path) {
            Some(Node::File { size, blake3 }) => {
                if !entry.is(*size, blake3) {
                    out.push(Violation::new(ViolationKind::Modified, &entry.path));
                }
            }
            Some(Node::Special(kind)) => out.push(Violation {
                file_type: Some(*kind),
                ..Violation::new(ViolationKind::Modified, &entry.path)
            }),
            None => deleted.push(entry),
        }
    }

    // Deleted files wait, by content, for a created file with the same content: that pair is a rename.
    let mut by_content: HashMap<(u64, Digest), VecDeque<&str>> = HashMap::new();
    for d in &deleted {
        // A manifest's blake3 that is not one (a damaged record) matches nothing.
        if let Some(digest) = crate::facts::unhex(&d.blake3) {
            by_content.entry((d.size, digest)).or_default().push_back(&d.path);
        }
    }
    let mut renamed_from = std::collections::HashSet::new();
    for (path, node) in &tree.nodes {
        if known.contains_key(path.as_str()) {
            continue;
        }
        match node {
            Node::File { size, blake3 } => {
                match by_content.get_mut(&(*size, *blake3)).and_then(VecDeque::pop_front) {
                    Some(from) => {
                        renamed_from.insert(from);
                        out.push(Violation {
                            from: Some(from.to_string()),
                            ..Violation::new(ViolationKind::Renamed, path)
                        });
                    }
                    None => out.push(Violation::new(ViolationKind::Created, path)),
                }
            }
            // New directories are only containers; their files speak for them.
            Node::Special(SpecialKind::Directory) => {}
            Node::Special(kind) => {
                out.push(Violation { file_type: Some(*kind), ..Violation::new(ViolationKind::Created, path) })
            }
        }
    }
    for d in deleted {
        if !renamed_from.contains(d.path.as_str()) {
            out.push(Violation::new(ViolationKind::Deleted, &d.path));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    fn setup() -> (tempfile::TempDir, Vec<FileEntry>) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0000_a.sql", "create a");
        write(dir.path(), "0001_b.sql", "create b");
        write(dir.path(), "meta/_journal.json", "{}");
        let base = scan(dir.path()).unwrap().files();
        (dir, base)
    }

    fn kinds(v: &[Violation]) -> Vec<(ViolationKind, &str, Option<&str>)> {
        v.iter().map(|v| (v.kind, v.path.as_str(), v.from.as_deref())).collect()
    }

    #[test]
    fn clean_tree_has_no_violations() {
        let (dir, base) = setup();
        assert_eq!(base.len(), 3);
        assert!(diff(&base, &scan(dir.path()).unwrap()).is_empty());
    }

    #[test]
    fn every_kind_is_found_and_sorted() {
        let (dir, base) = setup();
        write(dir.path(), "meta/_journal.json", "{\"x\":1}");
        fs::rename(dir.path().join("0000_a.sql"), dir.path().join("0000_z.sql")).unwrap();
        fs::remove_file(dir.path().join("0001_b.sql")).unwrap();
        write(dir.path(), "0002_new.sql", "new");
        let v = diff(&base, &scan(dir.path()).unwrap());
        assert_eq!(
            kinds(&v),
            vec![
                (ViolationKind::Renamed, "0000_z.sql", Some("0000_a.sql")),
                (ViolationKind::Deleted, "0001_b.sql", None),
                (ViolationKind::Created, "0002_new.sql", None),
                (ViolationKind::Modified, "meta/_journal.json", None),
            ]
        );
    }

    #[test]
    fn moved_and_changed_is_delete_plus_create() {
        let (dir, base) = setup();
        fs::remove_file(dir.path().join("0000_a.sql")).unwrap();
        write(dir.path(), "0000_z.sql", "create a, changed");
        let v = diff(&base, &scan(dir.path()).unwrap());
        assert_eq!(
            kinds(&v),
            vec![(ViolationKind::Deleted, "0000_a.sql", None), (ViolationKind::Created, "0000_z.sql", None)]
        );
    }

    #[test]
    fn symlink_where_a_file_was_is_modified_and_not_followed() {
        let (dir, base) = setup();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), "create a").unwrap();
        fs::remove_file(dir.path().join("0000_a.sql")).unwrap();
        symlink(outside.path(), dir.path().join("0000_a.sql")).unwrap();
        let v = diff(&base, &scan(dir.path()).unwrap());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, ViolationKind::Modified);
        assert_eq!(v[0].file_type, Some(SpecialKind::Symlink));
        let json = serde_json::to_string(&v[0]).unwrap();
        assert_eq!(json, r#"{"kind":"modified","path":"0000_a.sql","file_type":"symlink"}"#);
    }

    #[test]
    fn fifo_and_directory_are_reported_without_blocking() {
        let (dir, base) = setup();
        fs::remove_file(dir.path().join("0001_b.sql")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("0001_b.sql"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::remove_file(dir.path().join("0000_a.sql")).unwrap();
        fs::create_dir(dir.path().join("0000_a.sql")).unwrap();
        let v = diff(&base, &scan(dir.path()).unwrap());
        let types: Vec<_> = v.iter().map(|v| (v.path.as_str(), v.file_type)).collect();
        assert_eq!(
            types,
            vec![("0000_a.sql", Some(SpecialKind::Directory)), ("0001_b.sql", Some(SpecialKind::Fifo))]
        );
    }

    #[test]
    fn missing_drizzle_dir_deletes_everything() {
        let (dir, base) = setup();
        fs::remove_dir_all(dir.path()).unwrap();
        let tree = scan(dir.path()).unwrap();
        assert!(!tree.exists);
        assert_eq!(diff(&base, &tree).len(), 3);
    }

    #[test]
    fn duplicate_contents_pair_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", "same");
        write(dir.path(), "b", "same");
        let base = scan(dir.path()).unwrap().files();
        fs::rename(dir.path().join("a"), dir.path().join("c")).unwrap();
        let v = diff(&base, &scan(dir.path()).unwrap());
        assert_eq!(kinds(&v), vec![(ViolationKind::Renamed, "c", Some("a"))]);
    }
}
