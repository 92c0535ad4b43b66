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
//! The daemon keeps what it learnt in memory; commands load and save it per checkout in the state folder
//! (`facts/<checkout>.json`, format [`FORMAT`], written atomically). Nothing here is ever needed: a lost, stale or
//! corrupt file only costs reading again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::safefs::{Folder, Found};

/// The format of a saved facts file; one of another format is ignored (and rebuilt).
pub const FORMAT: u32 = 1;
/// How much older than the moment it was read a file's times must be for what was read to be trusted again.
pub const SLACK_NS: i64 = 2_000_000_000;
const MAX_SAVED: u64 = 256 << 20;

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
}

/// What is known of one identity.
#[derive(Debug, Clone)]
struct Known {
    id: Identity,
    /// When it was read (nanoseconds since the epoch, taken before the read).
    read_at: i64,
    blake3: String,
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

#[derive(Default)]
struct Facts {
    /// By (device, inode): one entry per file, its latest identity.
    known: HashMap<(u64, u64), Known>,
    /// Facts drawn from contents, by their blake3 then by kind, as compact JSON (parsed only when asked for): a file
    /// touched or copied with the same bytes is not parsed again.
    by_content: HashMap<String, BTreeMap<String, String>>,
    /// The facts files loaded into this process.
    loaded: HashSet<PathBuf>,
    /// Whether anything was learnt since the last save.
    dirty: bool,
}

fn facts() -> &'static Mutex<Facts> {
    static FACTS: OnceLock<Mutex<Facts>> = OnceLock::new();
    FACTS.get_or_init(Mutex::default)
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The blake3 of the file with identity `id`, when it was read before and can be trusted.
pub fn known_hash(id: &Identity) -> Option<String> {
    let facts = facts().lock().expect("facts");
    let k = facts.known.get(&(id.dev, id.ino))?;
    (k.id == *id && k.settled()).then(|| k.blake3.clone())
}

/// Records the blake3 of a file read at `read_at`.
pub fn note_hash(id: Identity, read_at: i64, blake3: &str) {
    let mut facts = facts().lock().expect("facts");
    let facts = &mut *facts;
    let k = facts.known.entry((id.dev, id.ino)).or_insert_with(|| Known {
        id,
        read_at: i64::MIN,
        blake3: String::new(),
        moved: false,
        owner: None,
    });
    if k.id != id || k.blake3 != blake3 {
        (k.id, k.blake3, k.moved) = (id, blake3.to_string(), false);
        k.read_at = read_at;
        facts.dirty = true;
    } else if read_at > k.read_at {
        k.read_at = read_at;
        facts.dirty = true;
    }
}

/// dreamerd renamed a file whose contents it knew (settled, `before`) and found it at `after`: the same file, whose
/// change time moved with the rename. What was known stays known, so a restore never reads again what it kept.
pub fn note_moved(before: Identity, after: Identity) {
    let same_file = Identity { ctime: after.ctime, ..before } == after;
    let mut facts = facts().lock().expect("facts");
    let Some(k) = facts.known.get(&(before.dev, before.ino)) else { return };
    if !same_file || k.id != before || !k.settled() {
        return;
    }
    let moved = Known { id: after, read_at: now_ns(), moved: true, ..k.clone() };
    facts.known.insert((after.dev, after.ino), moved);
    facts.dirty = true;
}

thread_local! {
    /// The files the scan of the operation running on this thread found (path, identity, blake3).
    static VIEW: std::cell::RefCell<HashMap<PathBuf, (Identity, String)>> = std::cell::RefCell::default();
}

/// Ends a [`view`] when dropped.
pub struct View(());

impl Drop for View {
    fn drop(&mut self) {
        VIEW.with(|v| v.borrow_mut().clear());
    }
}

/// While the returned guard lives, [`cached`] on this thread takes the files a scan just found as they were found:
/// an operation judges one moment of the folder, and reads nothing twice.
pub fn view(seen: Vec<crate::manifest::Seen>) -> View {
    VIEW.with(|v| *v.borrow_mut() = seen.into_iter().map(|(p, id, b)| (p, (id, b))).collect());
    View(())
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
    let known = |facts: &Facts, blake3: &str| -> Option<T> {
        serde_json::from_str::<T>(facts.by_content.get(blake3)?.get(kind)?).ok()
    };
    // What the scan of this very operation found: no second look at the file, and no second read of one changed too
    // recently to be trusted across operations.
    let in_view = VIEW.with(|v| v.borrow().get(&folder.shown(rel)).cloned());
    if let Some((_, blake3)) = &in_view
        && let Some(t) = known(&facts().lock().expect("facts"), blake3)
    {
        return Ok(Some(t));
    }
    if in_view.is_none()
        && let Some(id) = folder.identity(rel)?
    {
        let facts = facts().lock().expect("facts");
        if let Some(k) = facts.known.get(&(id.dev, id.ino))
            && k.id == id
            && k.settled()
            && let Some(t) = known(&facts, &k.blake3)
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
    let bytes = crate::safefs::read_capped(file, cap, &folder.shown(rel))?;
    let blake3 = blake3::hash(&bytes).to_hex().to_string();
    note_hash(id, read_at, &blake3);
    // The same bytes were seen before (the file was touched, copied, or moved): nothing to parse.
    if let Some(t) = known(&facts().lock().expect("facts"), &blake3) {
        return Ok(Some(t));
    }
    let value = compute(&bytes);
    if let Ok(json) = serde_json::to_string(&value) {
        let mut facts = facts().lock().expect("facts");
        facts.by_content.entry(blake3).or_default().insert(kind.to_string(), json);
        facts.dirty = true;
    }
    Ok(Some(value))
}

/// The first line of a saved facts file. The format is text, one file per line, fields separated by tabs (compact
/// JSON never holds a raw tab or newline): `dev ino size mtime ctime read_at flags blake3 [kind json]...` (flags: `m`
/// for a file dreamerd moved itself, else `-`); the second line
/// is the folder scanned, as JSON, for people reading the state folder.
const HEADER: &str = "dreamerd-facts";

fn encode(folder: &Path, files: &[(Known, BTreeMap<String, String>)]) -> String {
    let mut out =
        format!("{HEADER}\t{FORMAT}\n{}\n", serde_json::to_string(folder).expect("a path serialises"));
    for (k, facts) in files {
        let i = &k.id;
        let flags = if k.moved { "m" } else { "-" };
        out += &format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{flags}\t{}",
            i.dev, i.ino, i.size, i.mtime, i.ctime, k.read_at, k.blake3
        );
        for (kind, json) in facts {
            out += &format!("\t{kind}\t{json}");
        }
        out.push('\n');
    }
    out
}

/// The files of a saved facts file; `None` for one of another format or damaged anywhere.
fn decode(text: &str) -> Option<Vec<(Known, BTreeMap<String, String>)>> {
    let mut lines = text.split('\n');
    if lines.next()? != format!("{HEADER}\t{FORMAT}") {
        return None;
    }
    lines.next()?;
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let mut num = || f.next()?.parse::<i64>().ok();
        let (dev, ino, size, mtime, ctime, read_at) = (num()?, num()?, num()?, num()?, num()?, num()?);
        let moved = match f.next()? {
            "m" => true,
            "-" => false,
            _ => return None,
        };
        let blake3 = f.next()?;
        if blake3.len() != 64 || !blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut facts = BTreeMap::new();
        while let Some(kind) = f.next() {
            facts.insert(kind.to_string(), f.next()?.to_string());
        }
        let id = Identity { dev: dev as u64, ino: ino as u64, size: size as u64, mtime, ctime };
        out.push((Known { id, read_at, blake3: blake3.to_string(), moved, owner: None }, facts));
    }
    Some(out)
}

