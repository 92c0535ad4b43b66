//! Moving a store of format 1 (dreamerd 0.1.0's layout: `projects/<id>/pushes/<push>/{archive.tar.zst,
//! manifest.json}` and `projects/<id>/latest.json`) to format 2. Deterministic: each project's pushes become
//! generations in the order they were made (each naming the one before as its parent), so two processes migrating at
//! once write the very same objects. The format-1 objects are removed only once the new marker is written.

use std::collections::BTreeMap;

use super::{
    Blobs, FORMAT_KEY, Generation, MAX_ARCHIVE, MAX_RECORD, PushRecord, STORE_FORMAT, Store, StoreMarker,
};
use crate::error::{Error, Result};

/// The push records of a format-1 store, by project.
fn v1_pushes(blobs: &dyn Blobs) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in blobs.list("projects/")? {
        let parts: Vec<&str> = key.split('/').collect();
        if let ["projects", project, "pushes", push, "manifest.json"] = parts.as_slice() {
            out.entry(project.to_string()).or_default().push(push.to_string());
        }
    }
    Ok(out)
}

/// Whether the store holds anything in the format-1 layout.
pub(super) fn has_v1(blobs: &dyn Blobs) -> Result<bool> {
    Ok(blobs.list("projects/")?.iter().any(|k| {
        let parts: Vec<&str> = k.split('/').collect();
        matches!(parts.as_slice(), ["projects", _, "pushes", ..] | ["projects", _, "latest.json"])
    }))
}

/// Whether another process finished the migration while this one was at it (it then removes the old objects, which
/// this one may have been reading).
fn migrated_meanwhile(store: &Store) -> Result<bool> {
    Ok(store.marker()?.is_some_and(|m| m.format == STORE_FORMAT))
}

