//! The backup store: push records and archives per project, the latest successful push, and the history.
//!
//! The layout lives here once, on top of a tiny object interface ([`Blobs`]); the local directory store
//! implements it today and an S3-compatible one slots in beside it without touching the engine.

mod local;

use serde::{Deserialize, Serialize};

use crate::config::StoreLocation;
use crate::error::{Error, Result};
use crate::manifest::FileEntry;

pub use local::LocalBlobs;

/// The format of push records. 1: dreamerd 0.1.0 onwards.
pub const RECORD_FORMAT: u32 = 1;
/// The store's layout. 1: `projects/<id>/pushes/<push>/{archive.tar.zst,manifest.json}` and
/// `projects/<id>/latest.json` (dreamerd 0.1.0 wrote it without the `format.json` marker).
pub const STORE_FORMAT: u32 = 1;
/// The key of the store's format marker.
const FORMAT_KEY: &str = "format.json";

/// Largest manifest or pointer object read back from a store.
const MAX_RECORD: u64 = 64 << 20;
/// Largest archive read back from a store.
const MAX_ARCHIVE: u64 = 2 << 30;

/// A flat key/value object store. Keys are `/`-separated, made of names that [`valid_id`] accepts.
pub trait Blobs: Send + Sync {
    /// Stores `data` under `key` atomically: readers see the old object or the new one, never a part.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// The object under `key`, or `None`. Objects larger than `max` are refused.
    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>>;
    /// Every key that starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Where the store is, for messages (never with credentials).
    fn describe(&self) -> String;
    /// Whether the store is there at all (a local store's folder exists).
    fn reachable(&self) -> Result<bool> {
        Ok(true)
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
}

impl PushRecord {
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
}

#[derive(Serialize, Deserialize)]
struct Latest {
    push_id: String,
}

/// True for ids dreamerd generates: short, plain ASCII, never a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-')
}

/// The backup store of one configuration.
pub struct Store {
    blobs: Box<dyn Blobs>,
    /// Set once the store's format was checked (and, on a write, its marker written).
    checked: std::sync::OnceLock<bool>,
}

#[derive(Serialize, Deserialize)]
struct StoreMarker {
    format: u32,
}

impl Store {
    /// Opens the store a configuration names.
    pub fn open(location: &StoreLocation) -> Result<Store> {
        let blobs: Box<dyn Blobs> = match location {
            StoreLocation::Local(dir) => Box::new(LocalBlobs::new(dir.clone())),
        };
        Ok(Store::with_blobs(blobs))
    }

    /// A store over any object interface (tests, other backends).
    pub fn with_blobs(blobs: Box<dyn Blobs>) -> Store {
        Store { blobs, checked: std::sync::OnceLock::new() }
    }

    /// Refuses a store of a newer format; before the first write, records this format in a store that has no marker
    /// yet (a new store, or one of dreamerd 0.1.0, whose layout is format 1).
    fn check_format(&self, writing: bool) -> Result<()> {
        if self.checked.get().is_some_and(|marked| *marked || !writing) {
            return Ok(());
        }
        let found = match self.blobs.get(FORMAT_KEY, 4096)? {
            Some(bytes) => {
                serde_json::from_slice::<StoreMarker>(&bytes)
                    .map_err(|e| {
                        Error::Corrupt(format!("{FORMAT_KEY} in {} is unreadable: {e}", self.describe()))
                    })?
                    .format
            }
            None => 0,
        };
        crate::error::check_format(found, STORE_FORMAT, || self.describe())?;
        let marked = found == STORE_FORMAT;
        if writing && !marked {
            let json = serde_json::to_vec(&StoreMarker { format: STORE_FORMAT }).expect("serialises");
            self.blobs.put(FORMAT_KEY, &json)?;
        }
        let _ = self.checked.set(marked || writing);
        Ok(())
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        self.blobs.describe()
    }

    /// Whether the store is there at all.
    pub fn reachable(&self) -> Result<bool> {
        self.blobs.reachable()
    }

    fn push_key(project: &str, push: &str, leaf: &str) -> String {
        format!("projects/{project}/pushes/{push}/{leaf}")
    }

    /// Saves a successful push: archive, then record, then the latest pointer, so that a crash part-way never
    /// leaves a pointer to something missing.
    pub fn save(&self, record: &PushRecord, archive: &[u8]) -> Result<()> {
        check_ids(&record.project_id, &record.id)?;
        self.check_format(true)?;
        let record_json = serde_json::to_vec_pretty(record).expect("records serialise");
        self.blobs.put(&Self::push_key(&record.project_id, &record.id, "archive.tar.zst"), archive)?;
        self.blobs.put(&Self::push_key(&record.project_id, &record.id, "manifest.json"), &record_json)?;
        let latest = serde_json::to_vec(&Latest { push_id: record.id.clone() }).expect("serialises");
        self.blobs.put(&format!("projects/{}/latest.json", record.project_id), &latest)
    }