/// Loads a checkout's facts file into this process, once per process; a missing, corrupt or other-format file is
/// ignored.
pub fn load(path: &Path) {
    {
        let mut facts = facts().lock().expect("facts");
        if !facts.loaded.insert(path.to_path_buf()) {
            return;
        }
    }
    let Ok(Some(bytes)) = crate::safefs::read_file(path, MAX_SAVED, false) else { return };
    let Some(files) = std::str::from_utf8(&bytes).ok().and_then(decode) else { return };
    let owner = Arc::new(path.to_path_buf());
    let mut facts = facts().lock().expect("facts");
    facts.known.reserve(files.len());
    for (mut k, found) in files {
        k.owner = Some(owner.clone());
        if !found.is_empty() {
            facts.by_content.entry(k.blake3.clone()).or_default().extend(found);
        }
        facts.known.entry((k.id.dev, k.id.ino)).or_insert(k);
    }
}

/// The scan of `folder` saw these identities: they belong to the checkout whose facts file is `path`. What that
/// checkout owned and no longer holds is forgotten (so memory follows the folder, not its history), and the file is
/// written again when anything changed. Best effort.
pub fn save(path: &Path, folder: &Path, ids: impl IntoIterator<Item = Identity>) {
    let owner = Arc::new(path.to_path_buf());
    let seen: HashSet<(u64, u64)> = ids.into_iter().map(|i| (i.dev, i.ino)).collect();
    let files = {
        let mut facts = facts().lock().expect("facts");
        let before = facts.known.len();
        facts.known.retain(|key, k| {
            seen.contains(key) || !(k.owner.is_none() || k.owner.as_deref() == Some(&owner))
        });
        let mut changed = facts.dirty || facts.known.len() != before;
        for key in &seen {
            if let Some(k) = facts.known.get_mut(key)
                && k.owner.as_deref() != Some(&owner)
            {
                k.owner = Some(owner.clone());
                changed = true;
            }
        }
        if !changed {
            return;
        }
        facts.dirty = false;
        // Facts of contents no file has any more are forgotten too.
        let live: HashSet<&str> = facts.known.values().map(|k| k.blake3.as_str()).collect();
        let dead: Vec<String> =
            facts.by_content.keys().filter(|b| !live.contains(b.as_str())).cloned().collect();
        for b in dead {
            facts.by_content.remove(&b);
        }
        let mut files: Vec<(Known, BTreeMap<String, String>)> = facts
            .known
            .values()
            .filter(|k| k.owner.as_deref() == Some(&owner))
            .map(|k| (k.clone(), facts.by_content.get(&k.blake3).cloned().unwrap_or_default()))
            .collect();
        files.sort_by_key(|(k, _)| (k.id.dev, k.id.ino));
        files
    };
    let Some(dir) = path.parent() else { return };
    if crate::fsutil::create_private_dir(dir).is_err() {
        return;
    }
    // A cache: atomic, never synced (a torn file after a power cut only costs reading again).
    let _ = crate::fsutil::replace_unsynced(path, encode(folder, &files).as_bytes(), 0o600);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn id_of(path: &Path) -> Identity {
        Identity::of(&rustix::fs::stat(path).unwrap())
    }

    #[test]
    fn a_fact_is_trusted_only_once_the_file_settled() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.sql");
        fs::write(&f, "create a").unwrap();
        let id = id_of(&f);
        // Read right after it was written: a rewrite within the same timestamp tick would keep this identity.
        note_hash(id, id.ctime + 1_000_000, "aa");
        assert_eq!(known_hash(&id), None, "a racily clean file is read again");
        note_hash(id, id.ctime + SLACK_NS + 1, "aa");
        assert_eq!(known_hash(&id).as_deref(), Some("aa"));
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
        note_hash(id_of(&f), now_ns() + SLACK_NS * 10, &planted);
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
        note_hash(id, id.ctime.max(id.mtime) + 1_000_000, &blake3::hash(b"create a").to_hex());
        let seen = crate::manifest::scan(dir.path()).unwrap().files()[0].blake3.clone();
        assert_eq!(seen, blake3::hash(b"create b").to_hex().to_string());
        // The same record, had it been taken long enough after the change, would have been trusted.
        note_hash(id, id.ctime.max(id.mtime) + SLACK_NS + 1, &blake3::hash(b"create a").to_hex());
        assert_eq!(known_hash(&id), Some(blake3::hash(b"create a").to_hex().to_string()));
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
        note_hash(id, now_ns() + SLACK_NS * 10, &blake3::hash(b"1").to_hex());
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
            blake3: "a".repeat(64),
            moved: true,
            owner: None,
        };
        let facts: BTreeMap<String, String> = [("sql-sha256".to_string(), "\"x\\ty\"".to_string())].into();
        let text = encode(Path::new("/p/drizzle"), &[(k.clone(), facts.clone())]);
        let back = decode(&text).unwrap();
        assert_eq!(
            (back[0].0.id, back[0].0.read_at, &back[0].0.blake3, &back[0].1),
            (k.id, 6, &k.blake3, &facts)
        );
        assert!(back[0].0.moved);
        assert!(decode(&text.replace("\tm\t", "\tx\t")).is_none(), "unknown flags");
        assert!(decode(&text.replace("dreamerd-facts\t1", "dreamerd-facts\t2")).is_none(), "another format");
        assert!(decode(&text.replace(&"a".repeat(64), "zz")).is_none());
        assert!(decode(&text.replace("\t4\t", "\tfour\t")).is_none());
        assert!(decode("").is_none());
    }
}
