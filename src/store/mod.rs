//! The backup store: every successful push of every project, on one layout for every backend.
//!
//! Layout (format 2), under the store's root:
//! ```text
//! format.json                                   {"format": 2, "store_id": "…"}
//! projects/<project>/archives/<blake3>.tar.zst  a push's archive, named by its blake3            (create-only)
//! projects/<project>/manifests/<tree>.json      a push's files, named by their tree hash          (create-only)
//! projects/<project>/generations/<n>.json       the n-th push stored: its id, its parent push,
//!                                               its tree and archive, when and where it ran        (create-only)
//! projects/<project>/head.json                  the newest generation: only a hint
//! ```
//! Content-addressed objects are written create-only, and "already there" with the right content is success, so two
//! machines storing the same tree never fight. A new generation is written create-only too: that is the
//! compare-and-swap that orders concurrent pushes (the loser takes the next number). `head.json` only saves a
//! reader the search: readers also look for the generations after it, so a lost or stale head loses nothing.
//!
//! The layout lives here once, on top of a tiny object interface ([`Blobs`]); the local directory store implements it
//! and an S3-compatible one slots in beside it without touching the engine.

mod index;
mod local;
mod migrate;
mod s3;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::StoreLocation;
use crate::error::{Error, Result};
use crate::manifest::{FileEntry, tree_hash};

pub use index::Index;
pub use local::LocalBlobs;
pub use s3::S3Blobs;

/// The format of push records (kept in the state directory while a backup waits for the store). 1: dreamerd 0.1.0
/// onwards; `parent` and `generation` were added without changing it (both optional).
pub const RECORD_FORMAT: u32 = 1;
/// The store's layout. 1: `projects/<id>/pushes/<push>/{archive.tar.zst,manifest.json}` and `projects/<id>/latest.json`
/// (dreamerd 0.1.0 wrote it without the `format.json` marker). 2: content-addressed archives and manifests,
/// generations and a head hint (see the module's documentation). A store of format 1 is migrated at first use.
pub const STORE_FORMAT: u32 = 2;
/// The format of generation objects.
pub const GENERATION_FORMAT: u32 = 1;
/// The format of manifest objects.
pub const MANIFEST_FORMAT: u32 = 1;
/// The key of the store's format marker.
const FORMAT_KEY: &str = "format.json";

/// Largest manifest, generation or pointer object read back from a store.
const MAX_RECORD: u64 = 64 << 20;
/// Largest archive read back from a store.
const MAX_ARCHIVE: u64 = 2 << 30;

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was written.
    New,
    /// An object was already there under that key (left as it was).
    Exists,
}

/// A flat key/value object store. Keys are `/`-separated, made of names that [`valid_id`] accepts.
pub trait Blobs: Send + Sync {
    /// Stores `data` under `key` atomically: readers see the old object or the new one, never a part.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Stores `data` under `key` only if nothing is there yet, atomically and exclusively.
    fn create(&self, key: &str, data: &[u8]) -> Result<Created>;
    /// The object under `key`, or `None`. Objects larger than `max` are refused.
    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>>;
    /// Every key that starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes the object under `key`, if any.
    fn delete(&self, key: &str) -> Result<()>;
    /// Where the store is, for messages (never with credentials).
    fn describe(&self) -> String;
    /// Whether the store is there at all (a local store's folder exists).
    fn reachable(&self) -> Result<bool> {
        Ok(true)
    }
    /// The object and a version tag (an S3 ETag) to update it with, or `None`.
    fn get_tagged(&self, key: &str, max: u64) -> Result<Option<(Vec<u8>, Option<String>)>> {
        Ok(self.get(key, max)?.map(|b| (b, None)))
    }
    /// Replaces the object only if it still has version `tag` (`None`: only if there is none yet); false when it
    /// changed meanwhile. A backend without versions (a local folder) replaces it atomically.
    fn put_if(&self, key: &str, data: &[u8], tag: Option<String>) -> Result<bool> {
        match tag {
            Some(_) => self.put(key, data).map(|()| true),
            None => self.create(key, data).map(|c| c == Created::New),
        }
    }
}