/// Migrates every project of a format-1 store, then marks the store as format 2 and removes the old objects.
pub(super) fn from_v1(store: &Store, store_id: &str) -> Result<()> {
    let blobs = store.blobs.as_ref();
    let projects = v1_pushes(blobs)?;
    tracing::info!(store = %store.describe(), projects = projects.len(), "migrating the store to format {STORE_FORMAT}");
    for (project, pushes) in &projects {
        if !super::valid_id(project) {
            continue;
        }
        let mut records = Vec::new();
        for push in pushes.iter().filter(|p| super::valid_id(p)) {
            let key = format!("projects/{project}/pushes/{push}/manifest.json");
            let Some(bytes) = blobs.get(&key, MAX_RECORD)? else {
                if migrated_meanwhile(store)? {
                    return Ok(());
                }
                continue;
            };
            let record: PushRecord = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Corrupt(format!(
                    "{key} in {} is unreadable ({e}), so the store cannot be migrated; move that push's folder \
                     out of the store, then run the command again",
                    store.describe()
                ))
            })?;
            if &record.id != push || &record.project_id != project {
                return Err(Error::Corrupt(format!("{key} in {} describes another push", store.describe())));
            }
            records.push(record);
        }
        records.sort_by(|a, b| a.at.cmp(&b.at).then(a.at_ms.cmp(&b.at_ms)).then_with(|| a.id.cmp(&b.id)));
        let mut parent: Option<String> = None;
        for (i, mut record) in records.into_iter().enumerate() {
            record.parent = parent.take();
            let n = i as u64 + 1;
            let old = format!("projects/{project}/pushes/{}/archive.tar.zst", record.id);
            match blobs.get(&old, MAX_ARCHIVE)? {
                Some(archive) if record.check_archive(&archive, "").is_ok() => {
                    let expected = record.archive_blake3.clone();
                    store.put_content(
                        &Store::archive_key(project, &record.archive_blake3),
                        &archive,
                        |b| blake3::hash(b).to_hex().as_str() == expected,
                    )?;
                }
                // Already moved by another process migrating at the same time, or damaged before: the generation
                // still says what it was, and a restore of it says the archive is missing or corrupt.
                _ => {
                    tracing::warn!(push = %record.id, "the archive of this push is missing or corrupt; its record is migrated without it")
                }
            }
            let tree = record.tree();
            let manifest = serde_json::to_vec(&super::Manifest {
                format: super::MANIFEST_FORMAT,
                files: record.files.clone(),
            })
            .expect("serialises");
            store.put_content(&Store::manifest_key(project, &tree), &manifest, |b| {
                super::parse_manifest(b).is_some_and(|f| crate::manifest::tree_hash(&f) == tree)
            })?;
            let generation = Generation::of(&record, n);
            let json = serde_json::to_vec_pretty(&generation).expect("serialises");
            if blobs.create(&Store::generation_key(project, n), &json)? == super::Created::Exists
                && store.generation(project, n)?.is_none_or(|g| g.push != record.id)
            {
                if migrated_meanwhile(store)? {
                    return Ok(());
                }
                return Err(Error::Corrupt(format!(
                    "{} holds generation {n} of project {project} naming another push than the migration of its \
                     format-1 history would: it was written by a newer dreamerd during the migration",
                    store.describe()
                )));
            }
            store.write_head(project, n, &record.id)?;
            parent = Some(record.id);
        }
    }
    let marker = StoreMarker { format: STORE_FORMAT, store_id: Some(store_id.to_string()) };
    blobs.put(FORMAT_KEY, &serde_json::to_vec(&marker).expect("serialises"))?;
    for key in blobs.list("projects/")? {
        let parts: Vec<&str> = key.split('/').collect();
        if matches!(parts.as_slice(), ["projects", _, "pushes", ..] | ["projects", _, "latest.json"]) {
            blobs.delete(&key)?;
        }
    }
    tracing::info!(store = %store.describe(), "the store is now format {STORE_FORMAT}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::LocalBlobs;
    use super::*;

    /// A format-1 store as dreamerd 0.1.0 wrote it (no marker), with `n` pushes of project p1.
    fn v1_store(dir: &std::path::Path, n: usize) -> Vec<String> {
        let blobs = LocalBlobs::new(dir.to_path_buf());
        let mut ids = Vec::new();
        for i in 0..n {
            let archive = format!("archive {i}").into_bytes();
            let id = format!("2026010{i}T000000Z-0000000{i}");
            let record = super::super::tests::record(&id, &format!("2026-01-0{i}T00:00:00Z"), &archive);
            let key = format!("projects/p1/pushes/{}", record.id);
            blobs.put(&format!("{key}/archive.tar.zst"), &archive).unwrap();
            blobs.put(&format!("{key}/manifest.json"), &serde_json::to_vec(&record).unwrap()).unwrap();
            blobs
                .put("projects/p1/latest.json", format!("{{\"push_id\":\"{}\"}}", record.id).as_bytes())
                .unwrap();
            ids.push(record.id);
        }
        ids
    }

    #[test]
    fn two_processes_migrating_at_once_write_the_same_history() {
        let dir = tempfile::tempdir().unwrap();
        let ids = v1_store(dir.path(), 5);
        let histories: Vec<Vec<Generation>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let store = Store::with_blobs(Box::new(LocalBlobs::new(dir.path().to_path_buf())));
                        store.history("p1").unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(histories[0], histories[1]);
        let got: Vec<&str> = histories[0].iter().rev().map(|g| g.push.as_str()).collect();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
        let parents: Vec<Option<&str>> = histories[0].iter().rev().map(|g| g.parent.as_deref()).collect();
        assert_eq!(parents[0], None);
        assert_eq!(parents[4], Some(ids[3].as_str()));
        let store = Store::with_blobs(Box::new(LocalBlobs::new(dir.path().to_path_buf())));
        for g in &histories[0] {
            let record = store.full(g).unwrap();
            assert_eq!(store.archive(&record).unwrap(), format!("archive {}", g.generation - 1).into_bytes());
        }
        assert!(!dir.path().join("projects/p1/pushes").exists());
        assert!(!dir.path().join("projects/p1/latest.json").exists());
    }
}
