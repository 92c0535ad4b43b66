//! What dreamerd learnt of the files it read, by their identity: a stat cache, as git's index is one.
//!
//! A file's identity is its device, inode, size, modification and change times (nanoseconds). Its blake3, and facts
//! read from its contents (a snapshot's ids, a migration's sha256), are kept under it, so that a scan hashes, and a
//! check parses, only what changed since it was last read. The kernel sets the change time on every write, rename,
//! link and mode change, and nobody can set it back.
//!
//! **Racily clean files.** Timestamps have a granularity (the kernel's coarse clock; whole seconds on some
//! filesystems; another machine's clock over NFS), so a file rewritten right after it was hashed can keep the very
//! identity it had. Like git, a fact is trusted only when the file's times are older than the moment it was read by
//! a safe margin ([`SLACK_NS`]); a file changed more recently is read again every time until it has settled.
//!
//! Each checkout's facts are loaded and saved in the state folder (`facts/<checkout>.ids` and `.content`, format
//! [`FORMAT`], replaced atomically), with the memos of whole checks ([`memo`]). A command keeps them in memory for its
//! life; the daemon ([`transient`]) only while a scan of the checkout runs. Nothing here is ever needed: a lost,
//! stale or corrupt file only costs reading again.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use foldhash::fast::FixedState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::safefs::{Folder, Found};

/// The format of a saved facts file (see [`HEADER`]); one of another format is ignored (and rebuilt).
pub const FORMAT: u32 = 2;
/// How much older than the moment it was read a file's times must be for what was read to be trusted again.
pub const SLACK_NS: i64 = 2_000_000_000;
const MAX_SAVED: u64 = 256 << 20;
/// How many memos of one kind a checkout keeps (the states it went back and forth between most recently).
const MEMOS_KEPT: usize = 4;

/// A blake3 digest.
pub type Digest = [u8; 32];

/// A digest in hex, as manifests and records write it.
pub fn hex(d: &Digest) -> String {
    blake3::Hash::from_bytes(*d).to_hex().to_string()
}

/// A digest from its hex form.
pub fn unhex(s: &str) -> Option<Digest> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}

/// Who a file is, as far as its contents can tell without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
    pub ctime: i64,
}

impl Identity {
    pub fn of(st: &rustix::fs::Stat) -> Identity {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: ns(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: ns(st.st_ctime, st.st_ctime_nsec as i64),
        }
    }

    /// The identity of an open file.
    pub fn of_file(file: &std::fs::File) -> io::Result<Identity> {
        Ok(Identity::of(&rustix::fs::fstat(file)?))
    }

    /// The identity as bytes, for keys.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0; 40];
        for (slot, n) in
            out.chunks_exact_mut(8).zip([self.dev, self.ino, self.size, self.mtime as u64, self.ctime as u64])
        {
            slot.copy_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// True when a file of this identity cannot be rewritten without the identity changing, `now` being the moment
    /// it was looked at: its times are older than that by [`SLACK_NS`].
    pub fn settled_at(&self, now: i64) -> bool {
        self.mtime.max(self.ctime) < now.saturating_sub(SLACK_NS)
    }
}

/// What is known of one identity.
#[derive(Debug, Clone)]
struct Known {
    id: Identity,
    /// When it was read (nanoseconds since the epoch, taken before the read).
    read_at: i64,
    blake3: Digest,
    /// Moved by dreamerd itself (a restore borrows the files it keeps): the change time is the move's, and only the
    /// modification time (which a move keeps) must be older than the read.
    moved: bool,
    /// The facts file of the checkout whose scan saw it last; `None` until a scan does.
    owner: Option<Arc<PathBuf>>,
}

impl Known {
    /// True when the file cannot have changed since it was read without its identity changing.
    fn settled(&self) -> bool {
        let changed = if self.moved { self.id.mtime } else { self.id.mtime.max(self.id.ctime) };
        changed < self.read_at.saturating_sub(SLACK_NS)
    }
}

/// A result computed from a whole state (a folder's contents and a database file's identity), kept under a digest of
/// that state: the next check of the very same state takes it instead of reading everything again.
#[derive(Debug, Clone)]
struct Memo {
    owner: Arc<PathBuf>,
    kind: Box<str>,
    key: Digest,
    json: Box<str>,
    /// When it was last used, in this process's order of uses (the least recent are dropped first).
    used: u64,
}

/// Facts drawn from one content: (kind, compact JSON) pairs.
type ContentFacts = Vec<(Box<str>, Box<str>)>;

#[derive(Default)]
struct Facts {
    /// By (device, inode): one entry per file, its latest identity.
    known: HashMap<(u64, u64), Known, FixedState>,
    /// Facts drawn from contents, by their blake3, as compact JSON (parsed only when asked for): a file touched or
    /// copied with the same bytes is not parsed again.
    by_content: HashMap<Digest, ContentFacts, FixedState>,
    memos: Vec<Memo>,
    uses: u64,
    /// The checkouts whose facts were loaded into this process.
    loaded: HashSet<PathBuf>,
    /// The checkouts whose memos alone were loaded ([`load_memos`]): their files' facts are not in `known`.
    memos_loaded: HashSet<PathBuf>,
    /// Content facts files loaded checkouts have, not read yet.
    content_pending: Vec<PathBuf>,
    /// The checkouts whose identities or memos changed since their last save.
    dirty: HashSet<Arc<PathBuf>, FixedState>,
    /// Counts the changes to content facts; each checkout's content file was written at (or read after) `saved`.
    content_changes: u64,
    content_saved: HashMap<Arc<PathBuf>, u64, FixedState>,
    /// Each checkout's `.ids` file as this process last read or wrote it: another process (a command beside the
    /// daemon) that wrote it since left memos worth keeping.
    ids_files: HashMap<Arc<PathBuf>, Option<Identity>, FixedState>,
    /// Set by a long-running process (the daemon): a checkout's facts leave memory when its last view ends, saved,
    /// and are read again by the next scan, so that memory does not grow with the folders watched.
    transient: bool,
    /// How many views of each checkout are open, on any thread.
    viewing: HashMap<Arc<PathBuf>, usize, FixedState>,
}

impl Facts {
    /// Keeps the [`MEMOS_KEPT`] most recently used memos of each kind of `owner`.
    fn prune_memos(&mut self, owner: &Arc<PathBuf>) {
        self.memos.sort_by_key(|m| std::cmp::Reverse(m.used));
        let mut kept: HashMap<Box<str>, usize> = HashMap::new();
        self.memos.retain(|m| {
            if m.owner != *owner {
                return true;
            }
            let n = kept.entry(m.kind.clone()).or_default();
            *n += 1;
            *n <= MEMOS_KEPT
        });
    }