/// The record of one successful push: what `drizzle/` held, file by file, and where its archive is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    pub format: u32,
    pub id: String,
    pub project_id: String,
    /// RFC 3339, UTC, seconds.
    pub at: String,
    /// Milliseconds since the epoch: orders pushes made within one second.
    #[serde(default)]
    pub at_ms: u64,
    pub files: Vec<FileEntry>,
    /// blake3 of `src/schema.ts` as the push saw it; `None` if it had none.
    pub schema_blake3: Option<String>,
    pub archive_blake3: String,
    pub archive_size: u64,
    /// The machine and directory the push ran in, for people reading the history.
    pub host: String,
    pub root: String,
    /// The push this one was made on top of (the checkout's last push then); `None` for a first push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its place in the store's history, once stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The git branch the push was made on, when the project is in git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

impl PushRecord {
    /// How the push's migration folder is laid out (from its files: a journal, or migration folders).
    pub fn layout(&self) -> Option<crate::drizzle::journal::Layout> {
        crate::drizzle::journal::Layout::of_paths(self.files.iter().map(|f| f.path.as_str()))
    }

    /// Refuses archive bytes that are not exactly the ones this record describes; `place` says where they came from.
    pub fn check_archive(&self, bytes: &[u8], place: &str) -> Result<()> {
        let got = blake3::hash(bytes).to_hex().to_string();
        if got != self.archive_blake3 || bytes.len() as u64 != self.archive_size {
            return Err(Error::Corrupt(format!(
                "the archive of push {} in {place} is corrupt: its blake3 is {got}, the record says {}",
                self.id, self.archive_blake3
            )));
        }
        Ok(())
    }

    /// The hash of its tree (see [`tree_hash`]).
    pub fn tree(&self) -> String {
        tree_hash(&self.files)
    }
}

/// One stored push, as its generation object says (without its file list, which is in its manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub format: u32,
    pub generation: u64,
    pub push: String,
    pub parent: Option<String>,
    pub project_id: String,
    pub at: String,
    #[serde(default)]
    pub at_ms: u64,
    /// The tree hash: the key of its manifest.
    pub tree: String,
    pub files: usize,
    pub schema_blake3: Option<String>,
    pub archive_blake3: String,
    pub archive_size: u64,
    pub host: String,
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

impl Generation {
    fn of(record: &PushRecord, generation: u64) -> Generation {
        Generation {
            format: GENERATION_FORMAT,
            generation,
            push: record.id.clone(),
            parent: record.parent.clone(),
            project_id: record.project_id.clone(),
            at: record.at.clone(),
            at_ms: record.at_ms,
            tree: record.tree(),
            files: record.files.len(),
            schema_blake3: record.schema_blake3.clone(),
            archive_blake3: record.archive_blake3.clone(),
            archive_size: record.archive_size,
            host: record.host.clone(),
            root: record.root.clone(),
            branch: record.branch.clone(),
        }
    }