    /// The record of the latest successful push, if any.
    pub fn latest(&self, project: &str) -> Result<Option<PushRecord>> {
        check_ids(project, "latest")?;
        self.check_format(false)?;
        let key = format!("projects/{project}/latest.json");
        let Some(bytes) = self.blobs.get(&key, MAX_RECORD)? else { return Ok(None) };
        let latest: Latest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{key} in {} is unreadable: {e}", self.describe())))?;
        match self.record(project, &latest.push_id)? {
            Some(r) => Ok(Some(r)),
            None => Err(Error::Corrupt(format!(
                "{key} in {} names push {} whose record is missing",
                self.describe(),
                latest.push_id
            ))),
        }
    }

    /// The record of one push, if it exists.
    pub fn record(&self, project: &str, push: &str) -> Result<Option<PushRecord>> {
        check_ids(project, push)?;
        let key = Self::push_key(project, push, "manifest.json");
        let Some(bytes) = self.blobs.get(&key, MAX_RECORD)? else { return Ok(None) };
        let record: PushRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{key} in {} is unreadable: {e}", self.describe())))?;
        crate::error::check_format(record.format, RECORD_FORMAT, || format!("{key} in {}", self.describe()))?;
        if record.id != push || record.project_id != project {
            return Err(Error::Corrupt(format!("{key} in {} describes another push", self.describe())));
        }
        Ok(Some(record))
    }

    /// The archive of a push, verified against its record's blake3.
    pub fn archive(&self, record: &PushRecord) -> Result<Vec<u8>> {
        let key = Self::push_key(&record.project_id, &record.id, "archive.tar.zst");
        let bytes = self.blobs.get(&key, MAX_ARCHIVE)?.ok_or_else(|| {
            Error::Corrupt(format!("the archive of push {} is missing from {}", record.id, self.describe()))
        })?;
        record.check_archive(&bytes, &self.describe())?;
        Ok(bytes)
    }

    /// Every successful push of a project, newest first.
    pub fn history(&self, project: &str) -> Result<Vec<PushRecord>> {
        check_ids(project, "history")?;
        self.check_format(false)?;
        let prefix = format!("projects/{project}/pushes/");
        let mut records = Vec::new();
        for key in self.blobs.list(&prefix)? {
            let Some(push) = key.strip_prefix(&prefix).and_then(|k| k.strip_suffix("/manifest.json")) else {
                continue;
            };
            if let Some(record) = self.record(project, push)? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| b.at.cmp(&a.at).then(b.at_ms.cmp(&a.at_ms)).then_with(|| b.id.cmp(&a.id)));
        Ok(records)
    }
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

    fn record(id: &str, at: &str, archive: &[u8]) -> PushRecord {
        PushRecord {
            format: RECORD_FORMAT,
            id: id.into(),
            project_id: "p1".into(),
            at: at.into(),
            at_ms: 0,
            files: vec![],
            schema_blake3: None,
            archive_blake3: blake3::hash(archive).to_hex().to_string(),
            archive_size: archive.len() as u64,
            host: "h".into(),
            root: "/r".into(),
        }
    }

    #[test]
    fn save_latest_history_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with_blobs(Box::new(LocalBlobs::new(dir.path().to_path_buf())));
        assert!(store.latest("p1").unwrap().is_none());
        store.save(&record("a1", "2026-01-01T00:00:00Z", b"one"), b"one").unwrap();
        store.save(&record("b2", "2026-01-02T00:00:00Z", b"two"), b"two").unwrap();
        assert_eq!(store.latest("p1").unwrap().unwrap().id, "b2");
        let ids: Vec<_> = store.history("p1").unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b2", "a1"]);
        let rec = store.record("p1", "a1").unwrap().unwrap();
        assert_eq!(store.archive(&rec).unwrap(), b"one");
        assert!(store.history("other").unwrap().is_empty());
    }

    #[test]
    fn corrupt_archive_and_hostile_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with_blobs(Box::new(LocalBlobs::new(dir.path().to_path_buf())));
        let rec = record("a1", "2026-01-01T00:00:00Z", b"one");
        store.save(&rec, b"one").unwrap();
        std::fs::write(dir.path().join("projects/p1/pushes/a1/archive.tar.zst"), b"onE").unwrap();
        assert!(matches!(store.archive(&rec), Err(Error::Corrupt(_))));
        assert!(store.record("p1", "../../etc").is_err());
        assert!(store.record("p1", "a/b").is_err());
    }
}