    /// A memo read from a facts file, unless this process has it already (as one it used: never older).
    fn add_memo(&mut self, owner: &Arc<PathBuf>, kind: Box<str>, key: Digest, json: Box<str>) -> bool {
        if self.memos.iter().any(|m| m.key == key && m.kind == kind && m.owner == *owner) {
            return false;
        }
        self.memos.push(Memo { owner: owner.clone(), kind, key, json, used: 0 });
        true
    }

    /// A fact of `kind` drawn from the content `blake3` (see [`Facts::content_ready`]).
    fn content_fact(&self, blake3: &Digest, kind: &str) -> Option<&str> {
        self.by_content.get(blake3)?.iter().find(|(k, _)| &**k == kind).map(|(_, json)| &**json)
    }
}

fn facts() -> &'static Mutex<Facts> {
    static FACTS: OnceLock<Mutex<Facts>> = OnceLock::new();
    FACTS.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Facts> {
    // A panic elsewhere while holding it leaves a cache, never an invariant: carry on with it.
    facts().lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The identity of the file at `path` (never followed), if there is one.
pub fn identity(path: &Path) -> Option<Identity> {
    rustix::fs::lstat(path).ok().map(|st| Identity::of(&st))
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Known hashes looked up under one lock (a scan asks for thousands in a row).
pub struct Lookup(std::sync::MutexGuard<'static, Facts>);

impl Lookup {
    /// The blake3 of the file with identity `id`, when it was read before and can be trusted.
    pub fn hash(&self, id: &Identity) -> Option<Digest> {
        let k = self.0.known.get(&(id.dev, id.ino))?;
        (k.id == *id && k.settled()).then_some(k.blake3)
    }
}

/// Starts a [`Lookup`]; nothing else can learn a fact while it lives.
pub fn lookup() -> Lookup {
    Lookup(lock())
}

/// Records the blake3 of a file read at `read_at`.
pub fn note_hash(id: Identity, read_at: i64, blake3: Digest) {
    note_hashes([(id, read_at, blake3)]);
}

/// [`note_hash`] for many files under one lock (the hashing threads of a scan would otherwise take turns at it
/// once per file).
pub fn note_hashes(notes: impl IntoIterator<Item = (Identity, i64, Digest)>) {
    let mut facts = lock();
    let facts = &mut *facts;
    for (id, read_at, blake3) in notes {
        note_in(facts, id, read_at, blake3);
    }
}

fn note_in(facts: &mut Facts, id: Identity, read_at: i64, blake3: Digest) {
    let k = facts.known.entry((id.dev, id.ino)).or_insert_with(|| Known {
        id,
        read_at: i64::MIN,
        blake3,
        moved: false,
        owner: None,
    });
    let changed = if k.id != id || k.blake3 != blake3 || k.read_at == i64::MIN {
        (k.id, k.blake3, k.moved) = (id, blake3, false);
        k.read_at = read_at;
        true
    } else if read_at > k.read_at {
        k.read_at = read_at;
        true
    } else {
        false
    };
    // A file nobody owns yet is claimed (and saved) by the next save of the checkout whose scan saw it.
    if changed && let Some(owner) = k.owner.clone() {
        facts.dirty.insert(owner);
    }
}

/// dreamerd renamed a file whose contents it knew (settled, `before`) and found it at `after`: the same file, whose
/// change time moved with the rename. What was known stays known, so a restore never reads again what it kept.
pub fn note_moved(before: Identity, after: Identity) {
    let same_file = Identity { ctime: after.ctime, ..before } == after;
    let mut facts = lock();
    let Some(k) = facts.known.get(&(before.dev, before.ino)) else { return };
    if !same_file || k.id != before || !k.settled() {
        return;
    }
    let moved = Known { id: after, read_at: now_ns(), moved: true, ..k.clone() };
    if let Some(owner) = moved.owner.clone() {
        facts.dirty.insert(owner);
    }
    facts.known.insert((after.dev, after.ino), moved);
}

/// One scan's moment of a folder, while an operation judges it.
struct Moment {
    /// The facts file of the checkout scanned.
    owner: Arc<PathBuf>,
    folder: PathBuf,
    /// The digest of the whole tree the scan found (see [`crate::manifest::Tree::digest`]).
    tree: Digest,
    /// The regular files it found; `None` for a folder the daemon's watch vouched for, which was not scanned.
    seen: Option<Vec<crate::manifest::Seen>>,
    /// Their places in `seen` by absolute path, built at the first look (a check whose memo holds never looks).
    index: OnceLock<HashMap<PathBuf, usize, FixedState>>,
}

impl Moment {
    fn get(&self, path: &Path) -> Option<(Identity, Digest)> {
        let seen = self.seen.as_ref()?;
        let index = self.index.get_or_init(|| {
            let mut index = HashMap::with_capacity_and_hasher(seen.len(), FixedState::default());
            index.extend(seen.iter().enumerate().map(|(i, (p, _, _))| (p.clone(), i)));
            index
        });
        index.get(path).map(|&i| (seen[i].1, seen[i].2))
    }
}

thread_local! {
    /// The scans of the operations running on this thread, innermost last.
    static VIEW: std::cell::RefCell<Vec<Moment>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Ends a [`view`] when dropped, saving what was learnt.
pub struct View(());

impl Drop for View {
    fn drop(&mut self) {
        if let Some(m) = VIEW.with(|v| v.borrow_mut().pop()) {
            match &m.seen {
                Some(seen) => save(&m.owner, &m.folder, seen.iter().map(|(_, id, _)| *id)),
                // Nothing was scanned: the checkout keeps every file it owns.
                None => save_owned(&m.owner, &m.folder),
            }
            lock().end_view(&m.owner);
        }
    }
}

/// Saves everything a checkout owns (and what was remembered, with its files' facts, which only its memos may have
/// been loaded without).
fn save_owned(owner: &Arc<PathBuf>, folder: &Path) {
    if lock().dirty.contains(owner) {
        load(owner);
        // What the load brought back of what this process pruned goes again.
        lock().prune_memos(owner);
    }
    // Only its memos were read and none changed: nothing to save (saving would write no files).
    let owned: Option<Vec<Identity>> = {
        let facts = lock();
        facts.loaded.contains(&**owner).then(|| {
            facts.known.values().filter(|k| k.owner.as_deref() == Some(owner)).map(|k| k.id).collect()
        })
    };
    if let Some(owned) = owned {
        save(owner, folder, owned);
    }
}

/// Keeps a checkout's facts in this process while an operation runs (see [`hold`]).
pub struct Held {
    owner: Arc<PathBuf>,
    folder: PathBuf,
}

/// Keeps the facts of the checkout whose facts file is `owner` (its migration folder `folder`) in this process until
/// the guard is dropped, however many views of it open and close meanwhile: a daemon otherwise forgets them at the
/// end of each view, and the scans of the rest of an operation (a restore's checks of the folder before and after
/// its swap) would read every file again. Unlike a [`view`], it fixes no moment of the folder: what the operation
/// changes is seen as it is. Dropping it saves what was learnt (the files the operation moved among them).
pub fn hold(owner: &Path, folder: &Path) -> Held {
    let owner = Arc::new(owner.to_path_buf());
    lock().open_view(&owner);
    Held { owner, folder: folder.to_path_buf() }
}

impl Drop for Held {
    fn drop(&mut self) {
        save_owned(&self.owner, &self.folder);
        lock().end_view(&self.owner);
    }
}

/// Makes this process keep a checkout's facts in memory only while a view of it is open (see `Facts::transient`).
pub fn transient() {
    lock().transient = true;
}

impl Facts {
    fn open_view(&mut self, owner: &Arc<PathBuf>) {
        *self.viewing.entry(owner.clone()).or_default() += 1;
    }

    /// Ends a view of `owner`; true when it was the last one open.
    fn close_view(&mut self, owner: &Arc<PathBuf>) -> bool {
        let Some(n) = self.viewing.get_mut(owner) else { return false };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.viewing.remove(owner);
        true
    }

    /// Ends a view (or a hold) of `owner`, its facts saved: a transient process forgets them after the last one.
    fn end_view(&mut self, owner: &Arc<PathBuf>) {
        if self.close_view(owner) && self.transient {
            self.forget(owner);
        }
    }

    /// Drops what this process holds of a checkout's facts once they are saved; the next [`load`] reads them again.
    fn forget(&mut self, owner: &Arc<PathBuf>) {
        if self.dirty.contains(owner) {
            // Not saved (a full disk?): kept for the next save.
            return;
        }
        self.loaded.remove(&**owner);
        self.memos_loaded.remove(&**owner);
        // What no scan claimed (files hashed outside any view: a push's staging) goes too once no scan runs here at
        // all, so that nothing piles up in a process that lives for weeks.
        let idle = self.viewing.is_empty();
        self.known.retain(|_, k| match &k.owner {
            Some(o) => o != owner,
            None => !idle,
        });
        self.memos.retain(|m| m.owner != *owner);
        self.ids_files.remove(owner);
        self.content_saved.remove(owner);
        let content = content_path(owner);
        self.content_pending.retain(|p| *p != content);
        let live: HashSet<Digest, FixedState> = self.known.values().map(|k| k.blake3).collect();
        self.by_content.retain(|b, _| live.contains(b));
        self.known.shrink_to_fit();
        self.by_content.shrink_to_fit();
        self.memos.shrink_to_fit();
    }
}

/// While the returned guard lives, [`cached`] on this thread takes the files a scan of `folder` (the checkout whose
/// facts file is `owner`) just found as they were found, and [`memo`] keys on the tree it found: an operation judges
/// one moment of the folder, and reads nothing twice. Dropping it saves the checkout's facts.
pub fn view(owner: &Path, folder: &Path, tree: Digest, seen: Vec<crate::manifest::Seen>) -> View {
    open(owner, folder, tree, Some(seen))
}

/// A [`view`] of a folder that was not scanned: the daemon, which watches it, vouched that it is still the tree
/// `tree` its last scan found (see `crate::daemon`'s `vouch`). [`memo`] keys on that tree; [`cached`] reads files
/// afresh (through the stat cache), as without a view.
pub fn view_vouched(owner: &Path, folder: &Path, tree: Digest) -> View {
    open(owner, folder, tree, None)
}

fn open(owner: &Path, folder: &Path, tree: Digest, seen: Option<Vec<crate::manifest::Seen>>) -> View {
    let moment = Moment {
        owner: Arc::new(owner.to_path_buf()),
        folder: folder.to_path_buf(),
        tree,
        seen,
        index: OnceLock::new(),
    };
    lock().open_view(&moment.owner);
    VIEW.with(|v| v.borrow_mut().push(moment));
    View(())
}

/// The digest of the tree the innermost [`view`] of this thread holds.
pub fn view_tree() -> Option<Digest> {
    VIEW.with(|v| v.borrow().last().map(|m| m.tree))
}

/// The memo of kind `kind` kept under `key` by the checkout of this thread's innermost [`view`].
pub fn memo<T: DeserializeOwned>(kind: &str, key: &Digest) -> Option<T> {
    let owner = VIEW.with(|v| v.borrow().last().map(|m| m.owner.clone()))?;
    let mut facts = lock();
    facts.uses += 1;
    let used = facts.uses;
    let m = facts.memos.iter_mut().find(|m| m.key == *key && &*m.kind == kind && m.owner == owner)?;
    m.used = used;
    serde_json::from_str(&m.json).ok()
}

/// The key of a memo: what computed it (this build's version and `salt`, which a change to the computation bumps,
/// since a build of the same version would otherwise take an old result) and the state it was computed from.
pub fn memo_key(salt: &str, state: &[&[u8]]) -> Digest {
    let mut key = blake3::Hasher::new();
    key.update(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes());
    key.update(salt.as_bytes());
    for part in state {
        key.update(b"\0");
        key.update(part);
    }
    *key.finalize().as_bytes()
}

/// Keeps `value` as the memo of kind `kind` under `key` for the checkout of this thread's innermost [`view`] (with
/// none, nothing is kept). Each checkout keeps the [`MEMOS_KEPT`] most recently used of a kind.
pub fn remember<T: Serialize>(kind: &str, key: Digest, value: &T) {
    let Some(owner) = VIEW.with(|v| v.borrow().last().map(|m| m.owner.clone())) else { return };
    let Ok(json) = serde_json::to_string(value) else { return };
    let mut facts = lock();
    facts.uses += 1;
    let used = facts.uses;
    facts.memos.retain(|m| !(m.key == key && &*m.kind == kind && m.owner == owner));
    facts.memos.push(Memo { owner: owner.clone(), kind: kind.into(), key, json: json.into(), used });
    facts.prune_memos(&owner);
    facts.dirty.insert(owner);
}

/// A fact of kind `kind` drawn from the regular file at `rel` below `folder` by `compute` (given its bytes, read
/// with `cap`), taken from what is known when the file did not change since; `Ok(None)` when there is no file.
/// Anything that is not a regular file is the error [`Folder::read`] gives.
pub fn cached<T: Serialize + DeserializeOwned>(
    kind: &str,
    folder: &Folder,
    rel: &str,
    cap: u64,
    compute: impl FnOnce(&[u8]) -> T,
) -> io::Result<Option<T>> {
    let known = |facts: &mut Facts, blake3: &Digest| -> Option<T> {
        facts.content_ready();
        serde_json::from_str::<T>(facts.content_fact(blake3, kind)?).ok()
    };
    // What the scan of this very operation found: no second look at the file, and no second read of one changed too
    // recently to be trusted across operations.
    let path = folder.shown(rel);
    let in_view = VIEW.with(|v| v.borrow().last().and_then(|m| m.get(&path)));
    if let Some((_, blake3)) = &in_view
        && let Some(t) = known(&mut lock(), blake3)
    {
        return Ok(Some(t));
    }
    if in_view.is_none()
        && let Some(id) = folder.identity(rel)?
    {
        let mut facts = lock();
        let trusted =
            facts.known.get(&(id.dev, id.ino)).filter(|k| k.id == id && k.settled()).map(|k| k.blake3);
        if let Some(blake3) = trusted
            && let Some(t) = known(&mut facts, &blake3)
        {
            return Ok(Some(t));
        }
    }
    let read_at = now_ns();
    let file = match folder.file(rel)? {
        Found::File(f) => f,
        Found::Missing => return Ok(None),
        // The error reading it gives.
        Found::Not(_) => return folder.read(rel, cap).map(|_| None),
    };
    let id = Identity::of_file(&file)?;
    let bytes = crate::safefs::read_capped(file, cap, &path)?;
    let blake3 = *blake3::hash(&bytes).as_bytes();
    note_hash(id, read_at, blake3);
    // The same bytes were seen before (the file was touched, copied, or moved): nothing to parse.
    if let Some(t) = known(&mut lock(), &blake3) {
        return Ok(Some(t));
    }
    let value = compute(&bytes);
    if let Ok(json) = serde_json::to_string(&value) {
        let mut facts = lock();
        facts.add_content(blake3, kind.into(), json.into());
        facts.content_changes += 1;
    }
    Ok(Some(value))
}

/// The first line of a saved facts file (`facts/<checkout>.ids`), followed by the folder scanned as JSON on a line of its
/// own (for people reading the state folder), then binary, little-endian: the number of files (u64), one record of
/// [`RECORD`] bytes per file (`dev ino size mtime ctime read_at flags` as 64-bit integers, flags bit 0 for a file
/// dreamerd moved itself, then the blake3), the number of memos (u32), each `u32 len, kind, 32-byte key, u32 len,
/// json`, and last the blake3 of everything before it (a torn or damaged file is ignored). Format 1 (the text file
/// `facts/<checkout>.json` of dreamerd 0.4.0) is read once and replaced.
const HEADER: &str = "dreamerd-facts";
/// The first line of `facts/<checkout>.content`: the facts drawn from contents, one line per content and kind,
/// `blake3 kind json`, read only when a check needs one (a check whose memo holds needs none).
const CONTENT_HEADER: &str = "dreamerd-facts-content\t1";
const RECORD: usize = 7 * 8 + 32;

/// `base` with `.ext` added (a checkout's key may hold dots of its own).
fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut path = base.as_os_str().to_owned();
    path.push(".");
    path.push(ext);
    path.into()
}

fn ids_path(base: &Path) -> PathBuf {
    with_ext(base, "ids")
}

fn content_path(base: &Path) -> PathBuf {
    with_ext(base, "content")
}

fn legacy_path(base: &Path) -> PathBuf {
    with_ext(base, "json")
}

/// A memo as saved: kind, key, JSON.
type SavedMemo = (Box<str>, Digest, Box<str>);
/// A content fact as saved: blake3, kind, JSON.
type ContentLine = (Digest, Box<str>, Box<str>);

/// What a facts file holds.
#[derive(Default)]
struct Saved {
    files: Vec<(Known, ContentFacts)>,
    /// (kind, key, json)
    memos: Vec<SavedMemo>,
}

fn encode_ids(folder: &Path, files: &[Known], memos: &[SavedMemo]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + files.len() * RECORD);
    out.extend_from_slice(
        format!("{HEADER}\t{FORMAT}\n{}\n", serde_json::to_string(folder).expect("a path serialises"))
            .as_bytes(),
    );
    out.extend_from_slice(&(files.len() as u64).to_le_bytes());
    for k in files {
        let i = &k.id;
        for n in [i.dev, i.ino, i.size, i.mtime as u64, i.ctime as u64, k.read_at as u64, u64::from(k.moved)]
        {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&k.blake3);
    }
    out.extend_from_slice(&(memos.len() as u32).to_le_bytes());
    for (kind, key, json) in memos {
        out.extend_from_slice(&(kind.len() as u32).to_le_bytes());
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(json.as_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Reads fields off a byte slice, `None` past its end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn line(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == b'\n')?;
        let line = self.take(end + 1)?;
        Some(&line[..end])
    }

    fn text(&mut self) -> Option<Box<str>> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok().map(Box::from)
    }
}

/// The files of a `.ids` file, handed to `file` one by one (without content facts: never gathered in between), and its
/// memos; `None` for one of another format or damaged anywhere.
fn decode_ids(bytes: &[u8], file: &mut dyn FnMut(Known)) -> Option<Vec<SavedMemo>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut c = Cursor(body);
    if c.line()? != format!("{HEADER}\t{FORMAT}").as_bytes() {
        return None;
    }
    c.line()?;
    let count = usize::try_from(c.u64()?).ok()?;
    if count.checked_mul(RECORD)? > c.0.len() {
        return None;
    }
    for _ in 0..count {
        let mut n = [0u64; 7];
        for v in &mut n {
            *v = c.u64()?;
        }
        let [dev, ino, size, mtime, ctime, read_at, flags] = n;
        if flags > 1 {
            return None;
        }
        let blake3: Digest = c.take(32)?.try_into().ok()?;
        let id = Identity { dev, ino, size, mtime: mtime as i64, ctime: ctime as i64 };
        file(Known { id, read_at: read_at as i64, blake3, moved: flags == 1, owner: None });
    }
    let mut memos = Vec::new();
    for _ in 0..c.u32()? {
        let kind = c.text()?;
        let key: Digest = c.take(32)?.try_into().ok()?;
        memos.push((kind, key, c.text()?));
    }
    c.0.is_empty().then_some(memos)
}

fn encode_content(facts: &[(Digest, &ContentFacts)]) -> String {
    use std::fmt::Write;
    let mut out = format!("{CONTENT_HEADER}\n");
    for (blake3, found) in facts {
        for (kind, json) in *found {
            let _ = writeln!(out, "{}\t{kind}\t{json}", hex(blake3));
        }
    }
    out
}

/// The content facts of a `.content` file; `None` when damaged anywhere.
fn decode_content(text: &str) -> Option<Vec<ContentLine>> {
    let mut lines = text.split('\n');
    if lines.next()? != CONTENT_HEADER {
        return None;
    }
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let mut f = line.splitn(3, '\t');
        let (blake3, kind, json) = (unhex(f.next()?)?, f.next()?, f.next()?);
        if kind.is_empty() || json.contains('\t') {
            return None;
        }
        out.push((blake3, kind.into(), json.into()));
    }
    Some(out)
}

/// A text facts file of format 1 (dreamerd 0.4.0): `dev ino size mtime ctime read_at flags blake3 [kind json]...`
/// per line; `None` when damaged anywhere.
fn decode_legacy(text: &str) -> Option<Saved> {
    let mut lines = text.split('\n');
    if lines.next()? != format!("{HEADER}\t1") {
        return None;
    }
    lines.next()?;
    let mut out = Saved::default();
    for line in lines.filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let mut num = || f.next()?.parse::<i64>().ok();
        let (dev, ino, size, mtime, ctime, read_at) = (num()?, num()?, num()?, num()?, num()?, num()?);
        let moved = match f.next()? {
            "m" => true,
            "-" => false,
            _ => return None,
        };
        let blake3 = unhex(f.next()?)?;
        let mut facts = ContentFacts::new();
        while let Some(kind) = f.next() {
            facts.push((kind.into(), f.next()?.into()));
        }
        let id = Identity { dev: dev as u64, ino: ino as u64, size: size as u64, mtime, ctime };
        out.files.push((Known { id, read_at, blake3, moved, owner: None }, facts));
    }
    Some(out)
}