    /// The full record, given its manifest's files.
    pub fn record(&self, files: Vec<FileEntry>) -> PushRecord {
        PushRecord {
            format: RECORD_FORMAT,
            id: self.push.clone(),
            project_id: self.project_id.clone(),
            at: self.at.clone(),
            at_ms: self.at_ms,
            files,
            schema_blake3: self.schema_blake3.clone(),
            archive_blake3: self.archive_blake3.clone(),
            archive_size: self.archive_size,
            host: self.host.clone(),
            root: self.root.clone(),
            parent: self.parent.clone(),
            generation: Some(self.generation),
            branch: self.branch.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct Head {
    generation: u64,
    push: String,
}

/// True for ids dreamerd generates: short, plain ASCII, never a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-')
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The backup store of one configuration.
pub struct Store {
    blobs: Box<dyn Blobs>,
    /// An `s3://` store.
    remote: bool,
    /// Where archives fetched from a remote store are kept, by their blake3.
    cache_dir: Option<PathBuf>,
    /// Where the local index of this store's histories is kept (`None`: no index, every history is read whole).
    index_dir: Option<PathBuf>,
    /// The store's identity, once its format was checked (and, from a write, its marker written or a store of an
    /// older format migrated).
    ready: std::sync::OnceLock<Marked>,
}

#[derive(Debug, Clone)]
struct Marked {
    /// False while the store has no marker yet (nothing was ever written to it).
    written: bool,
    store_id: String,
}

#[derive(Serialize, Deserialize)]
struct StoreMarker {
    format: u32,
    /// A random identity, made when the store was: a local index never mixes two stores at one place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_id: Option<String>,
}

impl Store {
    /// Opens the store a configuration names; `index_dir` is where histories are indexed locally.
    pub fn open(
        location: &StoreLocation,
        index_dir: Option<PathBuf>,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Store> {
        let blobs: Box<dyn Blobs> = match location {
            StoreLocation::Local(dir) => Box::new(LocalBlobs::new(dir.clone())),
            StoreLocation::S3(s3) => Box::new(S3Blobs::new(s3, env)?),
        };
        let remote = matches!(location, StoreLocation::S3(_));
        Ok(Store { blobs, remote, cache_dir: None, index_dir, ready: std::sync::OnceLock::new() })
    }

    /// A store over any object interface (tests, other backends), without a local index.
    pub fn with_blobs(blobs: Box<dyn Blobs>) -> Store {
        Store { blobs, remote: false, cache_dir: None, index_dir: None, ready: std::sync::OnceLock::new() }
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        self.blobs.describe()
    }

    /// Keeps archives fetched from a remote store in `dir` (by their blake3), and serves them from there.
    pub fn with_cache(mut self, dir: PathBuf) -> Store {
        if self.remote {
            self.cache_dir = Some(dir);
        }
        self
    }

    /// Whether the store is shared over the network (an `s3://` store).
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Proves that the store honours conditional writes, which concurrent pushers rely on: a second create-only
    /// write must be refused, and so must a write with a stale `If-Match`. Leaves nothing behind.
    pub fn check_conditional(&self) -> Result<Vec<String>> {
        let key = format!("probes/{}.json", new_store_id());
        let refuse = |what: &str| {
            Error::Usage(format!(
                "{} {what}, so two pushers could overwrite each other's history: dreamerd does not use it. Use an \
                 S3-compatible server that supports conditional writes (AWS S3, MinIO, R2, Ceph...)",
                self.describe()
            ))
        };
        let mut proved = Vec::new();
        let outcome = (|| {
            if self.blobs.create(&key, b"1")? != Created::New {
                return Err(refuse("refused to create a new object"));
            }
            if self.blobs.create(&key, b"2")? != Created::Exists {
                return Err(refuse("accepted a second create-only write (it ignores If-None-Match: *)"));
            }
            proved.push("a second create-only write (If-None-Match: *) is refused".to_string());
            if self.remote {
                let (_, tag) =
                    self.blobs.get_tagged(&key, 64)?.ok_or_else(|| refuse("lost an object just written"))?;
                let tag = tag.ok_or_else(|| refuse("gives no ETag"))?;
                if !self.blobs.put_if(&key, b"3", Some(tag.clone()))? {
                    return Err(refuse("refused a write with the current ETag (If-Match)"));
                }
                if self.blobs.put_if(&key, b"4", Some(tag))? {
                    return Err(refuse("accepted a write with a stale ETag (it ignores If-Match)"));
                }
                proved.push("a write with a stale If-Match is refused".to_string());
            }
            Ok(())
        })();
        let removed = self.blobs.delete(&key);
        outcome?;
        removed?;
        Ok(proved)
    }

    /// Whether the store is there at all.
    pub fn reachable(&self) -> Result<bool> {
        self.blobs.reachable()
    }

    fn marker(&self) -> Result<Option<StoreMarker>> {
        match self.blobs.get(FORMAT_KEY, 4096)? {
            Some(bytes) => serde_json::from_slice::<StoreMarker>(&bytes).map(Some).map_err(|e| {
                Error::Corrupt(format!(
                    "{FORMAT_KEY} in {} is unreadable: {e}; it says which layout the store has, so nothing \
                     was read or written",
                    self.describe()
                ))
            }),
            None => Ok(None),
        }
    }

    /// Checks the store's format before its first use: refuses a newer one, migrates one of format 1 (dreamerd
    /// 0.1.0's layout, with or without its marker), and, before the first write, marks a new store.
    fn ready(&self, writing: bool) -> Result<Marked> {
        if let Some(m) = self.ready.get()
            && (m.written || !writing)
        {
            return Ok(m.clone());
        }
        let marker = self.marker()?;
        let found = match &marker {
            Some(m) => m.format,
            None if migrate::has_v1(self.blobs.as_ref())? => 1,
            None => 0,
        };
        crate::error::check_format(found, STORE_FORMAT, || self.describe())?;
        let marked = match (found, marker) {
            (STORE_FORMAT, Some(StoreMarker { store_id: Some(id), .. })) => {
                Marked { written: true, store_id: id }
            }
            (STORE_FORMAT, Some(StoreMarker { store_id: None, .. })) => {
                Marked { written: true, store_id: "unnamed".into() }
            }
            (1, _) => {
                migrate::from_v1(self, &new_store_id())?;
                return self.reread();
            }
            _ if writing => {
                let store_id = new_store_id();
                let json =
                    serde_json::to_vec(&StoreMarker { format: STORE_FORMAT, store_id: Some(store_id) })
                        .expect("serialises");
                // Two first writers at once: the first marker stays, and both use it.
                self.blobs.create(FORMAT_KEY, &json)?;
                return self.reread();
            }
            _ => Marked { written: false, store_id: String::new() },
        };
        if marked.written {
            let _ = self.ready.set(marked.clone());
        }
        Ok(marked)
    }

    fn reread(&self) -> Result<Marked> {
        match self.marker()? {
            Some(StoreMarker { format: STORE_FORMAT, store_id }) => {
                let marked = Marked { written: true, store_id: store_id.unwrap_or_else(|| "unnamed".into()) };
                let _ = self.ready.set(marked.clone());
                Ok(marked)
            }
            _ => Err(Error::Corrupt(format!(
                "{FORMAT_KEY} in {} changed while it was written",
                self.describe()
            ))),
        }
    }

    fn project_key(project: &str, rest: &str) -> String {
        format!("projects/{project}/{rest}")
    }

    fn generation_key(project: &str, n: u64) -> String {
        Self::project_key(project, &format!("generations/{n:012}.json"))
    }

    fn archive_key(project: &str, blake3: &str) -> String {
        Self::project_key(project, &format!("archives/{blake3}.tar.zst"))
    }

    fn manifest_key(project: &str, tree: &str) -> String {
        Self::project_key(project, &format!("manifests/{tree}.json"))
    }

    /// Writes a content-addressed object: already there with the right content is success; a damaged one is
    /// replaced (its name says what it must hold).
    fn put_content(&self, key: &str, data: &[u8], verify: impl Fn(&[u8]) -> bool) -> Result<()> {
        if self.blobs.create(key, data)? == Created::Exists {
            let intact = self.blobs.get(key, MAX_ARCHIVE)?.is_some_and(|b| verify(&b));
            if !intact {
                self.blobs.put(key, data)?;
            }
        }
        Ok(())
    }

    /// Saves a successful push: archive and manifest (content-addressed), then its generation, then the head hint,
    /// so that a crash part-way never leaves a generation naming something missing. Returns its generation number.
    /// Saving a push that is already stored (a retry) returns the generation it has.
    pub fn save(&self, record: &PushRecord, archive: &[u8]) -> Result<u64> {
        check_ids(&record.project_id, &record.id)?;
        self.ready(true)?;
        let project = &record.project_id;
        let expected = record.archive_blake3.clone();
        self.put_content(&Self::archive_key(project, &record.archive_blake3), archive, |b| {
            blake3::hash(b).to_hex().as_str() == expected
        })?;
        let tree = record.tree();
        let manifest = serde_json::to_vec(&Manifest { format: MANIFEST_FORMAT, files: record.files.clone() })
            .expect("manifests serialise");
        self.put_content(&Self::manifest_key(project, &tree), &manifest, |b| {
            parse_manifest(b).is_some_and(|files| tree_hash(&files) == tree)
        })?;
        // A retry of a push that is stored already (a crash after its generation was written) keeps its number.
        if let Some(g) = self.history(project)?.into_iter().find(|g| g.push == record.id) {
            return Ok(g.generation);
        }
        let mut n = self.newest_generation(project)? + 1;
        loop {
            let generation = Generation::of(record, n);
            let json = serde_json::to_vec_pretty(&generation).expect("generations serialise");
            match self.blobs.create(&Self::generation_key(project, n), &json)? {
                Created::New => break,
                // Taken: by this very push (a retry after a crash), or by another push that came first.
                Created::Exists => match self.generation(project, n)? {
                    Some(g) if g.push == record.id => break,
                    _ => n += 1,
                },
            }
        }
        self.write_head(project, n, &record.id)?;
        Ok(n)
    }

    /// Moves the head hint forward to generation `n`, never backwards: written with `If-Match` on the head's ETag
    /// (create-only when there is none), read again when another writer got there first.
    fn write_head(&self, project: &str, n: u64, push: &str) -> Result<()> {
        let key = Self::project_key(project, "head.json");
        let json = serde_json::to_vec(&Head { generation: n, push: push.to_string() }).expect("serialises");
        for _ in 0..8 {
            let tag = match self.blobs.get_tagged(&key, 4096)? {
                Some((bytes, tag)) => {
                    if serde_json::from_slice::<Head>(&bytes).is_ok_and(|h| h.generation >= n) {
                        return Ok(());
                    }
                    // Replace exactly what was read (a local folder has no versions: replaced atomically).
                    Some(tag.unwrap_or_default())
                }
                None => None,
            };
            if self.blobs.put_if(&key, &json, tag)? {
                return Ok(());
            }
        }
        // It keeps moving: it is only a hint, and readers look past it.
        Ok(())
    }

    /// The head hint, if it is there and readable (it is only a hint: anything wrong with it is ignored).
    fn head(&self, project: &str) -> Option<Head> {
        let bytes = self.blobs.get(&Self::project_key(project, "head.json"), 4096).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The number of the newest generation of a project (0 when it has none): from the head hint, then looking for
    /// the ones after it.
    pub fn newest_generation(&self, project: &str) -> Result<u64> {
        let mut n = self.head(project).map(|h| h.generation).unwrap_or(0);
        if n > 0 && self.blobs.get(&Self::generation_key(project, n), MAX_RECORD)?.is_none() {
            // A head naming a generation that is not there is wrong: the listing decides.
            n = self.generation_numbers(project)?.last().copied().unwrap_or(0);
        }
        while self.blobs.get(&Self::generation_key(project, n + 1), MAX_RECORD)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// The generation numbers a project has in the store, in order.
    fn generation_numbers(&self, project: &str) -> Result<Vec<u64>> {
        let prefix = Self::project_key(project, "generations/");
        let mut out: Vec<u64> = self
            .blobs
            .list(&prefix)?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".json")?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Generation `n` of a project, verified to be what its key says.
    pub fn generation(&self, project: &str, n: u64) -> Result<Option<Generation>> {
        let key = Self::generation_key(project, n);
        let Some(bytes) = self.blobs.get(&key, MAX_RECORD)? else { return Ok(None) };
        let g: Generation = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{key} in {} is unreadable: {e}", self.describe())))?;
        crate::error::check_format(g.format, GENERATION_FORMAT, || format!("{key} in {}", self.describe()))?;
        if g.generation != n || g.project_id != project || !valid_id(&g.push) || !valid_hash(&g.tree) {
            return Err(Error::Corrupt(format!("{key} in {} describes another push", self.describe())));
        }
        Ok(Some(g))
    }

    /// Every push of a project the store holds, newest first (from the local index, brought up to date).
    pub fn history(&self, project: &str) -> Result<Vec<Generation>> {
        check_ids(project, "history")?;
        let marked = self.ready(false)?;
        if !marked.written {
            return Ok(Vec::new());
        }
        let mut all = Index::load(self.index_dir.as_deref(), &marked.store_id, project)
            .refresh(self, project)?
            .generations;
        all.reverse();
        Ok(all)
    }

    /// The newest push of a project, if any.
    pub fn latest(&self, project: &str) -> Result<Option<PushRecord>> {
        match self.history(project)?.into_iter().next() {
            Some(g) => self.full(&g).map(Some),
            None => Ok(None),
        }
    }

    /// The record of one push, if the store holds it.
    pub fn record(&self, project: &str, push: &str) -> Result<Option<PushRecord>> {
        check_ids(project, push)?;
        match self.history(project)?.into_iter().find(|g| g.push == push) {
            Some(g) => self.full(&g).map(Some),
            None => Ok(None),
        }
    }

    /// A generation with its files.
    pub fn full(&self, g: &Generation) -> Result<PushRecord> {
        Ok(g.record(self.manifest(&g.project_id, &g.tree)?))
    }

    /// The files of a stored tree, verified against the tree hash that names them.
    pub fn manifest(&self, project: &str, tree: &str) -> Result<Vec<FileEntry>> {
        let key = Self::manifest_key(project, tree);
        let bytes = self.blobs.get(&key, MAX_RECORD)?.ok_or_else(|| {
            Error::Corrupt(format!("{key} is missing from {}, though a push names it", self.describe()))
        })?;
        match parse_manifest(&bytes) {
            Some(files) if tree_hash(&files) == tree => Ok(files),
            _ => Err(Error::Corrupt(format!(
                "{key} in {} is corrupt: its files do not hash to its name",
                self.describe()
            ))),
        }
    }

    /// The archive of a push when it can be had without the network (a local store, or the cache of a remote one),
    /// verified; `None` otherwise.
    pub fn archive_at_hand(&self, record: &PushRecord) -> Option<Vec<u8>> {
        if !self.remote {
            return self.archive(record).ok();
        }
        self.cached_archive(record)
    }

    /// Where the cache keeps a push's archive (remote stores only).
    fn cache_path(&self, record: &PushRecord) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|d| d.join(format!("{}.tar.zst", record.archive_blake3)))
    }

    /// The archive of a push from the cache, verified; `None` when it is not there (or not whole).
    fn cached_archive(&self, record: &PushRecord) -> Option<Vec<u8>> {
        if !valid_hash(&record.archive_blake3) {
            return None;
        }
        let bytes = crate::safefs::read_file(&self.cache_path(record)?, MAX_ARCHIVE, false).ok()??;
        record.check_archive(&bytes, "the cache").ok().map(|()| bytes)
    }

    /// The archive of a push, verified against its record's blake3.
    pub fn archive(&self, record: &PushRecord) -> Result<Vec<u8>> {
        let key = Self::archive_key(&record.project_id, &record.archive_blake3);
        if !valid_hash(&record.archive_blake3) {
            return Err(Error::Corrupt(format!("push {} names no valid archive", record.id)));
        }
        if let Some(bytes) = self.cached_archive(record) {
            return Ok(bytes);
        }
        let cached = self.cache_path(record);
        let bytes = self.blobs.get(&key, MAX_ARCHIVE)?.ok_or_else(|| {
            Error::Corrupt(format!(
                "the archive of push {} ({key}) is missing from {}",
                record.id,
                self.describe()
            ))
        })?;
        record.check_archive(&bytes, &format!("{} ({key})", self.describe()))?;
        if let Some(path) = &cached {
            // A cache: failing to keep it costs only the next download.
            let _ = crate::fsutil::create_private_dir(path.parent().expect("has a parent"))
                .and_then(|()| crate::fsutil::atomic_write_mode(path, &bytes, 0o600));
        }
        Ok(bytes)
    }
}

fn parse_manifest(bytes: &[u8]) -> Option<Vec<FileEntry>> {
    let m: Manifest = serde_json::from_slice(bytes).ok()?;
    (m.format <= MANIFEST_FORMAT).then_some(m.files)
}

fn new_store_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn check_ids(project: &str, push: &str) -> Result<()> {
    if !valid_id(project) {
        return Err(Error::Usage(format!("{project:?} is not a valid project id")));
    }
    if !valid_id(push) {
        return Err(Error::Usage(format!(
            "{push:?} is not a push id (see `dreamerd history` for the ids of this project)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn record(id: &str, at: &str, archive: &[u8]) -> PushRecord {
        PushRecord {
            format: RECORD_FORMAT,
            id: id.into(),
            project_id: "p1".into(),
            at: at.into(),
            at_ms: 0,
            files: vec![FileEntry { path: format!("{id}.sql"), size: 1, blake3: "ab".repeat(32) }],
            schema_blake3: None,
            archive_blake3: blake3::hash(archive).to_hex().to_string(),
            archive_size: archive.len() as u64,
            host: "h".into(),
            root: "/r".into(),
            parent: None,
            generation: None,
            branch: None,
        }
    }

    fn local(dir: &std::path::Path) -> Store {
        Store::open(&StoreLocation::Local(dir.join("store")), Some(dir.join("index")), &Default::default())
            .unwrap()
    }

    #[test]
    fn save_latest_history_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        assert!(store.latest("p1").unwrap().is_none());
        assert_eq!(store.save(&record("a1", "2026-01-01T00:00:00Z", b"one"), b"one").unwrap(), 1);
        let mut second = record("b2", "2026-01-02T00:00:00Z", b"two");
        second.parent = Some("a1".into());
        assert_eq!(store.save(&second, b"two").unwrap(), 2);
        // Saving it again (a retry) is the same generation.
        assert_eq!(store.save(&second, b"two").unwrap(), 2);
        assert_eq!(store.latest("p1").unwrap().unwrap().id, "b2");
        let history = store.history("p1").unwrap();
        let ids: Vec<_> = history.iter().map(|g| (g.push.as_str(), g.parent.as_deref())).collect();
        assert_eq!(ids, [("b2", Some("a1")), ("a1", None)]);
        let rec = store.record("p1", "a1").unwrap().unwrap();
        assert_eq!(store.archive(&rec).unwrap(), b"one");
        assert!(store.history("other").unwrap().is_empty());
        // A fresh reader without the index, and one with a stale head, see the same.
        fs_err(std::fs::remove_file(dir.path().join("store/projects/p1/head.json")));
        let bare = Store::with_blobs(Box::new(LocalBlobs::new(dir.path().join("store"))));
        assert_eq!(bare.history("p1").unwrap(), history);
        assert_eq!(bare.newest_generation("p1").unwrap(), 2);
    }

    fn fs_err(r: std::io::Result<()>) {
        r.unwrap()
    }

    #[test]
    fn a_taken_generation_goes_to_the_next_number() {
        let dir = tempfile::tempdir().unwrap();
        let a = local(dir.path());
        let b = Store::open(
            &StoreLocation::Local(dir.path().join("store")),
            Some(dir.path().join("index2")),
            &Default::default(),
        )
        .unwrap();
        a.save(&record("a1", "2026-01-01T00:00:00Z", b"one"), b"one").unwrap();
        // Another machine stored generation 2 behind a stale head.
        b.save(&record("b2", "2026-01-02T00:00:00Z", b"two"), b"two").unwrap();
        std::fs::write(
            dir.path().join("store/projects/p1/head.json"),
            serde_json::to_vec(&Head { generation: 1, push: "a1".into() }).unwrap(),
        )
        .unwrap();
        assert_eq!(a.save(&record("c3", "2026-01-03T00:00:00Z", b"three"), b"three").unwrap(), 3);
        let ids: Vec<_> = a.history("p1").unwrap().into_iter().map(|g| g.push).collect();
        assert_eq!(ids, ["c3", "b2", "a1"]);
    }

    #[test]
    fn corrupt_objects_and_hostile_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        let rec = record("a1", "2026-01-01T00:00:00Z", b"one");
        store.save(&rec, b"one").unwrap();
        let archive = dir.path().join(format!("store/projects/p1/archives/{}.tar.zst", rec.archive_blake3));
        std::fs::write(&archive, b"onE").unwrap();
        let err = store.archive(&rec).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)) && err.to_string().contains("archives/"), "{err}");
        // Storing the same archive again repairs it (its name says what it must hold).
        store.save(&rec, b"one").unwrap();
        assert_eq!(store.archive(&rec).unwrap(), b"one");
        let manifest = dir.path().join(format!("store/projects/p1/manifests/{}.json", rec.tree()));
        std::fs::write(&manifest, br#"{"format":1,"files":[]}"#).unwrap();
        assert!(store.full(&store.history("p1").unwrap()[0]).is_err());
        assert!(store.record("p1", "../../etc").is_err());
        assert!(store.record("p1", "a/b").is_err());
    }
}