impl Facts {
    /// Reads the content facts files loaded checkouts left for later.
    fn content_ready(&mut self) {
        for path in std::mem::take(&mut self.content_pending) {
            let Ok(Some(bytes)) = crate::safefs::read_file(&path, MAX_SAVED, false) else { continue };
            let Some(found) = std::str::from_utf8(&bytes).ok().and_then(decode_content) else { continue };
            for (blake3, kind, json) in found {
                self.add_content(blake3, kind, json);
            }
        }
    }

    /// The fact of `kind` drawn from the content `blake3` (replacing one of that kind).
    fn add_content(&mut self, blake3: Digest, kind: Box<str>, json: Box<str>) {
        let known = self.by_content.entry(blake3).or_default();
        known.retain(|(k, _)| *k != kind);
        known.push((kind, json));
    }
}

/// How many files' facts the checkout's saved facts hold (its last scan saw as many), read from the count at the start
/// of its `.ids` file; 0 when there is none.
pub fn saved_files(base: &Path) -> u64 {
    use std::io::Read;
    let mut head = [0u8; 4096];
    let Ok(n) = std::fs::File::open(ids_path(base)).and_then(|mut f| f.read(&mut head)) else { return 0 };
    let mut c = Cursor(&head[..n]);
    let (Some(_), Some(_), Some(count)) = (c.line(), c.line(), c.u64()) else { return 0 };
    count
}

/// Loads only the memos of a checkout's facts (see [`load`]): what a check the daemon vouched for needs, without
/// the table of its files' facts. A later [`load`] reads the rest.
pub fn load_memos(base: &Path) {
    {
        let facts = lock();
        if facts.loaded.contains(base) || facts.memos_loaded.contains(base) {
            return;
        }
    }
    let Ok(Some(bytes)) = crate::safefs::read_file(&ids_path(base), MAX_SAVED, false) else { return };
    let Some(memos) = decode_ids(&bytes, &mut |_| {}) else { return };
    let owner = Arc::new(base.to_path_buf());
    let mut facts = lock();
    if facts.loaded.contains(base) || !facts.memos_loaded.insert(base.to_path_buf()) {
        return;
    }
    for (kind, key, json) in memos {
        facts.add_memo(&owner, kind, key, json);
    }
}

/// Loads a checkout's facts (`base` with the extensions `.ids` and `.content`) into this process, once per process;
/// a missing, corrupt or other-format file is ignored. The content facts are read only once one is asked for.
pub fn load(base: &Path) {
    {
        let mut facts = lock();
        if !facts.loaded.insert(base.to_path_buf()) {
            return;
        }
    }
    let owner = Arc::new(base.to_path_buf());
    let add = |facts: &mut Facts, mut k: Known| {
        k.owner = Some(owner.clone());
        // A file this process hashed already (outside a scan: a check the daemon vouched for reads files afresh)
        // keeps what it learnt, and belongs to the checkout whose scan saw it.
        match facts.known.entry((k.id.dev, k.id.ino)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(k);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.get_mut().owner.get_or_insert_with(|| owner.clone());
            }
        }
    };
    let add_memos = |facts: &mut Facts, memos: Vec<SavedMemo>| {
        for (kind, key, json) in memos {
            facts.add_memo(&owner, kind, key, json);
        }
    };
    let on_disk = identity(&ids_path(base));
    if let Ok(Some(bytes)) = crate::safefs::read_file(&ids_path(base), MAX_SAVED, false) {
        let mut facts = lock();
        let facts = &mut *facts;
        facts.ids_files.insert(owner.clone(), on_disk);
        // Sized from the file: one table, never grown.
        facts.known.reserve(bytes.len() / RECORD);
        if let Some(memos) = decode_ids(&bytes, &mut |k| add(facts, k)) {
            add_memos(facts, memos);
            facts.content_pending.push(content_path(base));
            facts.content_saved.insert(owner.clone(), facts.content_changes);
            return;
        }
    }
    // What the previous release wrote: read whole, written again in this format at the next save.
    let Ok(Some(bytes)) = crate::safefs::read_file(&legacy_path(base), MAX_SAVED, false) else { return };
    let Some(saved) = std::str::from_utf8(&bytes).ok().and_then(decode_legacy) else { return };
    let mut facts = lock();
    let facts = &mut *facts;
    facts.dirty.insert(owner.clone());
    for (k, found) in saved.files {
        for (kind, json) in found {
            facts.add_content(k.blake3, kind, json);
        }
        add(facts, k);
    }
    add_memos(facts, saved.memos);
}

/// The scan of `folder` saw these identities: they belong to the checkout whose facts are kept at `base`. What that
/// checkout owned and no longer holds is forgotten (so memory follows the folder, not its history), and its files
/// are written again when anything changed. Best effort.
pub fn save(base: &Path, folder: &Path, ids: impl IntoIterator<Item = Identity>) {
    let owner = Arc::new(base.to_path_buf());
    let on_disk = identity(&ids_path(base));
    let (ids_file, content) = {
        let mut facts = lock();
        let facts = &mut *facts;
        if on_disk.is_some() && facts.ids_files.get(&owner).is_none_or(|&last| last != on_disk) {
            // Written by another process since: its memos join ours (the least recently used go first).
            if let Ok(Some(bytes)) = crate::safefs::read_file(&ids_path(base), MAX_SAVED, false)
                && let Some(memos) = decode_ids(&bytes, &mut |_| {})
            {
                let mut added = false;
                for (kind, key, json) in memos {
                    added |= facts.add_memo(&owner, kind, key, json);
                }
                if added {
                    facts.prune_memos(&owner);
                    facts.dirty.insert(owner.clone());
                }
            }
            facts.ids_files.insert(owner.clone(), on_disk);
        }
        let mut changed = facts.dirty.remove(&owner);
        let mut ids: Vec<Identity> = ids.into_iter().collect();
        // One per file (a file linked under two names is one).
        ids.sort_unstable_by_key(|i| (i.dev, i.ino));
        ids.dedup_by_key(|i| (i.dev, i.ino));
        let mut held = 0;
        for id in &ids {
            if let Some(k) = facts.known.get_mut(&(id.dev, id.ino)) {
                held += 1;
                if k.owner.as_deref() != Some(&owner) {
                    k.owner = Some(owner.clone());
                    changed = true;
                }
            }
        }
        // What the checkout owned and the scan did not see is forgotten; the common case (it saw all it owns) needs
        // no set to tell.
        let owned = facts.known.values().filter(|k| k.owner.as_deref() == Some(&owner)).count();
        if owned != held {
            let seen: HashSet<(u64, u64), FixedState> = ids.iter().map(|i| (i.dev, i.ino)).collect();
            let before = facts.known.len();
            facts.known.retain(|key, k| seen.contains(key) || k.owner.as_deref() != Some(&owner));
            changed |= facts.known.len() != before;
        }
        let content_stale = facts.content_saved.get(&owner).is_none_or(|&n| n < facts.content_changes);
        if !changed && !content_stale {
            return;
        }
        let mut files: Vec<Known> =
            facts.known.values().filter(|k| k.owner.as_deref() == Some(&owner)).cloned().collect();
        files.sort_by_key(|k| (k.id.dev, k.id.ino));
        let memos: Vec<SavedMemo> = facts
            .memos
            .iter()
            .filter(|m| m.owner == owner)
            .map(|m| (m.kind.clone(), m.key, m.json.clone()))
            .collect();
        let content = content_stale.then(|| {
            facts.content_saved.insert(owner.clone(), facts.content_changes);
            facts.content_ready();
            // Facts of contents no file has any more are forgotten.
            let live: HashSet<Digest, FixedState> = facts.known.values().map(|k| k.blake3).collect();
            facts.by_content.retain(|b, _| live.contains(b));
            let mut mine: Vec<Digest> = files.iter().map(|k| k.blake3).collect();
            mine.sort_unstable();
            mine.dedup();
            let found: Vec<(Digest, &ContentFacts)> =
                mine.iter().filter_map(|b| Some((*b, facts.by_content.get(b)?))).collect();
            encode_content(&found)
        });
        (encode_ids(folder, &files, &memos), content)
    };
    let Some(dir) = base.parent() else { return };
    if crate::fsutil::create_private_dir(dir).is_err() {
        return;
    }
    // A cache: atomic, never synced (a torn file after a power cut only costs reading again). The content facts
    // first: ids without their content facts only cost parsing again.
    if let Some(content) = content {
        let _ = crate::fsutil::replace_unsynced(&content_path(base), content.as_bytes(), 0o600);
    }
    if crate::fsutil::replace_unsynced(&ids_path(base), &ids_file, 0o600).is_ok() {
        let written = identity(&ids_path(base));
        lock().ids_files.insert(owner, written);
    }
    let _ = std::fs::remove_file(legacy_path(base));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn id_of(path: &Path) -> Identity {
        Identity::of(&rustix::fs::stat(path).unwrap())
    }

    fn known_hash(id: &Identity) -> Option<Digest> {
        lookup().hash(id)
    }

    fn digest(bytes: &[u8]) -> Digest {
        *blake3::hash(bytes).as_bytes()
    }

    fn ids_of(bytes: &[u8]) -> Option<Saved> {
        let mut files = Vec::new();
        let memos = decode_ids(bytes, &mut |k| files.push((k, Vec::new())))?;
        Some(Saved { files, memos })
    }

    #[test]
    fn a_fact_is_trusted_only_once_the_file_settled() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.sql");
        fs::write(&f, "create a").unwrap();
        let id = id_of(&f);
        // Read right after it was written: a rewrite within the same timestamp tick would keep this identity.
        note_hash(id, id.ctime + 1_000_000, [0xaa; 32]);
        assert_eq!(known_hash(&id), None, "a racily clean file is read again");
        note_hash(id, id.ctime + SLACK_NS + 1, [0xaa; 32]);
        assert_eq!(known_hash(&id), Some([0xaa; 32]));
        let changed = Identity { ctime: id.ctime + 1, ..id };
        assert_eq!(known_hash(&changed), None, "another identity is another file");
    }

    #[test]
    fn a_scan_trusts_a_settled_identity_and_rereads_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("0000_a.sql");
        fs::write(&f, "create a").unwrap();
        let real = crate::manifest::scan(dir.path()).unwrap().files()[0].blake3.clone();
        // What is known and settled is not read again: a planted hash shows through.
        let planted = "f".repeat(64);
        note_hash(id_of(&f), now_ns() + SLACK_NS * 10, [0xff; 32]);
        assert_eq!(crate::manifest::scan(dir.path()).unwrap().files()[0].blake3, planted);
        // Any write gives another identity (the change time moves), and the file is read again.
        fs::write(&f, "create b").unwrap();
        let again = crate::manifest::scan(dir.path()).unwrap().files()[0].blake3.clone();
        assert_ne!(again, planted);
        assert_ne!(again, real);
        assert_eq!(again, blake3::hash(b"create b").to_hex().to_string());
    }

    #[test]
    fn a_rewrite_within_one_timestamp_tick_is_seen() {
        // A file rewritten (same size, same inode) in the very tick it was hashed keeps its identity on a filesystem
        // with coarse timestamps. Emulated: the hash on record for this identity was taken a moment after its
        // change time, and is not this file's contents any more. The scan must read it again.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("0000_a.sql");
        fs::write(&f, "create b").unwrap();
        let id = id_of(&f);
        note_hash(id, id.ctime.max(id.mtime) + 1_000_000, digest(b"create a"));
        let seen = crate::manifest::scan(dir.path()).unwrap().files()[0].blake3.clone();
        assert_eq!(seen, blake3::hash(b"create b").to_hex().to_string());
        // The same record, had it been taken long enough after the change, would have been trusted.
        note_hash(id, id.ctime.max(id.mtime) + SLACK_NS + 1, digest(b"create a"));
        assert_eq!(known_hash(&id), Some(digest(b"create a")));
    }

    #[test]
    fn facts_are_cached_by_identity_and_follow_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap().unwrap();
        fs::write(dir.path().join("a.json"), "1").unwrap();
        let calls = std::cell::Cell::new(0);
        let parse = |b: &[u8]| {
            calls.set(calls.get() + 1);
            String::from_utf8_lossy(b).into_owned()
        };
        assert_eq!(cached("t", &folder, "a.json", 100, parse).unwrap().as_deref(), Some("1"));
        let id = id_of(&dir.path().join("a.json"));
        note_hash(id, now_ns() + SLACK_NS * 10, digest(b"1"));
        assert_eq!(cached("t", &folder, "a.json", 100, parse).unwrap().as_deref(), Some("1"));
        assert_eq!(calls.get(), 1, "a settled file's fact is not computed again");
        fs::write(dir.path().join("a.json"), "2").unwrap();
        assert_eq!(cached("t", &folder, "a.json", 100, parse).unwrap().as_deref(), Some("2"));
        assert_eq!(calls.get(), 2);
        // The same bytes under another identity (a copy, a touch): read and hashed, not parsed again.
        fs::write(dir.path().join("b.json"), "2").unwrap();
        assert_eq!(cached("t", &folder, "b.json", 100, parse).unwrap().as_deref(), Some("2"));
        assert_eq!(calls.get(), 2, "facts follow the contents");
        assert_eq!(cached("t", &folder, "missing", 100, parse).unwrap(), None);
        std::os::unix::fs::symlink("a.json", dir.path().join("link")).unwrap();
        assert!(cached("t", &folder, "link", 100, parse).is_err(), "a link is never followed");
    }

    #[test]
    fn saved_facts_round_trip_and_damage_is_ignored() {
        let k = Known {
            id: Identity { dev: 1, ino: 2, size: 3, mtime: 4, ctime: 5 },
            read_at: 6,
            blake3: [0xaa; 32],
            moved: true,
            owner: None,
        };
        let memo: SavedMemo = ("database-check".into(), [7; 32], "[[],{\"checked\":true}]".into());
        let bytes =
            encode_ids(Path::new("/p/drizzle"), std::slice::from_ref(&k), std::slice::from_ref(&memo));
        assert!(bytes.starts_with(b"dreamerd-facts\t2\n\"/p/drizzle\"\n"));
        let back = ids_of(&bytes).unwrap();
        assert_eq!(
            (back.files[0].0.id, back.files[0].0.read_at, back.files[0].0.blake3),
            (k.id, 6, k.blake3)
        );
        assert!(back.files[0].0.moved);
        assert_eq!(back.memos, vec![memo]);
        // Any damage (a torn write, a flipped byte, another format) is ignored.
        assert!(ids_of(&bytes[..bytes.len() - 1]).is_none());
        for at in [3, 20, bytes.len() / 2, bytes.len() - 40] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(ids_of(&bad).is_none(), "byte {at} flipped");
        }
        let other = String::from_utf8_lossy(&bytes).replace("facts\t2", "facts\t3");
        assert!(ids_of(other.as_bytes()).is_none(), "another format");
        assert!(ids_of(b"").is_none());

        let facts: ContentFacts = vec![("sql-sha256".into(), "\"x\\ty\"".into())];
        let text = encode_content(&[([0xbb; 32], &facts)]);
        assert_eq!(
            decode_content(&text).unwrap(),
            vec![([0xbb; 32], "sql-sha256".into(), "\"x\\ty\"".into())]
        );
        assert!(decode_content(&text.replace("\tsql-sha256\t", "\t\t")).is_none());
        assert!(decode_content(&text.replace(&"bb".repeat(32), "zz")).is_none());
    }

    #[test]
    fn a_facts_file_of_the_previous_release_is_read_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("facts").join("p100-13baa078775e");
        fs::create_dir_all(base.parent().unwrap()).unwrap();
        // Written by dreamerd 0.4.0 (format 1, text), verbatim.
        let text = "dreamerd-facts\t1\n\"/tmp/prof/p100/drizzle\"\n\
            65024\t10436882\t13739\t1795693640138079639\t1795693640138079639\t1795693642768251694\t-\t\
            4870185ef2056afb1c0e3e595b3a719d6b0167e460a905aa24d46b8bc8fadf1a\n\
            65024\t10436914\t13575\t1795693639559397811\t1795693639559397811\t1795693642768695842\tm\t\
            6e7ff9574421b7bfb34daa9cb31b78fe822e9cabdc72eaecc4a2c23f974d4f9e\tsql-sha256\t\
            \"d3868c1393177c53ca2ae568967eca89bca05c5d81e7d95e50482f8819e95d37\"\n";
        let back = decode_legacy(text).unwrap();
        assert_eq!(back.files.len(), 2);
        let (k, facts) = &back.files[1];
        assert_eq!((k.id.ino, k.id.size, k.moved), (10436914, 13575, true));
        assert_eq!(hex(&k.blake3), "6e7ff9574421b7bfb34daa9cb31b78fe822e9cabdc72eaecc4a2c23f974d4f9e");
        assert_eq!(&*facts[0].0, "sql-sha256");
        assert!(decode_legacy(&text.replace("\tm\t", "\tx\t")).is_none(), "unknown flags");

        // Loaded from the state folder, and written in this format at the next save.
        fs::write(legacy_path(&base), text).unwrap();
        load(&base);
        let ids = back.files.iter().map(|(k, _)| k.id);
        save(&base, Path::new("/tmp/prof/p100/drizzle"), ids);
        assert!(!legacy_path(&base).exists(), "the old file is replaced");
        let saved = ids_of(&fs::read(ids_path(&base)).unwrap()).unwrap();
        assert_eq!(saved.files.len(), 2);
        let content = decode_content(&fs::read_to_string(content_path(&base)).unwrap()).unwrap();
        assert_eq!(content.len(), 1);
        assert_eq!(hex(&content[0].0), "6e7ff9574421b7bfb34daa9cb31b78fe822e9cabdc72eaecc4a2c23f974d4f9e");
        assert_eq!(&*content[0].2, "\"d3868c1393177c53ca2ae568967eca89bca05c5d81e7d95e50482f8819e95d37\"");
    }

    #[test]
    fn a_transient_process_forgets_a_checkout_once_its_last_view_ends() {
        let mut facts = Facts::default();
        let (a, b) = (Arc::new(PathBuf::from("/state/facts/a")), Arc::new(PathBuf::from("/state/facts/b")));
        for (n, owner) in [(1u8, &a), (2, &b)] {
            facts.loaded.insert(owner.to_path_buf());
            let id = Identity { dev: 1, ino: u64::from(n), size: 1, mtime: 0, ctime: 0 };
            let k = Known { id, read_at: 0, blake3: [n; 32], moved: false, owner: Some(owner.clone()) };
            facts.known.insert((1, u64::from(n)), k);
            facts.add_content([n; 32], "kind".into(), "{}".into());
            facts.add_memo(owner, "memo".into(), [n; 32], "1".into());
            facts.content_pending.push(content_path(owner));
        }
        // A file hashed outside any scan (nobody owns it).
        let id = Identity { dev: 1, ino: 9, size: 1, mtime: 0, ctime: 0 };
        facts.known.insert((1, 9), Known { id, read_at: 0, blake3: [9; 32], moved: false, owner: None });
        facts.open_view(&a);
        facts.open_view(&a);
        facts.open_view(&b);
        assert!(!facts.close_view(&a), "another view of it is open");
        assert!(facts.close_view(&a), "the last one");
        assert!(!facts.close_view(&a), "none open");
        facts.forget(&a);
        let mut left: Vec<u8> = facts.known.values().map(|k| k.blake3[0]).collect();
        left.sort();
        assert_eq!(left, [2, 9], "an unowned fact stays while a scan (of b) runs: it may claim it");
        assert!(facts.close_view(&b));
        facts.forget(&a);
        assert_eq!(facts.known.values().map(|k| k.blake3[0]).collect::<Vec<_>>(), [2], "then it goes");
        assert_eq!(facts.by_content.keys().map(|k| k[0]).collect::<Vec<_>>(), [2], "its contents' facts too");
        assert_eq!(facts.memos.iter().map(|m| m.key[0]).collect::<Vec<_>>(), [2]);
        assert_eq!(facts.content_pending, [content_path(&b)]);
        assert!(!facts.loaded.contains(&**a), "the next load reads its file again");
        // Facts not saved yet stay.
        facts.dirty.insert(b.clone());
        facts.forget(&b);
        assert_eq!(facts.known.len(), 1);
        assert!(facts.loaded.contains(&**b));
    }

    #[test]
    fn memos_are_kept_per_checkout_and_only_the_latest_few() {
        let dir = tempfile::tempdir().unwrap();
        let owner = dir.path().join("facts").join("c");
        assert_eq!(memo::<u32>("k", &[1; 32]), None, "no view, no memo");
        {
            let _v = view(&owner, dir.path(), [0; 32], Vec::new());
            for n in 0..(MEMOS_KEPT as u8 + 2) {
                remember("k", [n; 32], &u32::from(n));
            }
            assert_eq!(memo::<u32>("k", &[0; 32]), None, "the oldest are dropped");
            assert_eq!(memo::<u32>("k", &[5; 32]), Some(5));
            assert_eq!(memo::<u32>("other", &[5; 32]), None, "memos are by kind");
            let other = dir.path().join("facts").join("d");
            let _w = view(&other, dir.path(), [0; 32], Vec::new());
            assert_eq!(memo::<u32>("k", &[5; 32]), None, "memos are by checkout");
        }
        let saved = ids_of(&fs::read(ids_path(&owner)).unwrap()).unwrap();
        assert_eq!(saved.memos.len(), MEMOS_KEPT);
        // Another process loads them.
        lock().memos.retain(|m| *m.owner != owner);
        lock().loaded.remove(&owner);
        load(&owner);
        let _v = view(&owner, dir.path(), [0; 32], Vec::new());
        assert_eq!(memo::<u32>("k", &[5; 32]), Some(5));
    }
}
